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

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ctx::CoreCtx;
use crate::http::body::{wait_limit, Framing, Mode};
use crate::http::error::HttpError;
use crate::http::filter::FilterHost;
use crate::http::flags::ResponseFlags;
use crate::http::forwarding::{pick_upstream, upstream_head, HeadParts, NO_MODS};
use crate::http::h1::{BodyKind, ResponseHead};
use crate::http::h2::RouteDeadline;
use crate::http::request::Forwarding;
use crate::model::headers::HeaderMods;
use crate::model::{Cluster, Snapshot};
use crate::stats::{status_class_index, ClusterStat, HttpStat};

mod send;
pub(crate) mod up;

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
    /// Whether the client speaks HTTP/2 (a cluster that follows the downstream protocol
    /// then uses HTTP/2 too).
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
        attempt_count: bool,
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

/// The route timeout of a forwarded request. As in Envoy it starts once the request has
/// fully gone upstream, and covers the response's head and body.
pub(crate) enum Deadline {
    /// Known once the request is sent (`None` until then, or without a timeout).
    At(Option<Duration>, Option<Instant>),
    /// The request body streams in its own task, which marks its end.
    Shared(RouteDeadline),
}

impl Deadline {
    fn started(&mut self, at: Instant) {
        match self {
            Deadline::At(t, d) => *d = t.map(|t| at + t),
            Deadline::Shared(r) => r.request_done(),
        }
    }

    pub fn at(&self) -> Option<Instant> {
        match self {
            Deadline::At(_, d) => *d,
            Deadline::Shared(r) => r.at(),
        }
    }

    fn expired(&self) -> bool {
        self.at().is_some_and(|d| Instant::now() >= d)
    }

    async fn passed(&self) {
        match self {
            Deadline::At(_, None) => std::future::pending().await,
            Deadline::At(_, Some(at)) => {
                monoio::time::sleep(at.saturating_duration_since(Instant::now())).await
            }
            Deadline::Shared(r) => RouteDeadline::passed(Some(r)).await,
        }
    }
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
    let (weighted, cluster, ep, _permit) =
        pick_upstream(&ctx, &snapshot, f, fw.weighted, d.downstream())?;
    if !d.hcm().access_logs.is_empty() {
        d.log_mut().cluster = Some(cluster.name.clone());
    }
    d.log_mut().upstream = Some(ep.address);
    let h2 = cluster
        .http2
        .filter(|_| d.is_h2() || !cluster.http2_follows_downstream);
    if h2.is_some() && d.upgrading() {
        return Err(HttpError::UpgradeToHttp2Unsupported);
    }
    let core = ctx.core;
    let cs = cluster.stats.core(core);

    // The upstream head, in HTTP/1 form.
    let request_id = crate::http::forwarding::request_id(d);
    d.log_mut().request_id = request_id;
    let mut head = d.take_up_buf();
    head.clear();
    upstream_head(
        &mut head,
        d,
        HeadParts {
            f,
            prefix_len: fw.prefix_len,
            authority,
            path,
            weighted,
            req_mods: fw.req_mods,
            ep: &ep,
        },
        request_id.as_ref().map(|r| &r[..]),
    );
    let resp_mods: [&HeaderMods; 4] = [
        weighted.map_or(&NO_MODS, |w| &w.response_headers),
        fw.resp_mods[0],
        fw.resp_mods[1],
        fw.resp_mods[2],
    ];
    let idle = f.idle_timeout.or(d.hcm().stream_idle_timeout);

    let verify = !d.request_in_hand();
    let pooled = match h2 {
        None => Up::pooled(&ctx, cluster, &ep, verify),
        Some(_) => None,
    };
    let mut up = match pooled {
        Some(up) => up,
        None => match Up::open(&ctx, cluster, &ep, h2).await {
            Ok(u) => u,
            Err(e) => {
                d.put_up_buf(head);
                return Err(e);
            }
        },
    };
    // In flight from here to the end of the exchange, whatever ends it.
    let in_flight = ctx.upstream_request(cluster, ep.address);
    if d.expects_continue() && !Box::pin(d.continue_100()).await {
        d.put_up_buf(head);
        d.client_gone();
        return Ok(());
    }

    let mut deadline = Deadline::At(f.timeout, None);
    let mut resp = d.take_resp_head();
    let sent = up
        .exchange(d, cluster, &ep, head, &mut resp, &mut deadline, idle)
        .await;
    let sent = match sent {
        Ok(s) => s,
        Err(e) => {
            d.put_resp_head(resp);
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
    let ok = d
        .send_head(
            up.head_bytes(&resp),
            &resp,
            kind,
            &resp_mods,
            f.attempt_count.1,
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
        if let Up::H1 { mut conn, .. } = up {
            // What the upstream sent after the 101 belongs to the tunnel.
            conn.buf.drain(..resp_len);
            if !d.flush().await {
                d.client_gone();
                return Ok(());
            }
            // Boxed, as every cold path here: see `forward`'s note on future sizes.
            Box::pin(d.tunnel(conn, cluster, idle)).await;
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
            let chunk = match up.buffered(&mut framing) {
                Ok(Some(c)) => c,
                Ok(None) => break,
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
            if !d.send_body(chunk, last).await {
                d.log_mut().bytes_sent = bytes;
                d.client_gone();
                return Ok(());
            }
            bytes += n as u64;
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
                body_failed(d, cs, e, &deadline);
                return Ok(());
            }
        }
    }
    d.log_mut().bytes_sent = bytes;
    let trailers = match h1_up {
        true => Ok(None),
        false => Box::pin(up.trailers(idle, &deadline)).await,
    };
    let trailers = match trailers {
        Ok(t) => t,
        Err(e) => {
            body_failed(d, cs, e, &deadline);
            return Ok(());
        }
    };
    if let (Some(t), Some(call)) = (&trailers, grpc) {
        if let Some(v) = t.get("grpc-status") {
            call.charge(v.as_bytes());
        }
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
    d.set_finished(if waited {
        in_flight.complete(sent)
    } else {
        in_flight.complete_at(sent, head_at)
    });
    up.finish(&ctx, cluster, kind, resp_close);
    Ok(())
}

/// The upstream response stopped part-way through its body.
fn body_failed<D: Downstream>(
    d: &mut D,
    cs: &crate::stats::CoreCells,
    e: RecvError,
    deadline: &Deadline,
) {
    match e {
        RecvError::Timeout if deadline.expired() => {
            cs.inc(ClusterStat::UpstreamRqTimeout as usize);
            d.log_mut()
                .flags
                .set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            d.abort(h2::Reason::CANCEL);
        }
        RecvError::Timeout => {
            let core = d.core();
            d.hcm()
                .stats
                .core(core)
                .inc(HttpStat::DownstreamRqIdleTimeout as usize);
            d.log_mut().flags.set(ResponseFlags::STREAM_IDLE_TIMEOUT);
            d.abort(h2::Reason::CANCEL);
        }
        RecvError::Reset(reason) => {
            cs.inc(ClusterStat::UpstreamRqRxReset as usize);
            d.log_mut().flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
            d.abort(reason);
        }
    }
}
