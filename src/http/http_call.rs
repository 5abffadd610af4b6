//! HTTP calls HTTP filters make (ext_authz's HTTP service), from the request's core over
//! that core's pools, as the router's requests go: an HTTP/1.1 connection from its
//! keep-alive pool (back into it when the answer ends cleanly), or a stream on an HTTP/2
//! connection when the cluster speaks HTTP/2. The whole answer is read into memory, up to
//! [`MAX_ANSWER`].

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::io::AsyncWriteRentExt as _;

use crate::ctx::CoreCtx;
use crate::http::body::{Framing, Mode};
use crate::http::filter::{HttpAnswer, HttpCall, HttpReply};
use crate::http::forwarding::{read_response_head, RespError};
use crate::http::h1::{BodyKind, ResponseHead};
use crate::model::{Cluster, Endpoint, Snapshot};
use crate::stats::ClusterStat;

/// The largest answer body a call takes; a longer one is an error (the head is bounded by
/// the HTTP/1 parser, or by the HTTP/2 connection's header list size).
const MAX_ANSWER: usize = 1 << 20;

/// One request to `call.cluster`: the answer's status, headers and body.
pub(crate) async fn call(ctx: Rc<CoreCtx>, snapshot: Arc<Snapshot>, call: HttpCall) -> HttpAnswer {
    let ctx = &*ctx;
    let cluster = snapshot
        .cluster(&call.cluster)
        .ok_or_else(|| format!("cluster {} is not configured", call.cluster))?;
    let ep = ctx
        .upstreams
        .borrow_mut()
        .pick(cluster)
        .cloned()
        .ok_or_else(|| format!("cluster {} has no healthy endpoint", call.cluster))?;
    let stats = cluster.stats.core(ctx.core);
    stats.inc(ClusterStat::UpstreamRqTotal as usize);
    let reply = match cluster.http2 {
        Some(settings) => over_h2(ctx, cluster, &ep, settings, call).await?,
        None => over_h1(ctx, cluster, &ep, call).await?,
    };
    Ok(reply)
}

/// The call on an HTTP/1.1 connection: a pooled one when the pool has one that is still
/// open, else a new one. A pooled connection the upstream closed before answering (it
/// may have timed it out meanwhile) is given up for a new one, once.
async fn over_h1(
    ctx: &CoreCtx,
    cluster: &Cluster,
    ep: &Endpoint,
    call: HttpCall,
) -> Result<HttpReply, String> {
    let mut out = call.head;
    out.extend_from_slice(&call.body);
    let mut pooled =
        ctx.upstreams
            .borrow_mut()
            .checkout(ep.address, cluster.pool_key(ep), true, None);
    loop {
        let reused = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(c) => c,
            None => crate::upstream::connect(ctx.core, cluster, ep)
                .await
                .map_err(|e| e.to_string())?,
        };
        let (res, back) = conn.stream.write_all(out).await;
        out = back;
        let mut head = ResponseHead::default();
        let read = match res {
            Ok(_) => {
                read_response_head(
                    &mut conn,
                    &mut head,
                    cluster.max_headers_count,
                    Instant::now(),
                    None,
                    None,
                )
                .await
            }
            Err(_) => Err(RespError::Closed),
        };
        match read {
            Ok(()) => {
                conn.count_request(cluster.max_requests_per_connection);
                return answer(ctx, cluster, conn, head, call.head_request).await;
            }
            Err(RespError::Closed) if reused && conn.buf.is_empty() => continue,
            Err(RespError::Malformed) => return Err("a malformed response".into()),
            Err(_) => return Err("the connection closed before a response".into()),
        }
    }
}

/// Reads the answer's body after its head; the connection goes back to the pool when the
/// exchange ended cleanly.
async fn answer(
    ctx: &CoreCtx,
    cluster: &Cluster,
    mut conn: crate::upstream::Conn,
    head: ResponseHead,
    head_request: bool,
) -> Result<HttpReply, String> {
    if head.status == 101 {
        // Nobody asked to switch protocols: the connection is the upstream's now.
        return Err("an unrequested protocol switch (101)".into());
    }
    let headers = head
        .headers
        .iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(&conn.buf[n.clone()])
                    .to_ascii_lowercase()
                    .into_boxed_str(),
                conn.buf[v.clone()].to_vec(),
            )
        })
        .collect();
    let kind = head.body(head_request);
    let mut framing = Framing::new(kind, Mode::ChunkDecode);
    let mut body = Vec::new();
    let mut at = head.len;
    loop {
        if at < conn.buf.len() {
            let used = framing
                .consume_into(&conn.buf[at..], &mut body)
                .map_err(|e| e.to_string())?;
            at += used;
        }
        if body.len() > MAX_ANSWER {
            return Err("answer too large".into());
        }
        if framing.done() {
            break;
        }
        conn.buf.drain(..at);
        at = 0;
        conn.buf.reserve(16 * 1024);
        let buf = std::mem::take(&mut conn.buf);
        let (n, buf) = crate::io::read_more(&mut conn.stream, buf).await;
        conn.buf = buf;
        match n {
            // Only the upstream's close ends a close-delimited body (a reset cuts it).
            Ok(0) if framing.end_on_eof() => break,
            Ok(0) | Err(_) => return Err("the connection closed in the answer's body".into()),
            Ok(_) => {}
        }
    }
    let reusable = kind != BodyKind::UntilClose
        && !head.close
        && at >= conn.buf.len()
        && cluster
            .max_requests_per_connection
            .is_none_or(|m| conn.requests < m);
    if reusable {
        conn.buf.clear();
        ctx.upstreams
            .borrow_mut()
            .checkin(conn, std::time::Instant::now());
    }
    Ok(HttpReply {
        status: head.status,
        headers,
        body,
    })
}

/// The call on a stream of an HTTP/2 connection from the core's pool.
async fn over_h2(
    ctx: &CoreCtx,
    cluster: &Cluster,
    ep: &Endpoint,
    settings: crate::model::Http2Settings,
    call: HttpCall,
) -> Result<HttpReply, String> {
    let req = crate::http::h2::convert::h1_to_request(&call.head)
        .map_err(|_| "the request cannot be sent over HTTP/2".to_string())?;
    let conn = crate::http::h2::upstream(ctx, cluster, ep, settings)
        .await
        .map_err(|e| e.to_string())?;
    let _stream = conn.stream();
    let mut send = conn.send.clone().ready().await.map_err(|e| e.to_string())?;
    let end = call.body.is_empty();
    let (resp, mut tx) = send.send_request(req, end).map_err(|e| e.to_string())?;
    if !end {
        tx.send_data(bytes::Bytes::from(call.body), true)
            .map_err(|e| e.to_string())?;
    }
    let resp = resp.await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().into(), v.as_bytes().to_vec()))
        .collect();
    let mut rx = resp.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = rx.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER {
            return Err("answer too large".into());
        }
    }
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}
