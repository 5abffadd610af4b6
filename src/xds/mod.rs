//! The control thread: the ADS client, its resource caches, publishing whole snapshots
//! to the cores, and DNS for STRICT_DNS/LOGICAL_DNS clusters.

pub mod ads;
pub mod client;
pub mod control;
pub mod dns;
mod grpc;
pub mod jwks;
pub mod publish;
pub mod sds;
pub mod state;
pub mod transport;
pub mod unknown;
