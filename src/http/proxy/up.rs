//! The upstream side of a forwarded request: a connection from the core's HTTP/1.1
//! keep-alive pool, or a stream on a connection from its HTTP/2 pool. Both take the
//! request head in HTTP/1 form and give back the response head in that form, so the
//! lifecycle in `proxy` reads the same for either.

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;

use super::send::{exchange_h2, Attempt};
use super::{Chunk, Deadline, Downstream};
use crate::ctx::CoreCtx;
use crate::http::body::Framing;
use crate::http::error::HttpError;
use crate::http::forwarding::with_timeout;
use crate::http::h1::{self, BodyKind, ResponseHead};
use crate::http::h2::{convert, reason};
use crate::model::{Cluster, Endpoint, Http2Settings};
use crate::stats::ClusterStat;
use crate::upstream::h2pool::{H2Conn, StreamGuard};
use crate::upstream::Conn;

/// Why the response stopped coming.
pub(crate) enum RecvError {
    /// The route deadline or the idle timeout passed.
    Timeout,
    /// The upstream reset or closed mid-body: the reset to pass on.
    Reset(h2::Reason),
}

/// An upstream for one request. The HTTP/1.1 connection is inline: the keep-alive path
/// must not allocate per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Up {
    H1 {
        conn: Conn,
        /// From the pool (it may have been closed while idle).
        reused: bool,
        /// Where the unread response bytes start in `conn.buf`.
        at: usize,
        /// Decoded payload of a chunked response.
        scratch: Vec<u8>,
        /// Bytes of `scratch` handed on (drained on the next call).
        scratch_used: bool,
    },
    /// Boxed: an HTTP/2 stream's state is larger, and every request's future would
    /// carry its size.
    H2(Box<H2Up>),
}

/// A stream on an upstream HTTP/2 connection.
pub(crate) struct H2Up {
    conn: H2Conn,
    _slot: Option<StreamGuard>,
    /// The response head in HTTP/1 form.
    head: Vec<u8>,
    rx: Option<RecvStream>,
    /// The response ended with its head.
    ended: bool,
    /// The DATA frame received and not yet passed on.
    pending: Option<Bytes>,
    /// Window to give back once what was passed on went out.
    release: usize,
    /// The stream ended (no more DATA).
    done: bool,
}

impl Up {
    /// HTTP/2: a pooled connection with room for a stream, or a new one; HTTP/1.1: a new
    /// connection (the pool was looked at first, by [`Up::pooled`]).
    pub(crate) async fn open(
        ctx: &CoreCtx,
        cluster: &Cluster,
        ep: &Endpoint,
        h2: Option<Http2Settings>,
    ) -> Result<Up, HttpError> {
        if let Some(settings) = h2 {
            let conn =
                crate::ctx::boxed(|| crate::http::h2::upstream(ctx, cluster, ep, settings)).await?;
            return Ok(Up::H2(Box::new(H2Up {
                conn,
                _slot: None,
                head: Vec::new(),
                rx: None,
                ended: false,
                pending: None,
                release: 0,
                done: false,
            })));
        }
        let conn = crate::ctx::boxed(|| crate::upstream::connect(ctx.core, cluster, ep))
            .await
            .map_err(HttpError::connect)?;
        Ok(Up::h1(conn, false))
    }

    /// An idle HTTP/1.1 connection from the core's pool, without awaiting anything (the
    /// keep-alive path). `verify`: as for [`Up::open`].
    #[inline]
    pub(crate) fn pooled(
        ctx: &CoreCtx,
        cluster: &Cluster,
        ep: &Endpoint,
        verify: bool,
        now: Option<std::time::Instant>,
    ) -> Option<Up> {
        let conn =
            ctx.upstreams
                .borrow_mut()
                .checkout(ep.address, cluster.pool_key(ep), verify, now)?;
        Some(Up::h1(conn, true))
    }

    /// This side's address on the connection.
    pub(crate) fn local(&self) -> Option<std::net::SocketAddr> {
        match self {
            Up::H1 { conn, .. } => conn.local.as_deref().copied(),
            Up::H2(h) => h.conn.local.as_deref().copied(),
        }
    }

