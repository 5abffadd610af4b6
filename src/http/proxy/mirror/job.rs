//! One mirror's request, on its own task: the endpoint, the exchange over HTTP/1.1 or
//! HTTP/2, the stats and outlier outcome, and the mirror's span.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt as _;

use super::{next, Piece, State, Tee};
use crate::ctx::CoreCtx;
use crate::http::body::{frame_into, Framing, Mode};
use crate::http::forwarding::read_response_head;
use crate::http::h1::ResponseHead;
use crate::http::proxy::{RecvError, Up};
use crate::model::outlier::Outcome;
use crate::model::{Cluster, Endpoint, Snapshot};
use crate::stats::ClusterStat;

/// One mirror's request.
pub(super) struct Job {
    pub(super) ctx: Rc<CoreCtx>,
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) cluster: Arc<str>,
    pub(super) head: Vec<u8>,
    pub(super) span: Option<Span>,
    /// The body goes chunk-framed on HTTP/1.1 (the head says so).
    pub(super) chunked: bool,
    pub(super) h2_down: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) tee: Rc<RefCell<Tee>>,
}

/// How a mirror's exchange ended, short of a whole response.
pub(super) enum Failed {
    Connect,
    /// The cluster's `max_connections` (no fault of the host).
    Overflow,
    /// The head cannot go over HTTP/2 (nothing was sent).
    Invalid,
    Reset,
    Timeout,
    /// The primary request gave the mirror up.
    Cancelled,
}

fn connect_failed(e: crate::http::error::HttpError) -> Failed {
    match e {
        crate::http::error::HttpError::Overflow => Failed::Overflow,
        _ => Failed::Connect,
    }
}

impl Job {
    /// `f`, unless the mirror is given up or times out first.
    async fn guarded<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, Failed> {
        monoio::select! {
            r = f => Ok(r),
            why = super::halted(&self.tee, self.timeout) => Err(why),
        }
    }

    pub(super) async fn run(mut self) {
        let Some(cluster) = self.snapshot.cluster(&self.cluster) else {
            return;
        };
        let ctx = &*self.ctx;
        let cs = cluster.stats.core(ctx.core);
        let Ok(_permit) = cluster.breakers.acquire_request() else {
            cs.inc(ClusterStat::UpstreamRqActiveOverflow as usize);
            self.tee.borrow_mut().set(State::Cancelled);
            return;
        };
        let ep = match ctx.upstreams.borrow_mut().pick(cluster) {
            Some(ep) => ep.clone(),
            None => {
                cs.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                self.tee.borrow_mut().set(State::Cancelled);
                return;
            }
        };
        let in_flight = ctx.upstream_request(cluster, ep.address);
        let h2 = cluster
            .http2
            .filter(|_| self.h2_down || !cluster.http2_follows_downstream);
        let r = match h2 {
            Some(settings) => self.over_h2(cluster, &ep, settings).await,
            None => self.over_h1(cluster, &ep).await,
        };
        // The primary no longer feeds it: nothing more will come.
        self.tee.borrow_mut().set(State::Cancelled);
        if let Some(span) = self.span.take() {
            let (status, flags) = match &r {
                Ok((status, _)) => (*status, "-"),
                Err(Failed::Connect) => (0, "UF"),
                Err(Failed::Overflow) => (0, "UO"),
                Err(Failed::Invalid) => (0, "-"),
                Err(Failed::Reset) => (0, "UR"),
                Err(Failed::Timeout) => (0, "UT"),
                Err(Failed::Cancelled) => (0, "DC"),
            };
            span.finish(&self.ctx, cluster, ep.address, h2.is_some(), status, flags);
        }
        let outcome = match r {
            Ok((status, sent)) => {
                in_flight.complete(sent);
                Outcome::Status(status)
            }
            Err(Failed::Cancelled | Failed::Overflow | Failed::Invalid) => return,
            Err(Failed::Connect) => Outcome::ConnectFailed,
            Err(Failed::Reset) => {
                cs.inc(ClusterStat::UpstreamRqRxReset as usize);
                Outcome::Reset
            }
            Err(Failed::Timeout) => {
                cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                Outcome::Timeout
            }
        };
        if let Some(cfg) = &cluster.outlier {
            ctx.upstreams
                .borrow_mut()
                .outlier
                .put(&cluster.name, cfg, ep.address, outcome);
        }
    }

