//! Opening upstream connections: the circuit breakers' places, TCP within the connect
//! timeout, TLS, and HTTP/2's handshake and driver task.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::io::MaybeTls;
use crate::model::breakers::{Permit, Resource};
use crate::model::{Cluster, Endpoint};
use crate::stats::ClusterStat;
use crate::tls::UpIo;

use super::{h2pool, ConnectError};

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
/// under the cluster's `max_connections` (the returned permit). Counted in
/// `upstream_cx_total` once the attempt starts, whatever becomes of it (as Envoy counts a
/// connection it creates), and in `upstream_cx_active` once made (the caller releases
/// that).
async fn open(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    wait: bool,
    objects: Vec<crate::model::filter_state::Object>,
) -> Result<(TcpStream, Option<Permit>), ConnectError> {
    let permit = host_permit(core, cluster, ep, wait).await?;
    let stats = cluster.stats.core(core);
    stats.inc(ClusterStat::UpstreamCxTotal as usize);
    let started = Instant::now();
    if ep.internal.is_some() {
        // An internal listener on this core: made at once, or refused.
        return match super::internal::connect(core, cluster, ep, objects) {
            Ok(s) => {
                stats.record(
                    crate::stats::ClusterHistogram::UpstreamCxConnectMs as usize,
                    0,
                );
                stats.inc(ClusterStat::UpstreamCxActive as usize);
                Ok((s, permit))
            }
            Err(e) => {
                stats.inc(ClusterStat::UpstreamCxConnectFail as usize);
                Err(ConnectError::Failed(e))
            }
        };
    }
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
    open_io_sharing(core, cluster, ep, wait, Vec::new()).await
}

/// As [`open_io`], handing an internal endpoint's connection the filter state objects the
/// opener shares with it (`objects`; nothing reaches any other kind of endpoint).
pub async fn open_io_sharing(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    wait: bool,
    objects: Vec<crate::model::filter_state::Object>,
) -> Result<(UpIo, Option<Permit>), ConnectError> {
    let (stream, permit) = open(core, cluster, ep, wait, objects).await?;
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

/// Opens a new HTTP/2 connection from core `core` to `ep` and starts driving it on this
/// core; it joins the core's HTTP/2 pool.
pub async fn connect_h2(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    settings: crate::model::Http2Settings,
) -> Result<h2pool::H2Conn, ConnectError> {
    let opened = open(core, cluster, ep, true, Vec::new()).await;
    let stats = cluster.stats.core(core);
    // Counted with the attempt, as upstream_cx_total is; not when a breaker refused it.
    if !matches!(opened, Err(ConnectError::Overflow)) {
        stats.inc(ClusterStat::UpstreamCxHttp2Total as usize);
    }
    let (stream, permit) = opened?;
    let guard = h2pool::CxGuard {
        stats: cluster.stats.clone(),
        core,
        _permit: permit,
    };
    let tls_key = cluster.pool_key(ep);
    let local = crate::io::ip_local_addr(&stream).map(std::rc::Rc::new);
    let conn = match cluster.tls_for(ep) {
        None => {
            let io = stream
                .try_into_poll_io()
                .map_err(|(e, _)| ConnectError::Failed(e))?;
            h2_handshake(cluster, ep, settings, crate::io::ReadAhead::new(io), guard).await?
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
        max_concurrent: settings.max_concurrent_streams,
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
    let (io, corked) = crate::io::cork::cork(io);
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
    let mut conn = h2pool::H2Conn::new(send, ep.address);
    conn.state = std::rc::Rc::new(h2pool::H2State::new(
        cluster.stats.clone(),
        cluster.max_connection_duration,
        cluster.idle_timeout,
    ));
    let state = conn.state.clone();
    monoio::spawn(async move {
        let _guard = guard;
        if let Err(e) = corked.poll(connection).await {
            tracing::debug!("upstream HTTP/2 connection ended: {e}");
        }
        state.closed.set(true);
    });
    Ok(conn)
}
