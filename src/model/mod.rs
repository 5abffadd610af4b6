//! Ringside's validated, immutable configuration: the `Snapshot` every core reads.
//!
//! Built only by `convert` (from the bootstrap today, from xDS later) and published whole
//! through [`SharedSnapshot`]. Parts sit behind `Arc` so that a DNS refresh or a single
//! resource change rebuilds pointers, not tables.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

pub mod breakers;
pub mod cel;
pub mod chain;
pub mod cidr;
pub mod compressor;
pub mod convert;
mod dump;
pub use dump::{Dictionary, DumpEntry, DynamicDump, Encoded, Entry, Unpacker};
pub mod access_log;
pub mod filter;
pub mod filter_state;
pub mod flags;
pub mod format;
pub mod headers;
pub mod health;
pub mod internal;
pub mod istio;
pub mod jwt;
mod lb;
pub use access_log::{AccessLog, LogSink};
pub use lb::{Endpoint, LbPolicy, LbTuning, Locality, SlowStart, DEFAULT_OVERPROVISIONING};
pub mod matcher;
pub mod metadata;
pub mod otel_log;
pub mod outlier;
pub mod overload;
pub mod path;
pub mod ratelimit;
pub mod rbac;
pub mod retry;
pub mod route;
pub mod runtime;
mod tcp_proxy;
pub mod tls;
pub mod tracing;
pub use internal::OriginalDstConfig;
pub use tcp_proxy::{TcpHash, TcpProxy, Tunneling};
pub mod xfcc;

pub use convert::ConvertError;

use crate::stats::Scope;

/// Everything a core needs to serve, at one version.
#[derive(Clone)]
pub struct Snapshot {
    /// Bumped on every publish.
    pub version: u64,
    /// When this version was built.
    pub built_at: SystemTime,
    pub listeners: Vec<Arc<Listener>>,
    /// Clusters in a stable order; routes refer to them by index.
    pub clusters: Vec<Arc<Cluster>>,
    /// Name → index in `clusters` (Fx: looked up per request for RDS routes).
    pub cluster_index: rustc_hash::FxHashMap<Arc<str>, usize>,
    /// Route configurations delivered by RDS, by name.
    pub route_configs: rustc_hash::FxHashMap<Arc<str>, Arc<route::RouteTable>>,
    /// The admin listener's address, if any.
    pub admin: Option<SocketAddr>,
    /// The bootstrap as given (for `/config_dump`).
    pub bootstrap: Arc<crate::proto::envoy::config::bootstrap::v3::Bootstrap>,
    /// The xDS resources behind this snapshot, as received (for `/config_dump`).
    pub dynamic: Arc<DynamicDump>,
    /// Listeners that do not bind (`bind_to_port: false`), by address: where a
    /// `use_original_dst` listener hands its connections.
    pub virtual_listeners: Arc<rustc_hash::FxHashMap<SocketAddr, Arc<Listener>>>,
    /// `layered_runtime`, with the admin layer's changes.
    pub runtime: Arc<runtime::Runtime>,
    /// `overload_manager`'s global downstream connection limit (kept across snapshots).
    pub global_cx: Option<Arc<overload::GlobalConnLimit>>,
}

/// The `bind_to_port: false` listeners of `listeners`, by address (internal listeners
/// have no address to be found by).
pub fn virtual_index(
    listeners: &[Arc<Listener>],
) -> Arc<rustc_hash::FxHashMap<SocketAddr, Arc<Listener>>> {
    Arc::new(
        listeners
            .iter()
            .filter(|l| !l.bind_to_port && l.internal.is_none())
            .map(|l| (l.address, l.clone()))
            .collect(),
    )
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("listeners", &self.listeners.len())
            .field("clusters", &self.clusters.len())
            .finish()
    }
}

