//! An HTTP/1.1 connection as the forwarding lifecycle's downstream (`proxy::Downstream`):
//! the request body is read from the bytes after the head and then the socket, framing
//! removed; the response is framed for the client (Content-Length as the upstream gave
//! it, chunked otherwise, close-delimited for HTTP/1.0) and written when the proxy is
//! about to wait, so a response whose body came with its head leaves in one write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use crate::http::body::{chunk_header, Framing, Mode, CHUNK};
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::h1::{BodyKind, ResponseHead};
use crate::http::proxy::{Chunk, DownError, Downstream};
use crate::http::request::Forwarding;
use crate::http::write_headers;
use crate::model::headers::HeaderMods;
use crate::model::Snapshot;
use crate::stats::HttpStat;

use super::*;

/// What forwarding one request keeps on the connection.
#[derive(Default)]
pub(super) struct Body {
    /// The request body started to be read: what follows the head moved to `pending`.
    started: bool,
    framing: Option<Framing>,
    /// Decoded payload of a chunked request.
    scratch: Vec<u8>,
    /// Bytes of `pending` handed on as payload (dropped once passed).
    passing: usize,
    /// The buffer the upstream request is written in.
    up_out: Vec<u8>,
    /// The response goes chunked to the client.
    chunked_out: bool,
    /// The connection closes after this response.
    close_after: bool,
    /// The response stopped part-way (or the connection was tunnelled): close.
    broken: bool,
}

impl Body {
    /// Lets go of the buffers kept from request to request (a cold connection holds none).
    pub(super) fn release(&mut self) {
        self.scratch = Vec::new();
        self.up_out = Vec::new();
    }
}

impl Connection {
    /// Proxies the request to the route's cluster (`proxy::forward`), then leaves the
    /// connection at the next request, or closed when this one could not end cleanly.
    pub(super) async fn forward(
        &mut self,
        fw: &Forwarding<'_>,
        authority: std::ops::Range<usize>,
        path: std::ops::Range<usize>,
    ) -> Result<Next, HttpError> {
        let b = &mut self.fwd;
        // A filter that read the body's start (ext_authz) started it: keep what it read.
        if self.filters.request_body.is_none() {
            b.started = false;
        }
        b.broken = false;
        b.close_after = false;
        let r = crate::http::proxy::forward(self, fw, authority, &path).await;
        // Payload handed on but not yet dropped (a send that failed): it is consumed,
        // never the start of a next request.
        let passing = std::mem::take(&mut self.fwd.passing);
        self.pending.drain(..passing.min(self.pending.len()));
        if self.fwd.started {
            let done = self.fwd.framing.as_ref().is_some_and(Framing::done);
            if done {
                // What follows the body is the next request.
                let pending = std::mem::take(&mut self.pending);
                self.buf.extend_from_slice(&pending);
                self.pending = pending;
            } else {
                self.head.close = true;
            }
            self.head.body = BodyKind::None;
        }
        // Don't keep oversized buffers from a large body for the connection's life.
        if self.out.capacity() > 4 * CHUNK {
            self.out = Vec::new();
        }
        match r {
            Err(HttpError::ClientGone) => Ok(Next::Close),
            Err(e) => Err(e),
            Ok(()) if self.fwd.broken || self.fwd.close_after => Ok(Next::Close),
            Ok(()) => Ok(Next::KeepAlive),
        }
    }

    /// Answers `Expect: 100-continue` itself, as Envoy does by default. False when the
    /// client is gone.
    pub(super) async fn send_100_continue(&mut self) -> bool {
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
    pub(super) fn max_duration_reached(&mut self) -> Result<Next, HttpError> {
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

    pub(super) fn start_body(&mut self) {
        if !self.fwd.started {
            self.fwd.started = true;
            self.pending = self.take_after_head();
            self.fwd.framing = Some(Framing::new(self.head.body, Mode::ChunkDecode));
            self.fwd.passing = 0;
        }
    }
}

impl Downstream for Connection {
    fn ctx(&self) -> &std::rc::Rc<CoreCtx> {
        &self.ctx
    }
    fn snapshot_arc(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }
    fn downstream(&self) -> &crate::ctx::Downstream {
        &self.down
    }
    fn is_h2(&self) -> bool {
        false
    }
    fn request_done(&self) -> bool {
        match &self.fwd.framing {
            Some(f) if self.fwd.started => f.done(),
            _ => matches!(self.head.body, BodyKind::None | BodyKind::Length(0)),
        }
    }
    fn request_in_hand(&self) -> bool {
        let after_head = self.buf.len().saturating_sub(self.head.len) as u64;
        match self.head.body {
            BodyKind::None => true,
            BodyKind::Length(n) => n <= after_head,
            _ => false,
        }
    }
    fn take_up_buf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.fwd.up_out)
    }
    fn put_up_buf(&mut self, buf: Vec<u8>) {
        if buf.capacity() <= 4 * CHUNK {
            self.fwd.up_out = buf;
        }
    }
    fn take_resp_head(&mut self) -> ResponseHead {
        std::mem::take(&mut self.resp_head)
    }
    fn put_resp_head(&mut self, head: ResponseHead) {
        self.resp_head = head;
    }

