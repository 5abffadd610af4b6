//! Answers the HTTP/1.1 connection makes itself: local replies, direct responses and
//! redirects, and what lets the connection be reused after one (skipping a small body).

use monoio::io::AsyncWriteRentExt;

use crate::http::body::{forward_body, Framing, Mode};
use crate::http::error::HttpError;
use crate::http::h1::BodyKind;
use crate::http::local_reply::reply_for;
use crate::http::write_headers;
use crate::model::headers::HeaderMods;

use super::*;

impl Connection {
    /// After a local answer: skip any request body so the connection can be reused.
    pub(super) async fn finish_or_close(&mut self, close: bool) -> Result<Next, HttpError> {
        if close || !self.skip_request_body().await {
            return Ok(Next::Close);
        }
        Ok(Next::KeepAlive)
    }

    /// Reads and discards the request body (bounded by Envoy's idea of a small body);
    /// returns false when the connection cannot be reused.
    pub(super) async fn skip_request_body(&mut self) -> bool {
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
    pub(super) async fn local_reply(
        &mut self,
        e: &HttpError,
        close: bool,
    ) -> Result<(), HttpError> {
        let mut reply = reply_for(e);
        crate::http::local_reply::after_retries(&mut reply, self.log.attempts);
        if let Some(s) = reply.stat {
            self.stat(s);
        }
        self.log.flags.set(reply.flag);
        self.log.details = reply.details;
        self.log.note_error(e);
        let grpc_status = crate::http::local_reply::grpc_status(e, reply.status);
        self.write_simple(
            reply.status,
            reply.body.as_bytes(),
            None,
            crate::http::local_reply::overload_mods(e),
            close,
            Some(grpc_status),
        )
        .await
    }

    pub(super) async fn write_simple(
        &mut self,
        status: u16,
        body: &[u8],
        location: Option<&[u8]>,
        mods: &[&HeaderMods],
        close: bool,
        grpc_status: Option<u32>,
    ) -> Result<(), HttpError> {
        use crate::http::exchange::Exchange;
        // Envoy's connection manager decides the id before routing: a logged local answer
        // shows it (generated, or carrying the trace decision).
        if !self.hcm.access_logs.is_empty() || self.hcm.tracing.is_some() {
            crate::http::filter::FilterHost::decide_request_id(self);
        }
        let head_request = self.is_head_request();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        // A gRPC request gets a gRPC-shaped answer: HTTP 200, the body as grpc-message.
        let is_grpc = self.grpc();
        let (status, body, grpc) = write_headers::local_answer(is_grpc, status, body, grpc_status);
        // The encode phase may compress the body: it is then sent chunked.
        let compressed =
            crate::http::filter::encode::local_body(self, status, body, is_grpc, head_request);
        let body = compressed.as_deref().unwrap_or(body);
        let chunked = compressed.is_some() && self.head.minor > 0;
        if compressed.is_some() && !chunked {
            // An HTTP/1.0 client reads a body of unknown length to the connection's close.
            self.head.close = true;
        }
        let close = close || self.head.close;
        write_headers::local_head(&mut out, self, status, body.len(), location, mods, grpc);
        if chunked {
            crate::http::fields::header(&mut out, b"transfer-encoding", b"chunked");
        }
        if close {
            crate::http::fields::header(&mut out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        self.log.sent_head(&out, self.hcm.log_needs.response_head);
        if chunked {
            crate::http::body::chunk_header(&mut out, body.len());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
        } else if !head_request {
            out.extend_from_slice(body);
        }
        self.log.status = status;
        self.log.bytes_sent += body.len() as u64;
        self.count_status(status);
        let (res, out) = self.stream.write_all(out).await;
        self.out = out;
        res.map(|_| ()).map_err(|_| HttpError::UpstreamReset)
    }
}
