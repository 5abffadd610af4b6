//! One core's view of its upstreams: load-balancer state and keep-alive connection pools.
//! Owned by the core (`Rc<RefCell<..>>` inside `CoreCtx`); nothing here is shared.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use rustc_hash::FxHashMap;

use crate::io::{idle_state, IdleState, MaybeTls};
use crate::model::breakers::{Permit, Resource};
use crate::model::{Cluster, Endpoint};
use crate::stats::{ClusterStat, Scope};
use crate::tls::UpIo;

pub use error::{transport_failure, ConnectError};

mod error;
pub mod h2pool;
pub mod hash;
pub mod outlier;
mod pick;

use pick::LbState;

/// An upstream HTTP/1.1 connection with its read buffer.
pub struct Conn {
    pub stream: UpIo,
    pub addr: SocketAddr,
    /// This side's address (`%UPSTREAM_LOCAL_ADDRESS%`), boxed: a connection is moved
    /// several times per request, so it stays small.
    pub local: Option<Box<SocketAddr>>,
    /// Its pool identity ([`Cluster::pool_key`]): the pool never hands a connection to a
    /// request for another cluster or that asks for other TLS settings.
    pub tls_key: u64,
    pub buf: Vec<u8>,
    pub requests: u32,
    pub stats: Arc<Scope>,
    core: usize,
    idle_since: Instant,
    /// Its place under the cluster's `max_connections`, when that is limited.
    permit: Option<Permit>,
    /// Both ends' identities, on a TLS connection (`istio.stats`).
    pub principals: Option<Arc<crate::model::tls::UpstreamPrincipals>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let c = self.stats.core(self.core);
        c.dec(ClusterStat::UpstreamCxActive as usize);
        c.inc(ClusterStat::UpstreamCxDestroy as usize);
    }
}

/// Upstream state of one core.
pub struct Upstreams {
    core: usize,
    pools: FxHashMap<(SocketAddr, u64), Vec<Conn>>,
    lb: FxHashMap<Arc<str>, LbState>,
    /// HTTP/2 connections, shared by concurrent streams.
    pub h2: h2pool::H2Pool,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Outlier detection's counts and the ejected hosts, as this core knows them.
    pub outlier: outlier::CoreOutlier,
    /// Scratch for a pick over several priorities (no allocation per pick).
    runs: Vec<pick::Run>,
    /// Scratch for locality weighting: the chosen priority's localities.
    groups: Vec<pick::Group>,
}

