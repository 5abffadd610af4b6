//! The connection manager's `tracing` and `request_id_extension` settings. Without a
//! tracing provider Envoy exports no spans, but it still decides per request whether the
//! request would be traced and packs that decision into `x-request-id` (the UUID
//! extension's trace reason), which services and the access log see.

use std::sync::Arc;

/// `HttpConnectionManager.tracing`: sampling rates out of 10,000 (Envoy converts the
/// `Percent` values so; unset means 100%), and the span exporter with what it adds to
/// each span.
#[derive(Debug, Clone)]
pub struct Tracing {
    /// Requests with `x-client-trace-id`.
    pub client: u32,
    /// Requests not otherwise traced, drawn from the request id.
    pub random: u32,
    /// The cap on all of them, drawn from the request id.
    pub overall: u32,
    /// The provider: the connection manager's own, else the bootstrap's `tracing.http`.
    /// `None`: the decision is made (and packed into `x-request-id`), no span exists.
    pub tracer: Option<Arc<Tracer>>,
    /// `custom_tags`, added to every span.
    pub custom_tags: Box<[CustomTag]>,
    /// `max_path_tag_length` (default 256): how much of the URL `http.url` keeps.
    pub max_path_tag_length: usize,
    /// The listener is OUTBOUND: Envoy's `egress` operation (a client span); otherwise
    /// `ingress` (a server span).
    pub egress: bool,
    /// A custom tag reads the route's metadata, or the upstream host's: the request keeps
    /// a reference to it for its span.
    pub route_metadata: bool,
    pub host_metadata: bool,
}

impl Tracing {
    /// Rates only, no provider (tests).
    pub fn rates(client: u32, random: u32, overall: u32) -> Tracing {
        Tracing {
            client,
            random,
            overall,
            tracer: None,
            custom_tags: Box::default(),
            max_path_tag_length: 256,
            egress: false,
            route_metadata: false,
            host_metadata: false,
        }
    }
}

/// One of `custom_tags`: a span tag and where its value comes from.
#[derive(Debug, Clone)]
pub struct CustomTag {
    pub tag: Box<str>,
    pub value: TagValue,
}

/// Where a custom tag's value comes from.
#[derive(Debug, Clone)]
pub enum TagValue {
    /// `literal`, and `environment` (Envoy reads the variable once, when the
    /// configuration is loaded; unset and no default: no tag).
    Fixed(Option<Box<str>>),
    /// `request_header`: the header's value, else the default (none: no tag).
    Header {
        name: Box<str>,
        default: Option<Box<str>>,
    },
    /// `metadata`: a value in the request's dynamic metadata, the route's, the upstream
    /// cluster's or the upstream host's (strings as they are, other values as JSON), else
    /// the default.
    Metadata {
        kind: MetadataKind,
        namespace: Box<str>,
        path: Box<[Box<str>]>,
        default: Option<Box<str>>,
    },
}

/// Whose metadata a custom tag reads (`MetadataKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataKind {
    /// The request's dynamic metadata.
    Request,
    /// The matched route's `metadata` (none without a route).
    Route,
    /// The upstream cluster's `metadata`, once a host was chosen.
    Cluster,
    /// The chosen upstream host's (endpoint's) `metadata`.
    Host,
}

/// A tracing provider: where spans go, and the per-core batches' identity and stats.
pub struct Tracer {
    /// This provider's batch on each core (one per distinct configuration).
    pub id: u32,
    pub kind: TracerKind,
    /// This proxy, as spans name it: `node.id` and `node.locality.zone` (tags), and
    /// `node.cluster` (Zipkin's local service name).
    pub node_id: Box<str>,
    pub zone: Box<str>,
    pub service_cluster: Box<str>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, cluster) = match &self.kind {
            TracerKind::Zipkin(z) => ("zipkin", &z.cluster),
            TracerKind::OpenTelemetry(o) => ("opentelemetry", &o.cluster),
        };
        write!(f, "Tracer({kind}, cluster {cluster})")
    }
}

/// The span exporters.
pub enum TracerKind {
    Zipkin(Zipkin),
    OpenTelemetry(OtelTracer),
}

/// `envoy.tracers.zipkin`: Zipkin's JSON v2 over HTTP, B3 propagation.
pub struct Zipkin {
    pub cluster: Arc<str>,
    pub endpoint: Box<str>,
    /// `collector_hostname`: the export's Host (default: the cluster's name).
    pub hostname: Box<str>,
    pub trace_id_128bit: bool,
    /// `shared_span_context` (default true): an ingress span takes the caller's span id.
    pub shared_span_context: bool,
    /// `split_spans_for_request`: an ingress span never shares its id.
    pub split_spans: bool,
    /// `trace_context_option: USE_B3_WITH_W3C_PROPAGATION`: W3C `traceparent` is read
    /// when B3 is absent, and written beside B3.
    pub w3c: bool,
    pub stats: Arc<crate::stats::Scope>,
}

/// `envoy.tracers.opentelemetry`: OTLP over gRPC, W3C propagation.
pub struct OtelTracer {
    pub cluster: Arc<str>,
    /// The call's `:authority` (the gRPC service's `authority`, else the cluster name).
    pub authority: Box<str>,
    pub timeout: Option<std::time::Duration>,
    pub metadata: Vec<(Box<str>, Box<str>)>,
    /// `service_name` (Envoy's default: `unknown_service:envoy`).
    pub service_name: Box<str>,
    pub stats: Arc<crate::stats::Scope>,
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

/// How a span's context goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`.
    #[default]
    B3Multi,
    /// One `b3` header (the request came with one).
    B3Single,
    /// B3 (multi) and W3C `traceparent` (Zipkin's `USE_B3_WITH_W3C_PROPAGATION`).
    B3MultiW3c,
    /// B3 single and W3C `traceparent`.
    B3SingleW3c,
    /// W3C `traceparent` only (OpenTelemetry); `tracestate` passes through.
    W3c,
}

/// One request's span: its identity, what it tells the next hop, and whether it is
/// exported. Kept inline in the request's log entry (no allocation per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpanCtx {
    /// The trace id's high 64 bits (0: a 64-bit trace id).
    pub trace_hi: u64,
    pub trace_lo: u64,
    pub id: u64,
    pub parent: Option<u64>,
    /// Exported (and `sampled` upstream).
    pub sampled: bool,
    /// A Zipkin server span that shares its caller's id (`"shared": true`).
    pub shared: bool,
    pub propagation: Propagation,
}
