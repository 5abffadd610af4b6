//! One downstream HTTP/2 connection: the `h2` server drives the socket on this core and
//! every stream runs as its own task on the same core. A stream is routed and rewritten in
//! the HTTP/1 form (see `convert`), then forwarded over HTTP/2 (streams multiplexed on the
//! core's pooled connections, trailers intact) or HTTP/1.1 (the core's keep-alive pool).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::Request;
use monoio::net::TcpStream;

mod connect;
mod down;
mod exchange;
mod reuse;

use crate::ctx::{CatchUnwind, CoreCtx, Downstream, DrainEvent};
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::forwarding::{kept_authority, with_timeout};
use crate::http::h1::{self, HeadError, RequestHead};
use crate::http::h2::convert;
use crate::http::h2::flood::FloodGuard;
use crate::http::h2::streams::{OpenStream, Streams};
use crate::http::local_reply::reply_for;
use crate::http::log::{self, Entry};
use crate::http::request::{route_table, Decision};
use crate::http::write_headers;
use crate::io::Rewind;
use crate::model::headers::HeaderMods;
use crate::model::route::Forward;
use crate::model::{HttpConnectionManager, Snapshot, UnderscoreAction};
use crate::stats::{status_class_index, HttpStat};

/// Serves one downstream HTTP/2 connection until it closes. `prefix` holds bytes already
/// read from the socket (the preface, when the codec was sniffed).
pub async fn serve(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    stream: TcpStream,
    down: Downstream,
    drain: Rc<DrainEvent>,
    prefix: Vec<u8>,
) {
    let Ok(io) = stream.try_into_poll_io() else {
        return;
    };
    // Read ahead as TLS is: h2 reads into what is left of its buffer, so a request
    // of 1 KB often took two reads before the one that finds the socket empty.
    let io = crate::io::ReadAhead::new(Rewind::new(prefix, io));
    serve_io(ctx, hcm, io, down, drain).await;
}

/// Serves one downstream HTTP/2 connection over any poll-style stream (plain TCP through
/// monoio's poll-io bridge, or TLS above it) until it closes.
pub async fn serve_io<IO>(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    io: IO,
    down: Downstream,
    drain: Rc<DrainEvent>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let stats = hcm.stats.clone();
    let c = stats.core(ctx.core);
    c.inc(HttpStat::DownstreamCxTotal as usize);
    c.inc(HttpStat::DownstreamCxHttp2Total as usize);
    c.inc(HttpStat::DownstreamCxActive as usize);
    run(ctx.clone(), hcm, io, down, drain).await;
    c.dec(HttpStat::DownstreamCxActive as usize);
}

