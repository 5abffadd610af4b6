//! One core's HTTP/1.1 keep-alive pools: a connection goes back after a clean exchange
//! and out again to the next request for the same endpoint and TLS identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::{idle_state, IdleState, MaybeTls};
use crate::model::breakers::Permit;
use crate::model::{Cluster, Endpoint};
use crate::stats::{ClusterStat, Scope};
use crate::tls::UpIo;

use super::{open_io, ConnectError, Upstreams};

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

impl Upstreams {
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
