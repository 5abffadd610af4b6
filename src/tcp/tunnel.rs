//! The TCP proxy's `tunneling_config`: the connection's bytes travel inside an HTTP
//! CONNECT (or POST) stream to the cluster's endpoint, as Envoy's do, over HTTP/2 when the
//! cluster speaks it (sharing the core's pooled connections) and HTTP/1.1 otherwise. This
//! is Istio's HBONE: `connect_originate` tunnels each outbound connection to the peer's
//! port 15008 with `:authority` the original destination.
//!
//! As in Envoy: an HTTP/2 tunnel is up on a 200 and an HTTP/1.1 one on any 2xx; anything
//! else (or an early end) is a failed connect (`UF,URX`). The client's bytes wait until
//! the tunnel is up.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use crate::ctx::{CoreCtx, Downstream};
use crate::io::Tunnel;
use crate::model::{Cluster, TcpProxy, Tunneling};
use crate::stats::{ClusterStat, TcpStat};

use super::Outcome;

/// Proxies one connection through a tunnel; fills `out` as [`super::proxy`] does.
pub(super) async fn proxy(
    ctx: &Rc<CoreCtx>,
    tp: &Arc<TcpProxy>,
    cluster: &Arc<Cluster>,
    mut down: crate::tls::DownIo,
    conn: &Downstream,
    prefix: Vec<u8>,
    out: &mut Outcome,
) {
    let Some(t) = tp.tunneling.as_deref() else {
        return;
    };
    let core = ctx.core;
    let stats = tp.stats.core(core);
    let cstats = cluster.stats.core(core);
    let ep = match super::pick_endpoint(ctx, tp, cluster, conn) {
        Ok(ep) => ep,
        Err(f) => {
            out.flags = f.flags;
            return;
        }
    };
    out.upstream = Some(ep.address);
    out.workload = ep.workload.clone();
    let authority = super::log::format_over(&t.hostname, conn, tp.istio_authn, &ctx.hostname);
    let mut headers = Vec::with_capacity(t.headers.add().len());
    for h in t.headers.add() {
        let v = super::log::format_over(&h.value, conn, tp.istio_authn, &ctx.hostname);
        if !v.is_empty() || h.keep_empty {
            headers.push((h.name.clone(), v));
        }
    }
    cstats.inc(ClusterStat::UpstreamRqTotal as usize);
    // Counted as bytes pass, as Envoy does: a connection's totals are in the stats by
    // the time its peer sees it end.
    let (received, sent) = (Cell::new(0u64), Cell::new(0u64));
    let rx = |n: u64| {
        received.set(received.get() + n);
        stats.add(TcpStat::DownstreamCxRxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
    };
    let tx = |n: u64| {
        sent.set(sent.get() + n);
        stats.add(TcpStat::DownstreamCxTxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxRxBytesTotal as usize, n);
    };
    let ended = match cluster.http2 {
        Some(settings) => {
            let h2 = match crate::http::h2::upstream(ctx, cluster, &ep, settings).await {
                Ok(c) => c,
                Err(e) => return failed(out, &format!("{e:?}")),
            };
            let _stream = h2.stream();
            let req = match request(t, &authority, &headers, cluster.tls_for(&ep).is_some()) {
                Ok(r) => r,
                Err(why) => return failed(out, &why),
            };
            let mut send = match h2.send.clone().ready().await {
                Ok(s) => s,
                Err(e) => return failed(out, &e.to_string()),
            };
            let (resp, body) = match send.send_request(req, false) {
                Ok(x) => x,
                Err(e) => return failed(out, &e.to_string()),
            };
            let resp = match monoio::time::timeout(cluster.connect_timeout, resp).await {
                Ok(Ok(r)) if r.status() == 200 => r,
                Ok(Ok(r)) => return failed(out, &format!("tunnel answered {}", r.status())),
                Ok(Err(e)) => return failed(out, &e.to_string()),
                Err(_) => return failed(out, "tunnel not answered in the connect timeout"),
            };
            let mut io = crate::http::h2::tunnel::H2Io::new(body, resp.into_body());
            if !prefix.is_empty() {
                use tokio::io::AsyncWriteExt;
                if io.write_all(&prefix).await.is_err() {
                    return;
                }
                rx(prefix.len() as u64);
            }
            let (ended, _, _) = crate::io::copy_to_stream(
                &mut down,
                &mut io,
                tp.idle_timeout,
                tp.max_downstream_connection_duration,
                [&rx, &tx],
            )
            .await;
            if ended != Tunnel::Done {
                io.reset();
            }
            ended
        }
        None => {
            let mut up = match crate::upstream::open_io(core, cluster, &ep, false).await {
                Ok((up, _permit)) => up,
                Err(e) => {
                    out.transport_failure = crate::upstream::transport_failure(&e);
                    return failed(out, &e.to_string());
                }
            };
            let _active = super::UpstreamActive(cstats);
            let mut head = Vec::with_capacity(128);
            match &t.post_path {
                None => head.extend_from_slice(b"CONNECT "),
                Some(_) => head.extend_from_slice(b"POST "),
            }
            match &t.post_path {
                None => head.extend_from_slice(&authority),
                Some(p) => head.extend_from_slice(p.as_bytes()),
            }
            head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
            head.extend_from_slice(&authority);
            head.extend_from_slice(b"\r\n");
            for (k, v) in &headers {
                head.extend_from_slice(k.as_bytes());
                head.extend_from_slice(b": ");
                head.extend_from_slice(v);
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            if up.write_all(head).await.0.is_err() {
                return failed(out, "tunnel request not sent");
            }
            // The answer's head; what follows it is the tunnel's first bytes.
            let mut buf = Vec::with_capacity(4096);
            let mut parsed = crate::http::h1::ResponseHead::default();
            loop {
                buf.reserve(4096);
                // Appended: monoio's `read` of a Vec writes from its start.
                let (r, b) = crate::io::read_more(&mut up, buf).await;
                buf = b;
                match r {
                    Ok(0) | Err(_) => return failed(out, "tunnel closed before its answer"),
                    Ok(_) => {}
                }
                match crate::http::h1::parse_response(&buf, 64 << 10, 100, &mut parsed) {
                    Ok(Some(())) => break,
                    Ok(None) => continue,
                    Err(_) => return failed(out, "tunnel answered with a malformed head"),
                }
            }
            if !(200..300).contains(&parsed.status) {
                return failed(out, &format!("tunnel answered {}", parsed.status));
            }
            let early = buf.split_off(parsed.len);
            if !early.is_empty() {
                tx(early.len() as u64);
                if down.write_all(early).await.0.is_err() {
                    return;
                }
            }
            if !prefix.is_empty() {
                rx(prefix.len() as u64);
                if up.write_all(prefix).await.0.is_err() {
                    return;
                }
            }
            super::carry(&mut down, &mut up, tp, [None, None], &rx, &tx).await
        }
    };
    out.received = received.get();
    out.sent = sent.get();
    match ended {
        Tunnel::Done | Tunnel::Error => {}
        Tunnel::Idle => stats.inc(TcpStat::IdleTimeout as usize),
        Tunnel::MaxDuration => {
            stats.inc(TcpStat::MaxDownstreamConnectionDurationReached as usize);
            out.flags = "DT";
        }
    }
}

/// A tunnel that did not come up: Envoy's pool failure (`UF`, then `URX` with the
/// attempts spent). A connection that could not be made was counted where it failed.
fn failed(out: &mut Outcome, why: &str) {
    tracing::debug!("tcp_proxy tunnel failed: {why}");
    out.flags = "UF,URX";
}

/// The HTTP/2 request that opens the tunnel: CONNECT to the authority (no `:path` or
/// `:scheme`), or POST to `post_path`.
fn request(
    t: &Tunneling,
    authority: &[u8],
    headers: &[(Arc<str>, Vec<u8>)],
    tls: bool,
) -> Result<http::Request<()>, String> {
    let authority = std::str::from_utf8(authority).map_err(|_| "hostname is not UTF-8")?;
    let b = match &t.post_path {
        None => http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(authority),
        Some(p) => {
            let scheme = if tls { "https" } else { "http" };
            http::Request::builder()
                .method(http::Method::POST)
                .uri(format!("{scheme}://{authority}{p}"))
        }
    };
    let mut b = b;
    for (k, v) in headers {
        b = b.header(&**k, Bytes::copy_from_slice(v).as_ref());
    }
    b.body(()).map_err(|e| format!("tunnel request: {e}"))
}