    /// Over an HTTP/1.1 connection: head and body as the primary reads it, then the
    /// response, read whole and dropped (the connection goes back to the pool).
    async fn over_h1(&self, cluster: &Cluster, ep: &Endpoint) -> Result<(u16, Instant), Failed> {
        let ctx = &*self.ctx;
        let cs = cluster.stats.core(ctx.core);
        let up = match Up::pooled(ctx, cluster, ep, true, None) {
            Some(up) => up,
            None => self
                .guarded(Up::open(ctx, cluster, ep, None))
                .await?
                .map_err(connect_failed)?,
        };
        let Up::H1 { mut conn, .. } = up else {
            return Err(Failed::Connect);
        };
        conn.count_request(cluster.max_requests_per_connection);
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let mut out = self.head.clone();
        let mut frame = Vec::new();
        loop {
            // What is here already goes in one write.
            let ended = loop {
                let piece = {
                    let mut t = self.tee.borrow_mut();
                    match t.chunks.pop_front() {
                        Some(b) => {
                            t.queued -= b.len();
                            Some(Piece::Data(b))
                        }
                        None => match t.state {
                            State::Open => None,
                            State::Ended => Some(Piece::End),
                            State::Cancelled => Some(Piece::Cancelled),
                        },
                    }
                };
                match piece {
                    Some(Piece::Data(b)) => {
                        frame_into(&mut frame, &b, self.chunked);
                        out.extend_from_slice(&frame);
                    }
                    Some(Piece::End) => break true,
                    Some(Piece::Cancelled) => return Err(Failed::Cancelled),
                    None => break false,
                }
            };
            if ended && self.chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            if !out.is_empty() {
                let (res, o) = self.guarded(conn.stream.write_all(out)).await?;
                out = o;
                res.map_err(|_| Failed::Reset)?;
                cs.add(
                    ClusterStat::UpstreamCxTxBytesTotal as usize,
                    out.len() as u64,
                );
                out.clear();
            }
            if ended {
                break;
            }
            match next(&self.tee).await {
                Piece::Data(b) => {
                    frame_into(&mut frame, &b, self.chunked);
                    out.extend_from_slice(&frame);
                }
                Piece::End => {
                    if self.chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    let n = out.len() as u64;
                    let (res, _) = self.guarded(conn.stream.write_all(out)).await?;
                    res.map_err(|_| Failed::Reset)?;
                    cs.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
                    break;
                }
                Piece::Cancelled => return Err(Failed::Cancelled),
            }
        }
        let sent = Instant::now();
        let mut resp = ResponseHead::default();
        // The timeout (from the request's end) is `guarded`'s.
        self.guarded(read_response_head(
            &mut conn,
            &mut resp,
            cluster.max_headers_count,
            sent,
            None,
            None,
        ))
        .await?
        .map_err(|e| match e {
            crate::http::forwarding::RespError::Timeout => Failed::Timeout,
            _ => Failed::Reset,
        })?;
        cs.count_status(resp.status, ClusterStat::UpstreamRq1xx as usize);
        let kind = resp.body(self.head.starts_with(b"HEAD "));
        let mut up = Up::H1 {
            conn,
            reused: false,
            at: 0,
            scratch: Vec::new(),
            scratch_used: false,
        };
        up.skip_head(resp.len);
        let mut framing = Framing::new(kind, Mode::ChunkDecode);
        loop {
            loop {
                let n = match up.buffered(&mut framing) {
                    Ok(Some(c)) => c.len(),
                    Ok(None) => break,
                    Err(()) => return Err(Failed::Reset),
                };
                up.passed(n);
            }
            if up.body_done(&framing) {
                break;
            }
            self.guarded(up.read_body(&mut framing, None))
                .await?
                .map_err(|e| match e {
                    RecvError::Timeout => Failed::Timeout,
                    RecvError::Reset(_) => Failed::Reset,
                })?;
        }
        up.finish(ctx, cluster, kind, resp.close, std::time::Instant::now());
        Ok((resp.status, sent))
    }

