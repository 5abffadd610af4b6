//! One downstream HTTP/1.1 connection, read top to bottom:
//! read head → check → route → (direct reply | redirect | forward: pick upstream →
//! send head and body → read response head → send it and the body) → log → next request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::io::MaybeTls;
use crate::tls::DownIo;

use crate::ctx::{CoreCtx, Downstream, DrainEvent};
use crate::http::body::{forward_body, BodyError, Framing, Mode};
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::h1::{self, BodyKind, RequestHead, RequestRef, ResponseHead};
use crate::http::local_reply::reply_for;
use crate::http::{log, write_headers};
use crate::model::headers::HeaderMods;
use crate::model::route::{
    Action, Forward, HostRewrite, PathMatch, Redirect, RedirectPath, Target, TlsRequirement,
};
use crate::model::{
    Codec, Discovery, Endpoint, HttpConnectionManager, RouteSource, Snapshot, StripPort,
    UnderscoreAction,
};
use crate::stats::{status_class_index, ClusterStat, HttpStat};
use crate::upstream::Conn as UpstreamConn;

mod to_h2;

/// Header mutations of a level that has none.
static NO_MODS: HeaderMods = HeaderMods {
    add: Vec::new(),
    remove: Vec::new(),
};

/// Ranges at or above this index point into `Connection::synth`, not `buf`.
const SYNTH: usize = usize::MAX / 2;

/// Read buffer size for each direction of a connection.
const BUF: usize = 16 * 1024;

/// Serves one downstream connection until it closes.
pub async fn serve(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    mut stream: TcpStream,
    down: Downstream,
    drain: Rc<DrainEvent>,
    mut prefix: Vec<u8>,
) {
    match hcm.codec {
        Codec::Http2 => {
            return crate::http::h2::server::serve(ctx, hcm, stream, down, drain, prefix).await
        }
        Codec::Auto => {
            // HTTP/2 when the first bytes are its preface (prior knowledge, h2c).
            if !sniff_preface(&mut stream, &mut prefix, hcm.idle_timeout).await {
                return;
            }
            if prefix.starts_with(crate::http::h2::PREFACE) {
                return crate::http::h2::server::serve(ctx, hcm, stream, down, drain, prefix).await;
            }
        }
        Codec::Http1 => {}
    }
    serve_h1(ctx, hcm, MaybeTls::Plain(stream), down, drain, prefix).await
}

/// Serves one downstream connection after its TLS handshake: HTTP/2 when ALPN chose `h2`
/// (or the connection manager speaks nothing else), HTTP/1.1 otherwise.
pub async fn serve_tls(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    stream: crate::tls::ServerStream,
    down: Downstream,
    drain: Rc<DrainEvent>,
) {
    let h2 = match hcm.codec {
        Codec::Http2 => true,
        Codec::Http1 => false,
        Codec::Auto => crate::tls::alpn(&stream) == Some(b"h2"),
    };
    if h2 {
        return crate::http::h2::server::serve_io(ctx, hcm, stream, down, drain).await;
    }
    serve_h1(
        ctx,
        hcm,
        crate::tls::down_io(stream),
        down,
        drain,
        Vec::new(),
    )
    .await
}