impl Upstreams {
    pub fn new(core: usize) -> Self {
        Upstreams {
            core,
            pools: FxHashMap::default(),
            lb: FxHashMap::default(),
            h2: h2pool::H2Pool::default(),
            max_idle_per_endpoint: 1024,
            outlier: outlier::CoreOutlier::default(),
            runs: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Marks a request to `addr` of `cluster` as started (least-request bookkeeping).
    pub fn request_started(&mut self, cluster: &Arc<str>, addr: SocketAddr) {
        if let Some(s) = self.lb.get_mut(cluster) {
            *s.active.entry(addr).or_default() += 1;
        }
    }

    /// Marks a request as finished.
    pub fn request_finished(&mut self, cluster: &Arc<str>, addr: SocketAddr) {
        if let Some(n) = self
            .lb
            .get_mut(cluster)
            .and_then(|s| s.active.get_mut(&addr))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// An idle connection to `addr` with TLS identity `tls_key`, if the pool has one.
    /// With `verify`, one non-blocking peek makes sure the upstream has not closed it (for
    /// requests that cannot be retried on a fresh connection); otherwise a stale
    /// connection is caught by the retry.
    pub fn checkout(
        &mut self,
        addr: SocketAddr,
        tls_key: u64,
        idle_timeout: Option<Duration>,
        verify: bool,
    ) -> Option<Conn> {
        let pool = self.pools.get_mut(&(addr, tls_key))?;
        while let Some(conn) = pool.pop() {
            let expired = idle_timeout.is_some_and(|t| conn.idle_since.elapsed() >= t);
            if expired {
                conn.stats
                    .core(self.core)
                    .inc(ClusterStat::UpstreamCxIdleTimeout as usize);
                continue;
            }
            if !verify || conn.idle_state() == IdleState::Open {
                return Some(conn);
            }
            conn.stats
                .core(self.core)
                .inc(ClusterStat::UpstreamCxDestroyRemote as usize);
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly. When requests wait for a
    /// connection of its cluster (at `max_connections`), it is closed instead, which lets
    /// one of them open its own on whichever core it waits.
    pub fn checkin(&mut self, mut conn: Conn) {
        if conn.permit.as_ref().is_some_and(Permit::has_waiters) {
            return;
        }
        conn.idle_since = Instant::now();
        conn.buf.clear();
        let pool = self.pools.entry((conn.addr, conn.tls_key)).or_default();
        if pool.len() < self.max_idle_per_endpoint {
            pool.push(conn);
        } else {
            conn.stats
                .core(self.core)
                .inc(ClusterStat::UpstreamCxPoolOverflow as usize);
        }
    }

    /// Idle connections held for `addr`, of any TLS identity (tests and admin).
    pub fn idle(&self, addr: SocketAddr) -> usize {
        self.pools
            .iter()
            .filter(|((a, _), _)| *a == addr)
            .map(|(_, v)| v.len())
            .sum()
    }
}

impl Conn {
    /// Whether the idle connection is still usable: one peek at its socket. Over TLS a
    /// readable byte is a close_notify or a record nobody asked for: not reusable either.
    fn idle_state(&self) -> IdleState {
        match &self.stream {
            MaybeTls::Plain(s) => idle_state(s),
            MaybeTls::Tls(t) => idle_state(t.0.get_ref().0),
        }
    }
}

/// Connects to `addr`, from `source` when given.
pub async fn connect_stream(addr: SocketAddr, source: Option<SocketAddr>) -> io::Result<TcpStream> {
    let Some(src) = source else {
        return TcpStream::connect_addr(addr).await;
    };
    let stream = TcpStream::from_std(crate::io::start_connect(addr, Some(src))?)?;
    stream.writable(false).await?;
    match crate::io::take_error(&stream)? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

/// A place under the cluster's `max_connections` and, with `per_host_thresholds`, under
/// `ep`'s own: at the host's limit an HTTP request waits as a pending request for one of
/// the host's connections to close (the cluster's place given back meanwhile), within the
/// connect timeout, as at the cluster's; a TCP proxy does not wait.
async fn host_permit(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    wait: bool,
) -> Result<Option<Permit>, ConnectError> {
    let Some((limit, limits)) = &cluster.breakers.per_host else {
        return connection_permit(core, cluster, wait).await;
    };
    let stats = cluster.stats.core(core);
    let deadline = Instant::now() + cluster.connect_timeout;
    let mut pending = None;
    loop {
        let p = connection_permit(core, cluster, wait).await?;
        let count = match limits.take(ep.address, *limit) {
            Ok(h) => return Ok(Some(Permit::with_host(p, h))),
            Err(count) => count,
        };
        drop(p);
        if pending.is_none() {
            stats.inc(ClusterStat::UpstreamCxOverflow as usize);
            if !wait {
                return Err(ConnectError::Overflow);
            }
            match cluster.breakers.acquire(Resource::Pending) {
                Ok(p) => pending = Some(p),
                Err(()) => {
                    stats.inc(ClusterStat::UpstreamRqPendingOverflow as usize);
                    return Err(ConnectError::Overflow);
                }
            }
        }
        let _waiting = count.wait();
        let released = count.released.notified();
        if let Ok(h) = limits.take(ep.address, *limit) {
            // Freed meanwhile: the cluster's place is taken again at the loop's top.
            drop(h_back(h));
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if monoio::time::timeout(left, released).await.is_err() {
            stats.inc(ClusterStat::UpstreamRqPendingOverflow as usize);
            return Err(ConnectError::Overflow);
        }
    }
}

/// Gives back a host place taken only to test for room.
fn h_back(h: std::sync::Arc<crate::model::breakers::HostCount>) -> Permit {
    Permit::with_host(None, h)
}

/// A place under the cluster's `max_connections`. At the limit an HTTP request waits as a
/// pending request (under `max_pending_requests`; `upstream_cx_overflow`) for a connection
/// of the cluster to close, within the connect timeout; a TCP proxy (`wait` false) does
/// not wait. Past either limit: [`ConnectError::Overflow`].
async fn connection_permit(
    core: usize,
    cluster: &Cluster,
    wait: bool,
) -> Result<Option<Permit>, ConnectError> {
    let b = &cluster.breakers;
    if let Ok(p) = b.acquire(Resource::Connections) {
        return Ok(p);
    }
    let stats = cluster.stats.core(core);
    if !wait {
        stats.inc(ClusterStat::UpstreamCxOverflow as usize);
        return Err(ConnectError::Overflow);
    }
    let Ok(_pending) = b.acquire(Resource::Pending) else {
        stats.inc(ClusterStat::UpstreamRqPendingOverflow as usize);
        return Err(ConnectError::Overflow);
    };
    stats.inc(ClusterStat::UpstreamCxOverflow as usize);
    let Some(counts) = b.counts.clone() else {
        return Ok(None);
    };
    let _waiting = counts.wait();
    let deadline = Instant::now() + cluster.connect_timeout;
    loop {
        let released = counts.released.notified();
        if let Ok(p) = b.acquire(Resource::Connections) {
            return Ok(p);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if monoio::time::timeout(left, released).await.is_err() {
            stats.inc(ClusterStat::UpstreamRqPendingOverflow as usize);
            return Err(ConnectError::Overflow);
        }
    }
}

/// Opens a TCP connection from core `core` to `ep` within the cluster's connect timeout,
/// counted in `upstream_cx_total` and `upstream_cx_active` (the caller releases the latter)
/// and under the cluster's `max_connections` (the returned permit).
async fn open(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    wait: bool,
) -> Result<(TcpStream, Option<Permit>), ConnectError> {
    let permit = host_permit(core, cluster, ep, wait).await?;
    let stats = cluster.stats.core(core);
    let started = Instant::now();
    let connect = connect_stream(ep.address, cluster.bind_source);
    let stream = match monoio::time::timeout(cluster.connect_timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, "connect failed: {e}");
            stats.inc(ClusterStat::UpstreamCxConnectFail as usize);
            return Err(ConnectError::Failed(e));
        }
        Err(_) => {
            stats.inc(ClusterStat::UpstreamCxConnectFail as usize);
            stats.inc(ClusterStat::UpstreamCxConnectTimeout as usize);
            return Err(ConnectError::Timeout);
        }
    };
    let _ = stream.set_nodelay(true);
    if let Some(k) = &cluster.tcp_keepalive {
        if let Err(e) = crate::io::set_keepalive(&stream, k) {
            tracing::debug!(cluster = %cluster.name, "tcp_keepalive: {e}");
        }
    }
    stats.record(
        crate::stats::ClusterHistogram::UpstreamCxConnectMs as usize,
        started.elapsed().as_millis() as u64,
    );
    stats.inc(ClusterStat::UpstreamCxTotal as usize);
    stats.inc(ClusterStat::UpstreamCxActive as usize);
    Ok((stream, permit))
}

/// Opens a connection to `ep` for HTTP/1.1 or opaque bytes: TCP, then TLS when the
/// cluster's transport socket for `ep` asks for it. Counted as [`open`] counts; a failed
/// handshake releases `upstream_cx_active` again.
pub async fn open_io(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    wait: bool,
) -> Result<(UpIo, Option<Permit>), ConnectError> {
    let (stream, permit) = open(core, cluster, ep, wait).await?;
    let Some(tls) = cluster.tls_for(ep) else {
        return Ok((MaybeTls::Plain(stream), permit));
    };
    let stats = cluster.stats.core(core);
    match crate::tls::connect(tls, false, stream, ep, cluster.connect_timeout, stats).await {
        Ok(s) => Ok((MaybeTls::Tls(Box::new(crate::io::RentIo(s))), permit)),
        Err(r) => {
            stats.dec(ClusterStat::UpstreamCxActive as usize);
            stats.inc(ClusterStat::UpstreamCxConnectFail as usize);
            Err(ConnectError::Tls(r))
        }
    }
}

/// Opens a new HTTP/1.1 connection from core `core` to `ep`.
pub async fn connect(core: usize, cluster: &Cluster, ep: &Endpoint) -> Result<Conn, ConnectError> {
    let (stream, permit) = open_io(core, cluster, ep, true).await?;
    cluster
        .stats
        .core(core)
        .inc(ClusterStat::UpstreamCxHttp1Total as usize);
    let principals = match (&stream, cluster.tls_for(ep)) {
        (MaybeTls::Tls(s), Some(tls)) => crate::tls::upstream_principals(s.0.get_ref().1, tls),
        _ => None,
    };
    let local = match &stream {
        MaybeTls::Plain(s) => s.local_addr().ok(),
        MaybeTls::Tls(t) => t.0.get_ref().0.local_addr().ok(),
    }
    .map(Box::new);
    Ok(Conn {
        principals,
        local,
        stream,
        tls_key: cluster.pool_key(ep),
        addr: ep.address,
        buf: Vec::with_capacity(16 * 1024),
        requests: 0,
        stats: cluster.stats.clone(),
        core,
        idle_since: Instant::now(),
        permit,
    })
}

/// Opens a new HTTP/2 connection from core `core` to `ep` and starts driving it on this
/// core; it joins the core's HTTP/2 pool.
pub async fn connect_h2(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    settings: crate::model::Http2Settings,
) -> Result<h2pool::H2Conn, ConnectError> {
    let (stream, permit) = open(core, cluster, ep, true).await?;
    let stats = cluster.stats.core(core);
    stats.inc(ClusterStat::UpstreamCxHttp2Total as usize);
    let guard = h2pool::CxGuard {
        stats: cluster.stats.clone(),
        core,
        _permit: permit,
    };
    let tls_key = cluster.pool_key(ep);
    let local = stream.local_addr().ok().map(std::rc::Rc::new);
    let conn = match cluster.tls_for(ep) {
        None => {
            let io = stream
                .try_into_poll_io()
                .map_err(|(e, _)| ConnectError::Failed(e))?;
            h2_handshake(cluster, ep, settings, io, guard).await?
        }
        Some(tls) => {
            let hs = crate::tls::connect(tls, true, stream, ep, cluster.connect_timeout, stats);
            match hs.await {
                Ok(io) => {
                    let principals = crate::tls::upstream_principals(io.get_ref().1, tls);
                    h2pool::H2Conn {
                        principals,
                        ..h2_handshake(cluster, ep, settings, io, guard).await?
                    }
                }
                Err(r) => {
                    stats.inc(ClusterStat::UpstreamCxConnectFail as usize);
                    return Err(ConnectError::Tls(r));
                }
            }
        }
    };
    Ok(h2pool::H2Conn {
        tls_key,
        local,
        max_streams: cluster.max_requests_per_connection,
        ..conn
    })
}

/// The HTTP/2 preface and settings exchange over `io`, then the connection's driver task
/// on this core (it holds `guard` until the connection ends).
async fn h2_handshake<IO>(
    cluster: &Cluster,
    ep: &Endpoint,
    settings: crate::model::Http2Settings,
    io: IO,
    guard: h2pool::CxGuard,
) -> Result<h2pool::H2Conn, ConnectError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let stats = cluster.stats.core(guard.core);
    let handshake = h2::client::Builder::new()
        .initial_window_size(settings.initial_stream_window_size)
        .initial_connection_window_size(settings.initial_connection_window_size)
        .max_header_list_size(1 << 20)
        .handshake::<_, bytes::Bytes>(io);
    let (send, connection) = match monoio::time::timeout(cluster.connect_timeout, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.address, "HTTP/2 handshake failed: {e}");
            return Err(ConnectError::Failed(io::Error::other(e)));
        }
        Err(_) => {
            stats.inc(ClusterStat::UpstreamCxConnectTimeout as usize);
            return Err(ConnectError::Timeout);
        }
    };
    let conn = h2pool::H2Conn::new(send, ep.address);
    let state = conn.state.clone();
    monoio::spawn(async move {
        let _guard = guard;
        if let Err(e) = connection.await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
        state.closed.set(true);
    });
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Discovery, DnsFamily, LbPolicy};
    use crate::stats::Store;

    fn cluster(lb: LbPolicy, weights: &[u32]) -> Cluster {
        let store = Store::new(1);
        Cluster {
            name: "c".into(),
            stats: store.scope::<ClusterStat>("cluster.c."),
            grpc_stats: store.scope::<crate::stats::GrpcStat>("cluster.c.grpc."),
            discovery: Discovery::Static,
            eds_service: None,
            http2: None,
            http2_follows_downstream: false,
            unix_endpoints: Arc::new([]),
            bind_source: None,
            lb,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: None,
            max_requests_per_connection: None,
            tcp_keepalive: None,
            pool_id: 0,
            breakers: Arc::new(crate::model::breakers::Breakers {
                default: Default::default(),
                high: Default::default(),
                counts: None,
                stats: [
                    store.scope::<crate::stats::BreakerStat>("cluster.c.circuit_breakers.default."),
                    store.scope::<crate::stats::BreakerStat>("cluster.c.circuit_breakers.high."),
                ],
                remaining: [None, None],
                per_host: None,
            }),
            dns_family: DnsFamily::Auto,
            dns_refresh: Duration::from_secs(5),
            dns_jitter: Duration::ZERO,
            dns_hosts: Arc::from(vec![]),
            tls: None,
            tls_matches: Arc::new([]),
            istio_service: None,
            tcp_exchange: None,
            outlier: None,
            panic_threshold: 50.0,
            lb_tuning: Default::default(),
            health: None,
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    hostname: "h".into(),
                    weight: w,
                    healthy: true,
                    labels: Arc::new([]),
                    workload: None,
                    priority: 0,
                    locality: None,
                    overprovisioning: crate::model::DEFAULT_OVERPROVISIONING,
                    group: 0,
                    locality_weight: 0,
                })
                .collect(),
        }
    }