    /// On a stream of an HTTP/2 connection from the core's pool.
    async fn over_h2(
        &self,
        cluster: &Cluster,
        ep: &Endpoint,
        settings: crate::model::Http2Settings,
    ) -> Result<(u16, Instant), Failed> {
        let ctx = &*self.ctx;
        let cs = cluster.stats.core(ctx.core);
        let req =
            crate::http::h2::convert::h1_to_request(&self.head).map_err(|_| Failed::Invalid)?;
        let conn = self
            .guarded(crate::http::h2::upstream(ctx, cluster, ep, settings))
            .await?
            .map_err(connect_failed)?;
        let _slot = conn.stream();
        let mut send = self
            .guarded(conn.send.clone().ready())
            .await?
            .map_err(|_| Failed::Reset)?;
        let end = {
            let t = self.tee.borrow();
            t.state == State::Ended && t.chunks.is_empty()
        };
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let (resp, mut tx) = send.send_request(req, end).map_err(|_| Failed::Reset)?;
        if !end {
            loop {
                match next(&self.tee).await {
                    Piece::Data(b) => {
                        let sent = self.guarded(crate::http::h2::send_all(&mut tx, b, false));
                        if sent.await?.is_err() {
                            return Err(Failed::Reset);
                        }
                    }
                    Piece::End => {
                        tx.send_data(Bytes::new(), true)
                            .map_err(|_| Failed::Reset)?;
                        break;
                    }
                    Piece::Cancelled => {
                        tx.send_reset(h2::Reason::CANCEL);
                        return Err(Failed::Cancelled);
                    }
                }
            }
        }
        let sent = Instant::now();
        let resp = self.guarded(resp).await?.map_err(|_| Failed::Reset)?;
        let status = resp.status().as_u16();
        cs.count_status(status, ClusterStat::UpstreamRq1xx as usize);
        let mut rx = resp.into_body();
        loop {
            match self.guarded(rx.data()).await? {
                None => break,
                Some(Ok(data)) => {
                    let _ = rx.flow_control().release_capacity(data.len());
                }
                Some(Err(_)) => return Err(Failed::Reset),
            }
        }
        Ok((status, sent))
    }
}

/// A sampled mirror's span (Envoy's async client names it "mirror").
pub(super) struct Span {
    pub(super) ctx: crate::model::tracing::SpanCtx,
    pub(super) tracer: Arc<crate::model::tracing::Tracer>,
    pub(super) start: std::time::SystemTime,
}

impl Span {
    /// The span, finished: the tags Envoy's async client sets.
    fn finish(
        self,
        ctx: &Rc<CoreCtx>,
        cluster: &Cluster,
        addr: std::net::SocketAddr,
        h2: bool,
        status: u16,
        flags: &str,
    ) {
        let start_us = self
            .start
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let duration_us = self.start.elapsed().map_or(0, |d| d.as_micros() as u64);
        let observed = cluster
            .stats
            .prefix()
            .strip_prefix("cluster.")
            .and_then(|p| p.strip_suffix('.'))
            .unwrap_or(&cluster.name)
            .to_string();
        let protocol = if h2 { "HTTP/2" } else { "HTTP/1.1" };
        let mut tags: Vec<(std::borrow::Cow<'static, str>, String)> = vec![
            ("component".into(), "proxy".into()),
            ("upstream_cluster".into(), cluster.name.to_string()),
            ("upstream_cluster.name".into(), observed),
            ("upstream_address".into(), addr.to_string()),
            ("peer.address".into(), addr.to_string()),
            ("http.protocol".into(), protocol.into()),
            ("http.status_code".into(), status.to_string()),
            ("response_flags".into(), flags.into()),
        ];
        if status == 0 || status >= 500 {
            tags.push(("error".into(), "true".into()));
        }
        let done = crate::http::span::Done {
            ctx: self.ctx,
            name: "mirror".into(),
            server: false,
            start_us,
            duration_us,
            tags,
            http_status: status,
            grpc_status: None,
            trace_state: None,
            remote_parent: false,
            local_ip: ctx.local_ip,
            service_cluster: self.tracer.service_cluster.clone(),
        };
        crate::http::span::export::add(ctx, &self.tracer, &done);
    }
}
