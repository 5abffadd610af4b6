//! A route's retry policy (`RetryPolicy` on a route or its virtual host), validated.

use std::time::Duration;

use crate::model::matcher::HeaderMatch;

/// The `retry_on` conditions, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(pub u32);

impl RetryOn {
    pub const FIVE_XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const CONNECT_FAILURE: u32 = 1 << 2;
    pub const RETRIABLE_4XX: u32 = 1 << 3;
    pub const REFUSED_STREAM: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    pub const RESET: u32 = 1 << 6;
    pub const RETRIABLE_HEADERS: u32 = 1 << 7;
    pub const ENVOY_RATE_LIMITED: u32 = 1 << 8;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 9;
    pub const HTTP3_POST_CONNECT_FAILURE: u32 = 1 << 10;
    pub const GRPC_CANCELLED: u32 = 1 << 11;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 12;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 13;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 14;
    pub const GRPC_INTERNAL: u32 = 1 << 15;

    /// The HTTP conditions by Envoy's names.
    pub const HTTP: [(&'static str, u32); 11] = [
        ("5xx", Self::FIVE_XX),
        ("gateway-error", Self::GATEWAY_ERROR),
        ("connect-failure", Self::CONNECT_FAILURE),
        ("retriable-4xx", Self::RETRIABLE_4XX),
        ("refused-stream", Self::REFUSED_STREAM),
        ("retriable-status-codes", Self::RETRIABLE_STATUS_CODES),
        ("reset", Self::RESET),
        ("retriable-headers", Self::RETRIABLE_HEADERS),
        ("envoy-ratelimited", Self::ENVOY_RATE_LIMITED),
        ("reset-before-request", Self::RESET_BEFORE_REQUEST),
        (
            "http3-post-connect-failure",
            Self::HTTP3_POST_CONNECT_FAILURE,
        ),
    ];
    /// The gRPC conditions (also accepted in `retry_on`), with their gRPC status codes.
    pub const GRPC: [(&'static str, u32, u32); 5] = [
        ("cancelled", Self::GRPC_CANCELLED, 1),
        ("deadline-exceeded", Self::GRPC_DEADLINE_EXCEEDED, 4),
        ("resource-exhausted", Self::GRPC_RESOURCE_EXHAUSTED, 8),
        ("unavailable", Self::GRPC_UNAVAILABLE, 14),
        ("internal", Self::GRPC_INTERNAL, 13),
    ];

    /// Parses a comma-separated list (tokens trimmed, empty ones skipped). Unknown
    /// tokens are left out, as Envoy leaves them out, and returned.
    pub fn parse(list: &str, grpc_only: bool) -> (RetryOn, Vec<String>) {
        let mut bits = 0;
        let mut unknown = Vec::new();
        for token in list.split(',') {
            let t = token.trim();
            if t.is_empty() {
                continue;
            }
            let http = (!grpc_only)
                .then(|| Self::HTTP.iter().find(|(n, _)| *n == t).map(|(_, b)| *b))
                .flatten();
            let grpc = Self::GRPC
                .iter()
                .find(|(n, _, _)| *n == t)
                .map(|(_, b, _)| *b);
            match http.or(grpc) {
                Some(b) => bits |= b,
                None => unknown.push(t.to_string()),
            }
        }
        (RetryOn(bits), unknown)
    }

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// The gRPC conditions that `grpc_status` meets.
    pub fn grpc_status(self, grpc_status: u32) -> bool {
        Self::GRPC
            .iter()
            .any(|(_, bit, code)| *code == grpc_status && self.has(*bit))
    }
}

/// How a rate-limit reset header's value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    /// Seconds from now (`Retry-After: 30`).
    Seconds,
    /// A Unix time (`X-RateLimit-Reset: 1700000000`).
    UnixTimestamp,
}

/// `rate_limited_retry_back_off`: the back-off an upstream asks for.
#[derive(Debug, Clone)]
pub struct RateLimitedBackOff {
    /// Lower-cased header names, in order.
    pub headers: Vec<(String, ResetFormat)>,
    pub max: Duration,
}

/// A route's retry policy.
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    /// `retriable_status_codes` (with `retriable-status-codes`).
    pub status_codes: Vec<u16>,
    /// `retriable_headers`: a response matching one is retried (with `retriable-headers`).
    pub headers: Vec<HeaderMatch>,
    /// `retriable_request_headers`: only a request matching one is retried at all.
    pub request_headers: Vec<HeaderMatch>,
    /// `retry_host_predicate: previous_hosts`: a retry avoids hosts already tried.
    pub previous_hosts: bool,
    /// `host_selection_retry_max_attempts`: picks to find a host the predicate accepts.
    pub host_selection_attempts: u32,
    /// `retry_back_off`: the jittered exponential back-off's base and maximum.
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub rate_limited: Option<RateLimitedBackOff>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            on: RetryOn::default(),
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            status_codes: Vec::new(),
            headers: Vec::new(),
            request_headers: Vec::new(),
            previous_hosts: false,
            host_selection_attempts: 1,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            rate_limited: None,
        }
    }
}