async fn serve_h1(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    stream: DownIo,
    down: Downstream,
    drain: Rc<DrainEvent>,
    prefix: Vec<u8>,
) {
    let (peer, local) = (down.peer, down.dst);
    let snapshot = ctx.snapshot();
    // Bytes the listener filters read come first.
    let mut buf = prefix;
    buf.reserve(BUF);
    let mut conn = Connection {
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
    };
    let cells = conn.hcm.stats.clone();
    let c = cells.core(conn.ctx.core);
    c.inc(HttpStat::DownstreamCxTotal as usize);
    c.inc(HttpStat::DownstreamCxHttp1Total as usize);
    c.inc(HttpStat::DownstreamCxActive as usize);
    conn.run().await;
    if let MaybeTls::Tls(t) = &mut conn.stream {
        // TLS ends with close_notify, so the client can tell an end from a truncation.
        let _ = monoio::io::AsyncWriteRent::shutdown(t.as_mut()).await;
    }
    c.dec(HttpStat::DownstreamCxActive as usize);
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
}

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
    fn downstream_tls(&self) -> bool {
        self.down.tls
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
        loop {
            match self.read_head().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    // A bad head or one that timed out (whose read took the buffer with it):
                    // answered from the error alone, never from the previous head's ranges.
                    self.head.forget();
                    self.log.start(!self.hcm.access_logs.is_empty());
                    self.stat(HttpStat::DownstreamRqTotal);
                    let _ = self.local_reply(&e, true).await;
                    log::write(&self.ctx, self);
                    return;
                }
            }
            self.requests += 1;
            self.ctx.refresh(&mut self.snapshot);
            self.stat(HttpStat::DownstreamRqTotal);
            self.stat(HttpStat::DownstreamRqHttp1Total);
            let active = HttpStat::DownstreamRqActive as usize;
            self.hcm.stats.core(self.ctx.core).inc(active);
            let ctx = self.ctx.clone();
            let counted = ctx.request_started();
            let next = self.request().await;
            drop(counted);
            self.hcm.stats.core(self.ctx.core).dec(active);
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
                    self.log.start(!self.hcm.access_logs.is_empty());
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
            if idle && self.drain.raised() && self.requests > 0 {
                self.stat(HttpStat::DownstreamCxDrainClose);
                return Ok(false);
            }
            self.buf.reserve(BUF);
            let buf = std::mem::take(&mut self.buf);
            let read = crate::io::read_more(&mut self.stream, buf);
            let (res, buf) = if idle && self.requests > 0 {
                // An idle keep-alive connection also wakes for the drain signal.
                monoio::select! {
                    r = with_timeout(limit, read) => match r {
                        Some(r) => r,
                        None => {
                            self.stat(HttpStat::DownstreamCxIdleTimeout);
                            return Ok(false);
                        }
                    },
                    _ = self.drain.wait() => {
                        self.stat(HttpStat::DownstreamCxDrainClose);
                        return Ok(false);
                    }
                }
            } else {
                match with_timeout(limit, read).await {
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
                    Ok(()) if !close && self.skip_request_body().await => Next::KeepAlive,
                    _ => Next::Close,
                }
            }
        };
        log::write(&self.ctx, self);
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
            || self.drain.raised()
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
        let (authority, path) = self.authority_and_path()?;
        self.log.authority = authority.clone();
        self.log.path = path.clone();
        let hcm = self.hcm.clone();
        let routes = match &hcm.routes {
            RouteSource::Static(t) => t.clone(),
            // RDS: the route configuration of the current snapshot (absent only after the
            // listener's initial fetch timeout, as an empty table in Envoy).
            RouteSource::Rds(name) => match self.snapshot.route_configs.get(name) {
                Some(t) => t.clone(),
                None => return Err(HttpError::NoRoute),
            },
        };
        let req = RequestRef {
            buf: &self.buf,
            head: &self.head,
            authority: self.bytes(&authority),
            path: self.bytes(&path),
        };
        let Some(m) = routes.find(&req) else {
            return Err(HttpError::NoRoute);
        };
        let logging = !self.hcm.access_logs.is_empty();
        if logging {
            self.log.route = Some(m.route.name.clone());
        }
        let prefix_len = match &m.route.path {
            PathMatch::Prefix(p) | PathMatch::Separated(p) => Some(p.len()),
            _ => None,
        };
        self.log.route_prefix_len = prefix_len.unwrap_or(0);
        if requires_tls_redirect(self, m.vhost.require_tls) {
            let redirect = Redirect {
                scheme: Some("https".into()),
                host: None,
                port: None,
                path: RedirectPath::Keep,
                status: 301,
                strip_query: false,
            };
            return self.redirect(&redirect, authority, path, &[]).await;
        }
        let mods: [&HeaderMods; 3] = [
            &m.route.response_headers,
            &m.vhost.response_headers,
            &routes.response_headers,
        ];
        let upgrading = self.upgrade.is_some() || connect;
        if upgrading && !matches!(m.route.action, Action::Forward(_)) && hcm_allows != Some(true) {
            return Err(HttpError::UpgradeRejected);
        }
        match &m.route.action {
            Action::Direct(d) => {
                self.stat(HttpStat::RqDirectResponse);
                let close = self.must_close();
                let location =
                    direct_location(self, d.status, self.bytes(&authority), self.bytes(&path));
                self.write_simple(d.status, &d.body, location.as_deref(), &mods, close)
                    .await?;
                self.finish_or_close(close).await
            }
            Action::Redirect(r) => {
                self.stat(HttpStat::RqRedirect);
                self.redirect(r, authority, path, &mods).await
            }
            Action::Forward(f) => {
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
                let req_mods = [&m.route.request_headers, &m.vhost.headers, &routes.headers];
                let limit = crate::http::h2::server::stream_limit(f, &self.buf, &self.head);
                let forward = self.forward(f, prefix_len, authority, path, req_mods, mods);
                match limit {
                    None => forward.await,
                    Some(d) => match monoio::time::timeout(d, forward).await {
                        Ok(r) => r,
                        Err(_) => self.max_duration_reached(),
                    },
                }
            }
        }
    }

    /// The routing authority and path, as ranges of `buf`.
    fn authority_and_path(
        &mut self,
    ) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), HttpError> {
        let target = self.head.target.clone();
        let t = &self.buf[target.clone()];
        if self.buf[self.head.method.clone()] == *b"CONNECT" {
            // Authority form (`host:port`): the authority is the target; there is no path.
            if t.is_empty() || t.first() == Some(&b'/') {
                return Err(HttpError::InvalidPath);
            }
            let path = self.synthesize(b"");
            return Ok((target, path));
        }
        let host = self.head.host.map(|i| self.head.headers[i].1.clone());
        if t.first() == Some(&b'/') {
            let authority = match host.map(|h| self.strip_port(h)) {
                Some(h) => h,
                None if self.head.minor == 0 => {
                    // HTTP/1.0 without Host: Envoy's default_host_for_http_10.
                    let h = self
                        .hcm
                        .default_host_for_http_10
                        .clone()
                        .unwrap_or_default();
                    self.synthesize(h.as_bytes())
                }
                None => return Err(HttpError::MissingHost),
            };
            return Ok((authority, target));
        }
        // Absolute form: http://authority/path
        let lower = t.to_ascii_lowercase();
        let scheme_len = if lower.starts_with(b"http://") {
            7
        } else if lower.starts_with(b"https://") {
            8
        } else {
            return Err(HttpError::InvalidPath);
        };
        let rest = target.start + scheme_len;
        let slash = self.buf[rest..target.end]
            .iter()
            .position(|&b| b == b'/')
            .map_or(target.end, |i| rest + i);
        // Userinfo (`user:pass@`) is not part of the authority: dropped, as Envoy does.
        let rest = self.buf[rest..slash]
            .iter()
            .rposition(|&b| b == b'@')
            .map_or(rest, |at| rest + at + 1);
        if slash == rest {
            return Err(HttpError::InvalidPath);
        }
        let path = if slash == target.end {
            self.synthesize(b"/")
        } else {
            slash..target.end
        };
        Ok((self.strip_port(rest..slash), path))
    }

    /// Stores bytes the request did not carry (a default Host, an implied `/`) and returns a
    /// range for them that [`Connection::bytes`] resolves. They must not go into `buf`,
    /// where they would land among body bytes and pipelined requests.
    fn synthesize(&mut self, bytes: &[u8]) -> std::ops::Range<usize> {
        self.synth.clear();
        self.synth.extend_from_slice(bytes);
        SYNTH..SYNTH + bytes.len()
    }

    /// The bytes of a range over the request: `buf`, or `synth` for synthesized ranges.
    pub(crate) fn bytes(&self, r: &std::ops::Range<usize>) -> &[u8] {
        if r.start >= SYNTH {
            &self.synth[r.start - SYNTH..r.end - SYNTH]
        } else {
            &self.buf[r.clone()]
        }
    }

    /// Applies `strip_matching_host_port` / `strip_any_host_port` to an authority range.
    fn strip_port(&self, authority: std::ops::Range<usize>) -> std::ops::Range<usize> {
        let keep = kept_authority(
            self.hcm.strip_port,
            self.local.port(),
            self.bytes(&authority),
        );
        authority.start..authority.start + keep
    }

    async fn redirect(
        &mut self,
        r: &Redirect,
        authority: std::ops::Range<usize>,
        path: std::ops::Range<usize>,
        mods: &[&HeaderMods],
    ) -> Result<Next, HttpError> {
        let location = redirect_location(
            r,
            self.bytes(&authority),
            self.bytes(&path),
            self.log.route_prefix_len,
        );
        let close = self.must_close();
        self.write_simple(r.status, b"", Some(&location), mods, close)
            .await?;
        self.finish_or_close(close).await
    }

    /// After a local answer: skip any request body so the connection can be reused.
    async fn finish_or_close(&mut self, close: bool) -> Result<Next, HttpError> {
        if close || !self.skip_request_body().await {
            return Ok(Next::Close);
        }
        Ok(Next::KeepAlive)
    }

    /// Reads and discards the request body (bounded by Envoy's idea of a small body);
    /// returns false when the connection cannot be reused.
    async fn skip_request_body(&mut self) -> bool {
        match self.head.body {
            BodyKind::None => true,
            // A client waiting for 100-continue never sent its body.
            _ if self.head.expect_continue => false,
            BodyKind::Length(n) if n <= 64 * 1024 => {
                let mut sink = Discard;
                let mut pending = self.take_after_head();
                let mut framing = Framing::new(self.head.body, Mode::Raw);
                let r = forward_body(
                    &mut self.stream,
                    &mut sink,
                    &mut pending,
                    &mut framing,
                    self.hcm.stream_idle_timeout,
                    None,
                )
                .await;
                self.buf.extend_from_slice(&pending);
                self.pending = pending;
                r.is_ok()
            }
            _ => false,
        }
    }

    /// Writes a proxy-generated response with a text body.
    async fn local_reply(&mut self, e: &HttpError, close: bool) -> Result<(), HttpError> {
        let reply = reply_for(e);
        if let Some(s) = reply.stat {
            self.stat(s);
        }
        self.log.flags.set(reply.flag);
        self.log.details = reply.details;
        self.write_simple(reply.status, reply.body.as_bytes(), None, &[], close)
            .await
    }

    async fn write_simple(
        &mut self,
        status: u16,
        body: &[u8],
        location: Option<&[u8]>,
        mods: &[&HeaderMods],
        close: bool,
    ) -> Result<(), HttpError> {
        let head_request = self.is_head_request();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        write_headers::local_head(&mut out, self, status, body.len(), location, mods);
        if close {
            write_headers::header(&mut out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if !head_request {
            out.extend_from_slice(body);
        }
        self.log.status = status;
        self.log.bytes_sent += body.len() as u64;
        self.count_status(status);
        let (res, out) = self.stream.write_all(out).await;
        self.out = out;
        res.map(|_| ()).map_err(|_| HttpError::UpstreamReset)
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

    /// Proxies the request to the route's cluster.
    async fn forward(
        &mut self,
        f: &Forward,
        prefix_len: Option<usize>,
        authority: std::ops::Range<usize>,
        path: std::ops::Range<usize>,
        req_mods: [&HeaderMods; 3],
        resp_mods: [&HeaderMods; 3],
    ) -> Result<Next, HttpError> {
        let snapshot = self.snapshot.clone();
        let (weighted, cluster, ep) = pick_upstream(&self.ctx, &snapshot, f, &self.down)?;
        let ep: &Endpoint = &ep;
        if !self.hcm.access_logs.is_empty() {
            self.log.cluster = Some(cluster.name.clone());
        }
        if let Some(settings) = cluster.http2.filter(|_| !cluster.http2_follows_downstream) {
            let hop = to_h2::Hop {
                f,
                prefix_len,
                authority,
                path,
                weighted,
                cluster,
                ep,
                req_mods,
                resp_mods,
            };
            // Cold paths' futures are boxed. Every request moves this future (and the
            // ones that await it) by value, so its size, the largest of what it awaits, is
            // copied a few times per request: inline, the HTTP/2 hop made it 8 KB.
            return Box::pin(self.forward_h2(hop, settings)).await;
        }
        let core = self.ctx.core;
        let cstats = cluster.stats.core(core);
        self.log.upstream = Some(ep.address);
        let replayable_head = !matches!(self.head.body, BodyKind::Length(n) if n > (self.buf.len() - self.head.len.min(self.buf.len())) as u64)
            && self.head.body != BodyKind::Chunked;
        let pooled = self.ctx.upstreams.borrow_mut().checkout(
            ep.address,
            cluster.tls_key(ep),
            cluster.idle_timeout,
            !replayable_head,
        );
        let mut reused = pooled.is_some();
        let mut up = match pooled {
            Some(c) => c,
            None => Box::pin(crate::upstream::connect(core, cluster, ep))
                .await
                .map_err(HttpError::Connect)?,
        };

        // In flight from here to the end of the exchange, whatever ends it.
        let ctx = self.ctx.clone();
        let _in_flight = ctx.upstream_request(cluster, ep.address);
        // From here the request body starts to be consumed: errors close the connection
        // unless the whole body went through.
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.upstream_head(
            &mut out, f, prefix_len, authority, &path, weighted, req_mods, ep,
        );
        if !self.continue_100().await {
            self.out = out;
            return Ok(Next::Close);
        }
        // Body bytes that arrived with the head go out in the same write.
        let mut pending = self.take_after_head();
        let mut req_body = Framing::new(self.head.body, Mode::Raw);
        let n = req_body.consume_into(&pending, &mut out);
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.extend_from_slice(&pending);
                self.pending = pending;
                self.out = out;
                return Err(HttpError::BadBody(e));
            }
        };
        pending.drain(..n);
        let replayable = req_body.done();
        let route_deadline = |sent: Instant| f.timeout.map(|t| sent + t);
        let stream_idle = f.idle_timeout.or(self.hcm.stream_idle_timeout);

        // The response head's header list is reused from request to request.
        let mut resp = std::mem::take(&mut self.resp_head);
        let (mut up, sent_at) = loop {
            up.requests += 1;
            cstats.inc(ClusterStat::UpstreamRqTotal as usize);
            let alone = self.alone();
            let (res, o) = up.stream.write_all_now(out, alone).await;
            out = o;
            // Whether the upstream closed the connection after taking the whole request.
            let closed_after_request = if res.is_err() {
                false
            } else {
                cstats.add(
                    ClusterStat::UpstreamCxTxBytesTotal as usize,
                    out.len() as u64,
                );
                if !req_body.done() {
                    let r = forward_body(
                        &mut self.stream,
                        &mut up.stream,
                        &mut pending,
                        &mut req_body,
                        stream_idle,
                        None,
                    )
                    .await;
                    match r {
                        Ok(()) => {}
                        Err(BodyError::Write(_)) => {
                            return self.fail_after_body(
                                out,
                                pending,
                                false,
                                HttpError::UpstreamReset,
                            )
                        }
                        Err(BodyError::Malformed(e)) => {
                            return self.fail_after_body(out, pending, false, HttpError::BadBody(e))
                        }
                        Err(BodyError::Timeout) => {
                            return self.fail_after_body(
                                out,
                                pending,
                                false,
                                HttpError::StreamIdleTimeout,
                            )
                        }
                        Err(_) => {
                            // The client went away mid-body.
                            self.stat(HttpStat::DownstreamRqRxReset);
                            self.log
                                .flags
                                .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                            self.out = out;
                            return Ok(Next::Close);
                        }
                    }
                }
                self.log.bytes_received = req_body.bytes;
                let sent = Instant::now();
                let r =
                    read_response_head(&mut up, &mut resp, route_deadline(sent), stream_idle).await;
                match r {
                    Ok(()) => break (up, sent),
                    Err(RespError::Closed) => true,
                    Err(RespError::Malformed) => {
                        return self.fail_after_body(
                            out,
                            pending,
                            true,
                            HttpError::UpstreamProtocol,
                        )
                    }
                    Err(RespError::Timeout) => {
                        cstats.inc(ClusterStat::UpstreamRqTimeout as usize);
                        self.stat(HttpStat::DownstreamRqTimeout);
                        return self.fail_after_body(
                            out,
                            pending,
                            true,
                            HttpError::UpstreamTimeout,
                        );
                    }
                    Err(RespError::Idle) => {
                        return self.fail_after_body(
                            out,
                            pending,
                            true,
                            HttpError::StreamIdleTimeout,
                        )
                    }
                }
            };
            // The connection died under the request: a pooled one the upstream had closed
            // while idle is retried once on a new connection when the request can be replayed.
            if reused && replayable {
                cstats.inc(ClusterStat::UpstreamRqRetry as usize);
                reused = false;
                up = match Box::pin(crate::upstream::connect(core, cluster, ep)).await {
                    Ok(c) => c,
                    Err(e) => {
                        return self.fail_after_body(
                            out,
                            pending,
                            replayable,
                            HttpError::Connect(e),
                        )
                    }
                };
                continue;
            }
            if closed_after_request {
                cstats.inc(ClusterStat::UpstreamRqRxReset as usize);
            }
            return self.fail_after_body(out, pending, req_body.done(), HttpError::UpstreamReset);
        };
        // The request body is done: what follows in `pending` is the next request.
        self.buf.extend_from_slice(&pending);
        self.pending = pending;
        self.head.body = BodyKind::None;

        // Response head.
        let service_time = sent_at.elapsed().as_millis() as u64;
        self.log.service_time_ms = (!self.hcm.suppress_envoy_headers).then_some(service_time);
        let head_request = self.is_head_request();
        let kind = resp.body(head_request);
        let downstream_10 = self.head.minor == 0;
        let mode = match kind {
            BodyKind::Chunked if downstream_10 => Mode::ChunkDecode,
            BodyKind::UntilClose if !downstream_10 => Mode::ChunkEncode,
            _ => Mode::Raw,
        };
        let close = self.must_close()
            || (kind == BodyKind::UntilClose && downstream_10)
            || (kind == BodyKind::Chunked && downstream_10);
        let resp_mods_all: [&HeaderMods; 4] = [
            weighted.map_or(&NO_MODS, |w| &w.response_headers),
            resp_mods[0],
            resp_mods[1],
            resp_mods[2],
        ];
        out.clear();
        write_headers::response_head(
            &mut out,
            self,
            &up.buf,
            &resp,
            &resp_mods_all,
            (mode == Mode::ChunkEncode) || (kind == BodyKind::Chunked && mode == Mode::Raw),
            close,
            self.log.service_time_ms,
        );
        self.log.status = resp.status;
        self.count_status(resp.status);
        cstats.inc(status_class_index(
            resp.status,
            ClusterStat::UpstreamRq1xx as usize,
        ));
        let mut resp_body = Framing::new(kind, mode);
        let n = match resp_body.consume_into(&up.buf[resp.len..], &mut out) {
            Ok(n) => n,
            Err(_) => {
                self.out = out;
                return Err(HttpError::UpstreamProtocol);
            }
        };
        up.buf.drain(..resp.len + n);
        let alone = self.alone();
        let (res, o) = self.stream.write_all_now(out, alone).await;
        out = o;
        self.out = out;
        if res.is_err() {
            self.log
                .flags
                .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            return Ok(Next::Close);
        }
        if resp.status == 101 && self.upgrade.is_some() {
            self.resp_head = resp;
            return Ok(Box::pin(self.tunnel(up, cluster, stream_idle)).await);
        }
        if !resp_body.done() {
            let r = forward_body(
                &mut up.stream,
                &mut self.stream,
                &mut up.buf,
                &mut resp_body,
                stream_idle,
                route_deadline(sent_at),
            )
            .await;
            self.log.bytes_sent = resp_body.bytes;
            match r {
                Ok(()) => {}
                Err(BodyError::Write(_)) => {
                    self.log
                        .flags
                        .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
                    return Ok(Next::Close);
                }
                Err(BodyError::Timeout) => {
                    cstats.inc(ClusterStat::UpstreamRqTimeout as usize);
                    self.log.flags.set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    return Ok(Next::Close);
                }
                Err(_) => {
                    // Upstream reset mid-body: the client sees the connection close.
                    cstats.inc(ClusterStat::UpstreamRqRxReset as usize);
                    self.log.flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
                    return Ok(Next::Close);
                }
            }
        }
        self.log.bytes_sent = resp_body.bytes;
        cstats.add(
            ClusterStat::UpstreamCxRxBytesTotal as usize,
            (resp.len as u64) + resp_body.bytes,
        );
        cstats.inc(ClusterStat::UpstreamRqCompleted as usize);
        // Back to the pool when the exchange ended cleanly.
        let reusable = kind != BodyKind::UntilClose
            && !resp.close
            && up.buf.is_empty()
            && cluster
                .max_requests_per_connection
                .is_none_or(|m| up.requests < m);
        self.resp_head = resp;
        if reusable {
            self.ctx.upstreams.borrow_mut().checkin(up);
        }
        Ok(if close { Next::Close } else { Next::KeepAlive })
    }

    /// Writes the upstream request head (HTTP/1 form) into `out`: path rewrites, the
    /// request id, header mutations (most specific first: weighted cluster, route, virtual
    /// host, route configuration) and the host rewrite.
    #[allow(clippy::too_many_arguments)]
    fn upstream_head(
        &mut self,
        out: &mut Vec<u8>,
        f: &Forward,
        prefix_len: Option<usize>,
        authority: std::ops::Range<usize>,
        path: &std::ops::Range<usize>,
        weighted: Option<&crate::model::route::WeightedTarget>,
        req_mods: [&HeaderMods; 3],
        ep: &Endpoint,
    ) {
        let request_id = self.request_id();
        upstream_head(
            out,
            self,
            HeadParts {
                f,
                prefix_len,
                authority,
                path,
                weighted,
                req_mods,
                ep,
            },
            request_id.as_ref().map(|r| &r[..]),
        );
    }

    /// Answers `Expect: 100-continue` itself, as Envoy does by default. False when the
    /// client is gone.
    async fn continue_100(&mut self) -> bool {
        if !self.head.expect_continue || self.head.body == BodyKind::None {
            return true;
        }
        let (res, _) = self
            .stream
            .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
            .await;
        res.is_ok()
    }

    /// The stream outlived its route's limit mid-exchange: answered if nothing was sent
    /// yet, and the connection closes either way (the exchange stopped part-way).
    fn max_duration_reached(&mut self) -> Result<Next, HttpError> {
        self.head.close = true;
        if self.log.status == 0 {
            let request_complete = self.head.body == BodyKind::None;
            self.head.body = BodyKind::None;
            return Err(HttpError::MaxDurationReached { request_complete });
        }
        self.stat(HttpStat::DownstreamRqMaxDurationReached);
        self.log.flags.set(ResponseFlags::DURATION_TIMEOUT);
        Ok(Next::Close)
    }

    /// CONNECT on a route with `connect_config`: the proxy opens a TCP connection to the
    /// route's upstream, answers 200 itself (no Content-Length or Transfer-Encoding, RFC
    /// 9110 9.3.6) and tunnels the bytes both ways until either side closes.
    async fn terminate_connect(&mut self, f: &Forward) -> Result<Next, HttpError> {
        let snapshot = self.snapshot.clone();
        let (_, cluster, ep) = pick_upstream(&self.ctx, &snapshot, f, &self.down)?;
        if !self.hcm.access_logs.is_empty() {
            self.log.cluster = Some(cluster.name.clone());
        }
        self.log.upstream = Some(ep.address);
        let up = crate::upstream::connect(self.ctx.core, cluster, &ep)
            .await
            .map_err(HttpError::Connect)?;
        cluster
            .stats
            .core(self.ctx.core)
            .inc(ClusterStat::UpstreamRqTotal as usize);
        let (res, _) = self.stream.write_all(&b"HTTP/1.1 200 OK\r\n\r\n"[..]).await;
        if res.is_err() {
            self.log
                .flags
                .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
            return Ok(Next::Close);
        }
        self.log.status = 200;
        self.count_status(200);
        let idle = f.idle_timeout.or(self.hcm.stream_idle_timeout);
        Ok(self.tunnel(up, cluster, idle).await)
    }

    /// After a 101 to an allowed upgrade (WebSocket): bytes either side already read go
    /// across, then the two sockets are spliced together until both close (or stay quiet
    /// for the stream idle timeout). The connection is not reused afterwards.
    async fn tunnel(
        &mut self,
        mut up: UpstreamConn,
        cluster: &crate::model::Cluster,
        idle: Option<Duration>,
    ) -> Next {
        let core = self.ctx.core;
        let hs = self.hcm.stats.core(core);
        let cs = cluster.stats.core(core);
        let early = self.buf.split_off(self.head.len.min(self.buf.len()));
        if !early.is_empty() {
            let (res, _) = up.stream.write_all(early).await;
            if res.is_err() {
                return Next::Close;
            }
        }
        let ahead = std::mem::take(&mut up.buf);
        if !ahead.is_empty() {
            let (res, _) = self.stream.write_all(ahead).await;
            if res.is_err() {
                return Next::Close;
            }
        }
        hs.inc(HttpStat::DownstreamCxUpgradesTotal as usize);
        hs.inc(HttpStat::DownstreamCxUpgradesActive as usize);
        let rx = |n| {
            hs.add(HttpStat::DownstreamCxRxBytesTotal as usize, n);
            cs.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
        };
        let tx = |n| {
            hs.add(HttpStat::DownstreamCxTxBytesTotal as usize, n);
            cs.add(ClusterStat::UpstreamCxRxBytesTotal as usize, n);
        };
        match (&mut self.stream, &mut up.stream) {
            (MaybeTls::Plain(down), MaybeTls::Plain(upstream)) => {
                crate::io::splice_both_ways((down, &*upstream), idle, None, rx, tx).await;
            }
            (down, upstream) => {
                // Decrypted bytes cannot be spliced: they are copied through user space.
                let (_, a, b) = crate::io::copy_tls_tunnel(down, upstream, idle, None).await;
                rx(a);
                tx(b);
            }
        }
        hs.dec(HttpStat::DownstreamCxUpgradesActive as usize);
        cs.inc(ClusterStat::UpstreamRqCompleted as usize);
        Next::Close
    }

    /// An error after the request body began to flow: answer if nothing was sent yet and
    /// close unless the body had fully arrived.
    fn fail_after_body(
        &mut self,
        out: Vec<u8>,
        pending: Vec<u8>,
        body_done: bool,
        e: HttpError,
    ) -> Result<Next, HttpError> {
        self.out = out;
        if body_done {
            self.buf.extend_from_slice(&pending);
            self.pending = pending;
            self.head.body = BodyKind::None;
        } else {
            self.head.close = true;
            self.head.body = BodyKind::None;
        }
        Err(e)
    }

    /// The x-request-id to send upstream, when the proxy sets one (Envoy's rules).
    fn request_id(&mut self) -> Option<[u8; 36]> {
        let internal = crate::http::exchange::Exchange::internal(self);
        let id = new_request_id(&self.hcm, self.head.request_id.is_some(), internal)?;
        self.log.request_id = Some(id);
        Some(id)
    }
}

