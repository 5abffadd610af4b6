//! A connection manager's HTTP filters and their per-route configuration, compiled. The
//! filters run in `http::filter`; this is what they are configured with.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::headers::HeaderMods;
use super::matcher::{HeaderMatch, StringMatcher};
use crate::stats::Scope;

/// The filters of one connection manager, in their configured order; the router, always
/// last, is not among them (it is the forwarding every request path ends in).
#[derive(Default)]
pub struct HttpFilters {
    pub list: Box<[HttpFilter]>,
    /// `istio.stats` is among them: every request is timed.
    pub istio_stats: bool,
}

impl HttpFilters {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl super::HttpConnectionManager {
    /// Whether a request's start time is taken (an access log or `istio.stats` reads it;
    /// clock reads are not free).
    #[inline]
    pub fn timed(&self) -> bool {
        !self.access_logs.is_empty()
            || self.filters.istio_stats
            || self.tracing.as_ref().is_some_and(|t| t.tracer.is_some())
    }
}

/// One configured HTTP filter.
pub struct HttpFilter {
    /// The name `typed_per_filter_config` refers to it by.
    pub name: Arc<str>,
    /// `disabled`: off unless a route's `FilterConfig` enables it.
    pub disabled: bool,
    pub kind: FilterKind,
}

/// The built-in filters: one enum, dispatched by `match`.
pub enum FilterKind {
    Fault(FaultFilter),
    Cors(CorsFilter),
    GrpcStats(GrpcStatsConfig),
    LocalRateLimit(Arc<LocalRateLimit>),
    Compressor(Arc<super::compressor::Compressor>),
    Rbac(Arc<super::rbac::RbacFilter>),
    JwtAuthn(Arc<super::jwt::JwtAuthn>),
    /// `set_filter_state`: objects set from the request's headers.
    SetFilterState(Arc<[super::filter_state::SetValue]>),
    ExtAuthz(Arc<ExtAuthz>),
    /// `istio.stats`.
    IstioStats(Arc<super::istio::IstioStats>),
    /// `istio.metadata_exchange` (HTTP).
    PeerMetadata(Arc<super::istio::PeerMetadata>),
    /// Istio's `connect_authority` (HBONE's `connect_terminate`): on a route that enables
    /// it, the CONNECT's authority becomes the filter state object
    /// `istio.set_internal_dst_address`, shared with the upstream (internal) connection,
    /// where `main_internal`'s listener filter restores the destination from it.
    ConnectAuthority,
    /// Istio's `connect_baggage`: the CONNECT's `baggage` header describes the client's
    /// workload, which the upstream (internal) connection's `istio.stats` reports.
    ConnectBaggage,
}

/// A fraction with Envoy's `FractionalPercent` denominators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    pub numerator: u32,
    /// 100, 10,000 or 1,000,000.
    pub denominator: u32,
}

impl Fraction {
    pub const ALL: Fraction = Fraction {
        numerator: 100,
        denominator: 100,
    };

    /// Whether a request is sampled in, drawn with `r` (any u64).
    pub fn sample(&self, r: u64) -> bool {
        if self.numerator >= self.denominator {
            return true;
        }
        r % u64::from(self.denominator) < u64::from(self.numerator)
    }
}

/// `envoy.filters.http.fault` on a connection manager: its listener-level configuration
/// (absent when empty, as istiod sends it) and its stats, which per-route configurations
/// share.
pub struct FaultFilter {
    pub config: Option<Arc<Fault>>,
    /// `http.<prefix>.fault.`
    pub stats: Arc<Scope>,
    /// Faults in progress across every core, for `max_active_faults` (relaxed atomics:
    /// the limit holds for the whole proxy, as in Envoy).
    pub active: Arc<AtomicU64>,
}

/// An `HTTPFault` configuration.
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// Only requests routed to this cluster get faults.
    pub upstream_cluster: Option<Arc<str>>,
    /// All must match.
    pub headers: Vec<HeaderMatch>,
    /// Only requests whose `x-envoy-downstream-service-node` is one of these.
    pub downstream_nodes: Vec<Box<str>>,
    pub max_active_faults: Option<u64>,
    pub disable_downstream_cluster_stats: bool,
}

