//! A cluster's `outlier_detection`, as Envoy 1.40 applies it (defaults where unset), and
//! the stats it keeps under `cluster.<name>.outlier_detection.`.

use std::sync::Arc;
use std::time::Duration;

use crate::stats::Scope;

/// What an upstream attempt came to, for outlier detection (Envoy's `Result`, with the
/// HTTP status where one arrived).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head from the host, with its status (gRPC statuses already mapped).
    Status(u16),
    /// No connection could be made (refused, TLS failure, an HTTP connect timeout):
    /// Envoy's `LocalOriginConnectFailed`.
    ConnectFailed,
    /// The TCP proxy's connect timed out: `LocalOriginTimeout`.
    ConnectTimeout,
    /// The connection was made (Envoy's `LocalOriginConnectSuccess`), then reset or broke
    /// before a response: `LocalOriginConnectFailed`.
    Reset,
    /// The connection was made, then a per-try or route timeout passed with no response:
    /// `LocalOriginTimeout`.
    Timeout,
    /// A connection was made (TCP proxy): `LocalOriginConnectSuccessFinal`.
    Connected,
}

/// `outlier_detection` with Envoy's defaults filled in.
pub struct OutlierConfig {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    /// At least `base_ejection` (Envoy: 300 s, or the base time when that is longer).
    pub max_ejection: Duration,
    pub jitter: Duration,
    pub max_ejection_percent: u32,
    pub split_local: bool,
    pub always_eject_one: bool,
    /// `successful_active_health_check_uneject_host` (true by default): a host that passes
    /// its active health check is let back at once.
    pub uneject_on_health_check: bool,
    pub enforcing: Enforcing,
    pub success_rate: Volume,
    /// `success_rate_stdev_factor` / 1000.
    pub stdev_factor: f64,
    pub failure_percentage: Volume,
    pub failure_threshold: u32,
    pub stats: Arc<Scope>,
}

/// The `enforcing_*` percentages: how likely a detected outlier is ejected.
#[derive(Debug, Clone, Copy)]
pub struct Enforcing {
    pub consecutive_5xx: u32,
    pub consecutive_gateway: u32,
    pub consecutive_local: u32,
    pub success_rate: u32,
    pub local_success_rate: u32,
    pub failure_percentage: u32,
    pub local_failure_percentage: u32,
}

/// The minimums of a success-rate or failure-percentage evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Volume {
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

/// Why a host is an outlier (Envoy's detection types, in its stat names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
    SuccessRate,
    LocalSuccessRate,
    FailurePercentage,
    LocalFailurePercentage,
}

impl OutlierConfig {
    /// Whether `other` configures the same detector (a cluster converted again with the
    /// same settings keeps its state; different settings start afresh, as Envoy rebuilds
    /// a changed cluster).
    pub fn same_settings(&self, o: &OutlierConfig) -> bool {
        let e = (&self.enforcing, &o.enforcing);
        self.consecutive_5xx == o.consecutive_5xx
            && self.consecutive_gateway == o.consecutive_gateway
            && self.consecutive_local == o.consecutive_local
            && self.interval == o.interval
            && self.base_ejection == o.base_ejection
            && self.max_ejection == o.max_ejection
            && self.jitter == o.jitter
            && self.max_ejection_percent == o.max_ejection_percent
            && self.split_local == o.split_local
            && self.always_eject_one == o.always_eject_one
            && e.0.consecutive_5xx == e.1.consecutive_5xx
            && e.0.consecutive_gateway == e.1.consecutive_gateway
            && e.0.consecutive_local == e.1.consecutive_local
            && e.0.success_rate == e.1.success_rate
            && e.0.local_success_rate == e.1.local_success_rate
            && e.0.failure_percentage == e.1.failure_percentage
            && e.0.local_failure_percentage == e.1.local_failure_percentage
            && self.success_rate.minimum_hosts == o.success_rate.minimum_hosts
            && self.success_rate.request_volume == o.success_rate.request_volume
            && self.stdev_factor == o.stdev_factor
            && self.failure_percentage.minimum_hosts == o.failure_percentage.minimum_hosts
            && self.failure_percentage.request_volume == o.failure_percentage.request_volume
            && self.failure_threshold == o.failure_threshold
    }

    /// The enforcing percentage and the detected/enforced stats of `kind`.
    pub fn of(&self, kind: Kind) -> (u32, OutlierStat, OutlierStat) {
        use OutlierStat as S;
        let e = &self.enforcing;
        match kind {
            Kind::Consecutive5xx => (
                e.consecutive_5xx,
                S::DetectedConsecutive5xx,
                S::EnforcedConsecutive5xx,
            ),
            Kind::ConsecutiveGateway => (
                e.consecutive_gateway,
                S::DetectedConsecutiveGateway,
                S::EnforcedConsecutiveGateway,
            ),
            Kind::ConsecutiveLocal => (
                e.consecutive_local,
                S::DetectedConsecutiveLocal,
                S::EnforcedConsecutiveLocal,
            ),
            Kind::SuccessRate => (
                e.success_rate,
                S::DetectedSuccessRate,
                S::EnforcedSuccessRate,
            ),
            Kind::LocalSuccessRate => (
                e.local_success_rate,
                S::DetectedLocalSuccessRate,
                S::EnforcedLocalSuccessRate,
            ),
            Kind::FailurePercentage => (
                e.failure_percentage,
                S::DetectedFailurePercentage,
                S::EnforcedFailurePercentage,
            ),
            Kind::LocalFailurePercentage => (
                e.local_failure_percentage,
                S::DetectedLocalFailurePercentage,
                S::EnforcedLocalFailurePercentage,
            ),
        }
    }

    /// Whether a success-rate or failure-percentage evaluation can ever run on a cluster
    /// of `hosts` hosts (Envoy skips it below both minimums).
    pub fn evaluates(&self, hosts: usize) -> bool {
        hosts >= self.success_rate.minimum_hosts as usize
            || hosts >= self.failure_percentage.minimum_hosts as usize
    }
}

pub use crate::stats::OutlierStat;
