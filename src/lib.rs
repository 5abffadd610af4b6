//! Ringside: a thread-per-core sidecar proxy driven by Envoy's v3 configuration.
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod ctx;
pub mod health;
pub mod http;
pub mod io;
pub mod iptables;
pub mod jwt;
pub mod listener;
pub mod logging;
pub mod model;
pub mod outlier;
pub mod peer_cert;
pub mod proto;
pub mod rbac;
pub mod router;
pub mod sampler;
pub mod stat_sinks;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod wake;
pub mod worker;
pub mod xds;

#[cfg(test)]
mod test_support;
