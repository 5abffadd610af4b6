//! One health check of one host: HTTP/1.1 (hyper), h2c and gRPC's `grpc.health.v1` (h2),
//! TCP (connect, send, find the expected bytes). Runs on the control thread.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::health::{HealthCheck, Kind};

/// A connection kept from one check to the next (`reuse_connection`).
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(h2::client::SendRequest<Bytes>),
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// The host answered, not as expected: unhealthy at once, whatever the threshold
    /// (Envoy's active failure).
    Failed,
    /// As `Failed`, the answer carrying `x-envoy-immediate-health-check-fail` (the host is
    /// then flagged as excluded by it).
    FailedNow,
    /// The host answered with a status in `retriable_statuses`: a failure that counts
    /// towards `unhealthy_threshold` (`now`: it carried
    /// `x-envoy-immediate-health-check-fail`).
    Retriable {
        now: bool,
    },
    /// No connection or a reset (Envoy's network failure).
    Network,
    /// No answer within the timeout (a network failure too, flagged `active_hc_timeout`).
    Timeout,
}

/// Runs one check of `addr` under the check's timeout; the connection to keep, if any.
pub async fn check(
    hc: &HealthCheck,
    addr: SocketAddr,
    conn: Option<Conn>,
) -> (Verdict, Option<Conn>) {
    match tokio::time::timeout(hc.timeout, run(hc, addr, conn)).await {
        Ok(r) => r,
        Err(_) => (Verdict::Timeout, None),
    }
}

