//! One downstream HTTP/1.1 connection, read top to bottom:
//! read head → check → route → (direct reply | redirect | forward: pick upstream →
//! send head and body → read response head → send it and the body) → log → next request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::io::MaybeTls;
use crate::tls::DownIo;

use crate::ctx::{CoreCtx, Downstream, DrainEvent};
use crate::http::error::HttpError;
use crate::http::h1::{self, RequestHead, ResponseHead};
use crate::http::log;
use crate::http::request::{route_table, Decision};
use crate::model::route::Forward;
use crate::model::{HttpConnectionManager, Snapshot, UnderscoreAction};
use crate::stats::{status_class_index, HttpHistogram, HttpStat};

mod accept;
mod cold;
mod forward;
mod host;
mod reply;
mod target;
mod tunnel;

use crate::http::forwarding::*;
pub use accept::{serve, serve_tls, Serving};

/// Ranges at or above this index point into `Connection::synth`, not `buf`.
const SYNTH: usize = usize::MAX / 2;

/// Serves an HTTP/1.1 connection. The connection's state is made here, outside the
/// future that serves it: the future holds it once, as its one argument (an `async fn`
/// keeps room for each argument for as long as it runs, next to what they were moved
/// into, and a cold connection holds nothing but this future).
fn serve_h1(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    stream: DownIo,
    down: Downstream,
    drain: Rc<DrainEvent>,
    prefix: Vec<u8>,
) -> impl std::future::Future<Output = ()> {
    let (peer, local) = (down.peer, down.dst);
    let snapshot = ctx.snapshot();
    // Bytes the listener filters read come first.
    let mut buf = prefix;
    make_room(&mut buf);
    serve_conn(Connection {
        ctx,
        drain,
        hcm,
        stream,
        peer,
        local,
        down,
        upgrade: None,
        buf,
        out: Vec::with_capacity(BUF),
        pending: Vec::new(),
        synth: Vec::new(),
        head: RequestHead::default(),
        resp_head: ResponseHead::default(),
        requests: 0,
        opened: Instant::now(),
        snapshot,
        log: log::Entry::default(),
        filters: Default::default(),
        finished: None,
        fwd: Default::default(),
        cold: false,
        canceller: None,
    })
}

/// The future serving `conn`. An async block using the connection where it was captured:
/// an `async fn`'s argument would be held twice, as the argument and as the binding the
/// body moves it into (1,528 bytes more per connection).
#[allow(clippy::manual_async_fn)]
fn serve_conn(mut conn: Connection) -> impl std::future::Future<Output = ()> {
    async move {
        conn.stat(HttpStat::DownstreamCxTotal);
        conn.stat(HttpStat::DownstreamCxHttp1Total);
        conn.stat(HttpStat::DownstreamCxActive);
        loop {
            // Hot: requests served back to back. The request path's futures are boxed once
            // per hot spell, so a cold connection holds neither them nor its buffers.
            crate::ctx::boxed(|| conn.run()).await;
            if !conn.cold || !conn.wait_cold().await {
                break;
            }
        }
        if let MaybeTls::Tls(t) = &mut conn.stream {
            // TLS ends with close_notify, so the client can tell an end from a truncation.
            let _ = monoio::io::AsyncWriteRent::shutdown(t.as_mut()).await;
        }
        conn.hcm
            .stats
            .core(conn.ctx.core)
            .dec(HttpStat::DownstreamCxActive as usize);
    }
}

pub(crate) struct Connection {
    pub(crate) ctx: Rc<CoreCtx>,
    pub(crate) hcm: Arc<HttpConnectionManager>,
    /// Raised when this connection's listener drains (removed or updated by LDS, or the
    /// process draining).
    drain: Rc<DrainEvent>,
    stream: DownIo,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// Where the connection was accepted and going (ORIGINAL_DST loop guard).
    down: Downstream,
    /// The `Upgrade` header value of a request whose upgrade the connection manager
    /// allows (`upgrade_configs`): forwarded, and on a 101 the connection is tunnelled.
    pub(crate) upgrade: Option<std::ops::Range<usize>>,
    /// Downstream bytes: the current head at the front, then anything read after it.
    pub(crate) buf: Vec<u8>,
    out: Vec<u8>,
    /// Downstream bytes after the current head, while the head is being forwarded.
    pending: Vec<u8>,
    /// Bytes of the request that it did not carry itself (see `synthesize`).
    synth: Vec<u8>,
    pub(crate) head: RequestHead,
    resp_head: ResponseHead,
    requests: u32,
    opened: Instant,
    snapshot: Arc<Snapshot>,
    pub(crate) log: log::Entry,
    filters: crate::http::filter::State,
    /// When the upstream response ended (read once for both timing histograms).
    finished: Option<Instant>,
    /// What forwarding the current request keeps.
    fwd: forward::Body,
    /// The hot spell ended with the connection open and quiet: it waits cold.
    cold: bool,
    /// Cancels the wait for the next request when the connection turns cold (made once
    /// per hot spell).
    canceller: Option<monoio::io::Canceller>,
}