/// What a forwarded request's upstream head is made from.
pub(crate) struct HeadParts<'a> {
    pub f: &'a Forward,
    pub prefix_len: Option<usize>,
    pub authority: std::ops::Range<usize>,
    pub path: &'a std::ops::Range<usize>,
    pub weighted: Option<&'a crate::model::route::WeightedTarget>,
    pub req_mods: [&'a HeaderMods; 3],
    pub ep: &'a Endpoint,
}

/// Writes the upstream request head (HTTP/1 form) for either codec: path rewrites, header
/// mutations (most specific first: weighted cluster, route, virtual host, route
/// configuration), the host rewrite and the request id.
pub(crate) fn upstream_head<E: crate::http::exchange::Exchange + ?Sized>(
    out: &mut Vec<u8>,
    conn: &E,
    hop: HeadParts<'_>,
    request_id: Option<&[u8]>,
) {
    let full = conn.bytes(hop.path);
    let rewritten = rewrite_path(hop.f, hop.prefix_len, full);
    let mods: [&HeaderMods; 4] = [
        hop.weighted.map_or(&NO_MODS, |w| &w.request_headers),
        hop.req_mods[0],
        hop.req_mods[1],
        hop.req_mods[2],
    ];
    write_headers::request_head(
        out,
        conn,
        hop.f,
        hop.authority,
        rewritten.as_deref().unwrap_or(full),
        rewritten.is_some(),
        host_rewrite(hop.weighted, hop.f, hop.ep),
        &mods,
        request_id,
    );
}