async fn run<IO>(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    io: IO,
    down: Downstream,
    drain: Rc<DrainEvent>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let s = hcm.http2;
    let (io, flood) = FloodGuard::server(io, s.flood);
    // Outermost, so the flood guard sees every frame the socket has not taken.
    let (io, corked) = crate::io::cork::cork(io);
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(s.max_concurrent_streams)
        .initial_window_size(s.initial_stream_window_size)
        .initial_connection_window_size(s.initial_connection_window_size)
        .max_header_list_size(hcm.max_request_headers_bytes as u32)
        .max_send_buffer_size(64 * 1024)
        // Rapid reset (CVE-2023-44487): streams the client opens and resets before they
        // are served are bounded, and so are those the proxy has to reset.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(256))
        .handshake::<_, Bytes>(io);
    let mut conn =
        match with_timeout(hcm.request_headers_timeout.or(hcm.idle_timeout), handshake).await {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::debug!(peer = %down.peer, "HTTP/2 handshake failed: {e}");
                stat(&ctx, &hcm, HttpStat::DownstreamCxProtocolError);
                return;
            }
            None => return,
        };
    let mut draining = false;
    let streams = Rc::new(Streams::new());
    loop {
        let next = if draining {
            corked.poll(conn.accept()).await
        } else {
            monoio::select! {
                n = corked.poll(conn.accept()) => n,
                _ = drain.turn() => {
                    // GOAWAY: streams already open finish, no new ones start.
                    conn.graceful_shutdown();
                    stat(&ctx, &hcm, HttpStat::DownstreamCxDrainClose);
                    draining = true;
                    continue;
                }
                _ = streams.idle_for(hcm.idle_timeout) => {
                    // No stream for the connection idle timeout: GOAWAY, as Envoy does.
                    conn.graceful_shutdown();
                    stat(&ctx, &hcm, HttpStat::DownstreamCxIdleTimeout);
                    draining = true;
                    continue;
                }
                _ = streams.abusive() => {
                    // Rapid reset: the client opens streams only to reset them. As Envoy
                    // does, the connection is closed at once, not drained.
                    stat(&ctx, &hcm, HttpStat::DownstreamRqTooManyPrematureResets);
                    tracing::debug!(peer = %down.peer, "HTTP/2 connection closed: too many premature stream resets");
                    break;
                }
            }
        };
        match next {
            Some(Ok((req, respond))) => {
                // Boxed before it is spawned: the spawned task then holds a pointer, not the
                // stream's whole future (copied into the task, then again into a box at its
                // first poll: two large allocations and copies per stream).
                let task = crate::ctx::boxed(|| {
                    stream_task(ctx.clone(), hcm.clone(), down.clone(), req, respond)
                });
                let (ctx, hcm) = (ctx.clone(), hcm.clone());
                let open = OpenStream::new(&streams);
                monoio::spawn(async move {
                    match CatchUnwind(task).await {
                        Ok(client_reset) => open.ended(client_reset),
                        Err(_) => {
                            drop(open);
                            stat(&ctx, &hcm, HttpStat::PanicsCaught);
                            tracing::error!("a bug panicked while serving an HTTP/2 stream; it was reset and the core keeps serving");
                        }
                    }
                });
            }
            Some(Err(e)) => {
                if let Some(f) = flood.tripped() {
                    // The peer floods the proxy with frames: closed at once, as Envoy does.
                    hcm.http2_stats.core(ctx.core).inc(f.stat() as usize);
                    stat(&ctx, &hcm, HttpStat::DownstreamCxProtocolError);
                    tracing::debug!(peer = %down.peer, "HTTP/2 connection closed: {f:?} flood");
                    break;
                }
                if e.is_io() || e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR) {
                    break;
                }
                tracing::debug!(peer = %down.peer, "HTTP/2 connection error: {e}");
                stat(&ctx, &hcm, HttpStat::DownstreamCxProtocolError);
                break;
            }
            None => break,
        }
    }
}

fn stat(ctx: &CoreCtx, hcm: &HttpConnectionManager, s: HttpStat) {
    hcm.stats.core(ctx.core).inc(s as usize);
}

async fn stream_task(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    down: Downstream,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) -> bool {
    let snapshot = ctx.snapshot();
    let mut s = Stream {
        respond,
        body: None,
        tx: None,
        req_pending: None,
        req_done: false,
        resp_ended: false,
        ctx,
        hcm,
        down,
        buf: reuse::bytes(0),
        head: RequestHead {
            headers: reuse::slots(),
            ..Default::default()
        },
        log: Entry::default(),
        snapshot,
        grpc: false,
        responded: false,
        client_reset: false,
        filters: Default::default(),
        finished: None,
    };
    s.run(req).await;
    reuse::give_bytes(std::mem::take(&mut s.buf));
    reuse::give_slots(std::mem::take(&mut s.head.headers));
    s.client_reset
}

/// One HTTP/2 stream, with its head in HTTP/1 form.
struct Stream {
    respond: SendResponse<Bytes>,
    /// The request body, until it ends (or moves to its own task).
    body: Option<RecvStream>,
    /// The response body's stream, once its head went.
    tx: Option<h2::SendStream<Bytes>>,
    /// A DATA frame of the request not yet passed on.
    req_pending: Option<Bytes>,
    /// The request body ended.
    req_done: bool,
    /// END_STREAM went out on the response.
    resp_ended: bool,
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    down: Downstream,
    buf: Vec<u8>,
    head: RequestHead,
    log: Entry,
    snapshot: Arc<Snapshot>,
    /// A gRPC request: the proxy's own answers are gRPC-shaped.
    grpc: bool,
    /// Response headers went out: errors now reset the stream.
    responded: bool,
    /// The client reset the stream (counted by the rapid-reset guard).
    client_reset: bool,
    filters: crate::http::filter::State,
    /// When the upstream response ended (read once for both timing histograms).
    finished: Option<Instant>,
}

