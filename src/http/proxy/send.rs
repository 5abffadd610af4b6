//! Sending a request upstream and waiting for its response head, per upstream codec:
//! over an HTTP/1.1 connection (the body after the head, a pooled connection found closed
//! given up for a new one when the request can be sent again), or on an HTTP/2 stream
//! (the body under the upstream's flow control, in its own task when the client speaks
//! HTTP/2 too). The body comes from the client, or from what an earlier attempt kept.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use monoio::io::AsyncWriteRentExt as _;

use super::attempt::{Body, Replay};
use super::{Deadline, DownError, Downstream};
use crate::http::body::frame_into;
use crate::http::error::HttpError;
use crate::http::forwarding::{read_response_head, RespError};
use crate::http::h1::{BodyKind, ResponseHead};
use crate::http::h2::{convert, pump, reason, send_all, GrpcTap, PumpError, RouteDeadline};
use crate::model::{Cluster, Endpoint};
use crate::stats::{ClusterStat, HttpStat};
use crate::upstream::h2pool::H2Conn;
use crate::upstream::Conn;

/// What one attempt carries besides its codecs.
pub(crate) struct Attempt<'a> {
    pub cluster: &'a Cluster,
    pub core: usize,
    pub deadline: &'a mut Deadline,
    pub idle: Option<Duration>,
    /// `per_try_timeout` and `per_try_idle_timeout`.
    pub per_try: (Option<Duration>, Option<Duration>),
    pub body: Body<'a>,
    /// Set once bytes of the request went upstream.
    pub sent_any: &'a mut bool,
}

impl Attempt<'_> {
    /// How long the response head may take: the route deadline, the attempt's own
    /// timeout, and the idle limit. The flag: the attempt's timeout comes first. The
    /// per-try timeout of a request whose body still streams (in its own task) starts
    /// when the body ends, as in Envoy: it is not in `at` then (see `per_try_passed`).
    fn head_limits(&self, sent: Instant) -> (Option<Instant>, bool, Option<Duration>) {
        let per_try = match self.deadline {
            Deadline::Shared(_) => None,
            Deadline::At(..) => self.per_try.0.map(|t| sent + t),
        };
        let (at, per) = match (self.deadline.at(), per_try) {
            (Some(d), Some(p)) if p < d => (Some(p), true),
            (Some(d), _) => (Some(d), false),
            (None, p) => (p, p.is_some()),
        };
        (at, per, self.idle_limit().0)
    }

    /// The idle limit on the response head, and whether it is the attempt's own
    /// (`per_try_idle_timeout`, shorter than the stream's).
    fn idle_limit(&self) -> (Option<Duration>, bool) {
        match (self.idle, self.per_try.1) {
            (Some(a), Some(b)) if b < a => (Some(b), true),
            (Some(a), Some(_)) => (Some(a), false),
            (None, Some(b)) => (Some(b), true),
            (a, None) => (a, false),
        }
    }

    /// Resolves when the per-try timeout of a request whose body streams in its own task
    /// passes (counted from the body's end).
    async fn per_try_passed(&self) {
        match (&*self.deadline, self.per_try.0) {
            (Deadline::Shared(r), Some(t)) => RouteDeadline::passed(Some(&r.with_timeout(t))).await,
            _ => std::future::pending().await,
        }
    }

    fn record(&self, chunk: &[u8]) {
        if let Some(r) = self.body.replay {
            if r.borrow_mut().record(chunk) {
                let cs = self.cluster.stats.core(self.core);
                cs.inc(ClusterStat::RetryOrShadowAbandoned as usize);
            }
        }
        if let Some(m) = self.body.mirrors {
            m.push(chunk);
        }
    }

    fn body_complete(&self) {
        if let Some(r) = self.body.replay {
            r.borrow_mut().complete = true;
        }
        if let Some(m) = self.body.mirrors {
            m.end();
        }
    }
}

