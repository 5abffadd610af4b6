//! Forwarding an HTTP/1.1 request to an HTTP/1.1 upstream: pick the host, connect or
//! reuse, send head and body, read the response head, send it and the body back.

use std::time::Instant;

use monoio::io::AsyncWriteRentExt;

use crate::http::body::{forward_body, BodyError, Framing, Mode};
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::h1::BodyKind;
use crate::http::write_headers;
use crate::model::headers::HeaderMods;
use crate::model::route::Forward;
use crate::model::Endpoint;
use crate::stats::{ClusterStat, HttpStat};

use super::*;

impl Connection {
    /// Proxies the request to the route's cluster.
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
    ) -> Result<Next, HttpError> {
        let snapshot = self.snapshot.clone();
        let (weighted, cluster, ep, _permit) =
            pick_upstream(&self.ctx, &snapshot, f, weighted, &self.down)?;
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
            cluster.pool_key(ep),
            cluster.idle_timeout,
            !replayable_head,
        );
        let mut reused = pooled.is_some();
        let mut up = match pooled {
            Some(c) => c,
            None => Box::pin(crate::upstream::connect(core, cluster, ep))
                .await
                .map_err(HttpError::connect)?,
        };

        // In flight from here to the end of the exchange, whatever ends it.
        let ctx = self.ctx.clone();
        let in_flight = ctx.upstream_request(cluster, ep.address);
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
                            self.client_reset_mid_request();
                            self.out = out;
                            return Ok(Next::Close);
                        }
                    }
                }
                self.log.bytes_received = req_body.bytes;
                let sent = Instant::now();
                let r =
                    read_response_head(&mut up, &mut resp, sent, route_deadline(sent), stream_idle)
                        .await;
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
                // The dead connection goes first: its place under max_connections is the
                // one the new connection may need.
                drop(up);
                up = match Box::pin(crate::upstream::connect(core, cluster, ep)).await {
                    Ok(c) => c,
                    Err(e) => {
                        return self.fail_after_body(
                            out,
                            pending,
                            replayable,
                            HttpError::connect(e),
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
        let head_at = Instant::now();
        let service_time = head_at.saturating_duration_since(sent_at).as_millis() as u64;
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
            f.attempt_count.1,
        );
        self.log.status = resp.status;
        self.count_status(resp.status);
        cstats.count_status(resp.status, ClusterStat::UpstreamRq1xx as usize);
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
            self.client_gone();
            return Ok(Next::Close);
        }
        if resp.status == 101 && self.upgrade.is_some() {
            self.resp_head = resp;
            return Ok(Box::pin(self.tunnel(up, cluster, stream_idle)).await);
        }
        // When the body came whole with the head, the upstream response ended then.
        let body_with_head = resp_body.done();
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
                    self.client_gone();
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
        self.finished = Some(if body_with_head {
            in_flight.complete_at(sent_at, head_at)
        } else {
            in_flight.complete(sent_at)
        });
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
    #[inline(always)]
    pub(super) fn upstream_head(
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
    pub(super) async fn continue_100(&mut self) -> bool {
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

    /// An error after the request body began to flow: answer if nothing was sent yet and
    /// close unless the body had fully arrived.
    pub(super) fn fail_after_body(
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
    #[inline]
    pub(super) fn request_id(&mut self) -> Option<[u8; 36]> {
        let id = crate::http::forwarding::request_id(self)?;
        self.log.request_id = Some(id);
        Some(id)
    }
}
