//! Ringside's validated, immutable configuration: the `Snapshot` every core reads.
//!
//! Built only by `convert` (from the bootstrap today, from xDS later) and published whole
//! through [`SharedSnapshot`]. Parts sit behind `Arc` so that a DNS refresh or a single
//! resource change rebuilds pointers, not tables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

pub mod convert;
pub mod format;
pub mod headers;
pub mod route;

pub use convert::ConvertError;

use crate::stats::Scope;

/// Everything a core needs to serve, at one version.
pub struct Snapshot {
    /// Bumped on every publish.
    pub version: u64,
    /// When this version was built.
    pub built_at: SystemTime,
    pub listeners: Vec<Arc<Listener>>,
    /// Clusters in a stable order; routes refer to them by index.
    pub clusters: Vec<Arc<Cluster>>,
    pub cluster_index: HashMap<Arc<str>, usize>,
    /// The admin listener's address, if any.
    pub admin: Option<SocketAddr>,
    /// The bootstrap as given (for `/config_dump`).
    pub bootstrap: Arc<crate::proto::envoy::config::bootstrap::v3::Bootstrap>,
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
}

/// The current snapshot, swapped whole.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// A listener: one address, one network filter chain.
pub struct Listener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub stats: Arc<Scope>,
    pub filter: NetworkFilter,
    /// `connection_balance_config.exact_balance`: accepted connections go to the core with
    /// the fewest.
    pub exact_balance: bool,
    /// A hash of everything that needs a rebind when it changes.
    pub bind_key: String,
}

/// The network filter that handles a listener's connections.
pub enum NetworkFilter {
    Http(Arc<HttpConnectionManager>),
}

/// Codec selection of a connection manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
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
    pub stat_prefix: String,
    pub stats: Arc<Scope>,
    pub codec: Codec,
    pub routes: Arc<route::RouteTable>,
    pub access_logs: Vec<AccessLog>,
    pub suppress_envoy_headers: bool,
    pub use_remote_address: bool,
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
}

/// Where an access log line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Stdout,
    Stderr,
}

/// One configured access logger.
pub struct AccessLog {
    pub sink: LogSink,
    pub format: Arc<format::Format>,
}

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    LeastRequest { choice_count: u32 },
}

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    Static,
    StrictDns,
    LogicalDns,
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
pub struct Cluster {
    pub name: Arc<str>,
    pub stats: Arc<Scope>,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    /// Idle pooled connections older than this are closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub dns_family: DnsFamily,
    pub dns_refresh: Duration,
    /// Hosts to resolve (DNS clusters), as configured.
    pub dns_hosts: Arc<[DnsHost]>,
    /// The endpoints in use now.
    pub endpoints: Arc<[Endpoint]>,
}

/// A configured DNS name of a STRICT_DNS/LOGICAL_DNS cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

/// One upstream host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The name it was resolved from (for `auto_host_rewrite`), or its address.
    pub hostname: Arc<str>,
    pub weight: u32,
    pub healthy: bool,
}

impl Cluster {
    /// A copy of this cluster with other endpoints (a DNS refresh).
    pub fn with_endpoints(&self, endpoints: Arc<[Endpoint]>) -> Cluster {
        Cluster {
            name: self.name.clone(),
            stats: self.stats.clone(),
            discovery: self.discovery,
            lb: self.lb,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_requests_per_connection: self.max_requests_per_connection,
            dns_family: self.dns_family,
            dns_refresh: self.dns_refresh,
            dns_hosts: self.dns_hosts.clone(),
            endpoints,
        }
    }
}