impl Snapshot {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.cluster_index.get(name).map(|&i| &self.clusters[i])
    }

    /// The listener that takes over a connection restored to `dst`: an exact address
    /// match first, then one on the wildcard address of `dst`'s family and port.
    pub fn listener_for(&self, dst: SocketAddr) -> Option<&Arc<Listener>> {
        if self.virtual_listeners.is_empty() {
            return None;
        }
        self.virtual_listeners.get(&dst).or_else(|| {
            let any: std::net::IpAddr = match dst {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            self.virtual_listeners
                .get(&SocketAddr::new(any, dst.port()))
        })
    }

    /// The route table a connection manager uses now: its inline one, or the RDS one it
    /// names (`None` while that has not arrived).
    pub fn routes_of<'a>(
        &'a self,
        hcm: &'a HttpConnectionManager,
    ) -> Option<&'a Arc<route::RouteTable>> {
        match &hcm.routes {
            RouteSource::Static(t) => Some(t),
            RouteSource::Rds(name) => self.route_configs.get(name),
        }
    }
}

/// Where a connection manager's routes come from.
pub enum RouteSource {
    /// `route_config`, inline.
    Static(Arc<route::RouteTable>),
    /// `rds.route_config_name`: looked up in the snapshot per request.
    Rds(Arc<str>),
}

impl RouteSource {
    /// The inline route table, if that is where the routes come from.
    pub fn inline(&self) -> Option<&Arc<route::RouteTable>> {
        match self {
            RouteSource::Static(t) => Some(t),
            RouteSource::Rds(_) => None,
        }
    }
}

/// The current snapshot, swapped whole.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A listener: an address, its listener filters and its filter chains.
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    /// `traffic_direction: INBOUND`: drained by `/drain_listeners?inboundonly`.
    pub inbound: bool,
    /// `ignore_global_conn_limit`: not counted against the overload manager's limit.
    pub ignore_global_conn_limit: bool,
    pub stats: Arc<Scope>,
    pub chains: chain::Chains,
    /// `bind_to_port` (default true): false for the listeners a `use_original_dst`
    /// listener hands connections to.
    pub bind_to_port: bool,
    /// `use_original_dst` or the `original_dst` listener filter: recover the destination
    /// iptables redirected from (SO_ORIGINAL_DST); chains match on it.
    pub restore_dst: bool,
    /// `use_original_dst`: also hand the connection to the listener bound (or not bound)
    /// to that destination. The `original_dst` listener filter alone does not: Istio's
    /// virtualInbound restores the destination but must never pass inbound traffic to an
    /// outbound `0.0.0.0_PORT` listener.
    pub use_original_dst: bool,
    /// `transparent`: IP_TRANSPARENT, for TPROXY interception.
    pub transparent: bool,
    pub inspectors: Inspectors,
    /// `connection_balance_config.exact_balance`: accepted connections go to the core with
    /// the fewest.
    pub exact_balance: bool,
    /// A hash of everything that needs a rebind when it changes.
    pub bind_key: String,
    /// `internal_listener`: reached only by this proxy's internal endpoints, never bound
    /// (its `address` is a placeholder), with what its listener filters restore.
    pub internal: Option<internal::Restore>,
}

impl Listener {
    /// A copy bound elsewhere (a port-0 listener keeps the port it was given).
    pub fn clone_with_address(&self, address: SocketAddr) -> Listener {
        Listener {
            name: self.name.clone(),
            address,
            inbound: self.inbound,
            ignore_global_conn_limit: self.ignore_global_conn_limit,
            stats: self.stats.clone(),
            chains: self.chains.clone(),
            bind_to_port: self.bind_to_port,
            restore_dst: self.restore_dst,
            use_original_dst: self.use_original_dst,
            transparent: self.transparent,
            inspectors: self.inspectors.clone(),
            exact_balance: self.exact_balance,
            bind_key: self.bind_key.clone(),
            internal: self.internal,
        }
    }
}

impl Listener {
    /// The connection managers of every chain.
    pub fn hcms(&self) -> impl Iterator<Item = &Arc<HttpConnectionManager>> {
        self.chains.filters().filter_map(|f| match f {
            NetworkFilter::Http(h) => Some(h),
            NetworkFilter::Tcp(_) => None,
        })
    }
}

