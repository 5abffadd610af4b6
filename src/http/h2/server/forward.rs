//! Forwarding one HTTP/2 stream: its upstream head, then over the core's HTTP/2 pool (the
//! request body in its own task, both directions at once) or over an HTTP/1.1 keep-alive
//! connection (a body of unknown length chunked).

use std::future::poll_fn;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use monoio::io::AsyncWriteRentExt;

use crate::http::h2::convert;

use crate::http::body::{Framing, Mode};
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::forwarding::NO_MODS;
use crate::http::forwarding::{
    pick_upstream, read_response_head, upstream_head, with_timeout, HeadParts, RespError,
};
use crate::http::h1::{self, BodyKind, ResponseHead};
use crate::http::h2::{pump, reason, send_all, GrpcTap, PumpError, RouteDeadline};
use crate::http::write_headers;
use crate::model::headers::HeaderMods;
use crate::model::route::Forward;
use crate::model::{Cluster, Endpoint};
use crate::stats::{ClusterStat, HttpStat};

use super::*;

impl Stream {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward(
        &mut self,
        f: &Forward,
        weighted: Option<&crate::model::route::WeightedTarget>,
        prefix_len: Option<usize>,
        authority: std::ops::Range<usize>,
        path: std::ops::Range<usize>,
        req_mods: [&HeaderMods; 3],
        resp_mods: [&HeaderMods; 3],
        body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), HttpError> {
        let snapshot = self.snapshot.clone();
        let (weighted, cluster, ep, _permit) =
            pick_upstream(&self.ctx, &snapshot, f, weighted, &self.down)?;
        if !self.hcm.access_logs.is_empty() {
            self.log.cluster = Some(cluster.name.clone());
        }
        self.log.upstream = Some(ep.address);
        let request_id = crate::http::forwarding::request_id(self);
        self.log.request_id = request_id;
        let mut out = Vec::with_capacity(1024);
        upstream_head(
            &mut out,
            self,
            HeadParts {
                f,
                prefix_len,
                authority,
                path: &path,
                weighted,
                req_mods,
                ep: &ep,
            },
            request_id.as_ref().map(|r| &r[..]),
        );
        let resp_mods: [&HeaderMods; 4] = [
            weighted.map_or(&NO_MODS, |w| &w.response_headers),
            resp_mods[0],
            resp_mods[1],
            resp_mods[2],
        ];
        let up = Upstream {
            f,
            cluster,
            ep: &ep,
            resp_mods: &resp_mods,
        };
        match cluster.http2 {
            Some(settings) => self.over_h2(up, settings, out, body, respond).await,
            None => self.over_h1(up, out, body, respond).await,
        }
    }