    /// Both ends' identities, on a TLS connection.
    pub(crate) fn principals(
        &self,
    ) -> Option<&std::sync::Arc<crate::model::tls::UpstreamPrincipals>> {
        match self {
            Up::H1 { conn, .. } => conn.principals.as_ref(),
            Up::H2(h) => h.conn.principals.as_ref(),
        }
    }

    fn h1(conn: Conn, reused: bool) -> Up {
        Up::H1 {
            conn,
            reused,
            at: 0,
            scratch: Vec::new(),
            scratch_used: false,
        }
    }

    /// Sends the request on an HTTP/2 stream and reads the response head into `resp`.
    /// Returns when the request was sent. (An HTTP/1.1 connection's exchange is
    /// `send::exchange_h1`, called directly: one future level less on the keep-alive path.)
    pub(crate) async fn exchange_h2<D: Downstream>(
        &mut self,
        d: &mut D,
        head: Vec<u8>,
        resp: &mut ResponseHead,
        a: Attempt<'_>,
    ) -> Result<Instant, HttpError> {
        let Up::H2(h) = self else {
            unreachable!("exchange_h2 on an HTTP/1.1 connection");
        };
        let H2Up {
            conn,
            _slot,
            head: resp_head,
            rx,
            ended,
            ..
        } = &mut **h;
        *_slot = Some(conn.stream());
        let (cluster, core) = (a.cluster, d.core());
        if conn.max_streams == Some(conn.state.opened.get()) {
            cluster
                .stats
                .core(core)
                .inc(ClusterStat::UpstreamCxMaxRequests as usize);
        }
        let r = exchange_h2(conn, d, &head, a).await;
        d.put_up_buf(head);
        let (parts, body, sent) = r?;
        // Envoy's codec counts `:status` among the headers; past the cluster's
        // `max_headers_count` it resets the stream and reports a remote reset.
        if parts.headers.len() + 1 > cluster.max_headers_count {
            drop(body);
            let cs = cluster.stats.core(core);
            cs.inc(ClusterStat::UpstreamRqRxReset as usize);
            return Err(HttpError::UpstreamRemoteReset);
        }
        *ended = body.is_end_stream();
        convert::response_to_h1(&parts, *ended, resp_head);
        *rx = Some(body);
        match h1::parse_response(resp_head, 1 << 20, cluster.max_headers_count, resp) {
            Ok(Some(())) => Ok(sent),
            _ => Err(HttpError::UpstreamProtocol),
        }
    }

    /// The response has no body to read (a HEAD request's, a 204's): an HTTP/2 stream's
    /// remains are not waited for.
    pub(crate) fn no_body(&mut self) {
        if let Up::H2(h) = self {
            h.rx = None;
            h.done = true;
        }
    }

    /// The response ended with its head (HTTP/2 END_STREAM on HEADERS).
    pub(crate) fn ended(&self) -> bool {
        matches!(self, Up::H2(h) if h.ended)
    }

