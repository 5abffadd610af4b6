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
