//! An HTTP/2 stream as the forwarding lifecycle's downstream (`proxy::Downstream`): its
//! request body comes DATA frame by DATA frame (or moves to its own task when the upstream
//! speaks HTTP/2 too), its response goes out under the client's flow control, trailers
//! included.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Stream;
use crate::http::error::HttpError;
use crate::http::forwarding::with_timeout;
use crate::http::h1::{BodyKind, ResponseHead};
use crate::http::h2::{convert, send_all};
use crate::http::proxy::{Chunk, DownError, Downstream};
use crate::http::write_headers;
use crate::model::headers::HeaderMods;
use crate::model::Snapshot;

impl Stream {
    /// Resets the stream (the response already started, or cannot be sent).
    pub(super) fn reset_stream(&mut self, reason: h2::Reason) {
        match &mut self.tx {
            Some(tx) => tx.send_reset(reason),
            None => self.respond.send_reset(reason),
        }
    }
}

impl Downstream for Stream {
    fn ctx(&self) -> &std::rc::Rc<crate::ctx::CoreCtx> {
        &self.ctx
    }
    fn snapshot_arc(&self) -> Arc<Snapshot> {
        self.snapshot.clone()
    }
    fn downstream(&self) -> &crate::ctx::Downstream {
        &self.down
    }
    fn is_h2(&self) -> bool {
        true
    }
    fn request_done(&self) -> bool {
        self.req_done && self.req_pending.is_none()
    }
    fn request_in_hand(&self) -> bool {
        self.req_done
    }
    fn take_up_buf(&mut self) -> Vec<u8> {
        super::reuse::bytes(1024)
    }
    fn put_up_buf(&mut self, buf: Vec<u8>) {
        super::reuse::give_bytes(buf);
    }
    fn take_resp_head(&mut self) -> ResponseHead {
        ResponseHead {
            headers: super::reuse::slots(),
            ..Default::default()
        }
    }
    fn put_resp_head(&mut self, head: ResponseHead) {
        super::reuse::give_slots(head.headers);
    }

    fn buffered_body(&mut self) -> Result<Option<Chunk<'_>>, HttpError> {
        Ok(self.req_pending.take().map(Chunk::Bytes))
    }

    fn body_passed(&mut self, n: usize) {
        // Window goes back to the client only once the bytes went on.
        if let Some(body) = &mut self.body {
            let _ = body.flow_control().release_capacity(n);
        }
        if self.req_done {
            self.body = None;
        }
    }

    async fn read_body(&mut self, idle: Option<Duration>) -> Result<(), DownError> {
        let Some(body) = &mut self.body else {
            self.req_done = true;
            return Ok(());
        };
        loop {
            match with_timeout(idle, body.data()).await {
                None => return Err(DownError::Idle),
                Some(None) => {
                    self.req_done = true;
                    self.body = None;
                    return Ok(());
                }
                Some(Some(Err(_))) => {
                    self.client_reset();
                    return Err(DownError::Gone);
                }
                // An empty DATA frame (often the one carrying END_STREAM).
                Some(Some(Ok(d))) if d.is_empty() => continue,
                Some(Some(Ok(d))) => {
                    self.log.bytes_received += d.len() as u64;
                    if body.is_end_stream() {
                        self.req_done = true;
                    }
                    self.req_pending = Some(d);
                    return Ok(());
                }
            }
        }
    }

    fn take_body_stream(&mut self) -> Option<h2::RecvStream> {
        // A body a filter read in part goes through the read loop, its start first.
        if self.req_pending.is_some() {
            return None;
        }
        let body = self.body.take()?;
        self.req_done = true;
        Some(body)
    }

    fn resets(&self) -> bool {
        true
    }

    async fn reset(&mut self) {
        let respond = &mut self.respond;
        let _ = poll_fn(|cx| respond.poll_reset(cx)).await;
        self.client_reset();
        self.responded = true;
    }

    async fn send_head(
        &mut self,
        up: &[u8],
        resp: &ResponseHead,
        _kind: BodyKind,
        mods: &[&HeaderMods; 4],
        attempt_count: Option<u32>,
        end: bool,
    ) -> Result<bool, HttpError> {
        let mut out = super::reuse::bytes(512);
        write_headers::response_head(
            &mut out,
            self,
            up,
            resp,
            mods,
            false,
            false,
            self.log.service_time_ms,
            attempt_count,
        );
        self.log.sent_head(&out, self.hcm.log_needs.response_head);
        crate::http::trace::note_response_operation(&mut self.log, &self.hcm, up, resp);
        let resp = convert::h1_to_response(&out);
        super::reuse::give_bytes(out);
        let resp = resp.map_err(|_| HttpError::UpstreamProtocol)?;
        self.responded = true;
        match self.respond.send_response(resp, end) {
            Ok(tx) => {
                self.tx = Some(tx);
                self.resp_ended = end;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    async fn send_body(&mut self, chunk: Chunk<'_>, last: bool) -> bool {
        let Some(tx) = &mut self.tx else {
            return false;
        };
        if send_all(tx, chunk.into_bytes(), last).await.is_err() {
            return false;
        }
        self.resp_ended |= last;
        true
    }

    async fn end_body(&mut self, trailers: Option<http::HeaderMap>) -> bool {
        if self.resp_ended {
            return true;
        }
        let Some(tx) = &mut self.tx else {
            return false;
        };
        self.resp_ended = true;
        match trailers {
            Some(t) => tx.send_trailers(t).is_ok(),
            None => tx.send_data(Bytes::new(), true).is_ok(),
        }
    }

    async fn flush(&mut self) -> bool {
        true
    }

    fn abort(&mut self, reason: h2::Reason) {
        self.reset_stream(reason);
    }

    fn client_gone(&mut self) {
        if !self.client_reset {
            self.client_reset();
        }
    }

    fn set_finished(&mut self, at: Instant) {
        self.finished = Some(at);
    }
}