/// How long a keep-alive connection waits for its next request holding its buffers and
/// request-path state; after that it waits cold, holding only itself, and takes them
/// again when bytes arrive. Traffic with shorter gaps (any steady load) never turns cold,
/// so its requests allocate nothing.
const COLD_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

impl crate::http::exchange::Exchange for Connection {
    fn hcm(&self) -> &HttpConnectionManager {
        &self.hcm
    }
    fn buf(&self) -> &[u8] {
        &self.buf
    }
    fn head(&self) -> &RequestHead {
        &self.head
    }
    fn bytes(&self, r: &std::ops::Range<usize>) -> &[u8] {
        Connection::bytes(self, r)
    }
    fn peer(&self) -> SocketAddr {
        self.peer
    }
    fn local(&self) -> SocketAddr {
        self.local
    }
    fn log(&self) -> &log::Entry {
        &self.log
    }
    fn hostname(&self) -> &str {
        &self.ctx.hostname
    }
    fn local_ip(&self) -> std::net::IpAddr {
        self.ctx.local_ip
    }
    fn down(&self) -> &crate::ctx::Downstream {
        &self.down
    }
    fn added_headers(&self) -> &[(Box<str>, Vec<u8>)] {
        self.filters.added_headers()
    }
    fn grpc_status_seen(&self) -> Option<i32> {
        self.filters.grpc.as_ref()?.seen.as_ref()?.status.get()
    }
    fn grpc_message_seen(&self) -> Option<Box<str>> {
        self.filters
            .grpc
            .as_ref()?
            .seen
            .as_ref()?
            .message
            .borrow()
            .clone()
    }
    fn peer_exchange(&self) -> Option<&crate::model::istio::LocalNode> {
        self.filters.istio.as_deref()?.propagate_up.as_deref()
    }
    fn dynamic_metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.filters.metadata.as_deref()
    }
    fn filter_objects(&self) -> &[crate::model::filter_state::Object] {
        &self.filters.objects
    }
    fn accept_encoding_removed(&self) -> bool {
        self.filters
            .compression
            .as_ref()
            .is_some_and(|c| c.accept_encoding_removed)
    }
    fn internal(&self) -> bool {
        crate::http::trust::is_internal(&self.hcm, self.peer.ip(), &self.buf, &self.head.headers)
    }
    fn upgrade(&self) -> Option<&std::ops::Range<usize>> {
        self.upgrade.as_ref()
    }
    fn protocol(&self) -> &'static [u8] {
        if self.head.minor == 0 {
            b"HTTP/1.0"
        } else {
            b"HTTP/1.1"
        }
    }
}

/// How a request ended, for the connection loop.
enum Next {
    KeepAlive,
    Close,
}

impl Connection {
    fn stat(&self, s: HttpStat) {
        self.hcm.stats.core(self.ctx.core).inc(s as usize);
    }

    /// Whether this is the only HTTP/1.1 request in progress on the core: then no other
    /// task adds to the driver's next submission, and a write goes out at once.
    fn alone(&self) -> bool {
        self.ctx.requests.get() <= 1
    }