/// Listener filters that read a connection's first bytes (`tls_inspector`,
/// `http_inspector`), each with the destination ports it is disabled for.
#[derive(Clone, Debug, Default)]
pub struct Inspectors {
    pub tls: Option<PortPredicate>,
    pub http: Option<PortPredicate>,
    /// `listener_filters_timeout` (`None`: wait as long as the client takes; Envoy's 0s).
    pub timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: on timeout, choose with what is known.
    pub continue_on_timeout: bool,
}

impl Inspectors {
    /// Whether any inspector runs for a connection to `port`.
    pub fn any_for(&self, port: u16) -> bool {
        self.tls_for(port) || self.http_for(port)
    }
    pub fn tls_for(&self, port: u16) -> bool {
        self.tls.as_ref().is_some_and(|p| !p.matches(port))
    }
    pub fn http_for(&self, port: u16) -> bool {
        self.http.as_ref().is_some_and(|p| !p.matches(port))
    }
}

/// `ListenerFilterChainMatchPredicate` (`filter_disabled`) on the destination port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortPredicate {
    Never,
    Any,
    /// `[start, end)`.
    Range(u16, u32),
    Or(Vec<PortPredicate>),
    And(Vec<PortPredicate>),
    Not(Box<PortPredicate>),
}

impl PortPredicate {
    pub fn matches(&self, port: u16) -> bool {
        match self {
            PortPredicate::Never => false,
            PortPredicate::Any => true,
            PortPredicate::Range(s, e) => port >= *s && u32::from(port) < *e,
            PortPredicate::Or(v) => v.iter().any(|p| p.matches(port)),
            PortPredicate::And(v) => v.iter().all(|p| p.matches(port)),
            PortPredicate::Not(p) => !p.matches(port),
        }
    }
}

/// The network filter that handles a chain's connections.
#[derive(Clone)]
pub enum NetworkFilter {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxy>),
}

/// Codec selection of a connection manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// HTTP/2 when the connection opens with its preface, HTTP/1.1 otherwise.
    Auto,
    Http1,
    Http2,
}

/// `http2_protocol_options` of a connection manager or a cluster, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    pub flood: FloodLimits,
}

/// Envoy's HTTP/2 flood bounds (`Http2ProtocolOptions`), with its defaults; see
/// `http::h2::flood`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    pub max_outbound_frames: u32,
    pub max_outbound_control_frames: u32,
    pub max_consecutive_empty_frames: u32,
    pub max_priority_frames_per_stream: u32,
    pub max_window_updates_per_data_frame_sent: u32,
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits {
            max_outbound_frames: 10_000,
            max_outbound_control_frames: 1_000,
            max_consecutive_empty_frames: 1,
            max_priority_frames_per_stream: 100,
            max_window_updates_per_data_frame_sent: 10,
        }
    }
}

impl Default for Http2Settings {
    /// Envoy's defaults are 2^31-1 streams and 256 MiB windows; these bound what one
    /// connection can make the proxy buffer (1 MiB per stream, 4 MiB per connection) and
    /// how many streams one client holds open.
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: 1024,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 4 << 20,
            flood: FloodLimits::default(),
        }
    }
}

/// What to do with header names containing underscores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreAction {
    Allow,
    RejectRequest,
    DropHeader,
}

/// Which ports are removed from Host before routing (and forwarding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    None,
    /// Only a port equal to the listener's.
    Matching,
    Any,
}

/// How the `server` response header is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

