//! One core's HTTP/2 upstream connections: many streams share a connection, up to the
//! peer's `SETTINGS_MAX_CONCURRENT_STREAMS`; a full or closed connection makes room for a
//! new one. Nothing here is shared with other cores.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use rustc_hash::FxHashMap;

use crate::stats::{ClusterStat, Scope};

/// Shared between the pool, the streams using a connection and its driver task.
#[derive(Default)]
pub struct H2State {
    /// Streams open on the connection.
    pub active: Cell<u32>,
    /// The connection ended (GOAWAY, error or close): no new streams.
    pub closed: Cell<bool>,
    /// Streams ever opened on it, for the cluster's `max_requests_per_connection`.
    pub opened: Cell<u32>,
    /// When the cluster's `max_connection_duration` ends its use.
    pub expires: Option<Instant>,
    /// The cluster's `idle_timeout`: with no stream open this long, it closes.
    pub idle_timeout: Option<Duration>,
    /// The cluster's stats, for what the pool counts.
    stats: Option<Arc<Scope>>,
    /// What the sweep last saw: `opened` then, and since when the connection has been
    /// seen without streams (no clock is read on the request path for this).
    swept_opened: Cell<u32>,
    idle_seen: Cell<Option<Instant>>,
}

impl H2State {
    /// A connection's state, under the cluster's limits, opened now.
    pub fn new(
        stats: Arc<Scope>,
        expires_after: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Self {
        H2State {
            expires: expires_after.map(|d| Instant::now() + d),
            idle_timeout,
            stats: Some(stats),
            ..H2State::default()
        }
    }

    fn count(&self, core: usize, stat: ClusterStat) {
        if let Some(s) = &self.stats {
            s.core(core).inc(stat as usize);
        }
    }

    /// Whether its idle time is up at `now`; notes what the sweep saw.
    fn idle_expired(&self, now: Instant) -> bool {
        let Some(limit) = self.idle_timeout else {
            return false;
        };
        let opened = self.opened.get();
        if self.active.get() > 0 {
            self.swept_opened.set(opened);
            self.idle_seen.set(None);
            return false;
        }
        if opened != self.swept_opened.get() {
            // Streams came and went since the last tick: idle from now at the latest, so
            // it closes within its idle time and one tick of its last stream's end.
            self.swept_opened.set(opened);
            self.idle_seen.set(Some(now));
            return false;
        }
        match self.idle_seen.get() {
            Some(since) => now.saturating_duration_since(since) >= limit,
            None => {
                self.idle_seen.set(Some(now));
                false
            }
        }
    }
}

/// One upstream HTTP/2 connection.
#[derive(Clone)]
pub struct H2Conn {
    pub send: SendRequest<Bytes>,
    pub addr: SocketAddr,
    /// This side's address (`%UPSTREAM_LOCAL_ADDRESS%`), shared by the connection's
    /// handles.
    pub local: Option<std::rc::Rc<SocketAddr>>,
    /// Its TLS identity (0: plaintext), part of the pool key.
    pub tls_key: u64,
    pub state: Rc<H2State>,
    /// The cluster's `max_requests_per_connection`: past it the connection takes no new
    /// stream and goes once its last stream ends.
    pub max_streams: Option<u32>,
    /// The cluster's `http2_protocol_options.max_concurrent_streams` (a DestinationRule's
    /// `maxConcurrentStreams`): streams open at once, whatever more the peer allows.
    pub max_concurrent: u32,
    /// Both ends' identities, on a TLS connection (`istio.stats`).
    pub principals: Option<std::sync::Arc<crate::model::tls::UpstreamPrincipals>>,
}

impl H2Conn {
    pub fn new(send: SendRequest<Bytes>, addr: SocketAddr) -> Self {
        H2Conn {
            send,
            addr,
            local: None,
            tls_key: 0,
            state: Rc::default(),
            max_streams: None,
            max_concurrent: u32::MAX,
            principals: None,
        }
    }

    /// Whether it served all the streams the cluster allows a connection.
    fn exhausted(&self) -> bool {
        self.max_streams
            .is_some_and(|m| self.state.opened.get() >= m)
    }

