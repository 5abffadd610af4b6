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

/// HTTP/2 connections by endpoint and TLS identity, and the ones being opened.
#[derive(Default)]
pub struct H2Pool {
    conns: FxHashMap<(SocketAddr, u64), Vec<H2Conn>>,
    /// A connection on its way per key: streams that find no connection with room wait
    /// for it rather than each opening its own, as Envoy's pool attaches pending streams
    /// to a connecting client (forty streams arriving together made forty connections).
    connecting: FxHashMap<(SocketAddr, u64), Rc<Connecting>>,
}

/// A connection being opened, and the streams waiting for it.
#[derive(Default)]
pub struct Connecting {
    waiting: Cell<u32>,
    outcome: std::cell::RefCell<Option<Outcome>>,
    wakers: std::cell::RefCell<Vec<std::task::Waker>>,
}

/// How opening a connection ended, for the streams that waited on it.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// It is in the pool: look again.
    Opened,
    /// It failed: each waiting stream fails alike.
    Failed(Failure),
    /// The stream opening it went away first: look again (one of them opens the next).
    Abandoned,
}

/// A [`ConnectError`](super::ConnectError) that every waiting stream can have a copy of.
#[derive(Clone, Debug)]
pub enum Failure {
    Failed(std::io::ErrorKind, Option<i32>, String),
    Timeout,
    Tls(crate::tls::Refused),
    Overflow,
}

impl Failure {
    pub fn of(e: &super::ConnectError) -> Failure {
        use super::ConnectError as E;
        match e {
            E::Failed(io) => Failure::Failed(io.kind(), io.raw_os_error(), io.to_string()),
            E::Timeout => Failure::Timeout,
            E::Tls(r) => Failure::Tls(*r),
            E::Overflow => Failure::Overflow,
        }
    }

    pub fn error(&self) -> super::ConnectError {
        use super::ConnectError as E;
        match self {
            Failure::Failed(_, Some(code), _) => {
                E::Failed(std::io::Error::from_raw_os_error(*code))
            }
            Failure::Failed(kind, None, text) => {
                E::Failed(std::io::Error::new(*kind, text.clone()))
            }
            Failure::Timeout => E::Timeout,
            Failure::Tls(r) => E::Tls(*r),
            Failure::Overflow => E::Overflow,
        }
    }
}

impl Connecting {
    /// Waits until the connection is open, failed or abandoned.
    pub async fn outcome(&self) -> Outcome {
        std::future::poll_fn(|cx| {
            if let Some(o) = self.outcome.borrow().as_ref() {
                return std::task::Poll::Ready(o.clone());
            }
            let mut w = self.wakers.borrow_mut();
            if !w.iter().any(|w| w.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
            std::task::Poll::Pending
        })
        .await
    }

    fn end(&self, outcome: Outcome) {
        if self.outcome.borrow().is_some() {
            return;
        }
        *self.outcome.borrow_mut() = Some(outcome);
        for w in self.wakers.take() {
            w.wake();
        }
    }
}

/// Held by the stream opening a connection: ends the wait of the others however the
/// opening ends, and takes the connection's place among those being opened.
pub struct Opening {
    key: (SocketAddr, u64),
    connecting: Rc<Connecting>,
}

impl Opening {
    /// The connection is open (and in the pool) or failed: the waiting streams go on.
    pub fn end(self, pool: &mut H2Pool, outcome: Outcome) {
        pool.forget(self.key, &self.connecting);
        self.connecting.end(outcome);
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        // Dropped without `end`: the opening stream went away mid-connect.
        self.connecting.end(Outcome::Abandoned);
    }
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

    /// Where no connection has room: the connection on its way to wait for (while fewer
    /// than `limit` streams, the cluster's concurrent stream limit, wait on it), or, when
    /// there is none, an [`Opening`] for the caller to open one under.
    pub fn wait_or_open(
        &mut self,
        addr: SocketAddr,
        tls_key: u64,
        limit: u32,
    ) -> Result<Rc<Connecting>, Opening> {
        let key = (addr, tls_key);
        if let Some(c) = self.connecting.get(&key) {
            if c.outcome.borrow().is_none() && c.waiting.get() < limit.saturating_sub(1) {
                c.waiting.set(c.waiting.get() + 1);
                return Ok(c.clone());
            }
        }
        let connecting = Rc::new(Connecting::default());
        self.connecting.insert(key, connecting.clone());
        Err(Opening { key, connecting })
    }

    fn forget(&mut self, key: (SocketAddr, u64), c: &Rc<Connecting>) {
        if self.connecting.get(&key).is_some_and(|x| Rc::ptr_eq(x, c)) {
            self.connecting.remove(&key);
        }
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
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Streams wait for the connection being opened, up to the cluster's stream limit, and
    /// go on however the opening ends: opened or abandoned they look again, failed they
    /// fail alike.
    #[test]
    fn streams_wait_for_the_connection_being_opened() {
        let mut pool = H2Pool::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let cx = &mut Context::from_waker(Waker::noop());
        let Err(first) = pool.wait_or_open(addr, 0, 3) else {
            panic!("nothing is being opened: this stream opens");
        };
        let a = pool.wait_or_open(addr, 0, 3).ok().expect("waits");
        let b = pool.wait_or_open(addr, 0, 3).ok().expect("waits");
        assert!(
            pool.wait_or_open(addr, 7, 3).is_err(),
            "another identity: its own"
        );
        let Err(second) = pool.wait_or_open(addr, 0, 3) else {
            panic!("three streams fill the first: a fourth opens another");
        };
        let c = pool
            .wait_or_open(addr, 0, 3)
            .ok()
            .expect("waits for the second");
        let (mut a, mut b, mut c) = (
            Box::pin(a.outcome()),
            Box::pin(b.outcome()),
            Box::pin(c.outcome()),
        );
        assert!(a.as_mut().poll(cx).is_pending());
        drop(first); // its stream went away mid-connect
        assert!(matches!(
            a.as_mut().poll(cx),
            Poll::Ready(Outcome::Abandoned)
        ));
        assert!(matches!(
            b.as_mut().poll(cx),
            Poll::Ready(Outcome::Abandoned)
        ));
        assert!(c.as_mut().poll(cx).is_pending());
        second.end(&mut pool, Outcome::Failed(Failure::Timeout));
        assert!(matches!(
            c.as_mut().poll(cx),
            Poll::Ready(Outcome::Failed(Failure::Timeout))
        ));
        assert!(
            pool.wait_or_open(addr, 0, 3).is_err(),
            "nothing is being opened again"
        );
        // A limit of one stream a connection: nobody waits.
        assert!(pool.wait_or_open(addr, 1, 1).is_err());
        assert!(pool.wait_or_open(addr, 1, 1).is_err());
    }

    #[test]
    fn a_failure_copied_to_waiting_streams_reads_as_the_original() {
        let e = super::super::ConnectError::Failed(std::io::Error::from_raw_os_error(111));
        let copy = Failure::of(&e).error();
        assert_eq!(copy.to_string(), e.to_string());
        assert_eq!(
            super::super::error::transport_failure(&copy),
            super::super::error::transport_failure(&e)
        );
    }

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
