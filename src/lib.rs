//! Ringside: a thread-per-core sidecar proxy driven by Envoy's v3 configuration.
#![deny(unsafe_code)]

pub mod config;
pub mod proto;