/// The upstream path after `prefix_rewrite` / `regex_rewrite`, or `None` if unchanged.
pub(crate) fn rewrite_path(f: &Forward, prefix_len: Option<usize>, full: &[u8]) -> Option<Vec<u8>> {
    let q = full.iter().position(|&b| b == b'?').unwrap_or(full.len());
    if let (Some(new), Some(len)) = (&f.prefix_rewrite, prefix_len) {
        let mut out = Vec::with_capacity(full.len() + new.len());
        out.extend_from_slice(new.as_bytes());
        out.extend_from_slice(&full[len.min(q)..]);
        return Some(out);
    }
    if let Some((re, sub)) = &f.regex_rewrite {
        let p = String::from_utf8_lossy(&full[..q]);
        let mut out = re.replace_all(&p, sub.as_str()).into_owned().into_bytes();
        out.extend_from_slice(&full[q..]);
        return Some(out);
    }
    None
}

/// A new x-request-id when the proxy sets one (Envoy's rules): none present, or an
/// external request's at the edge unless it is preserved.
pub(crate) fn new_request_id(
    hcm: &HttpConnectionManager,
    present: bool,
    internal: bool,
) -> Option<[u8; 36]> {
    if !hcm.generate_request_id {
        return None;
    }
    let regenerate =
        !present || (hcm.use_remote_address && !internal && !hcm.preserve_external_request_id);
    regenerate.then(uuid4)
}