async fn run(hc: &HealthCheck, addr: SocketAddr, conn: Option<Conn>) -> (Verdict, Option<Conn>) {
    let r = match &hc.kind {
        Kind::Tcp { send, receive } => tcp(addr, send, receive).await.map(|v| (v, None)),
        Kind::Http { h2: false, .. } => http1(hc, addr, conn).await,
        Kind::Http { h2: true, .. } | Kind::Grpc { .. } => over_h2(hc, addr, conn).await,
    };
    match r {
        Ok((v, keep)) => (v, keep.filter(|_| hc.reuse_connection)),
        Err(e) => {
            tracing::debug!("health check of {addr}: {e}");
            (Verdict::Network, None)
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn connect(addr: SocketAddr) -> Res<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// TCP: connected; `send` written; each of `receive` found, in order, in what comes back.
async fn tcp(addr: SocketAddr, send: &[u8], receive: &[Vec<u8>]) -> Res<Verdict> {
    let mut s = connect(addr).await?;
    if !send.is_empty() {
        s.write_all(send).await?;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if found_in_order(&got, receive) {
            return Ok(Verdict::Healthy);
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            // Closed before the expected bytes came: Envoy's network failure.
            return Ok(Verdict::Network);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn found_in_order(hay: &[u8], needles: &[Vec<u8>]) -> bool {
    let mut at = 0;
    for n in needles {
        match hay[at..].windows(n.len().max(1)).position(|w| w == &n[..]) {
            Some(i) => at += i + n.len(),
            None => return false,
        }
    }
    true
}

fn expected(hc: &HealthCheck, status: u16) -> bool {
    match &hc.kind {
        Kind::Http { expected, .. } => expected.iter().any(|(a, b)| (*a..*b).contains(&status)),
        _ => status == 200,
    }
}

fn immediate(h: &http::HeaderMap) -> bool {
    h.contains_key("x-envoy-immediate-health-check-fail")
}

/// An HTTP check's answer: an expected status is healthy; else a retriable one counts
/// towards the threshold, any other fails the host at once. The immediate-fail header
/// counts only on a status that fails, as in Envoy.
fn http_verdict(hc: &HealthCheck, status: u16, headers: &http::HeaderMap) -> Verdict {
    if expected(hc, status) {
        return Verdict::Healthy;
    }
    let now = immediate(headers);
    match &hc.kind {
        Kind::Http { retriable, .. }
            if retriable.iter().any(|(a, b)| (*a..*b).contains(&status)) =>
        {
            Verdict::Retriable { now }
        }
        _ if now => Verdict::FailedNow,
        _ => Verdict::Failed,
    }
}

/// The request an HTTP check sends (path, host, method, `user-agent: Envoy/HC`, the
/// configured headers), or a gRPC check's `Check` call.
fn request(hc: &HealthCheck, h2: bool) -> http::Request<Bytes> {
    match &hc.kind {
        Kind::Http {
            host,
            path,
            method,
            headers,
            remove,
            ..
        } => {
            let uri = match h2 {
                true => format!("http://{host}{path}"),
                false => path.to_string(),
            };
            let mut b = http::Request::builder().method(&**method).uri(uri);
            let mut fixed = vec![("user-agent", "Envoy/HC")];
            if !h2 {
                fixed.insert(0, ("host", &**host));
            }
            for (n, v) in fixed {
                if !remove.iter().any(|r| **r == *n) {
                    b = b.header(n, v);
                }
            }
            for (n, v) in headers.iter() {
                b = b.header(&**n, &**v);
            }
            b.body(Bytes::new()).expect("validated when configured")
        }
        Kind::Grpc { service, authority } => {
            // grpc.health.v1.HealthCheckRequest { service = 1 }, length-prefixed.
            let mut msg = Vec::new();
            if !service.is_empty() {
                msg.push(0x0a);
                let mut n = service.len();
                while n >= 0x80 {
                    msg.push((n as u8) | 0x80);
                    n >>= 7;
                }
                msg.push(n as u8);
                msg.extend_from_slice(service.as_bytes());
            }
            let mut body = vec![0u8];
            body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            body.extend_from_slice(&msg);
            http::Request::builder()
                .method("POST")
                .uri(format!("http://{authority}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("user-agent", "Envoy/HC")
                .body(Bytes::from(body))
                .expect("a valid request")
        }
        Kind::Tcp { .. } => unreachable!("a TCP check sends no HTTP request"),
    }
}

async fn http1(
    hc: &HealthCheck,
    addr: SocketAddr,
    conn: Option<Conn>,
) -> Res<(Verdict, Option<Conn>)> {
    let kept = match conn {
        Some(Conn::H1(mut s)) if !s.is_closed() => s.ready().await.ok().map(|_| s),
        _ => None,
    };
    let mut sender = match kept {
        Some(s) => s,
        None => {
            let io = hyper_util::rt::TokioIo::new(connect(addr).await?);
            let (s, c) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            s
        }
    };
    sender.ready().await?;
    let req = request(hc, false).map(Full::new);
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    body.collect().await?;
    let keep = !parts
        .headers
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    // The header counts only on a status that fails, as in Envoy.
    let v = http_verdict(hc, parts.status.as_u16(), &parts.headers);
    Ok((v, keep.then_some(Conn::H1(sender))))
}

async fn over_h2(
    hc: &HealthCheck,
    addr: SocketAddr,
    conn: Option<Conn>,
) -> Res<(Verdict, Option<Conn>)> {
    let (parts, body) = request(hc, true).into_parts();
    let end = body.is_empty();
    // A kept connection the peer closed (or sent GOAWAY on) meanwhile is given up for a
    // new one before anything is sent, as Envoy reconnects.
    let kept = match conn {
        Some(Conn::H2(s)) => match s.ready().await {
            Ok(mut s) => match s.send_request(http::Request::from_parts(parts.clone(), ()), end) {
                Ok(sent) => Some((s, sent)),
                Err(_) => None,
            },
            Err(_) => None,
        },
        _ => None,
    };
    let (send, (resp, mut tx)) = match kept {
        Some(k) => k,
        None => {
            let (s, c) = h2::client::handshake(connect(addr).await?).await?;
            tokio::spawn(async move {
                let _ = c.await;
            });
            let mut s = s.ready().await?;
            let sent = s.send_request(http::Request::from_parts(parts, ()), end)?;
            (s, sent)
        }
    };
    if !end {
        tx.send_data(body, true)?;
    }
    let resp = resp.await?;
    let (parts, mut rx) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(d) = rx.data().await {
        let d = d?;
        let _ = rx.flow_control().release_capacity(d.len());
        data.extend_from_slice(&d);
    }
    let trailers = rx.trailers().await?;
    let grpc = matches!(hc.kind, Kind::Grpc { .. });
    let v = if !grpc {
        http_verdict(hc, parts.status.as_u16(), &parts.headers)
    } else {
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        match (parts.status.as_u16(), status) {
            (200, Some(0)) if serving(&data) => Verdict::Healthy,
            _ => Verdict::Failed,
        }
    };
    Ok((v, Some(Conn::H2(send))))
}

/// Whether a `HealthCheckResponse` says SERVING (status = 1, field 1).
fn serving(data: &[u8]) -> bool {
    if data.len() < 5 || data[0] != 0 {
        return false;
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let Some(msg) = data.get(5..5 + len) else {
        return false;
    };
    msg == [0x08, 0x01]
}

/// Envoy's interval with jitter: `interval_jitter_percent` of it, then `interval_jitter`.
pub fn with_jitter(hc: &HealthCheck, base: Duration) -> Duration {
    let ms = base.as_millis() as u64;
    let mut out = ms;
    let pct = u64::from(hc.interval_jitter_percent) * ms / 100;
    if pct > 0 {
        out += fastrand::u64(..pct);
    }
    let j = hc.interval_jitter.as_millis() as u64;
    if j > 0 {
        out += fastrand::u64(..j);
    }
    Duration::from_millis(out)
}
