//! One forwarding lifecycle for every codec pairing. A routed request is forwarded here,
//! whatever its codecs: pick the cluster and endpoint, write the upstream head, connect or
//! reuse, send head and body, receive the response head, send it and the body back,
//! count and log. The downstream codec (an HTTP/1.1 connection or an HTTP/2 stream) is a
//! [`Downstream`] adapter; the upstream codec (a pooled HTTP/1.1 connection or a stream on
//! a pooled HTTP/2 connection) is an [`up::Up`]. Tunnels (a 101 to an allowed upgrade)
//! branch off here, in one place.
//!
//! Bodies move as payload, framing removed: each side writes its own framing. Writes to
//! an HTTP/1.1 peer are buffered and flushed only before the proxy waits, so a response
//! whose body came with its head leaves in one write.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ctx::{CoreCtx, UpstreamRequest};
use crate::http::body::{wait_limit, Framing, Mode};
use crate::http::error::HttpError;
use crate::http::filter::FilterHost;
use crate::http::flags::ResponseFlags;
use crate::http::forwarding::{pick_upstream, upstream_head, HeadParts, NO_MODS};
use crate::http::h1::{BodyKind, ResponseHead};
use crate::http::request::Forwarding;
use crate::model::headers::HeaderMods;
use crate::model::{Cluster, Discovery, Snapshot};
use crate::stats::{status_class_index, ClusterStat, HttpStat};

mod attempt;
mod body;
mod mirror;
mod retry;
mod send;
pub(crate) mod up;

pub(crate) use attempt::Deadline;
use attempt::{failure, pick_again, Body, Replay};
use body::{body_failed, encode_head};
use retry::{Retry, Verdict};
use send::{exchange_h1, Attempt};
use up::{RecvError, Up};

/// A piece of a body's payload: borrowed from a read buffer, or an HTTP/2 DATA frame's.
pub(crate) enum Chunk<'a> {
    Slice(&'a [u8]),
    Bytes(Bytes),
}

impl Chunk<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Slice(s) => s,
            Chunk::Bytes(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn into_bytes(self) -> Bytes {
        match self {
            Chunk::Slice(s) => Bytes::copy_from_slice(s),
            Chunk::Bytes(b) => b,
        }
    }
}

/// Why the request body stopped coming.
pub(crate) enum DownError {
    /// The client went away or reset its stream (the adapter recorded it).
    Gone,
    /// Nothing arrived for the stream idle timeout.
    Idle,
}