/// The route's cluster (and weighted entry) and the endpoint to send to: this core's load
/// balancer, or the connection's original destination for an ORIGINAL_DST cluster.
pub(crate) fn pick_upstream<'s>(
    ctx: &CoreCtx,
    snapshot: &'s Snapshot,
    f: &'s Forward,
    down: &Downstream,
) -> Result<
    (
        Option<&'s crate::model::route::WeightedTarget>,
        &'s crate::model::Cluster,
        std::borrow::Cow<'s, Endpoint>,
    ),
    HttpError,
> {
    let weighted = f.target.pick(fastrand::u32(..));
    let cref = match (&f.target, weighted) {
        (_, Some(w)) => &w.cluster,
        (Target::Cluster(c), None) => c,
        (Target::Weighted { .. }, None) => {
            return Err(HttpError::ClusterNotFound(f.cluster_not_found_status))
        }
    };
    let cluster = cref
        .index
        .and_then(|i| snapshot.clusters.get(i))
        .filter(|c| c.name == cref.name)
        .or_else(|| snapshot.cluster(&cref.name))
        .ok_or(HttpError::ClusterNotFound(f.cluster_not_found_status))?;
    let none_healthy = || {
        cluster
            .stats
            .core(ctx.core)
            .inc(ClusterStat::UpstreamCxNoneHealthy as usize);
        HttpError::NoHealthyUpstream
    };
    let ep = if cluster.discovery == Discovery::OriginalDst {
        // Not redirected: the destination is this listener itself (a loop).
        if down.loops_back() {
            return Err(none_healthy());
        }
        // The connection's destination (restored from the capture) is the upstream.
        std::borrow::Cow::Owned(Endpoint::at(down.dst))
    } else {
        let picked = ctx.upstreams.borrow_mut().pick(cluster);
        std::borrow::Cow::Borrowed(picked.ok_or_else(none_healthy)?)
    };
    Ok((weighted, cluster, ep))
}

