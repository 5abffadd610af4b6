//! `envoy.filters.network.tcp_proxy`, validated.

use std::sync::Arc;
use std::time::Duration;

use crate::stats::Scope;

/// `envoy.filters.network.tcp_proxy`, validated.
pub struct TcpProxy {
    pub stat_prefix: String,
    pub stats: Arc<Scope>,
    /// Cluster names with weights (one entry with weight 1 for `cluster`).
    pub clusters: Vec<(Arc<str>, u32)>,
    /// Both directions quiet this long closes the connection (`None`: never). Envoy's
    /// default is one hour.
    pub idle_timeout: Option<Duration>,
    /// Connect attempts before giving up (`max_connect_attempts`, default 1).
    pub max_connect_attempts: u32,
    pub max_downstream_connection_duration: Option<Duration>,
    /// Istio's TCP metadata exchange before it on the chain.
    pub exchange: Option<Arc<super::istio::TcpExchange>>,
    /// Istio's network `istio.stats` before it on the chain (`istio_tcp_*`).
    pub istio: Option<Arc<super::istio::IstioStats>>,
    /// `istio_authn` runs on the chain.
    pub istio_authn: bool,
    /// One line per connection, when it ends.
    pub access_logs: Vec<super::AccessLog>,
    pub log_needs: super::access_log::LogNeeds,
    /// `hash_policy`: a consistent-hash cluster's key.
    pub hash: Option<TcpHash>,
    /// `tunneling_config`: the bytes go inside an HTTP CONNECT (or POST) stream to the
    /// cluster's endpoint (Istio's HBONE), not on a connection of their own.
    pub tunneling: Option<Arc<Tunneling>>,
}

/// How the TCP proxy tunnels over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunneling {
    /// The request's authority, formatted over the connection.
    pub hostname: super::format::Format,
    /// `use_post`: POST to `post_path` instead of CONNECT.
    pub post_path: Option<Box<str>>,
    /// `headers_to_add`, formatted over the connection.
    pub headers: super::headers::HeaderMods,
}

/// What the TCP proxy's `hash_policy` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpHash {
    /// The client's address (Istio's `useSourceIp` for TCP services).
    SourceIp,
    /// The connection's filter state object, when it is hashable.
    FilterState(Box<str>),
}

impl TcpProxy {
    /// The cluster for one connection.
    pub fn pick(&self, r: u32) -> &Arc<str> {
        if let [(c, _)] = self.clusters.as_slice() {
            return c;
        }
        let total: u64 = self.clusters.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut x = u64::from(r) % total.max(1);
        for (c, w) in &self.clusters {
            if x < u64::from(*w) {
                return c;
            }
            x -= u64::from(*w);
        }
        &self.clusters[0].0
    }
}
