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

/// An upstream HTTP/1.1 connection with its read buffer, boxed: a connection is moved
/// several times per request (out of the pool, through the request's futures, back in),
/// and moving a pointer costs nothing where moving the state was a `memcpy` each time.
pub struct Conn(Box<ConnState>);

impl std::ops::Deref for Conn {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.0
    }
}

/// What an upstream HTTP/1.1 connection holds.
pub struct ConnState {
    pub stream: UpIo,
    pub addr: SocketAddr,
    /// This side's address (`%UPSTREAM_LOCAL_ADDRESS%`).
    pub local: Option<Box<SocketAddr>>,
    /// Its pool identity ([`Cluster::pool_key`]): the pool never hands a connection to a
    /// request for another cluster or that asks for other TLS settings.
    pub tls_key: u64,
    pub buf: Vec<u8>,
    pub requests: u32,
    pub stats: Arc<Scope>,
    core: usize,
    /// When its idle time runs out (its cluster's `idle_timeout` after it went back to the
    /// pool; computed then, so a checkout compares instants only).
    idle_until: Option<Instant>,
    /// How long it may serve.
    limits: Limits,
    /// Its place under the cluster's `max_connections`, when that is limited.
    permit: Option<Permit>,
    /// Both ends' identities, on a TLS connection (`istio.stats`).
    pub principals: Option<Arc<crate::model::tls::UpstreamPrincipals>>,
}

/// A connection's limits, from its cluster as it was when the connection opened.
struct Limits {
    /// `idle_timeout`.
    idle_timeout: Option<Duration>,
    /// When `max_connection_duration` ends its use.
    expires: Option<Instant>,
}

impl Drop for ConnState {
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
    /// `now`: a recent instant (the request's start, where it was read), for the idle
    /// and age limits; none reads the clock.
    pub fn checkout(
        &mut self,
        addr: SocketAddr,
        tls_key: u64,
        verify: bool,
        now: Option<Instant>,
    ) -> Option<Conn> {
        let pool = self.pools.get_mut(&(addr, tls_key))?;
        if pool.is_empty() {
            return None;
        }
        let now = now.unwrap_or_else(Instant::now);
        while let Some(conn) = pool.pop() {
            if let Some(why) = conn.spent(now) {
                conn.stats.core(self.core).inc(why as usize);
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
    /// `now`: when its exchange ended.
    pub fn checkin(&mut self, mut conn: Conn, now: Instant) {
        if conn.permit.as_ref().is_some_and(Permit::has_waiters) {
            return;
        }
        conn.idle_until = conn.limits.idle_timeout.and_then(|t| now.checked_add(t));
        if conn.limits.expires.is_some_and(|e| now >= e) {
            conn.stats
                .core(self.core)
                .inc(ClusterStat::UpstreamCxMaxDurationReached as usize);
            return;
        }
        conn.buf.clear();
        let pool = self.pools.entry((conn.addr, conn.tls_key)).or_default();
        if pool.len() < self.max_idle_per_endpoint {
            pool.push(conn);
            self.sweeper.wake();
        } else {
            conn.stats
                .core(self.core)
                .inc(ClusterStat::UpstreamCxPoolOverflow as usize);
        }
    }

    /// Closes the idle connections past their cluster's `idle_timeout` or
    /// `max_connection_duration`, and lets go of HTTP/2 connections likewise: what the
    /// core's sweep does each tick, so that a connection no request asks for again still
    /// closes in time (within one tick; a checkout checks exactly).
    pub fn sweep(&mut self, now: Instant) {
        let core = self.core;
        self.pools.retain(|_, pool| {
            pool.retain(|conn| match conn.spent(now) {
                Some(why) => {
                    conn.stats.core(core).inc(why as usize);
                    false
                }
                None => true,
            });
            !pool.is_empty()
        });
        self.h2.sweep(core, now);
    }

    /// True while the core holds upstream connections its sweep looks after: idle
    /// HTTP/1.1 ones (or a pool emptied since the last sweep) and HTTP/2 ones.
    pub fn holds_connections(&self) -> bool {
        !self.pools.is_empty() || !self.h2.is_empty()
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
    /// Counts `stat` in the connection's cluster, on its core.
    pub fn count(&self, stat: ClusterStat) {
        self.stats.core(self.core).inc(stat as usize);
    }

    /// Counts a request sent on the connection; the one that uses up the cluster's
    /// `max_requests_per_connection` is counted in `upstream_cx_max_requests`, as Envoy
    /// counts it when the request is attached.
    pub fn count_request(&mut self, max: Option<u32>) {
        self.requests += 1;
        if max == Some(self.requests) {
            self.stats
                .core(self.core)
                .inc(ClusterStat::UpstreamCxMaxRequests as usize);
        }
    }

    /// Why an idle connection may not serve again at `now`: it outlived its cluster's
    /// `max_connection_duration` or sat idle past its `idle_timeout` (the stat to count).
    fn spent(&self, now: Instant) -> Option<ClusterStat> {
        if self.limits.expires.is_some_and(|e| now >= e) {
            Some(ClusterStat::UpstreamCxMaxDurationReached)
        } else if self.idle_until.is_some_and(|u| now >= u) {
            Some(ClusterStat::UpstreamCxIdleTimeout)
        } else {
            None
        }
    }

    /// Whether the idle connection is still usable: one peek at its socket. Over TLS a
    /// readable byte is a close_notify or a record nobody asked for: not reusable either.
    fn idle_state(&self) -> IdleState {
        match &self.stream {
            MaybeTls::Plain(s) => idle_state(s),
            // Bytes read ahead and not yet decrypted are such a record too.
            MaybeTls::Tls(t) if t.0.get_ref().0.buffered() > 0 => IdleState::Unusable,
            MaybeTls::Tls(t) => idle_state(t.0.get_ref().0),
        }
    }
}

/// Opens a new HTTP/1.1 connection from core `core` to `ep`.
pub async fn connect(core: usize, cluster: &Cluster, ep: &Endpoint) -> Result<Conn, ConnectError> {
    let opened = open_io(core, cluster, ep, true).await;
    // Counted with the attempt, as upstream_cx_total is; not when a breaker refused it.
    if !matches!(opened, Err(ConnectError::Overflow)) {
        cluster
            .stats
            .core(core)
            .inc(ClusterStat::UpstreamCxHttp1Total as usize);
    }
    let (stream, permit) = opened?;
    let principals = match (&stream, cluster.tls_for(ep)) {
        (MaybeTls::Tls(s), Some(tls)) => crate::tls::upstream_principals(s.0.get_ref().1, tls),
        _ => None,
    };
    let local = match &stream {
        MaybeTls::Plain(s) => crate::io::ip_local_addr(s),
        MaybeTls::Tls(t) => crate::io::ip_local_addr(t.0.get_ref().0),
    }
    .map(Box::new);
    // Its age counts from here, once connected (Envoy's from the connect attempt).
    let now = Instant::now();
    Ok(Conn(Box::new(ConnState {
        principals,
        local,
        stream,
        tls_key: cluster.pool_key(ep),
        addr: ep.address,
        buf: Vec::with_capacity(16 * 1024),
        requests: 0,
        stats: cluster.stats.clone(),
        core,
        idle_until: cluster.idle_timeout.and_then(|t| now.checked_add(t)),
        limits: Limits {
            idle_timeout: cluster.idle_timeout,
            expires: cluster.max_connection_duration.map(|d| now + d),
        },
        permit,
    })))
}
