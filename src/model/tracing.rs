//! The connection manager's `tracing` and `request_id_extension` settings. Without a
//! tracing provider Envoy exports no spans, but it still decides per request whether the
//! request would be traced and packs that decision into `x-request-id` (the UUID
//! extension's trace reason), which services and the access log see.

/// `HttpConnectionManager.tracing`: sampling rates out of 10,000 (Envoy converts the
/// `Percent` values so; unset means 100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracing {
    /// Requests with `x-client-trace-id`.
    pub client: u32,
    /// Requests not otherwise traced, drawn from the request id.
    pub random: u32,
    /// The cap on all of them, drawn from the request id.
    pub overall: u32,
}

/// `request_id_extension` (`UuidRequestIdConfig`, Envoy's only one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestIdConfig {
    /// Write the trace decision into the id (`pack_trace_reason`, default true).
    pub pack_trace_reason: bool,
    /// Draw sampling from the id (`use_request_id_for_trace_sampling`, default true).
    pub use_for_sampling: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        RequestIdConfig {
            pack_trace_reason: true,
            use_for_sampling: true,
        }
    }
}