    /// Forwards over the core's HTTP/2 pool: the request body flows in its own task, so
    /// both directions stream at once (gRPC bidirectional calls).
    pub(super) async fn over_h2(
        &mut self,
        up: Upstream<'_>,
        settings: crate::model::Http2Settings,
        head: Vec<u8>,
        mut body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), HttpError> {
        let cstats = up.cluster.stats.clone();
        let cs = cstats.core(self.ctx.core);
        let conn = crate::http::h2::upstream(&self.ctx, up.cluster, up.ep, settings).await?;
        let _slot = conn.stream();
        let req = convert::h1_to_request(&head).map_err(|_| HttpError::UpstreamProtocol)?;
        let mut send = conn
            .send
            .clone()
            .ready()
            .await
            .map_err(|_| HttpError::UpstreamReset)?;
        let end = body.is_end_stream();
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let ctx = self.ctx.clone();
        let in_flight = ctx.upstream_request(up.cluster, up.ep.address);
        let (resp_fut, mut up_tx) = send
            .send_request(req, end)
            .map_err(|_| HttpError::UpstreamReset)?;
        let idle = up.f.idle_timeout.or(self.hcm.stream_idle_timeout);
        let deadline = RouteDeadline::new(up.f.timeout, end);
        if !end {
            let (hstats, core) = (self.hcm.stats.clone(), self.ctx.core);
            let done = deadline.clone();
            let mut frames = self.filters.grpc.as_ref().map(|c| c.frames(false));
            monoio::spawn(async move {
                let tap = frames.as_mut().map(|frames| GrpcTap { frames, call: None });
                match pump(&mut body, &mut up_tx, idle, None, tap).await {
                    Ok(_) => done.request_done(),
                    Err(PumpError::Send) => {}
                    Err(PumpError::Timeout) => {
                        // The client went quiet mid-body: the upstream stream is reset,
                        // which ends the exchange on the response side too.
                        hstats
                            .core(core)
                            .inc(HttpStat::DownstreamRqIdleTimeout as usize);
                        up_tx.send_reset(h2::Reason::CANCEL);
                    }
                    Err(PumpError::Recv(e)) => {
                        // The client reset its stream: so does the proxy, upstream.
                        hstats
                            .core(core)
                            .inc(HttpStat::DownstreamRqRxReset as usize);
                        up_tx.send_reset(reason(&e));
                    }
                }
            });
        }
        let sent = Instant::now();
        let resp = monoio::select! {
            r = resp_fut => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("upstream HTTP/2 stream failed: {e}");
                    cs.inc(ClusterStat::UpstreamRqRxReset as usize);
                    return Err(HttpError::UpstreamReset);
                }
            },
            _ = RouteDeadline::passed(Some(&deadline)) => {
                cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                self.stat(HttpStat::DownstreamRqTimeout);
                return Err(HttpError::UpstreamTimeout);
            },
            _ = poll_fn(|cx| respond.poll_reset(cx)) => {
                // The client gave up: dropping the response future cancels upstream.
                self.client_reset();
                self.responded = true;
                return Ok(());
            }
        };
        let (parts, mut up_rx) = resp.into_parts();
        let up_end = up_rx.is_end_stream();
        let mut resp_buf = Vec::with_capacity(512);
        convert::response_to_h1(&parts, up_end, &mut resp_buf);
        let mut rh = ResponseHead::default();
        match h1::parse_response(&resp_buf, 1 << 20, &mut rh) {
            Ok(Some(())) => {}
            _ => return Err(HttpError::UpstreamProtocol),
        }
        cs.count_status(rh.status, ClusterStat::UpstreamRq1xx as usize);
        let Some(mut tx) = self.send_head(respond, &up, &resp_buf, &rh, sent, up_end)? else {
            return Ok(());
        };
        if !up_end {
            // The route timeout covers the whole response, as in Envoy.
            let call = self.filters.grpc.as_ref().filter(|_| rh.status == 200);
            let mut frames = call.map(|c| c.frames(true));
            let tap = frames.as_mut().map(|frames| GrpcTap { frames, call });
            match pump(&mut up_rx, &mut tx, idle, Some(&deadline), tap).await {
                Ok(n) => self.log.bytes_sent = n,
                Err(PumpError::Timeout) => {
                    // Dropping the upstream stream resets it; the client's is reset here.
                    tx.send_reset(h2::Reason::CANCEL);
                    if deadline.expired() {
                        cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                        self.log.flags.set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    } else {
                        self.stat(HttpStat::DownstreamRqIdleTimeout);
                        self.log.flags.set(ResponseFlags::STREAM_IDLE_TIMEOUT);
                    }
                    return Ok(());
                }
                Err(PumpError::Recv(e)) => {
                    tx.send_reset(reason(&e));
                    cs.inc(ClusterStat::UpstreamRqRxReset as usize);
                    self.log.flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
                    return Ok(());
                }
                Err(PumpError::Send) => {
                    self.client_reset();
                    return Ok(());
                }
            }
        }
        self.finished = Some(in_flight.complete(sent));
        Ok(())
    }

    /// Sends the response head for an upstream response (`head` in HTTP/1 form), with
    /// Envoy's response headers and the route's mutations. `None`: the client is gone.
    pub(super) fn send_head(
        &mut self,
        respond: &mut SendResponse<Bytes>,
        up: &Upstream<'_>,
        head: &[u8],
        rh: &ResponseHead,
        sent: Instant,
        end: bool,
    ) -> Result<Option<h2::SendStream<Bytes>>, HttpError> {
        let service_time = sent.elapsed().as_millis() as u64;
        self.log.service_time_ms = (!self.hcm.suppress_envoy_headers).then_some(service_time);
        let mut out = Vec::with_capacity(512);
        write_headers::response_head(
            &mut out,
            self,
            head,
            rh,
            up.resp_mods,
            false,
            false,
            self.log.service_time_ms,
            up.f.attempt_count.1,
        );
        let resp = convert::h1_to_response(&out).map_err(|_| HttpError::UpstreamProtocol)?;
        self.log.status = rh.status;
        self.count_status(rh.status);
        self.responded = true;
        match respond.send_response(resp, end) {
            Ok(tx) => Ok(Some(tx)),
            Err(_) => {
                self.client_reset();
                Ok(None)
            }
        }
    }

    /// Forwards over an HTTP/1.1 connection from the core's keep-alive pool; a body of
    /// unknown length goes chunked.
    pub(super) async fn over_h1(
        &mut self,
        up: Upstream<'_>,
        head: Vec<u8>,
        mut body: RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), HttpError> {
        let core = self.ctx.core;
        let cstats = up.cluster.stats.clone();
        let cs = cstats.core(core);
        let end = body.is_end_stream();
        let pooled = self.ctx.upstreams.borrow_mut().checkout(
            up.ep.address,
            up.cluster.pool_key(up.ep),
            up.cluster.idle_timeout,
            !end,
        );
        let mut reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => crate::upstream::connect(core, up.cluster, up.ep)
                .await
                .map_err(HttpError::connect)?,
        };
        let chunked = self.head.body == BodyKind::Chunked;
        let mut resp = ResponseHead::default();
        let idle = up.f.idle_timeout.or(self.hcm.stream_idle_timeout);
        let mut head = head;
        let ctx = self.ctx.clone();
        let in_flight = ctx.upstream_request(up.cluster, up.ep.address);
        let sent = loop {
            conn.requests += 1;
            cs.inc(ClusterStat::UpstreamRqTotal as usize);
            let (res, h) = conn.stream.write_all(head).await;
            head = h;
            if res.is_ok() && !end {
                self.h1_body(&mut conn, &mut body, chunked).await?;
            }
            let sent = Instant::now();
            let r = match res {
                Ok(_) => {
                    let deadline = up.f.timeout.map(|t| sent + t);
                    read_response_head(&mut conn, &mut resp, sent, deadline, idle).await
                }
                Err(_) => Err(RespError::Closed),
            };
            match r {
                Ok(()) => break sent,
                // A pooled connection the upstream had closed: once more on a new one,
                // when the request had no body to replay.
                Err(RespError::Closed) if reused && end => {
                    cs.inc(ClusterStat::UpstreamRqRetry as usize);
                    reused = false;
                    // The dead connection goes first (its place under max_connections).
                    drop(conn);
                    conn = crate::upstream::connect(core, up.cluster, up.ep)
                        .await
                        .map_err(HttpError::connect)?;
                }
                Err(RespError::Closed) => return Err(HttpError::UpstreamReset),
                Err(RespError::Malformed) => return Err(HttpError::UpstreamProtocol),
                Err(RespError::Timeout) => {
                    cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                    self.stat(HttpStat::DownstreamRqTimeout);
                    return Err(HttpError::UpstreamTimeout);
                }
                Err(RespError::Idle) => return Err(HttpError::StreamIdleTimeout),
            }
        };
        cs.count_status(resp.status, ClusterStat::UpstreamRq1xx as usize);
        let head_request = self.buf[self.head.method.clone()].eq_ignore_ascii_case(b"HEAD");
        let kind = resp.body(head_request);
        let up_buf = std::mem::take(&mut conn.buf);
        let tx = self.send_head(
            respond,
            &up,
            &up_buf[..resp.len],
            &resp,
            sent,
            kind == BodyKind::None,
        );
        conn.buf = up_buf;
        let Some(mut tx) = tx? else {
            return Ok(());
        };
        let mode = if kind == BodyKind::Chunked {
            Mode::ChunkDecode
        } else {
            Mode::Raw
        };
        let mut framing = Framing::new(kind, mode);
        let mut at = resp.len;
        // The route timeout covers the whole response, as in Envoy.
        let deadline = up.f.timeout.map(|t| sent + t);
        while !framing.done() {
            let mut chunk = Vec::new();
            let n = match framing.consume_into(&conn.buf[at..], &mut chunk) {
                Ok(n) => n,
                Err(_) => {
                    tx.send_reset(h2::Reason::PROTOCOL_ERROR);
                    self.log.flags.set(ResponseFlags::UPSTREAM_PROTOCOL_ERROR);
                    return Ok(());
                }
            };
            at += n;
            let done = framing.done();
            if (!chunk.is_empty() || done) && send_all(&mut tx, chunk.into(), done).await.is_err() {
                self.client_reset();
                return Ok(());
            }
            if done {
                break;
            }
            conn.buf.drain(..at);
            at = 0;
            conn.buf.reserve(16 * 1024);
            let buf = std::mem::take(&mut conn.buf);
            let limit = crate::http::body::wait_limit(idle, deadline);
            let Some((res, buf)) =
                with_timeout(limit, crate::io::read_more(&mut conn.stream, buf)).await
            else {
                tx.send_reset(h2::Reason::CANCEL);
                self.log.flags.set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                return Ok(());
            };
            conn.buf = buf;
            match res {
                Ok(0) | Err(_) if kind == BodyKind::UntilClose => {
                    let _ = tx.send_data(Bytes::new(), true);
                    break;
                }
                Ok(0) | Err(_) => {
                    tx.send_reset(h2::Reason::CANCEL);
                    cs.inc(ClusterStat::UpstreamRqRxReset as usize);
                    self.log.flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
                    return Ok(());
                }
                Ok(_) => {}
            }
        }
        self.log.bytes_sent = framing.bytes;
        conn.buf.drain(..at.min(conn.buf.len()));
        self.finished = Some(in_flight.complete(sent));
        let reusable = kind != BodyKind::UntilClose
            && !resp.close
            && conn.buf.is_empty()
            && up
                .cluster
                .max_requests_per_connection
                .is_none_or(|m| conn.requests < m);
        if reusable {
            self.ctx.upstreams.borrow_mut().checkin(conn);
        }
        Ok(())
    }

    /// The request body onto an HTTP/1.1 connection, chunk-encoded when its length is
    /// unknown; window goes back to the client only once the bytes were written.
    pub(super) async fn h1_body(
        &mut self,
        conn: &mut crate::upstream::Conn,
        body: &mut RecvStream,
        chunked: bool,
    ) -> Result<(), HttpError> {
        let mut frame = Vec::with_capacity(16 * 1024);
        while let Some(data) = body.data().await {
            let Ok(data) = data else {
                self.client_reset();
                return Err(HttpError::UpstreamReset);
            };
            let n = data.len();
            if n == 0 {
                // An empty DATA frame (often the one carrying END_STREAM): as a chunk it
                // would read as the last one.
                continue;
            }
            crate::http::body::frame_into(&mut frame, &data, chunked);
            self.log.bytes_received += n as u64;
            let (res, f) = conn.stream.write_all(frame).await;
            frame = f;
            res.map_err(|_| HttpError::UpstreamReset)?;
            let _ = body.flow_control().release_capacity(n);
        }
        if chunked {
            let (res, _) = conn.stream.write_all(&b"0\r\n\r\n"[..]).await;
            res.map_err(|_| HttpError::UpstreamReset)?;
        }
        Ok(())
    }
}

/// What forwarding one request needs besides the stream.
pub(super) struct Upstream<'a> {
    f: &'a Forward,
    cluster: &'a Cluster,
    ep: &'a Endpoint,
    resp_mods: &'a [&'a HeaderMods; 4],
}