impl crate::http::filter::FilterHost for Stream {
    fn filter_state(&self) -> &crate::http::filter::State {
        &self.filters
    }
    fn filter_state_mut(&mut self) -> &mut crate::http::filter::State {
        &mut self.filters
    }
    fn log_mut(&mut self) -> &mut log::Entry {
        &mut self.log
    }
    fn core_ctx(&self) -> &crate::ctx::CoreCtx {
        &self.ctx
    }
    fn core(&self) -> usize {
        self.ctx.core
    }
    fn hcm_arc(&self) -> Arc<HttpConnectionManager> {
        self.hcm.clone()
    }
    fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
    fn remove_request_header(&mut self, name: &[u8]) {
        self.head.remove(&self.buf, name);
    }
    fn reset_while_waiting(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(async move {
            let respond = &mut self.respond;
            let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
            self.client_reset();
            self.responded = true;
        })
    }
    fn buffer_request_body(
        &mut self,
        max: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HttpError>> + '_>> {
        Box::pin(async move {
            let idle = self.hcm.stream_idle_timeout;
            let mut data = Vec::new();
            let mut complete = true;
            if let Some(body) = &mut self.body {
                complete = body.is_end_stream();
                while !complete && data.len() <= max {
                    match with_timeout(idle, body.data()).await {
                        None => return Err(HttpError::StreamIdleTimeout),
                        Some(None) => complete = true,
                        Some(Some(Err(_))) => {
                            self.client_reset();
                            return Err(HttpError::ClientGone);
                        }
                        Some(Some(Ok(d))) => {
                            self.log.bytes_received += d.len() as u64;
                            data.extend_from_slice(&d);
                            complete = body.is_end_stream();
                        }
                    }
                }
            }
            // Sent first by the forwarding (its window goes back once it went on).
            if !data.is_empty() {
                self.req_pending = Some(Bytes::copy_from_slice(&data));
            }
            if complete {
                self.req_done = true;
            }
            self.filters.request_body = Some(Box::new(crate::http::filter::BufferedBody {
                data,
                complete,
            }));
            Ok(())
        })
    }
    fn decide_request_id(&mut self) {
        if self.log.request_id.is_none() {
            self.log.request_id = crate::http::forwarding::request_id(&*self);
        }
        crate::http::filter::begin_trace(self.ctx.core, self);
    }
    fn grpc_unary(
        &self,
        call: crate::http::filter::GrpcCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::http::filter::GrpcAnswer>>> {
        Box::pin(crate::http::grpc_call::unary(
            self.ctx.clone(),
            self.snapshot.clone(),
            call,
        ))
    }
    fn http_call(
        &self,
        call: crate::http::filter::HttpCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::http::filter::HttpAnswer>>> {
        let (ctx, snapshot) = (self.ctx.clone(), self.snapshot.clone());
        Box::pin(crate::http::http_call::call(ctx, snapshot, call))
    }
    fn replace_path(&mut self, path: &[u8]) -> std::ops::Range<usize> {
        // After the request head: its ranges stay valid.
        let start = self.buf.len();
        self.buf.extend_from_slice(path);
        start..self.buf.len()
    }
}

impl Stream {
    fn stat(&self, s: HttpStat) {
        stat(&self.ctx, &self.hcm, s);
    }

    /// The client reset its stream (or the connection went away under it).
    fn client_reset(&mut self) {
        self.stat(HttpStat::DownstreamRqRxReset);
        self.log
            .flags
            .set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        self.client_reset = true;
    }

    async fn run(&mut self, req: Request<RecvStream>) {
        self.log
            .start(self.hcm.timed(), !self.hcm.access_logs.is_empty());
        let started = self.log.started.unwrap_or_else(Instant::now);
        self.stat(HttpStat::DownstreamRqTotal);
        self.stat(HttpStat::DownstreamRqHttp2Total);
        let cells = self.hcm.stats.clone();
        let c = cells.core(self.ctx.core);
        c.inc(HttpStat::DownstreamRqActive as usize);
        let (parts, body) = req.into_parts();
        self.grpc = convert::is_grpc(
            parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
        );
        match self.handle(parts, body).await {
            Ok(()) | Err(HttpError::ClientGone) => {}
            Err(e) if self.responded => {
                if let HttpError::MaxDurationReached { .. } = e {
                    self.stat(HttpStat::DownstreamRqMaxDurationReached);
                    self.log.flags.set(ResponseFlags::DURATION_TIMEOUT);
                }
                self.reset_stream(h2::Reason::INTERNAL_ERROR);
            }
            Err(e) => self.local_reply(&e),
        }
        crate::http::filter::done(&self.ctx, self);
        crate::http::span::finish(&self.ctx, self);
        c.dec(HttpStat::DownstreamRqActive as usize);
        let end = self.finished.take().unwrap_or_else(Instant::now);
        c.record(
            crate::stats::HttpHistogram::DownstreamRqTime as usize,
            end.saturating_duration_since(started).as_millis() as u64,
        );
        c.inc(HttpStat::DownstreamRqCompleted as usize);
    }

    async fn handle(
        &mut self,
        parts: http::request::Parts,
        body: RecvStream,
    ) -> Result<(), HttpError> {
        let started = Instant::now();
        let connect = parts.method == http::Method::CONNECT;
        if connect && parts.extensions.get::<h2::ext::Protocol>().is_some() {
            // Extended CONNECT (RFC 8441) is not offered (no SETTINGS_ENABLE_CONNECT_PROTOCOL).
            return Err(HttpError::UpgradeRejected);
        }
        convert::request_to_h1(&parts, body.is_end_stream(), &mut self.buf);
        let limit = self.hcm.max_request_headers_bytes + 1024;
        match h1::parse_request(&self.buf, self.hcm.max_headers_count, limit, &mut self.head) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(HttpError::BadHead(HeadError::TooLarge)),
            Err(e) => return Err(HttpError::BadHead(e)),
        }
        if self.head.underscore
            && self.hcm.headers_with_underscores == UnderscoreAction::RejectRequest
        {
            return Err(HttpError::UnderscoreHeader);
        }
        let Some(host) = self.head.host else {
            return Err(HttpError::MissingHost);
        };
        let authority = self.head.headers[host].1.clone();
        let keep = kept_authority(
            self.hcm.strip_port,
            self.down.dst.port(),
            &self.buf[authority.clone()],
        );
        let authority = authority.start..authority.start + keep;
        let mut path = self.head.target.clone();
        let routes = route_table(&self.hcm, &self.snapshot)?;
        // The body is the stream's before the filters run: one may read its start.
        let end = body.is_end_stream();
        self.req_done = end;
        self.body = (!end).then_some(body);
        match crate::http::request::route(self, &routes, &authority, &mut path).await? {
            Decision::Answer(a) => {
                if connect && !a.require_tls {
                    return Err(HttpError::UpgradeRejected);
                }
                self.simple(a.status, a.body, a.location.as_deref(), &a.mods, None);
                Ok(())
            }
            Decision::Forward(fw) if connect => {
                let f: &Forward = fw.f;
                let hcm_allows = self
                    .hcm
                    .upgrades
                    .iter()
                    .find(|(u, _)| u.eq_ignore_ascii_case("connect"))
                    .map(|(_, enabled)| *enabled);
                if !f.upgrade_allowed(b"connect", hcm_allows) {
                    return Err(HttpError::UpgradeRejected);
                }
                if !f.terminates_connect() {
                    return Err(HttpError::ConnectNotTerminated);
                }
                Box::pin(self.terminate_connect(f)).await
            }
            Decision::Forward(fw) => {
                let f: &Forward = fw.f;
                let limit = stream_limit(f, &self.buf, &self.head);
                // Built where it is awaited: a future held in a local first is copied whole.
                match limit {
                    None => crate::http::proxy::forward(self, &fw, authority, &path).await,
                    Some(d) => {
                        let left = d.saturating_sub(started.elapsed());
                        let forward = crate::http::proxy::forward(self, &fw, authority, &path);
                        match Box::pin(monoio::time::timeout(left, forward)).await {
                            Ok(r) => r,
                            // Dropping the exchange resets its upstream stream or closes
                            // its upstream connection.
                            Err(_) => Err(HttpError::MaxDurationReached {
                                request_complete: end,
                            }),
                        }
                    }
                }
            }
        }
    }

    /// A response the proxy makes itself, with a text body; gRPC-shaped for a gRPC request
    /// (`grpc_status`, or the mapping of `status`).
    #[allow(clippy::too_many_arguments)]
    fn simple(
        &mut self,
        status: u16,
        body: &[u8],
        location: Option<&[u8]>,
        mods: &[&HeaderMods],
        grpc_status: Option<u32>,
    ) {
        // Envoy's connection manager decides the id before routing: a logged local answer
        // shows it (generated, or carrying the trace decision).
        if !self.hcm.access_logs.is_empty() || self.hcm.tracing.is_some() {
            crate::http::filter::FilterHost::decide_request_id(self);
        }
        let (status, body, grpc) =
            write_headers::local_answer(self.grpc, status, body, grpc_status);
        let head_request = self.buf[self.head.method.clone()].eq_ignore_ascii_case(b"HEAD");
        let compressed =
            crate::http::filter::encode::local_body(self, status, body, self.grpc, head_request);
        let body = compressed.as_deref().unwrap_or(body);
        let mut out = Vec::with_capacity(256);
        write_headers::local_head(&mut out, self, status, body.len(), location, mods, grpc);
        out.extend_from_slice(b"\r\n");
        self.log.sent_head(&out, self.hcm.log_needs.response_head);
        self.log.status = status;
        self.log.bytes_sent = body.len() as u64;
        self.count_status(status);
        let Ok(resp) = convert::h1_to_response(&out) else {
            self.respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        };
        let head = self.head.method.clone();
        let no_body = body.is_empty() || self.buf[head].eq_ignore_ascii_case(b"HEAD");
        self.responded = true;
        if let Ok(mut tx) = self.respond.send_response(resp, no_body) {
            if !no_body {
                // Local bodies are small: within the initial window.
                let _ = tx.send_data(Bytes::copy_from_slice(body), true);
            }
        }
    }

    /// The proxy's answer to an error (gRPC-shaped for gRPC requests, as Envoy sends it).
    fn local_reply(&mut self, e: &HttpError) {
        let mut reply = reply_for(e);
        crate::http::local_reply::after_retries(&mut reply, self.log.attempts);
        if let Some(s) = reply.stat {
            self.stat(s);
        }
        self.log.flags.set(reply.flag);
        self.log.details = reply.details;
        self.log.note_error(e);
        let grpc_status = crate::http::local_reply::grpc_status(e, reply.status);
        self.simple(
            reply.status,
            reply.body.as_bytes(),
            None,
            crate::http::local_reply::overload_mods(e),
            Some(grpc_status),
        );
    }

    fn count_status(&self, status: u16) {
        self.hcm.stats.core(self.ctx.core).inc(status_class_index(
            status,
            HttpStat::DownstreamRq1xx as usize,
        ));
    }
}

/// How long a stream routed by `f` may last, if the route limits it (`max_stream_duration`,
/// or the request's `grpc-timeout` where the route honours it).
pub(crate) fn stream_limit(
    f: &Forward,
    buf: &[u8],
    head: &RequestHead,
) -> Option<std::time::Duration> {
    let sd = f.more().stream_duration.as_ref()?;
    let grpc_timeout = h1::header_value(buf, &head.headers, b"grpc-timeout");
    sd.limit(grpc_timeout.as_deref())
}
