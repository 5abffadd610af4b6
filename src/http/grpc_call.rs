//! Unary gRPC calls HTTP filters make (ext_authz's `Check`), from the request's core over
//! that core's HTTP/2 pool, as the router's requests go.

use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::ctx::CoreCtx;
use crate::http::filter::{GrpcAnswer, GrpcCall};
use crate::model::Snapshot;

/// One unary call over the core's HTTP/2 pool: the answer's message bytes.
pub(crate) async fn unary(ctx: Rc<CoreCtx>, snapshot: Arc<Snapshot>, f: GrpcCall) -> GrpcAnswer {
    let ctx = &*ctx;
    let cluster = snapshot
        .cluster(&f.cluster)
        .ok_or_else(|| format!("cluster {} is not configured", f.cluster))?;
    let ep = ctx
        .upstreams
        .borrow_mut()
        .pick(cluster)
        .cloned()
        .ok_or_else(|| format!("cluster {} has no healthy endpoint", f.cluster))?;
    let settings = cluster.http2.unwrap_or_default();
    let conn = crate::http::h2::upstream(ctx, cluster, &ep, settings)
        .await
        .map_err(|e| e.to_string())?;
    let _stream = conn.stream();
    let mut send = conn.send.clone().ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::post(format!("http://{}{}", f.authority, f.path))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = f.timeout {
        // Envoy's form: milliseconds, or the first larger unit within eight digits.
        let ms = t.as_millis().max(1);
        let v = if ms <= 99_999_999 {
            format!("{ms}m")
        } else {
            format!("{}S", (ms / 1000).min(99_999_999))
        };
        req = req.header("grpc-timeout", v);
    }
    for (k, v) in &f.metadata {
        req = req.header(&**k, &**v);
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    let (resp, mut body) = send.send_request(req, false).map_err(|e| e.to_string())?;
    let mut frame = Vec::with_capacity(5 + f.message.len());
    frame.push(0);
    frame.extend_from_slice(&(f.message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&f.message);
    body.send_data(Bytes::from(frame), true)
        .map_err(|e| e.to_string())?;
    let resp = resp.await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("HTTP status {}", resp.status().as_u16()));
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let mut rx = resp.into_body();
    // grpc-status in the head counts only for a trailers-only answer (no body at all).
    let trailers_only = if rx.is_end_stream() {
        head_status
    } else {
        None
    };
    let mut data = Vec::new();
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = rx.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > 4 << 20 {
            return Err("answer too large".into());
        }
    }
    let status = match trailers_only {
        Some(s) => Some(s),
        None => rx
            .trailers()
            .await
            .map_err(|e| e.to_string())?
            .and_then(|t| t.get("grpc-status").cloned()),
    };
    match status.as_ref().map(|s| s.as_bytes()) {
        Some(b"0") => {}
        Some(s) => return Err(format!("grpc-status {}", String::from_utf8_lossy(s))),
        None => return Err("no grpc-status".into()),
    }
    let mut b = &data[..];
    if b.len() < 5 || b[0] != 0 {
        return Err("not a gRPC message".into());
    }
    b.advance(1);
    let len = b.get_u32() as usize;
    if b.len() != len {
        // Truncated, or more than the one message a unary answer has.
        return Err("not exactly one gRPC message".into());
    }
    Ok(b.to_vec())
}