/// `envoy.filters.network.http_connection_manager`, validated.
pub struct HttpConnectionManager {
    /// Istio's `istio_authn` runs on the chain (`io.istio.peer_principal` is set).
    pub istio_authn: bool,
    /// An RBAC filter reads the peer certificate's identity.
    pub reads_identity: bool,
    pub stat_prefix: String,
    pub stats: Arc<Scope>,
    pub codec: Codec,
    pub http2: Http2Settings,
    pub routes: RouteSource,
    /// `http_filters` before the router.
    pub filters: filter::HttpFilters,
    pub access_logs: Vec<AccessLog>,
    /// What the access logs read that the request path keeps only for them.
    pub log_needs: access_log::LogNeeds,
    pub suppress_envoy_headers: bool,
    /// `http2.` stats (flood protection), shared by every connection manager.
    pub http2_stats: Arc<Scope>,
    pub use_remote_address: bool,
    /// `internal_address_config`: the addresses whose requests count as internal. Envoy
    /// 1.40's default is none.
    pub internal: Vec<crate::model::chain::Cidr>,
    pub xff_num_trusted_hops: u32,
    pub skip_xff_append: bool,
    pub via: Option<Arc<str>>,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub server_name: Arc<str>,
    pub server_header: ServerHeader,
    pub strip_port: StripPort,
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<Arc<str>>,
    /// `None` means disabled.
    pub idle_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub max_connection_duration: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub max_request_headers_bytes: usize,
    pub max_headers_count: usize,
    pub headers_with_underscores: UnderscoreAction,
    /// `upgrade_configs`: the listed upgrade types, lower-cased (`websocket`, `connect`),
    /// and whether each is enabled by default (a route may override that).
    pub upgrades: Vec<(Box<str>, bool)>,
    /// `normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`.
    pub path_normalization: path::Normalization,
    /// `tracing`: the sampling decision packed into `x-request-id` (no spans).
    pub tracing: Option<tracing::Tracing>,
    pub request_id: tracing::RequestIdConfig,
    /// `forward_client_cert_details`, `set_current_client_cert_details`.
    pub xfcc: (xfcc::ForwardClientCert, xfcc::CertDetails),
}

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
    /// Endpoints from EDS, under this service name.
    Eds,
    /// `ORIGINAL_DST`: the connection's original destination is the endpoint.
    OriginalDst,
}

/// Address families a DNS cluster resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

/// A cluster: upstream policy plus its current endpoints.
#[derive(Clone)]
pub struct Cluster {
    pub name: Arc<str>,
    pub stats: Arc<Scope>,
    /// `cluster.<name>.`'s update and membership stats (`ClusterUpdateStat`).
    pub update_stats: Arc<Scope>,
    pub discovery: Discovery,
    /// The EDS service name (`eds_cluster_config.service_name`, else the cluster name).
    pub eds_service: Option<Arc<str>>,
    /// The cluster asks for HTTP/2 upstream, with these settings.
    pub http2: Option<Http2Settings>,
    /// `use_downstream_protocol_config`: HTTP/2 only for HTTP/2 clients; HTTP/1.1 clients
    /// are forwarded over HTTP/1.1.
    pub http2_follows_downstream: bool,
    /// Unix socket (`pipe`) endpoints: used by the control thread's own gRPC clients;
    /// the data plane does not connect to them.
    pub unix_endpoints: Arc<[std::path::PathBuf]>,
    pub lb: LbPolicy,
    /// Slow start, the least-request bias and locality weighting.
    pub lb_tuning: LbTuning,
    /// `health_checks`: run by the control thread's health checker.
    pub health: Option<Arc<health::HealthCheck>>,
    /// `upstream_bind_config.source_address`: connections leave from here (Istio's
    /// inbound passthrough uses 127.0.0.6).
    pub bind_source: Option<SocketAddr>,
    /// `original_dst_lb_config` of an ORIGINAL_DST cluster.
    pub original_dst: OriginalDstConfig,
    pub connect_timeout: Duration,
    /// Idle pooled connections older than this are closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    /// `max_connection_duration`: a connection this old takes no new request and closes
    /// once idle (`upstream_cx_max_duration_reached`).
    pub max_connection_duration: Option<Duration>,
    /// `max_headers_count`: a response head with more headers is the upstream's protocol
    /// error.
    pub max_headers_count: usize,
    /// `upstream_connection_options.tcp_keepalive`: TCP keepalive on upstream sockets.
    pub tcp_keepalive: Option<socket2::TcpKeepalive>,
    pub breakers: Arc<breakers::Breakers>,
    /// A hash of the name: connection pools are per cluster, as Envoy's are.
    pub pool_id: u64,
    pub dns_family: DnsFamily,
    pub dns_refresh: Duration,
    /// `dns_jitter`: up to this much is added at random to each refresh.
    pub dns_jitter: Duration,
    /// Hosts to resolve (DNS clusters), as configured.
    pub dns_hosts: Arc<[DnsHost]>,
    /// The endpoints in use now.
    pub endpoints: Arc<[Endpoint]>,
    /// `transport_socket`: TLS to every endpoint (`None`: plaintext), unless a
    /// `transport_socket_matches` entry picks another for an endpoint.
    pub tls: Option<Arc<tls::UpstreamTls>>,
    /// Its transport socket is `internal_upstream`, which passes this to internal
    /// endpoints' connections.
    pub passthrough: Option<Arc<internal::Passthrough>>,
    /// `transport_socket_matches`, in order (Istio's `tlsMode-istio`, `tlsMode-disabled`).
    pub tls_matches: Arc<[tls::TlsMatch]>,
    /// The service it serves (`filter_metadata.istio.services[0]`), for `istio.stats`.
    pub istio_service: Option<Arc<istio::IstioService>>,
    /// Istio's TCP metadata exchange as a cluster filter (upstream side).
    pub tcp_exchange: Option<Arc<istio::TcpExchange>>,
    /// `outlier_detection` (`None`: no detector, as in Envoy).
    pub outlier: Option<Arc<outlier::OutlierConfig>>,
    /// `common_lb_config.healthy_panic_threshold` (percent, 50 unset): below this share
    /// of healthy endpoints, all of them take traffic.
    pub panic_threshold: f64,
    /// Its `metadata.filter_metadata`, kept encoded (tracing's `cluster` custom tags).
    pub metadata: Option<metadata::Packed>,
}