impl Fault {
    /// Whether the configuration can inject nothing (istiod's empty filter).
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

#[derive(Debug)]
pub struct FaultDelay {
    pub kind: DelayKind,
    pub percentage: Fraction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayKind {
    Fixed(Duration),
    /// The delay comes from `x-envoy-fault-delay-request` (milliseconds).
    Header,
}

#[derive(Debug)]
pub struct FaultAbort {
    pub kind: AbortKind,
    pub percentage: Fraction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    Http(u16),
    Grpc(u32),
    /// The status comes from `x-envoy-fault-abort-request` or
    /// `x-envoy-fault-abort-grpc-request`.
    Header,
}

/// `envoy.filters.http.cors`: the policies are per route and virtual host.
pub struct CorsFilter {
    /// `http.<prefix>.` — Envoy counts `cors.origin_valid`/`cors.origin_invalid` in the
    /// connection manager's scope.
    pub stats: Arc<Scope>,
}

/// A `CorsPolicy`. Policies at several levels (weighted cluster, route, virtual host,
/// route configuration) merge field by field, the most specific level that sets a field
/// winning; `None` and empty mean unset.
pub struct CorsPolicy {
    pub allow_origin: Vec<StringMatcher>,
    pub allow_methods: Option<Box<str>>,
    pub allow_headers: Option<Box<str>>,
    pub expose_headers: Option<Box<str>>,
    pub max_age: Option<Box<str>>,
    pub allow_credentials: Option<bool>,
    pub allow_private_network_access: Option<bool>,
    /// Whether a preflight whose origin does not match goes on to the upstream (default
    /// true).
    pub forward_not_matching_preflights: Option<bool>,
    /// `filter_enabled`: the share of requests the policy is enforced on (unset: all).
    /// Read from the most specific policy only, as in Envoy.
    pub enabled: Option<Fraction>,
    /// `shadow_enabled`: the share of requests whose origin is only checked and counted
    /// (unset: none).
    pub shadow: Option<Fraction>,
}

/// `envoy.filters.http.grpc_stats`.
#[derive(Debug, Clone)]
pub struct GrpcStatsConfig {
    pub emit_filter_state: bool,
    /// `stats_for_all_methods`: per service and method names, else one `grpc.` family.
    pub per_method: PerMethod,
    pub enable_upstream_stats: bool,
    pub replace_dots_in_service_name: bool,
}

/// Which methods get stats of their own.
#[derive(Debug, Clone)]
pub enum PerMethod {
    None,
}

/// A `LocalRateLimit` configuration and its bucket.
pub struct LocalRateLimit {
    /// `<stat_prefix>.http_local_rate_limit.`
    pub stats: Arc<Scope>,
    pub status: u16,
    /// Absent: the filter only counts (a per-route configuration may add one).
    pub bucket: Option<Arc<crate::model::ratelimit::TokenBucket>>,
    pub enabled: Fraction,
    pub enforced: Fraction,
    pub response_headers: HeaderMods,
    pub x_ratelimit_headers: bool,
    pub resource_exhausted: bool,
}

/// Per-route configuration for one filter, from `typed_per_filter_config` (the most
/// specific of weighted cluster, route, virtual host and route configuration wins).
pub enum PerRoute {
    Fault(Arc<Fault>),
    Cors(Arc<CorsPolicy>),
    LocalRateLimit(Arc<LocalRateLimit>),
    Compressor(Arc<super::compressor::CompressorPerRoute>),
    Rbac(Arc<super::rbac::RbacPerRoute>),
    Jwt(Arc<super::jwt::JwtPerRoute>),
    ExtAuthz(Arc<ExtAuthzPerRoute>),
    /// Istio's `connect_authority` per route: enabled, with the port the destination
    /// takes (0: the authority's own).
    ConnectAuthority {
        port: u16,
    },
    /// `FilterConfig { disabled: true }`: the filter is skipped for this route.
    Disabled,
    /// `FilterConfig { disabled: false }` with no config: a filter disabled on the
    /// connection manager runs for this route.
    Enabled,
}

/// The `typed_per_filter_config` of one route, virtual host, route configuration or
/// weighted cluster, keyed by filter name.
#[derive(Default)]
pub struct PerFilterConfigs(pub Box<[(Box<str>, PerRoute)]>);

impl PerFilterConfigs {
    pub fn get(&self, name: &str) -> Option<&PerRoute> {
        self.0
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map(|(_, c)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `envoy.filters.http.ext_authz`: a gRPC authorization service
/// (`envoy.service.auth.v3.Authorization/Check`) or an HTTP one, called from the
/// request's core over that core's pools.
pub struct ExtAuthz {
    pub cluster: Arc<str>,
    pub service: AuthzService,
    /// The call's deadline (`grpc_service.timeout`, `server_uri.timeout`; none: no limit).
    pub timeout: Option<Duration>,
    pub failure_mode_allow: bool,
    pub failure_mode_allow_header_add: bool,
    /// The status of a request when the service cannot be asked (default 403).
    pub status_on_error: u16,
    /// `filter_enabled` (absent: every request).
    pub filter_enabled: Option<Fraction>,
    /// `filter_enabled_metadata`: only requests whose dynamic metadata matches.
    pub filter_enabled_metadata: Option<super::rbac::MetadataMatcher>,
    pub include_tls_session: bool,
    /// `allowed_headers` / `disallowed_headers`: which request headers the check carries.
    pub allowed_headers: Vec<StringMatcher>,
    pub disallowed_headers: Vec<StringMatcher>,
    /// `with_request_body`: the check carries the body's start.
    pub with_body: Option<BodySettings>,
    /// `http.<prefix>.ext_authz.[<stat_prefix>.]`.
    pub stats: Arc<Scope>,
}

/// How ext_authz asks its service.
pub enum AuthzService {
    Grpc {
        /// `:authority` of the call (the cluster name when unset).
        authority: Box<str>,
        /// `grpc_service.initial_metadata`: headers of the call.
        initial_metadata: Vec<(Box<str>, Box<str>)>,
    },
    Http(Box<HttpAuthz>),
}

/// ext_authz's `http_service`: the request's method, `path_prefix` + path, host, the
/// headers the check carries and the body's start go to the service; a 200 allows, a
/// 5xx or no answer is an error, any other status denies with the service's answer.
pub struct HttpAuthz {
    pub path_prefix: Box<str>,
    /// `authorization_request.headers_to_add` (set, with `%COMMAND%` values).
    pub headers_to_add: Vec<(Arc<str>, super::format::Format)>,
    /// `allowed_upstream_headers`: the service's headers set on the allowed request.
    pub upstream: Vec<StringMatcher>,
    /// `allowed_upstream_headers_to_append`: the service's headers added to it.
    pub upstream_append: Vec<StringMatcher>,
    /// `allowed_client_headers`: the service's headers on a denial (none configured:
    /// every header but `host`).
    pub client: Option<Vec<StringMatcher>>,
    /// `allowed_client_headers_on_success`: the service's headers put on the response of
    /// an allowed request.
    pub client_on_success: Vec<StringMatcher>,
    /// `dynamic_metadata_from_headers`.
    pub metadata: Vec<StringMatcher>,
}

/// ext_authz's `BufferSettings`.
#[derive(Debug, Clone, Copy)]
pub struct BodySettings {
    pub max_bytes: usize,
    /// A longer body is cut at `max_bytes` (else the request is a 413).
    pub allow_partial: bool,
    /// Sent as `raw_body` (bytes) instead of `body` (text).
    pub pack_as_bytes: bool,
}

/// `ExtAuthzPerRoute`.
pub enum ExtAuthzPerRoute {
    Disabled,
    /// `check_settings.context_extensions`, sent with the check.
    Check(Vec<(String, String)>),
}
