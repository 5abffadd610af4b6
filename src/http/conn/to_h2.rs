//! An HTTP/1.1 request forwarded to an HTTP/2 cluster: the head the proxy wrote becomes
//! HTTP/2 headers (Host → `:authority`, connection-specific headers dropped, `te:
//! trailers` kept), the body is de-framed (chunked or Content-Length) into DATA frames
//! under the upstream's flow control, and the response comes back with Content-Length
//! when the upstream gave one and chunked otherwise (close-delimited for HTTP/1.0).
//! Trailers are not sent to an HTTP/1.1 client, as in Envoy by default.

use std::time::Instant;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use super::{Connection, Next, NO_MODS};
use crate::http::body::{frame_into, wait_limit, Framing, Mode, CHUNK};
use crate::http::conn::with_timeout;
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::h1::{self, BodyKind};
use crate::http::h2::{convert, send_all};
use crate::http::write_headers;
use crate::model::headers::HeaderMods;
use crate::model::route::{Forward, WeightedTarget};
use crate::model::{Cluster, Endpoint, Http2Settings};
use crate::stats::{ClusterStat, HttpStat};

/// Where a request goes and what its route asked for.
pub(super) struct Hop<'a> {
    pub f: &'a Forward,
    pub prefix_len: Option<usize>,
    pub authority: std::ops::Range<usize>,
    pub path: std::ops::Range<usize>,
    pub weighted: Option<&'a WeightedTarget>,
    pub cluster: &'a Cluster,
    pub ep: &'a Endpoint,
    pub req_mods: [&'a HeaderMods; 3],
    pub resp_mods: [&'a HeaderMods; 3],
}

impl Connection {
    pub(super) async fn forward_h2(
        &mut self,
        hop: Hop<'_>,
        settings: Http2Settings,
    ) -> Result<Next, HttpError> {
        if self.upgrade.is_some() {
            return Err(HttpError::UpgradeToHttp2Unsupported);
        }
        let core = self.ctx.core;
        let cluster = hop.cluster;
        let cs = cluster.stats.core(core);
        self.log.upstream = Some(hop.ep.address);
        let conn = crate::http::h2::upstream(&self.ctx, cluster, hop.ep, settings).await?;
        let _slot = conn.stream();
        let mut send = conn
            .send
            .clone()
            .ready()
            .await
            .map_err(|_| HttpError::UpstreamReset)?;

        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.upstream_head(
            &mut out,
            hop.f,
            hop.prefix_len,
            hop.authority.clone(),
            &hop.path,
            hop.weighted,
            hop.req_mods,
            hop.ep,
        );
        let req = convert::h1_to_request(&out);
        self.out = out;
        let req = req.map_err(|_| HttpError::UpstreamProtocol)?;
        if !self.continue_100().await {
            return Ok(Next::Close);
        }
        let end = self.head.body == BodyKind::None;
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let ctx = self.ctx.clone();
        let in_flight = ctx.upstream_request(cluster, hop.ep.address);
        let (resp_fut, mut tx) = send
            .send_request(req, end)
            .map_err(|_| HttpError::UpstreamReset)?;
        let idle = hop.f.idle_timeout.or(self.hcm.stream_idle_timeout);

        // Request body: de-framed into DATA frames, window by window.
        let mut pending = self.take_after_head();
        let mut framing = Framing::new(self.head.body, Mode::ChunkDecode);
        if !end {
            if let Err(e) = self
                .body_to_h2(&mut pending, &mut framing, &mut tx, idle)
                .await
            {
                tx.send_reset(h2::Reason::CANCEL);
                self.head.close = true;
                self.head.body = BodyKind::None;
                self.pending = pending;
                return match e {
                    Some(e) => Err(e),
                    None => {
                        self.client_reset_mid_request();
                        Ok(Next::Close)
                    }
                };
            }
        }
        self.log.bytes_received = framing.bytes;
        // What follows the body is the next request.
        self.buf.extend_from_slice(&pending);
        self.pending = pending;
        self.head.body = BodyKind::None;

        let sent = Instant::now();
        let resp = match with_timeout(hop.f.timeout, resp_fut).await {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::debug!("upstream HTTP/2 stream failed: {e}");
                cs.inc(ClusterStat::UpstreamRqRxReset as usize);
                return Err(HttpError::UpstreamReset);
            }
            None => {
                cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                self.stat(HttpStat::DownstreamRqTimeout);
                return Err(HttpError::UpstreamTimeout);
            }
        };
        let (parts, mut rx) = resp.into_parts();
        let up_end = rx.is_end_stream();
        let mut up_head = Vec::with_capacity(512);
        convert::response_to_h1(&parts, up_end, &mut up_head);
        let mut resp = std::mem::take(&mut self.resp_head);
        let parsed = h1::parse_response(&up_head, 1 << 20, &mut resp);
        if !matches!(parsed, Ok(Some(()))) {
            self.resp_head = resp;
            return Err(HttpError::UpstreamProtocol);
        }
        cs.count_status(resp.status, ClusterStat::UpstreamRq1xx as usize);
        let kind = resp.body(self.is_head_request());
        let downstream_10 = self.head.minor == 0;
        let chunked_out = kind == BodyKind::Chunked && !downstream_10;
        let close = self.must_close() || (kind == BodyKind::Chunked && downstream_10);
        let service_time = sent.elapsed().as_millis() as u64;
        self.log.service_time_ms = (!self.hcm.suppress_envoy_headers).then_some(service_time);
        let resp_mods: [&HeaderMods; 4] = [
            hop.weighted.map_or(&NO_MODS, |w| &w.response_headers),
            hop.resp_mods[0],
            hop.resp_mods[1],
            hop.resp_mods[2],
        ];
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        write_headers::response_head(
            &mut out,
            self,
            &up_head,
            &resp,
            &resp_mods,
            chunked_out,
            close,
            self.log.service_time_ms,
            hop.f.attempt_count.1,
        );
        self.log.status = resp.status;
        self.count_status(resp.status);
        self.resp_head = resp;
        let (res, o) = self.stream.write_all(out).await;
        out = o;
        if res.is_err() {
            self.out = out;
            self.client_gone();
            return Ok(Next::Close);
        }

        // Response body, frame by frame, window returned once written.
        if !up_end && kind != BodyKind::None {
            let deadline = hop.f.timeout.map(|t| sent + t);
            loop {
                let limit = wait_limit(idle, deadline);
                let data = match with_timeout(limit, rx.data()).await {
                    Some(Some(Ok(d))) => d,
                    Some(None) => break,
                    Some(Some(Err(e))) => {
                        tracing::debug!("upstream HTTP/2 stream reset mid-body: {e}");
                        cs.inc(ClusterStat::UpstreamRqRxReset as usize);
                        self.log.flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
                        self.out = out;
                        return Ok(Next::Close);
                    }
                    None => {
                        // Dropping the stream resets it upstream.
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                        }
                        self.log.flags.set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                        self.out = out;
                        return Ok(Next::Close);
                    }
                };
                let n = data.len();
                if n == 0 {
                    continue;
                }
                frame_into(&mut out, &data, chunked_out);
                let (res, o) = self.stream.write_all(out).await;
                out = o;
                if res.is_err() {
                    self.client_reset_mid_request();
                    self.out = out;
                    return Ok(Next::Close);
                }
                self.log.bytes_sent += n as u64;
                let _ = rx.flow_control().release_capacity(n);
            }
            if chunked_out {
                let (res, o) = self.stream.write_all(&b"0\r\n\r\n"[..]).await;
                let _ = o;
                if res.is_err() {
                    self.out = out;
                    return Ok(Next::Close);
                }
            }
        }
        // Don't keep oversized buffers from a large body around for the connection's life.
        if out.capacity() > 4 * CHUNK {
            out = Vec::new();
        }
        self.out = out;
        self.finished = Some(in_flight.complete(sent));
        Ok(if close { Next::Close } else { Next::KeepAlive })
    }

    /// Moves the request body from the client to the upstream stream. `Err(None)`: the
    /// client went away; `Err(Some(e))`: answer `e` (if nothing was sent yet) and close.
    async fn body_to_h2(
        &mut self,
        pending: &mut Vec<u8>,
        framing: &mut Framing,
        tx: &mut h2::SendStream<Bytes>,
        idle: Option<std::time::Duration>,
    ) -> Result<(), Option<HttpError>> {
        loop {
            if !pending.is_empty() {
                let mut payload = Vec::new();
                let n = framing
                    .consume_into(pending, &mut payload)
                    .map_err(|e| Some(HttpError::BadBody(e)))?;
                pending.drain(..n);
                if !payload.is_empty() {
                    send_all(tx, payload.into(), false)
                        .await
                        .map_err(|_| Some(HttpError::UpstreamReset))?;
                }
            }
            if framing.done() {
                return tx
                    .send_data(Bytes::new(), true)
                    .map_err(|_| Some(HttpError::UpstreamReset));
            }
            if pending.capacity() - pending.len() < CHUNK / 4 {
                pending.reserve(CHUNK - pending.len());
            }
            let read = crate::io::read_more(&mut self.stream, std::mem::take(pending));
            let Some((res, buf)) = with_timeout(idle, read).await else {
                return Err(Some(HttpError::StreamIdleTimeout));
            };
            *pending = buf;
            match res {
                Ok(0) | Err(_) => return Err(None),
                Ok(n) => self
                    .hcm
                    .stats
                    .core(self.ctx.core)
                    .add(HttpStat::DownstreamCxRxBytesTotal as usize, n as u64),
            }
        }
    }
}