/// A downstream codec, as the forwarding lifecycle sees it.
#[allow(async_fn_in_trait)]
pub(crate) trait Downstream: FilterHost {
    fn ctx(&self) -> &Rc<CoreCtx>;
    fn snapshot_arc(&self) -> Arc<Snapshot>;
    fn downstream(&self) -> &crate::ctx::Downstream;
    /// Whether the client speaks HTTP/2 (so does a cluster that follows the downstream).
    fn is_h2(&self) -> bool;
    /// Whether the whole request body (if any) has been read.
    fn request_done(&self) -> bool;
    /// Whether the whole request is in hand (head and body): a stale pooled connection
    /// can then be given up for a new one.
    fn request_in_hand(&self) -> bool;
    /// A buffer for the upstream request (reused from request to request).
    fn take_up_buf(&mut self) -> Vec<u8>;
    fn put_up_buf(&mut self, buf: Vec<u8>);
    /// The parsed response head, reused from request to request.
    fn take_resp_head(&mut self) -> ResponseHead;
    fn put_resp_head(&mut self, head: ResponseHead);
    /// Whether the client waits for `100 Continue` before sending its body.
    fn expects_continue(&self) -> bool {
        false
    }
    /// Answers `Expect: 100-continue` before the body is read. False: the client is gone.
    async fn continue_100(&mut self) -> bool {
        true
    }
    /// Request payload already read, without waiting.
    fn buffered_body(&mut self) -> Result<Option<Chunk<'_>>, HttpError>;
    /// `n` bytes of what `buffered_body` gave went on.
    fn body_passed(&mut self, n: usize);
    /// Waits for more of the request body.
    async fn read_body(&mut self, idle: Option<Duration>) -> Result<(), DownError>;
    /// Moves the request body to its own task (HTTP/2: both directions then stream at
    /// once, as gRPC's bidirectional calls need). `None`: sent before the response.
    fn take_body_stream(&mut self) -> Option<h2::RecvStream> {
        None
    }
    /// Whether [`Downstream::reset`] can resolve (an HTTP/2 client can reset its stream).
    fn resets(&self) -> bool {
        false
    }
    /// Resolves when the client gives up while the response is awaited.
    async fn reset(&mut self) {
        std::future::pending::<()>().await
    }
    /// Sends (or buffers) the response head. False: the client is gone.
    #[allow(clippy::too_many_arguments)]
    async fn send_head(
        &mut self,
        up: &[u8],
        resp: &ResponseHead,
        kind: BodyKind,
        mods: &[&HeaderMods; 4],
        attempt_count: Option<u32>,
        end: bool,
    ) -> Result<bool, HttpError>;
    /// Sends (or buffers) response payload. False: the client is gone.
    async fn send_body(&mut self, chunk: Chunk<'_>, last: bool) -> bool;
    /// Ends the response body (with trailers where the client takes them).
    async fn end_body(&mut self, trailers: Option<http::HeaderMap>) -> bool;
    /// Writes what is buffered, before the proxy waits. False: the client is gone.
    async fn flush(&mut self) -> bool;
    /// The response stopped part-way: reset the stream or close the connection.
    fn abort(&mut self, reason: h2::Reason);
    /// The client went away (counted and flagged).
    fn client_gone(&mut self);
    /// Whether an upgrade is in progress (a 101 then tunnels the connection).
    fn upgrading(&self) -> bool {
        false
    }
    /// Splices the connection to `conn` after a 101.
    async fn tunnel(
        &mut self,
        _conn: crate::upstream::Conn,
        _cluster: &Cluster,
        _idle: Option<Duration>,
    ) {
    }
    /// Whether this is the only request in progress on the core: a write then goes out at
    /// once rather than with the driver's next submission.
    fn alone(&self) -> bool {
        false
    }
    /// When the upstream response ended, for the downstream request time.
    fn set_finished(&mut self, at: Instant);
    fn is_head_request(&self) -> bool {
        let head = self.head();
        self.buf()[head.method.clone()].eq_ignore_ascii_case(b"HEAD")
    }
}

/// The response head of the attempt whose outcome stands.
struct Outcome<'c> {
    pub up: Up,
    pub sent: Instant,
    pub in_flight: UpstreamRequest<'c>,
}