    fn counts(u: &mut Upstreams, c: &Cluster, n: usize) -> Vec<usize> {
        let mut out = vec![0; c.endpoints.len()];
        for _ in 0..n {
            let e = u.pick(c).unwrap();
            out[(e.address.port() - 1000) as usize] += 1;
        }
        out
    }

    #[test]
    fn round_robin_is_even_and_weighted_is_proportional() {
        let mut u = Upstreams::new(0);
        assert_eq!(
            counts(&mut u, &cluster(LbPolicy::RoundRobin, &[1, 1, 1]), 300),
            vec![100; 3]
        );
        assert_eq!(
            counts(&mut u, &cluster(LbPolicy::RoundRobin, &[1, 3]), 400),
            vec![100, 300]
        );
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let mut u = Upstreams::new(0);
        let c = cluster(LbPolicy::LeastRequest { choice_count: 2 }, &[1, 1]);
        u.pick(&c);
        for _ in 0..10 {
            u.request_started(&c.name, c.endpoints[0].address);
        }
        // Two choices drawn with replacement (Envoy's): the busy one wins only when both
        // draws are it, a quarter of the picks. 2,000 picks: 500 expected, bounds 5 standard
        // deviations (19.4) away, so the test does not flake.
        let n = counts(&mut u, &c, 2000);
        assert!((400..=600).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn unhealthy_endpoints_are_skipped() {
        let mut u = Upstreams::new(0);
        let mut c = cluster(LbPolicy::Random, &[1, 1]);
        let mut eps: Vec<Endpoint> = c.endpoints.to_vec();
        eps[0].healthy = false;
        c.endpoints = eps.into();
        assert_eq!(counts(&mut u, &c, 50), vec![0, 50]);
        eps = c.endpoints.to_vec();
        eps[1].healthy = false;
        c.endpoints = eps.into();
        // None healthy: Envoy's panic mode (below 50%) uses them all.
        assert_eq!(counts(&mut u, &c, 50).iter().sum::<usize>(), 50);
        // Without panic mode, nothing can be picked.
        c.panic_threshold = 0.0;
        assert!(u.pick(&c).is_none());
    }
}