    fn expects_continue(&self) -> bool {
        self.head.expect_continue && self.head.body != BodyKind::None
    }

    async fn continue_100(&mut self) -> bool {
        self.send_100_continue().await
    }

    fn buffered_body(&mut self) -> Result<Option<Chunk<'_>>, HttpError> {
        if self.head.body == BodyKind::None {
            return Ok(None);
        }
        self.start_body();
        let Some(framing) = &mut self.fwd.framing else {
            return Ok(None);
        };
        if framing.done() || self.pending.is_empty() {
            return Ok(None);
        }
        if framing.is_chunked() {
            self.fwd.scratch.clear();
            let n = framing
                .consume_into(&self.pending, &mut self.fwd.scratch)
                .map_err(HttpError::BadBody)?;
            self.pending.drain(..n);
            if self.fwd.scratch.is_empty() {
                return Ok(None);
            }
            return Ok(Some(Chunk::Slice(&self.fwd.scratch)));
        }
        let n = framing
            .consume_raw(&self.pending)
            .map_err(HttpError::BadBody)?;
        self.fwd.passing = n;
        Ok((n > 0).then(|| Chunk::Slice(&self.pending[..n])))
    }

    fn body_passed(&mut self, _n: usize) {
        let n = std::mem::take(&mut self.fwd.passing);
        self.pending.drain(..n);
    }

    async fn read_body(&mut self, idle: Option<Duration>) -> Result<(), DownError> {
        self.start_body();
        if self.pending.capacity() - self.pending.len() < CHUNK / 4 {
            self.pending.reserve(CHUNK - self.pending.len());
        }
        let read = crate::io::read_more(&mut self.stream, std::mem::take(&mut self.pending));
        let Some((res, buf)) = with_timeout(idle, read).await else {
            return Err(DownError::Idle);
        };
        self.pending = buf;
        match res {
            Ok(0) | Err(_) => {
                self.client_reset_mid_request();
                Err(DownError::Gone)
            }
            Ok(n) => {
                self.hcm
                    .stats
                    .core(self.ctx.core)
                    .add(HttpStat::DownstreamCxRxBytesTotal as usize, n as u64);
                Ok(())
            }
        }
    }

    async fn send_head(
        &mut self,
        up: &[u8],
        resp: &ResponseHead,
        kind: BodyKind,
        mods: &[&HeaderMods; 4],
        attempt_count: Option<u32>,
        _end: bool,
    ) -> Result<bool, HttpError> {
        let unframed = matches!(kind, BodyKind::Chunked | BodyKind::UntilClose);
        let downstream_10 = self.head.minor == 0;
        let chunked_out = unframed && !downstream_10;
        let close = self.must_close() || (unframed && downstream_10);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        write_headers::response_head(
            &mut out,
            self,
            up,
            resp,
            mods,
            chunked_out,
            close,
            self.log.service_time_ms,
            attempt_count,
        );
        self.log.sent_head(&out, self.hcm.log_needs.response_head);
        crate::http::trace::note_response_operation(&mut self.log, &self.hcm, up, resp);
        self.out = out;
        self.fwd.chunked_out = chunked_out;
        self.fwd.close_after = close;
        Ok(true)
    }

    async fn send_body(&mut self, chunk: Chunk<'_>, _last: bool) -> bool {
        let data = chunk.as_slice();
        if self.fwd.chunked_out {
            chunk_header(&mut self.out, data.len());
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(data);
        }
        self.out.len() < CHUNK || self.flush().await
    }

    async fn end_body(&mut self, _trailers: Option<http::HeaderMap>) -> bool {
        // Trailers are not sent to an HTTP/1.1 client, as in Envoy by default.
        if self.fwd.chunked_out {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
        true
    }

    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let alone = self.alone();
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all_now(out, alone).await;
        out.clear();
        self.out = out;
        res.is_ok()
    }

    fn abort(&mut self, _reason: h2::Reason) {
        self.fwd.broken = true;
    }

    fn client_gone(&mut self) {
        self.fwd.broken = true;
        Connection::client_gone(self);
    }

    fn upgrading(&self) -> bool {
        self.upgrade.is_some()
    }

    async fn tunnel(
        &mut self,
        conn: crate::upstream::Conn,
        cluster: &crate::model::Cluster,
        idle: Option<Duration>,
    ) {
        self.fwd.broken = true;
        Connection::tunnel(self, conn, cluster, idle).await;
    }

    fn alone(&self) -> bool {
        Connection::alone(self)
    }

    fn set_finished(&mut self, at: Instant) {
        self.finished = Some(at);
    }
}