/// Appends the request payload already read to `out` (chunk-framed when `chunked`), and
/// the last chunk once the body is complete. Returns the payload bytes appended.
fn append_body<D: Downstream>(
    d: &mut D,
    a: &Attempt<'_>,
    out: &mut Vec<u8>,
    chunked: bool,
    frame: &mut Vec<u8>,
) -> Result<u64, HttpError> {
    let mut n = 0u64;
    if a.body.from_replay {
        if let Some(r) = a.body.replay {
            let r = r.borrow();
            append_chunk(out, &r.data, chunked, frame);
            n = r.data.len() as u64;
        }
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        return Ok(n);
    }
    loop {
        let len = match d.buffered_body()? {
            Some(c) => {
                let s = c.as_slice();
                append_chunk(out, s, chunked, frame);
                a.record(s);
                s.len()
            }
            None => break,
        };
        d.body_passed(len);
        n += len as u64;
    }
    if d.request_done() {
        a.body_complete();
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    Ok(n)
}

fn append_chunk(out: &mut Vec<u8>, s: &[u8], chunked: bool, frame: &mut Vec<u8>) {
    if s.is_empty() {
        return;
    }
    if chunked {
        frame_into(frame, s, true);
        out.extend_from_slice(frame);
    } else {
        out.extend_from_slice(s);
    }
}

fn down_error(e: DownError) -> HttpError {
    match e {
        DownError::Gone => HttpError::ClientGone,
        DownError::Idle => HttpError::StreamIdleTimeout,
    }
}

/// Whether the request still has body to read from the client on this attempt.
fn more_from_client<D: Downstream>(d: &D, a: &Attempt<'_>) -> bool {
    !a.body.from_replay && !d.request_done()
}

pub(super) async fn exchange_h1<D: Downstream>(
    conn: &mut Conn,
    reused: &mut bool,
    d: &mut D,
    ep: &Endpoint,
    mut out: Vec<u8>,
    resp: &mut ResponseHead,
    a: Attempt<'_>,
) -> Result<Instant, HttpError> {
    let core = d.core();
    let cluster = a.cluster;
    let cs = cluster.stats.core(core);
    let chunked = d.head().body == BodyKind::Chunked;
    // Body bytes that arrived with the head go out in the same write.
    let mut frame = Vec::new();
    let mut received = append_body(d, &a, &mut out, chunked, &mut frame)?;
    let replayable = !more_from_client(d, &a);
    loop {
        conn.count_request(cluster.max_requests_per_connection);
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let alone = d.alone();
        let (res, o) = conn.stream.write_all_now(out, alone).await;
        out = o;
        // Whether the upstream closed the connection after taking the whole request.
        let closed_after_request = if res.is_err() {
            false
        } else {
            *a.sent_any = true;
            cs.add(
                ClusterStat::UpstreamCxTxBytesTotal as usize,
                out.len() as u64,
            );
            while more_from_client(d, &a) {
                if let Err(e) = d.read_body(a.idle).await {
                    d.put_up_buf(out);
                    return Err(down_error(e));
                }
                out.clear();
                let more = append_body(d, &a, &mut out, chunked, &mut frame);
                let more = match more {
                    Ok(n) => n,
                    Err(e) => {
                        d.put_up_buf(out);
                        return Err(e);
                    }
                };
                received += more;
                if out.is_empty() {
                    continue;
                }
                let (res, o) = conn.stream.write_all(out).await;
                out = o;
                if res.is_err() {
                    d.put_up_buf(out);
                    return Err(HttpError::UpstreamReset);
                }
                cs.add(
                    ClusterStat::UpstreamCxTxBytesTotal as usize,
                    out.len() as u64,
                );
            }
            d.log_mut().bytes_received = received;
            let sent = Instant::now();
            a.deadline.started(sent);
            let (at, per_try_first, idle) = a.head_limits(sent);
            let max = cluster.max_headers_count;
            // Made where it is awaited: a future bound first is copied again on `.await`.
            let r = if d.resets() {
                monoio::select! {
                    r = read_response_head(conn, resp, max, sent, at, idle) => r,
                    _ = d.reset() => {
                        d.put_up_buf(out);
                        return Err(HttpError::ClientGone);
                    }
                }
            } else {
                read_response_head(conn, resp, max, sent, at, idle).await
            };
            match r {
                Ok(()) => {
                    d.put_up_buf(out);
                    return Ok(sent);
                }
                Err(RespError::Closed) => true,
                Err(e) => {
                    d.put_up_buf(out);
                    return Err(match e {
                        RespError::Malformed => HttpError::UpstreamProtocol,
                        RespError::Timeout if per_try_first => {
                            cs.inc(ClusterStat::UpstreamRqPerTryTimeout as usize);
                            HttpError::UpstreamPerTryTimeout
                        }
                        RespError::Timeout => global_timeout(d, cluster),
                        _ if a.idle_limit().1 => {
                            cs.inc(ClusterStat::UpstreamRqPerTryIdleTimeout as usize);
                            HttpError::UpstreamPerTryTimeout
                        }
                        _ => HttpError::StreamIdleTimeout,
                    });
                }
            }
        };
        // The connection died under the request: a pooled one the upstream had closed
        // while idle is given up for a new connection once, when the request can be
        // sent again.
        if *reused && replayable {
            cs.inc(ClusterStat::UpstreamRqRetry as usize);
            *reused = false;
            // The dead connection goes first: its place under max_connections is the one
            // the new connection may need.
            let fresh = crate::ctx::boxed(|| crate::upstream::connect(core, cluster, ep)).await;
            match fresh {
                Ok(c) => *conn = c,
                Err(e) => {
                    d.put_up_buf(out);
                    return Err(HttpError::connect(e));
                }
            }
            continue;
        }
        if closed_after_request {
            cs.inc(ClusterStat::UpstreamRqRxReset as usize);
        }
        d.put_up_buf(out);
        return Err(HttpError::UpstreamReset);
    }
}

/// The route timeout passed before the response head: counted, and answered 504.
pub(super) fn global_timeout<D: Downstream>(d: &D, cluster: &Cluster) -> HttpError {
    let core = d.core();
    cluster
        .stats
        .core(core)
        .inc(ClusterStat::UpstreamRqTimeout as usize);
    d.hcm()
        .stats
        .core(core)
        .inc(HttpStat::DownstreamRqTimeout as usize);
    HttpError::UpstreamTimeout
}

/// Sends the request on a new stream and waits for the response head.
pub(super) async fn exchange_h2<D: Downstream>(
    conn: &H2Conn,
    d: &mut D,
    head: &[u8],
    mut a: Attempt<'_>,
) -> Result<(http::response::Parts, RecvStream, Instant), HttpError> {
    let core = d.core();
    let cs = a.cluster.stats.core(core);
    let req = convert::h1_to_request(head).map_err(|_| HttpError::UpstreamProtocol)?;
    let mut send = conn
        .send
        .clone()
        .ready()
        .await
        .map_err(|_| HttpError::UpstreamReset)?;
    let end = !more_from_client(d, &a) && a.body.replay.is_none_or(|r| r.borrow().data.is_empty());
    cs.inc(ClusterStat::UpstreamRqTotal as usize);
    let (resp_fut, mut tx) = send
        .send_request(req, end)
        .map_err(|_| HttpError::UpstreamReset)?;
    *a.sent_any = true;
    if end {
        a.deadline.started(Instant::now());
    } else if a.body.from_replay {
        let data = a
            .body
            .replay
            .map(|r| Bytes::copy_from_slice(&r.borrow().data))
            .unwrap_or_default();
        if send_all(&mut tx, data, true).await.is_err() {
            return Err(HttpError::UpstreamReset);
        }
        a.deadline.started(Instant::now());
    } else if let Some(body) = d.take_body_stream() {
        spawn_pump(d, &mut a, body, tx);
    } else {
        // Read from the client, then sent under the upstream's flow control.
        let mut received = 0u64;
        loop {
            loop {
                let Some(c) = d.buffered_body()? else { break };
                let n = c.len();
                let bytes = c.into_bytes();
                a.record(&bytes);
                let sent = send_all(&mut tx, bytes, false).await;
                // Consumed whatever became of the send: never read as the next request.
                d.body_passed(n);
                if sent.is_err() {
                    return Err(HttpError::UpstreamReset);
                }
                received += n as u64;
            }
            if d.request_done() {
                a.body_complete();
                break;
            }
            if let Err(e) = d.read_body(a.idle).await {
                tx.send_reset(h2::Reason::CANCEL);
                return Err(down_error(e));
            }
        }
        d.log_mut().bytes_received = received;
        tx.send_data(Bytes::new(), true)
            .map_err(|_| HttpError::UpstreamReset)?;
        a.deadline.started(Instant::now());
    }
    let sent = Instant::now();
    let (at, per_try_first, idle) = a.head_limits(sent);
    let limit = at.map(|at| at.saturating_duration_since(sent));
    let limit = match (limit, idle) {
        (Some(l), Some(i)) => Some(l.min(i)),
        (l, i) => l.or(i),
    };
    let r = monoio::select! {
        r = crate::http::forwarding::with_timeout(limit, resp_fut) => r,
        _ = a.deadline.passed() => None,
        _ = a.per_try_passed() => {
            cs.inc(ClusterStat::UpstreamRqPerTryTimeout as usize);
            return Err(HttpError::UpstreamPerTryTimeout);
        }
        _ = d.reset() => {
            // The client gave up: dropping the response future cancels upstream.
            return Err(HttpError::ClientGone);
        }
    };
    let now = Instant::now();
    match r {
        Some(Ok(r)) => {
            let (parts, body) = r.into_parts();
            Ok((parts, body, sent))
        }
        Some(Err(e)) => {
            tracing::debug!("upstream HTTP/2 stream failed: {e}");
            cs.inc(ClusterStat::UpstreamRqRxReset as usize);
            if e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Err(HttpError::UpstreamRefusedStream);
            }
            if e.is_reset() && e.is_remote() {
                return Err(HttpError::UpstreamRemoteReset);
            }
            Err(HttpError::UpstreamReset)
        }
        None if a.deadline.at().is_some_and(|d| now >= d) => Err(global_timeout(d, a.cluster)),
        None if per_try_first && at.is_some_and(|at| now >= at) => {
            cs.inc(ClusterStat::UpstreamRqPerTryTimeout as usize);
            Err(HttpError::UpstreamPerTryTimeout)
        }
        None if a.idle_limit().1 => {
            cs.inc(ClusterStat::UpstreamRqPerTryIdleTimeout as usize);
            Err(HttpError::UpstreamPerTryTimeout)
        }
        None => Err(HttpError::StreamIdleTimeout),
    }
}