    /// Whether another stream fits within the peer's limit and the cluster's.
    fn has_room(&self) -> bool {
        let active = self.state.active.get();
        !self.state.closed.get()
            && !self.exhausted()
            && active < self.max_concurrent
            && (active as usize) < self.send.current_max_send_streams()
    }

    /// Counts one stream on the connection until the guard drops.
    pub fn stream(&self) -> StreamGuard {
        self.state.active.set(self.state.active.get() + 1);
        self.state.opened.set(self.state.opened.get() + 1);
        StreamGuard(self.state.clone())
    }
}

/// Releases a connection's stream slot.
pub struct StreamGuard(Rc<H2State>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

/// Keeps `upstream_cx_active` right for as long as a connection's driver runs.
pub struct CxGuard {
    pub stats: Arc<Scope>,
    pub core: usize,
    /// Its place under the cluster's `max_connections`.
    pub _permit: Option<crate::model::breakers::Permit>,
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        let c = self.stats.core(self.core);
        c.dec(ClusterStat::UpstreamCxActive as usize);
        c.inc(ClusterStat::UpstreamCxDestroy as usize);
    }
}

/// HTTP/2 connections by endpoint and TLS identity.
#[derive(Default)]
pub struct H2Pool {
    conns: FxHashMap<(SocketAddr, u64), Vec<H2Conn>>,
}

impl H2Pool {
    /// A connection to `addr` with TLS identity `tls_key` and room for one more stream;
    /// closed ones are dropped. A connection that served its last stream or outlived the
    /// cluster's `max_connection_duration` is let go: it takes no new stream and closes
    /// once its last one ends (the `h2` client closes a connection nobody holds).
    pub fn get(&mut self, core: usize, addr: SocketAddr, tls_key: u64) -> Option<H2Conn> {
        let list = self.conns.get_mut(&(addr, tls_key))?;
        let mut now = None;
        list.retain(|c| {
            if c.state.closed.get() || c.exhausted() {
                return false;
            }
            let Some(e) = c.state.expires else {
                return true;
            };
            if *now.get_or_insert_with(Instant::now) < e {
                return true;
            }
            c.state
                .count(core, ClusterStat::UpstreamCxMaxDurationReached);
            false
        });
        list.iter().find(|c| c.has_room()).cloned()
    }

    /// The sweep's tick: lets go of connections past their duration or idle time.
    pub fn sweep(&mut self, core: usize, now: Instant) {
        self.conns.retain(|_, list| {
            list.retain(|c| {
                if c.state.closed.get() || c.exhausted() {
                    return false;
                }
                if c.state.expires.is_some_and(|e| now >= e) {
                    c.state
                        .count(core, ClusterStat::UpstreamCxMaxDurationReached);
                    return false;
                }
                if c.state.idle_expired(now) {
                    c.state.count(core, ClusterStat::UpstreamCxIdleTimeout);
                    return false;
                }
                true
            });
            !list.is_empty()
        });
    }

    /// True when it holds no connection.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn add(&mut self, conn: H2Conn) {
        self.conns
            .entry((conn.addr, conn.tls_key))
            .or_default()
            .push(conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that came and went between two ticks starts the idle time at the tick
    /// that notices it, not one tick later; one open stream holds it off.
    #[test]
    fn idle_time_counts_from_the_tick_that_sees_the_last_stream_gone() {
        let s = H2State {
            idle_timeout: Some(Duration::from_secs(1)),
            ..H2State::default()
        };
        let t0 = Instant::now();
        let tick = |n: u64| t0 + Duration::from_secs(n);
        s.opened.set(1);
        assert!(!s.idle_expired(tick(1)), "the stream's end is noticed");
        assert!(s.idle_expired(tick(2)), "idle a full second since");
        s.opened.set(2);
        s.active.set(1);
        assert!(!s.idle_expired(tick(3)));
        assert!(!s.idle_expired(tick(5)), "a stream is open");
        s.active.set(0);
        assert!(!s.idle_expired(tick(6)));
        assert!(!s.idle_expired(tick(6) + Duration::from_millis(900)));
        assert!(s.idle_expired(tick(7)));
    }
}
