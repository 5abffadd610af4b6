//! Sending a request upstream and waiting for its response head, per upstream codec:
//! over an HTTP/1.1 connection (the body after the head, a pooled connection found closed
//! given up for a new one when the request can be sent again), or on an HTTP/2 stream
//! (the body under the upstream's flow control, in its own task when the client speaks
//! HTTP/2 too).

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::RecvStream;
use monoio::io::AsyncWriteRentExt as _;

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

/// Appends the request payload already read to `out` (chunk-framed when `chunked`), and
/// the last chunk once the body is complete. Returns the payload bytes appended.
fn append_body<D: Downstream>(
    d: &mut D,
    out: &mut Vec<u8>,
    chunked: bool,
    frame: &mut Vec<u8>,
) -> Result<u64, HttpError> {
    let mut n = 0u64;
    loop {
        let len = match d.buffered_body()? {
            Some(c) => {
                let s = c.as_slice();
                if chunked {
                    frame_into(frame, s, true);
                    out.extend_from_slice(frame);
                } else {
                    out.extend_from_slice(s);
                }
                s.len()
            }
            None => break,
        };
        d.body_passed(len);
        n += len as u64;
    }
    if chunked && d.request_done() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    Ok(n)
}

fn down_error(e: DownError) -> HttpError {
    match e {
        DownError::Gone => HttpError::ClientGone,
        DownError::Idle => HttpError::StreamIdleTimeout,
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn exchange_h1<D: Downstream>(
    conn: &mut Conn,
    reused: &mut bool,
    d: &mut D,
    cluster: &Cluster,
    ep: &Endpoint,
    mut out: Vec<u8>,
    resp: &mut ResponseHead,
    deadline: &mut Deadline,
    idle: Option<Duration>,
) -> Result<Instant, HttpError> {
    let core = d.core();
    let cs = cluster.stats.core(core);
    let chunked = d.head().body == BodyKind::Chunked;
    // Body bytes that arrived with the head go out in the same write.
    let mut frame = Vec::new();
    let mut received = append_body(d, &mut out, chunked, &mut frame)?;
    let replayable = d.request_done();
    loop {
        conn.requests += 1;
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let alone = d.alone();
        let (res, o) = conn.stream.write_all_now(out, alone).await;
        out = o;
        // Whether the upstream closed the connection after taking the whole request.
        let closed_after_request = if res.is_err() {
            false
        } else {
            cs.add(
                ClusterStat::UpstreamCxTxBytesTotal as usize,
                out.len() as u64,
            );
            while !d.request_done() {
                if let Err(e) = d.read_body(idle).await {
                    d.put_up_buf(out);
                    return Err(down_error(e));
                }
                out.clear();
                let more = append_body(d, &mut out, chunked, &mut frame);
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
            deadline.started(sent);
            let read = read_response_head(conn, resp, sent, deadline.at(), idle);
            let r = if d.resets() {
                monoio::select! {
                    r = read => r,
                    _ = d.reset() => {
                        d.put_up_buf(out);
                        return Err(HttpError::ClientGone);
                    }
                }
            } else {
                read.await
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
                        RespError::Timeout => {
                            cs.inc(ClusterStat::UpstreamRqTimeout as usize);
                            d.hcm()
                                .stats
                                .core(core)
                                .inc(HttpStat::DownstreamRqTimeout as usize);
                            HttpError::UpstreamTimeout
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
            let fresh = Box::pin(crate::upstream::connect(core, cluster, ep)).await;
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

/// Sends the request on a new stream and waits for the response head.
pub(super) async fn exchange_h2<D: Downstream>(
    conn: &H2Conn,
    d: &mut D,
    cluster: &Cluster,
    head: &[u8],
    deadline: &mut Deadline,
    idle: Option<Duration>,
) -> Result<(http::response::Parts, RecvStream, Instant), HttpError> {
    let core = d.core();
    let cs = cluster.stats.core(core);
    let req = convert::h1_to_request(head).map_err(|_| HttpError::UpstreamProtocol)?;
    let mut send = conn
        .send
        .clone()
        .ready()
        .await
        .map_err(|_| HttpError::UpstreamReset)?;
    let end = d.request_done();
    cs.inc(ClusterStat::UpstreamRqTotal as usize);
    let (resp_fut, mut tx) = send
        .send_request(req, end)
        .map_err(|_| HttpError::UpstreamReset)?;
    if end {
        deadline.started(Instant::now());
    } else if let Some(mut body) = d.take_body_stream() {
        // Both directions at once: the request body flows in its own task, which starts
        // the route timeout when it ends.
        let shared = RouteDeadline::new(deadline_timeout(deadline), false);
        *deadline = Deadline::Shared(shared.clone());
        let (hstats, hcore) = (d.hcm_arc(), core);
        let mut frames = d.filter_state().grpc.as_ref().map(|c| c.frames(false));
        monoio::spawn(async move {
            let tap = frames.as_mut().map(|frames| GrpcTap { frames, call: None });
            match pump(&mut body, &mut tx, idle, None, tap).await {
                Ok(_) => shared.request_done(),
                Err(PumpError::Send) => {}
                Err(PumpError::Timeout) => {
                    // The client went quiet mid-body: the upstream stream is reset, which
                    // ends the exchange on the response side too.
                    hstats
                        .stats
                        .core(hcore)
                        .inc(HttpStat::DownstreamRqIdleTimeout as usize);
                    tx.send_reset(h2::Reason::CANCEL);
                }
                Err(PumpError::Recv(e)) => {
                    // The client reset its stream: so does the proxy, upstream.
                    hstats
                        .stats
                        .core(hcore)
                        .inc(HttpStat::DownstreamRqRxReset as usize);
                    tx.send_reset(reason(&e));
                }
            }
        });
    } else {
        // Read from the client, then sent under the upstream's flow control.
        let mut received = 0u64;
        loop {
            loop {
                let Some(c) = d.buffered_body()? else { break };
                let n = c.len();
                let bytes = c.into_bytes();
                if send_all(&mut tx, bytes, false).await.is_err() {
                    return Err(HttpError::UpstreamReset);
                }
                d.body_passed(n);
                received += n as u64;
            }
            if d.request_done() {
                break;
            }
            if let Err(e) = d.read_body(idle).await {
                tx.send_reset(h2::Reason::CANCEL);
                return Err(down_error(e));
            }
        }
        d.log_mut().bytes_received = received;
        tx.send_data(Bytes::new(), true)
            .map_err(|_| HttpError::UpstreamReset)?;
        deadline.started(Instant::now());
    }
    let sent = Instant::now();
    let r = monoio::select! {
        r = resp_fut => r,
        _ = deadline.passed() => {
            cs.inc(ClusterStat::UpstreamRqTimeout as usize);
            d.hcm().stats.core(core).inc(HttpStat::DownstreamRqTimeout as usize);
            return Err(HttpError::UpstreamTimeout);
        },
        _ = d.reset() => {
            // The client gave up: dropping the response future cancels upstream.
            return Err(HttpError::ClientGone);
        }
    };
    match r {
        Ok(r) => {
            let (parts, body) = r.into_parts();
            Ok((parts, body, sent))
        }
        Err(e) => {
            tracing::debug!("upstream HTTP/2 stream failed: {e}");
            cs.inc(ClusterStat::UpstreamRqRxReset as usize);
            Err(HttpError::UpstreamReset)
        }
    }
}

fn deadline_timeout(d: &Deadline) -> Option<Duration> {
    match d {
        Deadline::At(t, _) => *t,
        Deadline::Shared(_) => None,
    }
}