/// Envoy sets `location` on a direct response with a 3xx status: the request's own URL
/// (its scheme as the next hop would be told it, authority, path and query).
pub(crate) fn direct_location<E: crate::http::exchange::Exchange + ?Sized>(
    conn: &E,
    status: u16,
    authority: &[u8],
    path: &[u8],
) -> Option<Vec<u8>> {
    if !(300..400).contains(&status) {
        return None;
    }
    let scheme = write_headers::forwarded_proto(conn);
    let mut l = Vec::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    l.extend_from_slice(scheme);
    l.extend_from_slice(b"://");
    l.extend_from_slice(authority);
    l.extend_from_slice(path);
    Some(l)
}

/// The `Location` of a redirect for a request to `auth` + `full` (path and query).
pub(crate) fn redirect_location(
    r: &Redirect,
    auth: &[u8],
    full: &[u8],
    route_prefix_len: usize,
) -> Vec<u8> {
    let mut location = Vec::with_capacity(128);
    location.extend_from_slice(r.scheme.as_deref().unwrap_or("http").as_bytes());
    location.extend_from_slice(b"://");
    let host_only = strip_port(auth);
    match (&r.host, r.port) {
        (Some(h), Some(p)) => location.extend_from_slice(format!("{h}:{p}").as_bytes()),
        (Some(h), None) => location.extend_from_slice(h.as_bytes()),
        (None, Some(p)) => {
            location.extend_from_slice(host_only);
            location.extend_from_slice(format!(":{p}").as_bytes());
        }
        // A scheme change drops the (old scheme's) port, as Envoy does.
        (None, None) if r.scheme.is_some() => location.extend_from_slice(host_only),
        (None, None) => location.extend_from_slice(auth),
    }
    let (p, q) = match full.iter().position(|&b| b == b'?') {
        Some(i) => (&full[..i], &full[i..]),
        None => (full, &b""[..]),
    };
    match &r.path {
        RedirectPath::Keep => location.extend_from_slice(p),
        RedirectPath::Replace(np) => location.extend_from_slice(np.as_bytes()),
        RedirectPath::Prefix(np) => {
            let routed_prefix = route_prefix_len.min(p.len());
            location.extend_from_slice(np.as_bytes());
            location.extend_from_slice(&p[routed_prefix..]);
        }
        RedirectPath::Regex(re, sub) => {
            let s = String::from_utf8_lossy(p);
            location.extend_from_slice(re.replace_all(&s, sub.as_str()).as_bytes());
        }
    }
    let path_has_query = matches!(&r.path, RedirectPath::Replace(np) if np.contains('?'));
    if !r.strip_query && !path_has_query {
        location.extend_from_slice(q);
    }
    location
}