    /// The response head in HTTP/1 form.
    pub(crate) fn head_bytes<'a>(&'a self, resp: &ResponseHead) -> &'a [u8] {
        match self {
            Up::H1 { conn, .. } => &conn.buf[..resp.len],
            Up::H2(h) => &h.head,
        }
    }

    /// The body starts after the head's `len` bytes.
    pub(crate) fn skip_head(&mut self, len: usize) {
        if let Up::H1 { at, .. } = self {
            *at = len;
        }
    }

    /// Payload already received, without waiting. `Err`: the framing is broken.
    pub(crate) fn buffered(&mut self, framing: &mut Framing) -> Result<Option<Chunk<'_>>, ()> {
        match self {
            Up::H1 {
                conn,
                at,
                scratch,
                scratch_used,
                ..
            } => {
                if *scratch_used {
                    scratch.clear();
                    *scratch_used = false;
                }
                if framing.done() || *at >= conn.buf.len() {
                    return Ok(None);
                }
                let input = &conn.buf[*at..];
                if framing.is_chunked() {
                    let n = framing.consume_into(input, scratch).map_err(|_| ())?;
                    *at += n;
                    if scratch.is_empty() {
                        return Ok(None);
                    }
                    *scratch_used = true;
                    Ok(Some(Chunk::Slice(scratch)))
                } else {
                    let start = *at;
                    let n = framing.consume_raw(input).map_err(|_| ())?;
                    *at += n;
                    Ok((n > 0).then(|| Chunk::Slice(&conn.buf[start..start + n])))
                }
            }
            Up::H2(h) => Ok(h.pending.take().map(Chunk::Bytes)),
        }
    }

    /// `n` payload bytes went on downstream: HTTP/2 window goes back to the upstream.
    pub(crate) fn passed(&mut self, n: usize) {
        if let Up::H2(h) = self {
            if let Some(rx) = &mut h.rx {
                let _ = rx.flow_control().release_capacity(n.min(h.release));
            }
            h.release = 0;
        }
    }

    pub(crate) fn body_done(&self, framing: &Framing) -> bool {
        match self {
            Up::H1 { .. } => framing.done(),
            Up::H2(h) => (h.done || h.ended) && h.pending.is_none(),
        }
    }

    /// Waits for more of the response body.
    pub(crate) async fn read_body(
        &mut self,
        framing: &mut Framing,
        limit: Option<Duration>,
    ) -> Result<(), RecvError> {
        match self {
            Up::H1 { conn, at, .. } => {
                conn.buf.drain(..*at);
                *at = 0;
                if conn.buf.capacity() - conn.buf.len() < crate::http::body::CHUNK / 4 {
                    conn.buf.reserve(crate::http::body::CHUNK);
                }
                let buf = std::mem::take(&mut conn.buf);
                let read = crate::io::read_more(&mut conn.stream, buf);
                let Some((res, buf)) = with_timeout(limit, read).await else {
                    return Err(RecvError::Timeout);
                };
                conn.buf = buf;
                match res {
                    Ok(0) | Err(_) if framing.end_on_eof() => Ok(()),
                    Ok(0) | Err(_) => Err(RecvError::Reset(h2::Reason::CANCEL)),
                    Ok(_) => Ok(()),
                }
            }
            Up::H2(h) => loop {
                let H2Up {
                    rx,
                    pending,
                    release,
                    done,
                    ..
                } = &mut **h;
                let Some(rx) = rx else {
                    *done = true;
                    return Ok(());
                };
                match with_timeout(limit, rx.data()).await {
                    None => return Err(RecvError::Timeout),
                    Some(None) => {
                        *done = true;
                        return Ok(());
                    }
                    Some(Some(Err(e))) => {
                        tracing::debug!("upstream HTTP/2 stream reset mid-body: {e}");
                        return Err(RecvError::Reset(reason(&e)));
                    }
                    Some(Some(Ok(data))) if data.is_empty() => continue,
                    Some(Some(Ok(data))) => {
                        *release = data.len();
                        *pending = Some(data);
                        return Ok(());
                    }
                }
            },
        }
    }

    /// The response's trailers (HTTP/2), after its body.
    pub(crate) async fn trailers(
        &mut self,
        idle: Option<Duration>,
        deadline: &Deadline,
    ) -> Result<Option<http::HeaderMap>, RecvError> {
        match self {
            Up::H2(h) if !h.ended && h.rx.is_some() => {
                let Some(rx) = &mut h.rx else { return Ok(None) };
                let t = monoio::select! {
                    t = with_timeout(idle, rx.trailers()) => t.ok_or(RecvError::Timeout)?,
                    _ = deadline.passed() => return Err(RecvError::Timeout),
                };
                t.map_err(|e| RecvError::Reset(reason(&e)))
            }
            _ => Ok(None),
        }
    }

    /// The exchange ended cleanly: an HTTP/1.1 connection goes back to the pool when it
    /// can serve another request.
    /// `ended`: when the response ended.
    pub(crate) fn finish(
        self,
        ctx: &CoreCtx,
        cluster: &Cluster,
        kind: BodyKind,
        close: bool,
        ended: std::time::Instant,
    ) {
        if let Up::H1 { mut conn, at, .. } = self {
            let reusable = kind != BodyKind::UntilClose
                && !close
                && at >= conn.buf.len()
                && cluster
                    .max_requests_per_connection
                    .is_none_or(|m| conn.requests < m);
            if reusable {
                conn.buf.clear();
                ctx.upstreams.borrow_mut().checkin(conn, ended);
            }
        }
    }
}
