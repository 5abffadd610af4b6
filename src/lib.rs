//! Ringside: a thread-per-core sidecar proxy driven by Envoy's v3 configuration.
#![deny(unsafe_code)]

pub mod config;
pub mod model;
pub mod proto;
pub mod router;
pub mod stats;