/// How many bytes of an authority are kept after `strip_matching_host_port` /
/// `strip_any_host_port` (a port equal to the listener's, or any port).
pub(crate) fn kept_authority(mode: StripPort, local_port: u16, a: &[u8]) -> usize {
    if mode == StripPort::None {
        return a.len();
    }
    let Some(colon) = a.iter().rposition(|&b| b == b':') else {
        return a.len();
    };
    let port = &a[colon + 1..];
    let is_port = !port.is_empty() && port.iter().all(u8::is_ascii_digit);
    let bracketed = a.first() == Some(&b'[');
    if !is_port || (!bracketed && a[..colon].contains(&b':')) || (bracketed && a[colon - 1] != b']')
    {
        return a.len();
    }
    let strip = match mode {
        StripPort::Any => true,
        StripPort::Matching => {
            std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                == Some(local_port)
        }
        StripPort::None => false,
    };
    if strip {
        colon
    } else {
        a.len()
    }
}

/// Reads until `buf` holds the HTTP/2 preface or bytes that cannot begin it. False: the
/// client closed (or timed out) before sending enough to tell.
async fn sniff_preface(stream: &mut TcpStream, buf: &mut Vec<u8>, limit: Option<Duration>) -> bool {
    let preface = crate::http::h2::PREFACE;
    loop {
        let n = buf.len().min(preface.len());
        if buf[..n] != preface[..n] || n == preface.len() {
            return true;
        }
        buf.reserve(BUF);
        let taken = std::mem::take(buf);
        let Some((res, b)) = with_timeout(limit, crate::io::read_more(stream, taken)).await else {
            return false;
        };
        *buf = b;
        match res {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// The Host sent upstream when the route rewrites it (the weighted entry's literal first,
/// then the route's literal or the endpoint's hostname); `None` keeps the client's.
pub(crate) fn host_rewrite<'a>(
    weighted: Option<&'a crate::model::route::WeightedTarget>,
    f: &'a Forward,
    ep: &'a Endpoint,
) -> Option<&'a [u8]> {
    match (
        weighted.and_then(|w| w.host_rewrite.as_deref()),
        &f.host_rewrite,
    ) {
        (Some(h), _) => Some(h.as_bytes()),
        (None, HostRewrite::Literal(h)) => Some(h.as_bytes()),
        (None, HostRewrite::Auto) => Some(ep.hostname.as_bytes()),
        (None, HostRewrite::None) => None,
    }
}

/// Why no response head arrived.
pub(crate) enum RespError {
    Closed,
    Malformed,
    Timeout,
    Idle,
}

/// Reads the upstream response head, skipping 1xx interim responses.
pub(crate) async fn read_response_head(
    up: &mut UpstreamConn,
    resp: &mut ResponseHead,
    deadline: Option<Instant>,
    idle: Option<Duration>,
) -> Result<(), RespError> {
    loop {
        if !up.buf.is_empty() {
            match h1::parse_response(&up.buf, 64 * 1024, resp) {
                Ok(Some(())) if (100..200).contains(&resp.status) && resp.status != 101 => {
                    up.buf.drain(..resp.len);
                    continue;
                }
                Ok(Some(())) => return Ok(()),
                Ok(None) => {}
                Err(_) => return Err(RespError::Malformed),
            }
        }
        up.buf.reserve(BUF);
        let buf = std::mem::take(&mut up.buf);
        let read = crate::io::read_more(&mut up.stream, buf);
        // Whichever comes first, the route's deadline or the idle limit; as an instant, so
        // the clock is read once (a Duration timeout reads it again).
        let idle_at = idle.and_then(|i| Instant::now().checked_add(i));
        let (at, is_deadline) = match (deadline, idle_at) {
            (Some(d), Some(i)) if d <= i => (Some(d), true),
            (Some(_), Some(i)) => (Some(i), false),
            (Some(d), None) => (Some(d), true),
            (None, i) => (i, false),
        };
        let (res, buf) = match at {
            None => read.await,
            Some(at) => {
                match monoio::time::timeout_at(monoio::time::Instant::from_std(at), read).await {
                    Ok(r) => r,
                    Err(_) if is_deadline => return Err(RespError::Timeout),
                    Err(_) => return Err(RespError::Idle),
                }
            }
        };
        up.buf = buf;
        match res {
            Ok(0) | Err(_) => return Err(RespError::Closed),
            Ok(_) => {}
        }
    }
}

/// A random version-4 UUID in its text form.
fn uuid4() -> [u8; 36] {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Hex digit pairs from a table, at fixed positions (8-4-4-4-12): no per-byte branch.
    let mut out = [b'-'; 36];
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (b, at) in bytes.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
    out
}

/// Each byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

struct Discard;

impl monoio::io::AsyncWriteRent for Discard {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(buf.bytes_init()), buf)
    }
    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(0), buf)
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) async fn with_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    f: F,
) -> Option<F::Output> {
    match limit {
        None => Some(f.await),
        Some(d) => monoio::time::timeout(d, f).await.ok(),
    }
}