/// Forwards a routed request to its cluster and its response back. `Err`: answered with
/// the error's local reply (nothing was sent downstream yet).
pub(crate) async fn forward<D: Downstream>(
    d: &mut D,
    fw: &Forwarding<'_>,
    authority: std::ops::Range<usize>,
    path: &std::ops::Range<usize>,
) -> Result<(), HttpError> {
    let f = fw.f;
    let ctx = d.ctx().clone();
    let snapshot = d.snapshot_arc();
    let key = if f.more().hash_policy.is_empty() {
        None
    } else {
        crate::http::forwarding::request_hash(d, &f.more().hash_policy)
    };
    let picked = pick_upstream(&ctx, &snapshot, f, fw.weighted, d.downstream(), key);
    if d.hcm().timed() {
        let chosen = || crate::http::forwarding::chosen_cluster(&snapshot, f, fw.weighted);
        d.log_mut().cluster = picked
            .as_ref()
            .map_or_else(|_| chosen(), |p| Some(p.1.name.clone()));
    }
    let (weighted, cluster, ep, _permit) = picked?;
    let host_metadata = d.hcm().tracing.as_ref().is_some_and(|t| t.host_metadata);
    let log = d.log_mut();
    log.upstream = Some(ep.address);
    log.upstream_workload.clone_from(&ep.workload);
    log.host_metadata = ep.metadata.as_ref().filter(|_| host_metadata).cloned();
    let h2 = cluster
        .http2
        .filter(|_| d.is_h2() || !cluster.http2_follows_downstream);
    if h2.is_some() && d.upgrading() {
        return Err(HttpError::UpgradeToHttp2Unsupported);
    }
    let core = ctx.core;
    let cs = cluster.stats.core(core);

    // The id (unless a filter set it: ext_authz sends it) and the tracing decision.
    d.decide_request_id();
    let request_id = d.log().request_id;
    let resp_mods: [&HeaderMods; 4] = [
        weighted.map_or(&NO_MODS, |w| &w.response_headers),
        fw.resp_mods[0],
        fw.resp_mods[1],
        fw.resp_mods[2],
    ];
    let idle = f.more().idle_timeout.or(d.hcm().stream_idle_timeout);
    let (timeout, from_grpc) = attempt::route_timeout(d, fw);
    // With max_grpc_timeout, the gRPC request's timeout goes upstream as its grpc-timeout.
    let grpc_timeout = timeout.filter(|_| from_grpc);
    let mut deadline = Deadline::At(timeout, None);
    if f.attempt_count.1 {
        d.log_mut().attempt_count_in_response = true;
    }
    let mut resp = d.take_resp_head();
    let fw_here = Forwarding {
        f,
        weighted,
        prefix_len: fw.prefix_len,
        req_mods: fw.req_mods,
        resp_mods: fw.resp_mods,
    };
    // The attempts (inline, not a function of its own: every future level is copied on
    // every request), until one's outcome stands: its response head, or its error.
    let outcome: Result<Outcome<'_>, HttpError> = 'attempts: {
        let ctx: &CoreCtx = &ctx;
        let fw = &fw_here;
        let first = ep;
        let resp = &mut resp;
        let deadline = &mut deadline;
        let f = fw.f;
        let mut per_try = f.retry.as_ref().and_then(|p| p.per_try_timeout);
        let mut retry = Retry::new(f.retry.as_deref(), d, &mut per_try);
        let per_try_idle = f.retry.as_ref().and_then(|p| p.per_try_idle_timeout);
        // With retries, the route timeout starts when the request is complete (as in
        // Envoy), so it bounds failed connects and their back-off too.
        if retry.is_some() && d.request_done() {
            deadline.started(Instant::now());
        }
        let replay = match &retry {
            Some(_) if !d.request_done() => Some(Rc::new(RefCell::new(Replay::default()))),
            _ => None,
        };
        let mut ep = first;
        let mut attempt = 1u32;
        let mut mirrors = None;
        d.log_mut().attempts = 1;
        loop {
            let mut head = d.take_up_buf();
            head.clear();
            upstream_head(
                &mut head,
                d,
                HeadParts {
                    f,
                    prefix_len: fw.prefix_len,
                    authority: authority.clone(),
                    path,
                    weighted: fw.weighted,
                    req_mods: fw.req_mods,
                    ep: &ep,
                    attempt,
                    timeout: attempt::expected_timeout(deadline, per_try, attempt),
                    grpc_timeout,
                },
                request_id.as_ref().map(|r| &r[..]),
            );
            if attempt == 1 && !f.mirrors.is_empty() {
                let t = deadline.timeout();
                mirrors = mirror::start(d, fw, cluster, &head, &authority, t);
            }
            d.log_mut().upstream = Some(ep.address);
            let from_replay = replay.as_ref().is_some_and(|r| r.borrow().touched);
            let body = Body {
                replay: replay.as_ref(),
                from_replay,
                mirrors: mirrors.as_ref(),
            };
            let mut sent_any = false;
            // One attempt: connect or reuse, send, and wait for the response head (inline,
            // not a function of its own: each future level is copied on every request).
            let verify = !d.request_in_hand();
            let pooled = match h2 {
                // The request's start, where it was read, is recent enough for the
                // pool's idle limits (no clock read on the keep-alive path).
                None => Up::pooled(ctx, cluster, &ep, verify, d.log().started),
                Some(_) => None,
            };
            let opened = match pooled {
                Some(up) => Ok(up),
                None => Up::open(ctx, cluster, &ep, h2).await,
            };
            let local = opened.as_ref().ok().and_then(Up::local);
            d.log_mut().set_upstream_local(local);
            let outcome = match opened {
                Err(e) => {
                    d.put_up_buf(head);
                    Err(e)
                }
                Ok(mut up) => {
                    if d.hcm().filters.istio_stats {
                        d.log_mut().upstream_principals = up.principals().cloned();
                    }
                    // In flight from here to the end of the exchange, whatever ends it.
                    let in_flight = ctx.upstream_request(cluster, ep.address);
                    if attempt == 1 && d.expects_continue() && !Box::pin(d.continue_100()).await {
                        d.put_up_buf(head);
                        break 'attempts Err(HttpError::ClientGone);
                    }
                    let a = Attempt {
                        cluster,
                        core: ctx.core,
                        deadline: &mut *deadline,
                        idle,
                        per_try: (per_try, per_try_idle),
                        body,
                        sent_any: &mut sent_any,
                    };
                    let sent = match &mut up {
                        Up::H1 { conn, reused, .. } => {
                            exchange_h1(conn, reused, d, &ep, head, resp, a).await
                        }
                        // Boxed: the keep-alive path's future would otherwise carry it.
                        Up::H2(_) => crate::ctx::boxed(|| up.exchange_h2(d, head, resp, a)).await,
                    };
                    sent.map(|sent| Outcome {
                        up,
                        sent,
                        in_flight,
                    })
                }
            };
            if cluster.outlier.is_some() {
                let grpc = crate::http::filter::istio::is_grpc(d);
                attempt::to_detector(ctx, cluster, ep.address, &outcome, resp, grpc);
            }
            let Some(rs) = retry.as_mut() else {
                break 'attempts outcome;
            };
            rs.sent |= sent_any;
            if replay.as_ref().is_some_and(|r| !r.borrow().replayable()) {
                break 'attempts outcome;
            }
            let verdict = match &outcome {
                Ok(o) => rs.on_response(resp, o.up.head_bytes(resp), cluster, ctx.core),
                Err(e) => match failure(e) {
                    Some(kind) => rs.on_failure(kind, cluster, ctx.core),
                    None => break 'attempts outcome,
                },
            };
            let backoff = match verdict {
                Verdict::Done => break 'attempts outcome,
                Verdict::LimitExceeded => {
                    d.log_mut()
                        .flags
                        .set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                    break 'attempts outcome;
                }
                Verdict::Overflow => {
                    d.log_mut().flags.set(ResponseFlags::UPSTREAM_OVERFLOW);
                    break 'attempts outcome;
                }
                Verdict::Retry(b) => b,
            };
            rs.tried(ep.address);
            // The attempt is given up: its connection closes (HTTP/1.1) or its stream is
            // reset (HTTP/2).
            drop(outcome);
            // The route timeout bounds the back-off too.
            if let Some(at) = deadline.at().filter(|at| Instant::now() + backoff >= *at) {
                monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
                break 'attempts Err(send::global_timeout(d, cluster));
            }
            monoio::time::sleep(backoff).await;
            attempt += 1;
            d.log_mut().attempts = attempt;
            if cluster.discovery != Discovery::OriginalDst {
                ep = pick_again(ctx, cluster, rs).unwrap_or(ep);
            }
        }
    };
    let Outcome {
        mut up,
        sent,
        in_flight,
    } = match outcome {
        Ok(o) => o,
        Err(HttpError::ClientGone) => {
            d.put_resp_head(resp);
            d.client_gone();
            return Ok(());
        }
        Err(HttpError::UpstreamTimeout) if attempt::alt_timeout_response(d) => {
            d.put_resp_head(resp);
            return Err(HttpError::UpstreamTimeoutAlt);
        }
        Err(e) => {
            d.put_resp_head(resp);
            crate::http::local_reply::charge_abort(cs, &e);
            return Err(e);
        }
    };

    // The response head.
    let head_at = Instant::now();
    let service_time = head_at.saturating_duration_since(sent).as_millis() as u64;
    let suppress = d.hcm().suppress_envoy_headers;
    d.log_mut().service_time_ms = (!suppress).then_some(service_time);
    cs.count_status(resp.status, ClusterStat::UpstreamRq1xx as usize);
    let kind = if up.ended() {
        BodyKind::None
    } else {
        resp.body(d.is_head_request())
    };
    d.log_mut().status = resp.status;
    d.hcm().stats.core(core).inc(status_class_index(
        resp.status,
        HttpStat::DownstreamRq1xx as usize,
    ));
    let end = kind == BodyKind::None;
    // The filters decide on the head; a body a filter changes has no known length.
    let mut z = match d.filter_state().encodes_body() {
        true => encode_head(d, up.head_bytes(&resp), &resp, end),
        false => None,
    };
    let down_kind = match (&z, kind) {
        (Some(_), BodyKind::Length(_)) => BodyKind::Chunked,
        _ => kind,
    };
    let d_attempts = d.log().attempts.max(1);
    let ok = d
        .send_head(
            up.head_bytes(&resp),
            &resp,
            down_kind,
            &resp_mods,
            f.attempt_count.1.then_some(d_attempts),
            end,
        )
        .await;
    let status = resp.status;
    let resp_len = resp.len;
    let resp_close = resp.close;
    d.put_resp_head(resp);
    if !ok? {
        d.client_gone();
        return Ok(());
    }
    if status == 101 && d.upgrading() {
        if let Up::H1 { conn, .. } = up {
            // Boxed, as every cold path here: see `forward`'s note on future sizes.
            Box::pin(body::upgraded(d, conn, cluster, idle, resp_len)).await;
            return Ok(());
        }
    }

    // The response body, as payload; the route timeout covers it too, as in Envoy.
    let grpc = d.filter_state().grpc.clone().filter(|_| status == 200);
    let mut frames = grpc.as_ref().map(|c| c.frames(true));
    let h1_up = matches!(up, Up::H1 { .. });
    let mut framing = Framing::new(kind, Mode::ChunkDecode);
    up.skip_head(resp_len);
    if end {
        up.no_body();
    }
    let mut waited = false;
    let mut bytes = 0u64;
    loop {
        loop {
            // With body filters, the body's end is one more (empty) piece that finishes it.
            let (chunk, finish) = match up.buffered(&mut framing) {
                Ok(Some(c)) => (c, false),
                Ok(None) => match &z {
                    Some(zs) if !zs.finished() && up.body_done(&framing) => {
                        (Chunk::Slice(&[]), true)
                    }
                    _ => break,
                },
                Err(()) => {
                    d.log_mut()
                        .flags
                        .set(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);
                    d.abort(h2::Reason::PROTOCOL_ERROR);
                    return Ok(());
                }
            };
            let n = chunk.len();
            if let Some(fr) = &mut frames {
                fr.inspect(chunk.as_slice());
            }
            // An HTTP/1.1 body's end is known with its last bytes.
            let last = h1_up && framing.done();
            let encoding = z.is_some();
            // One call sends either (a second would keep `send_body` out of line).
            let (piece, last) = match &mut z {
                None => (chunk, last),
                // The encode-data phase: as Envoy, each piece flushed, the end finished
                // on its own.
                Some(zs) => match zs.data(chunk.as_slice(), finish) {
                    Ok(out) => (Chunk::Slice(out), false),
                    Err(()) => {
                        d.abort(h2::Reason::INTERNAL_ERROR);
                        return Ok(());
                    }
                },
            };
            let sent = piece.len();
            // Nothing yet (zstd holds its output until the end): nothing to send.
            if (sent > 0 || !encoding) && !d.send_body(piece, last).await {
                d.log_mut().bytes_sent = bytes;
                d.client_gone();
                return Ok(());
            }
            if let Some(zs) = &mut z {
                zs.sent();
            }
            bytes += sent as u64;
            up.passed(n);
        }
        if up.body_done(&framing) {
            break;
        }
        if !d.flush().await {
            d.log_mut().bytes_sent = bytes;
            d.client_gone();
            return Ok(());
        }
        waited = true;
        let limit = wait_limit(idle, deadline.at());
        // The limit covers a deadline already known; one a task starts later is raced.
        let r = match &deadline {
            Deadline::At(..) => up.read_body(&mut framing, limit).await,
            Deadline::Shared(_) => monoio::select! {
                r = up.read_body(&mut framing, limit) => r,
                _ = deadline.passed() => Err(RecvError::Timeout),
            },
        };
        match r {
            Ok(()) => {}
            Err(e) => {
                d.log_mut().bytes_sent = bytes;
                body_failed(d, cluster, e, &deadline);
                return Ok(());
            }
        }
    }
    d.log_mut().bytes_sent = bytes;
    let trailers = match h1_up {
        true => Ok(None),
        false => crate::ctx::boxed(|| up.trailers(idle, &deadline)).await,
    };
    let trailers = match trailers {
        Ok(t) => t,
        Err(e) => {
            body_failed(d, cluster, e, &deadline);
            return Ok(());
        }
    };
    if let (Some(t), Some(call)) = (&trailers, grpc) {
        call.trailers(t);
    }
    if !(d.end_body(trailers).await && d.flush().await) {
        d.client_gone();
        return Ok(());
    }
    if let Up::H1 { .. } = &up {
        cs.add(
            ClusterStat::UpstreamCxRxBytesTotal as usize,
            resp_len as u64 + framing.bytes,
        );
    }
    // When the body came whole with the head, the response ended then.
    let ended = if waited {
        in_flight.complete(sent)
    } else {
        in_flight.complete_at(sent, head_at)
    };
    d.set_finished(ended);
    up.finish(&ctx, cluster, kind, resp_close, ended);
    Ok(())
}