/// Both directions at once: the request body flows in its own task (kept for retries
/// when they are possible), which starts the route timeout when it ends.
fn spawn_pump<D: Downstream>(
    d: &D,
    a: &mut Attempt<'_>,
    mut body: RecvStream,
    mut tx: h2::SendStream<Bytes>,
) {
    let shared = match &*a.deadline {
        Deadline::Shared(r) => r.clone(),
        Deadline::At(t, _) => RouteDeadline::new(*t, false),
    };
    *a.deadline = Deadline::Shared(shared.clone());
    let (hstats, core, idle) = (d.hcm_arc(), d.core(), a.idle);
    let mut frames = d.filter_state().grpc.as_ref().map(|c| c.frames(false));
    let replay: Option<Rc<RefCell<Replay>>> = a.body.replay.cloned();
    if let Some(r) = &replay {
        r.borrow_mut().touched = true;
    }
    let mirrors = a.body.mirrors.cloned();
    let cluster_stats = a.cluster.stats.clone();
    monoio::spawn(async move {
        let tap = frames.as_mut().map(|frames| GrpcTap { frames, call: None });
        let keep = replay.is_some() || mirrors.is_some();
        let record = keep.then_some({
            |c: Option<&[u8]>| {
                if let Some(m) = &mirrors {
                    m.push(c.unwrap_or_default());
                }
                if let Some(r) = &replay {
                    match c {
                        Some(c) if r.borrow_mut().record(c) => cluster_stats
                            .core(core)
                            .inc(ClusterStat::RetryOrShadowAbandoned as usize),
                        Some(_) => {}
                        // Trailers are not kept: such a request is not sent again.
                        None => r.borrow_mut().overflow = true,
                    }
                }
            }
        });
        let record = record.as_ref().map(|f| f as &dyn Fn(Option<&[u8]>));
        match pump(&mut body, &mut tx, idle, None, tap, record).await {
            Ok(_) => {
                if let Some(r) = &replay {
                    r.borrow_mut().complete = true;
                }
                if let Some(m) = &mirrors {
                    m.end();
                }
                shared.request_done();
            }
            Err(PumpError::Send) => {}
            Err(PumpError::Timeout) => {
                // The client went quiet mid-body: the upstream stream is reset, which
                // ends the exchange on the response side too.
                hstats
                    .stats
                    .core(core)
                    .inc(HttpStat::DownstreamRqIdleTimeout as usize);
                tx.send_reset(h2::Reason::CANCEL);
            }
            Err(PumpError::Recv(e)) => {
                // The client reset its stream: so does the proxy, upstream.
                hstats
                    .stats
                    .core(core)
                    .inc(HttpStat::DownstreamRqRxReset as usize);
                tx.send_reset(reason(&e));
            }
        }
    });
}