    async fn run(&mut self) {
        self.cold = false;
        self.out.reserve(BUF);
        loop {
            match self.read_head().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    // A bad head or one that timed out (whose read took the buffer with it):
                    // answered from the error alone, never from the previous head's ranges.
                    self.head.forget();
                    self.log
                        .start(self.hcm.timed(), !self.hcm.access_logs.is_empty());
                    self.stat(HttpStat::DownstreamRqTotal);
                    let _ = self.local_reply(&e, true).await;
                    crate::http::filter::done(&self.ctx, self);
                    crate::http::span::finish(&self.ctx, self);
                    return;
                }
            }
            self.requests += 1;
            // One clock read per request when no access log already took it.
            let started = self.log.started.unwrap_or_else(Instant::now);
            self.ctx.refresh(&mut self.snapshot);
            self.stat(HttpStat::DownstreamRqTotal);
            self.stat(HttpStat::DownstreamRqHttp1Total);
            let active = HttpStat::DownstreamRqActive as usize;
            self.hcm.stats.core(self.ctx.core).inc(active);
            let ctx = self.ctx.clone();
            let counted = ctx.request_started();
            let next = self.request().await;
            drop(counted);
            let cells = self.hcm.stats.core(self.ctx.core);
            cells.dec(active);
            let end = self.finished.take().unwrap_or_else(Instant::now);
            cells.record(
                HttpHistogram::DownstreamRqTime as usize,
                end.saturating_duration_since(started).as_millis() as u64,
            );
            self.stat(HttpStat::DownstreamRqCompleted);
            if matches!(next, Next::Close) {
                return;
            }
        }
    }

    /// Reads until a full head is buffered. `Ok(false)`: the client closed cleanly between
    /// requests (or the connection was idle while draining).
    async fn read_head(&mut self) -> Result<bool, HttpError> {
        // Envoy starts request_headers_timeout at the head's first byte; the clock is
        // read only then, and only when that timeout is set.
        let mut started: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                let mut parsed = h1::parse_request(
                    &self.buf,
                    self.hcm.max_headers_count,
                    self.hcm.max_request_headers_bytes,
                    &mut self.head,
                );
                // What Envoy's codec tolerates (obs-fold, whitespace after the version) is
                // repaired as it would forward it; the rare path: only a head that failed
                // to parse is looked at again.
                if parsed == Err(h1::HeadError::Malformed) && h1::repair(&mut self.buf) {
                    parsed = h1::parse_request(
                        &self.buf,
                        self.hcm.max_headers_count,
                        self.hcm.max_request_headers_bytes,
                        &mut self.head,
                    );
                }
                let parsed = parsed.map_err(|e| match e {
                    // HTTP/1.0 is refused before its framing is looked at, as in Envoy.
                    h1::HeadError::TransferEncodingHttp10 if !self.hcm.accept_http_10 => {
                        HttpError::Http10Rejected
                    }
                    e => HttpError::BadHead(e),
                })?;
                if parsed.is_some() {
                    self.log
                        .start(self.hcm.timed(), !self.hcm.access_logs.is_empty());
                    return Ok(true);
                }
            }
            let idle = self.buf.is_empty();
            let limit = if idle {
                self.hcm.idle_timeout
            } else {
                self.hcm
                    .request_headers_timeout
                    .map(|t| t.saturating_sub(started.get_or_insert_with(Instant::now).elapsed()))
            };
            if idle && self.drain.should_close() && self.requests > 0 {
                self.stat(HttpStat::DownstreamCxDrainClose);
                return Ok(false);
            }
            make_room(&mut self.buf);
            let buf = std::mem::take(&mut self.buf);
            // The read is made where it is awaited: a future bound first is copied again.
            let cools = self.requests > 0 && limit.is_none_or(|l| l > COLD_AFTER);
            let (res, buf) = if idle && cools {
                match self.wait_hot(buf).await {
                    Some(r) => r,
                    None => return Ok(false),
                }
            } else if idle && self.requests > 0 {
                // An idle keep-alive connection also wakes for the drain signal.
                monoio::select! {
                    r = with_timeout(limit, crate::io::read_more(&mut self.stream, buf)) => match r {
                        Some(r) => r,
                        None => {
                            self.stat(HttpStat::DownstreamCxIdleTimeout);
                            return Ok(false);
                        }
                    },
                    _ = self.drain.turn() => {
                        self.stat(HttpStat::DownstreamCxDrainClose);
                        return Ok(false);
                    }
                }
            } else {
                match with_timeout(limit, crate::io::read_more(&mut self.stream, buf)).await {
                    Some(r) => r,
                    None if idle => {
                        self.stat(HttpStat::DownstreamCxIdleTimeout);
                        return Ok(false);
                    }
                    None => return Err(HttpError::RequestHeadersTimeout),
                }
            };
            self.buf = buf;
            match res {
                Ok(0) | Err(_) => return Ok(false),
                Ok(n) => self
                    .hcm
                    .stats
                    .core(self.ctx.core)
                    .add(HttpStat::DownstreamCxRxBytesTotal as usize, n as u64),
            }
        }
    }

    /// Handles the request whose head is parsed; leaves the buffer at the next request.
    async fn request(&mut self) -> Next {
        let result = self.dispatch().await;
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                let close = e.closes_connection() || self.must_close();
                match self.local_reply(&e, close).await {
                    Ok(()) if !close && !self.head.close && self.skip_request_body().await => {
                        Next::KeepAlive
                    }
                    _ => Next::Close,
                }
            }
        };
        crate::http::filter::done(&self.ctx, self);
        crate::http::span::finish(&self.ctx, self);
        self.filters.clear();
        // Drop the head (and the body bytes the exchange consumed) before the next one.
        let consumed = self.head.len.min(self.buf.len());
        self.buf.drain(..consumed);
        next
    }

    /// Moves what follows the head in `buf` into the reusable `pending` buffer.
    fn take_after_head(&mut self) -> Vec<u8> {
        let mut pending = std::mem::take(&mut self.pending);
        pending.clear();
        let at = self.head.len.min(self.buf.len());
        pending.extend_from_slice(&self.buf[at..]);
        self.buf.truncate(at);
        pending
    }

    fn must_close(&self) -> bool {
        self.head.close
            || self.drain.should_close()
            || self
                .hcm
                .max_requests_per_connection
                .is_some_and(|m| self.requests >= m)
            || self
                .hcm
                .max_connection_duration
                .is_some_and(|d| self.opened.elapsed() >= d)
    }

    async fn dispatch(&mut self) -> Result<Next, HttpError> {
        if self.head.minor == 0 && !self.hcm.accept_http_10 {
            return Err(HttpError::Http10Rejected);
        }
        self.upgrade = None;
        // Whether the connection manager allows the request's upgrade (or CONNECT); a
        // forwarding route may override it with its own upgrade_configs.
        let connect = self.buf[self.head.method.clone()] == *b"CONNECT";
        // None: the connection manager does not list it (no route can enable it).
        let mut hcm_allows = Some(true);
        if self.head.upgrade || connect {
            let value = if connect {
                None
            } else {
                self.head
                    .headers
                    .iter()
                    .find(|(n, _)| self.buf[n.clone()].eq_ignore_ascii_case(b"upgrade"))
                    .map(|(_, v)| v.clone())
            };
            let kind: &[u8] = match &value {
                Some(v) => &self.buf[v.clone()],
                None if connect => b"connect",
                None => b"",
            };
            hcm_allows = self
                .hcm
                .upgrades
                .iter()
                .find(|(u, _)| u.as_bytes().eq_ignore_ascii_case(kind))
                .map(|(_, enabled)| *enabled);
            if !connect && value.is_none() {
                return Err(HttpError::UpgradeRejected);
            }
            self.upgrade = value;
        }
        if self.head.underscore
            && self.hcm.headers_with_underscores == UnderscoreAction::RejectRequest
        {
            return Err(HttpError::UnderscoreHeader);
        }
        let (authority, mut path) = self.authority_and_path()?;
        let routes = route_table(&self.hcm, &self.snapshot)?;
        let decision = crate::http::request::route(self, &routes, &authority, &mut path).await?;
        let upgrading = self.upgrade.is_some() || connect;
        match decision {
            Decision::Answer(a) => {
                if upgrading && !a.require_tls && hcm_allows != Some(true) {
                    return Err(HttpError::UpgradeRejected);
                }
                let close = self.must_close();
                self.write_simple(
                    a.status,
                    a.body,
                    a.location.as_deref(),
                    &a.mods,
                    close,
                    None,
                )
                .await?;
                self.finish_or_close(close || self.head.close).await
            }
            Decision::Forward(fw) => {
                let f: &Forward = fw.f;
                if upgrading {
                    let kind = match &self.upgrade {
                        Some(v) => &self.buf[v.clone()],
                        None => &b"connect"[..],
                    };
                    if !f.upgrade_allowed(kind, hcm_allows) {
                        return Err(HttpError::UpgradeRejected);
                    }
                }
                if connect {
                    if !f.terminates_connect() {
                        return Err(HttpError::ConnectNotTerminated);
                    }
                    // Boxed, like the other cold paths below: see `forward`.
                    return Box::pin(self.terminate_connect(f)).await;
                }
                let limit = crate::http::h2_server::stream_limit(f, &self.buf, &self.head);
                // Each branch builds its own future where it is awaited: a future held in a
                // local first is copied whole (kilobytes) on every request.
                match limit {
                    None => self.forward(&fw, authority, path).await,
                    Some(d) => {
                        let forward = self.forward(&fw, authority, path);
                        match Box::pin(monoio::time::timeout(d, forward)).await {
                            Ok(r) => r,
                            Err(_) => self.max_duration_reached(),
                        }
                    }
                }
            }
        }
    }

    /// The client went away: the exchange ends with Envoy's DC flag.
    fn client_gone(&mut self) {
        self.log
            .flags
            .set(crate::http::flags::ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
    }

    /// The client went away with its request unfinished: also `downstream_rq_rx_reset`.
    fn client_reset_mid_request(&mut self) {
        self.stat(HttpStat::DownstreamRqRxReset);
        self.client_gone();
    }

    fn count_status(&self, status: u16) {
        self.hcm.stats.core(self.ctx.core).inc(status_class_index(
            status,
            HttpStat::DownstreamRq1xx as usize,
        ));
    }

    pub(crate) fn is_head_request(&self) -> bool {
        self.buf[self.head.method.clone()].eq_ignore_ascii_case(b"HEAD")
    }
}