/// Whether `require_tls` sends this request to https: `ALL` for any request that is not
/// already https, `EXTERNAL_ONLY` for external ones. The scheme is the downstream
/// transport's, or at a non-edge hop the `x-forwarded-proto` the previous hop set.
pub(crate) fn requires_tls_redirect<E: crate::http::exchange::Exchange + ?Sized>(
    conn: &E,
    require: TlsRequirement,
) -> bool {
    if require == TlsRequirement::None || write_headers::forwarded_proto(conn) == b"https" {
        return false;
    }
    require == TlsRequirement::All || !conn.internal()
}

fn strip_port(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|&b| b == b':') {
        Some(i)
            if host[i + 1..].iter().all(u8::is_ascii_digit) && !host[..i].contains(&b':')
                || host.first() == Some(&b'[') && i > 0 && host[i - 1] == b']' =>
        {
            &host[..i]
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid4_is_a_version_4_variant_1_uuid() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = super::uuid4();
            let s = std::str::from_utf8(&id).unwrap();
            let parts: Vec<&str> = s.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(s
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert_eq!(&s[14..15], "4", "{s}");
            assert!("89ab".contains(&s[19..20]), "{s}");
            // Parsed back, the digits are the bytes: the same text round-trips.
            let hex: String = parts.concat();
            let n = u128::from_str_radix(&hex, 16).unwrap();
            assert_eq!(format!("{n:032x}"), hex);
            seen.insert(id);
        }
        assert_eq!(seen.len(), 1000);
    }
}
