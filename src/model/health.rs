//! A cluster's active health check (`health_checks`), as the control thread runs it.

use std::sync::Arc;
use std::time::Duration;

use crate::stats::Scope;

/// One `HealthCheck`.
pub struct HealthCheck {
    pub kind: Kind,
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Keep the check's connection from one check to the next (HTTP, gRPC).
    pub reuse_connection: bool,
    /// While the cluster has never had a connection (Envoy's `upstream_cx_total` unused).
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    /// `cluster.<name>.health_check.`
    pub stats: Arc<Scope>,
}

impl HealthCheck {
    /// The same check (the stats scope aside): a cluster sent again unchanged keeps its
    /// hosts' state.
    pub fn same(&self, o: &HealthCheck) -> bool {
        let times = |h: &HealthCheck| {
            [
                h.timeout,
                h.interval,
                h.initial_jitter,
                h.interval_jitter,
                h.no_traffic_interval,
                h.no_traffic_healthy_interval,
                h.unhealthy_interval,
                h.unhealthy_edge_interval,
                h.healthy_edge_interval,
            ]
        };
        let counts = |h: &HealthCheck| {
            (
                h.interval_jitter_percent,
                h.unhealthy_threshold,
                h.healthy_threshold,
                h.reuse_connection,
            )
        };
        self.kind == o.kind
            && times(self) == times(o)
            && counts(self) == counts(o)
            && self.stats.prefix() == o.stats.prefix()
    }
}

/// What a check sends and expects.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Http {
        /// `:authority` (the cluster's name when unset).
        host: Box<str>,
        path: Box<str>,
        method: Box<str>,
        /// Added to the request (literal values).
        headers: Box<[(Box<str>, Box<str>)]>,
        /// Removed from what would be sent.
        remove: Box<[Box<str>]>,
        /// `[start, end)` ranges; a status in one is healthy (200 only, unset).
        expected: Box<[(u16, u16)]>,
        /// `retriable_statuses`: a status in one (and not expected) counts towards
        /// `unhealthy_threshold` rather than failing the host at once.
        retriable: Box<[(u16, u16)]>,
        /// `codec_client_type: HTTP2` (h2c).
        h2: bool,
    },
    Tcp {
        send: Vec<u8>,
        /// Each must come back, in order (Envoy's fuzzy match).
        receive: Vec<Vec<u8>>,
    },
    Grpc {
        service: Box<str>,
        /// `:authority` (the cluster's name when unset).
        authority: Box<str>,
    },
}
