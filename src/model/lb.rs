//! A cluster's load-balancing policy.

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    LeastRequest {
        choice_count: u32,
    },
    /// `RING_HASH` (xxHash), with its ring's minimum and maximum sizes.
    RingHash {
        min: u64,
        max: u64,
    },
    /// `MAGLEV`, with its table's size (a prime).
    Maglev {
        table_size: u64,
    },
}

/// An endpoint's locality (`/clusters` prints it; Istio's failover put it in a priority).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Locality {
    pub region: Box<str>,
    pub zone: Box<str>,
    pub sub_zone: Box<str>,
}

/// Envoy's default `overprovisioning_factor` (percent): a priority whose healthy share
/// times 1.4 reaches 100% takes all the load it is given.
pub const DEFAULT_OVERPROVISIONING: u32 = 140;
