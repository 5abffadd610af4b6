//! A cluster's load-balancing policy and its endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{istio, SocketLabels};

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

/// What tunes a policy: `slow_start_config` (round robin, least request),
/// `active_request_bias` (least request) and `locality_weighted_lb_config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbTuning {
    pub slow_start: Option<SlowStart>,
    /// Least request with unequal weights: weight / (active + 1)^bias (1.0 by default).
    pub bias: f64,
    /// The priority's locality is chosen first, by its weight times its availability.
    pub locality_weighted: bool,
}

impl Default for LbTuning {
    fn default() -> LbTuning {
        LbTuning {
            slow_start: None,
            bias: 1.0,
            locality_weighted: false,
        }
    }
}

/// `slow_start_config`: a new endpoint's weight grows over `window`, as
/// (time since it came / window)^(1 / aggression), never below `min_weight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    pub aggression: f64,
    /// `min_weight_percent` as a fraction (0.1 by default).
    pub min_weight: f64,
}

/// One upstream host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The name it was resolved from (for `auto_host_rewrite`), or its address.
    pub hostname: Arc<str>,
    pub weight: u32,
    pub healthy: bool,
    /// Its `envoy.transport_socket_match` metadata, for `transport_socket_matches`.
    pub labels: SocketLabels,
    /// The workload istiod describes in its `istio.workload` metadata (telemetry).
    pub workload: Option<Arc<istio::Peer>>,
    /// Its priority (0 the highest); a cluster's endpoints are sorted by it.
    pub priority: u32,
    pub locality: Option<Arc<Locality>>,
    /// Its assignment's `policy.overprovisioning_factor` (the same for the whole cluster).
    pub overprovisioning: u32,
    /// Its `LocalityLbEndpoints` entry (endpoints of one entry are contiguous) and that
    /// entry's `load_balancing_weight` (0 unset: no traffic under locality weighting).
    pub group: u32,
    pub locality_weight: u32,
    /// An `envoy_internal_address` endpoint: `address` is then a placeholder
    /// ([`super::internal::synthetic_address`]).
    pub internal: Option<Arc<super::internal::InternalEndpoint>>,
    /// Its `metadata`, kept encoded (tracing's `host` custom tags).
    pub metadata: Option<super::metadata::Packed>,
}

impl Endpoint {
    /// An endpoint at `address` (an original destination).
    pub fn at(address: SocketAddr) -> Endpoint {
        Endpoint {
            address,
            hostname: address.to_string().into(),
            weight: 1,
            healthy: true,
            labels: Arc::new([]),
            workload: None,
            priority: 0,
            locality: None,
            overprovisioning: DEFAULT_OVERPROVISIONING,
            group: 0,
            locality_weight: 0,
            internal: None,
            metadata: None,
        }
    }
}