/// One metadata field as `transport_socket_matches` compare it: (key, value as text).
pub type Label = (Box<str>, Box<str>);

/// An endpoint's `envoy.transport_socket_match` metadata (Istio: `tlsMode: istio`).
pub type SocketLabels = Arc<[Label]>;

/// A configured DNS name of a STRICT_DNS/LOGICAL_DNS cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub labels: SocketLabels,
    /// Its endpoint's `metadata`, kept encoded.
    pub metadata: Option<metadata::Packed>,
}

impl Cluster {
    /// A copy of this cluster with other endpoints (a DNS refresh).
    pub fn with_endpoints(&self, endpoints: Arc<[Endpoint]>) -> Cluster {
        Cluster {
            endpoints,
            ..self.clone()
        }
    }

    /// The TLS settings for connections to `ep` (`None`: plaintext): the first
    /// `transport_socket_matches` entry its labels satisfy, else `transport_socket`.
    /// The `internal_upstream` passthrough of the transport socket `ep` is reached with.
    pub fn passthrough_for(&self, ep: &Endpoint) -> Option<&Arc<internal::Passthrough>> {
        match self.tls_matches.iter().find(|m| m.matches(&ep.labels)) {
            Some(m) => m.passthrough.as_ref(),
            None => self.passthrough.as_ref(),
        }
    }

    pub fn tls_for(&self, ep: &Endpoint) -> Option<&Arc<tls::UpstreamTls>> {
        match self.tls_matches.iter().find(|m| m.matches(&ep.labels)) {
            Some(m) => m.tls.as_ref(),
            None => self.tls.as_ref(),
        }
    }

    /// The pool identity of connections to `ep`: 0 for plaintext, else the TLS settings'.
    pub fn tls_key(&self, ep: &Endpoint) -> u64 {
        self.tls_for(ep).map_or(0, |t| t.key)
    }

    /// Which pooled connections a request to `ep` may use: this cluster's, with the same
    /// TLS identity (stable across snapshots, so a new one keeps warm connections).
    #[inline]
    pub fn pool_key(&self, ep: &Endpoint) -> u64 {
        self.pool_id ^ self.tls_key(ep).rotate_left(17)
    }
}
