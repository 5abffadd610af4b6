//! A forwarded request's attempts: each picks its host, writes the upstream head (its
//! `x-envoy-attempt-count`), connects or reuses, sends, and waits for the response head;
//! the retry policy (`retry.rs`) then decides whether the outcome stands. A request body
//! is kept for another attempt while retries are possible, up to [`REPLAY_LIMIT`].

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::retry::{Failure, Retry};
use super::Downstream;
use crate::ctx::CoreCtx;
use crate::http::error::HttpError;
use crate::http::h2::RouteDeadline;
use crate::http::request::Forwarding;
use crate::model::{Cluster, Endpoint};

/// The most request body kept for a retry: Envoy's default buffer limit (a listener's
/// `per_connection_buffer_limit_bytes`). Past it the request is not retried.
pub(crate) const REPLAY_LIMIT: usize = 1 << 20;

/// A request body as it went upstream, kept for another attempt.
#[derive(Default)]
pub(crate) struct Replay {
    pub data: Vec<u8>,
    /// The whole body is here.
    pub complete: bool,
    /// It outgrew [`REPLAY_LIMIT`]: no retry.
    pub overflow: bool,
    /// Some of the body was taken from the client.
    pub touched: bool,
}

impl Replay {
    /// Keeps `chunk`; true when the body just outgrew the limit (the request is then not
    /// retried: Envoy counts it in `retry_or_shadow_abandoned`).
    pub fn record(&mut self, chunk: &[u8]) -> bool {
        self.touched = true;
        if self.overflow {
            return false;
        }
        if self.data.len() + chunk.len() > REPLAY_LIMIT {
            self.overflow = true;
            self.data = Vec::new();
            return true;
        }
        self.data.extend_from_slice(chunk);
        false
    }

    /// Whether another attempt can carry the request.
    pub fn replayable(&self) -> bool {
        !self.touched || (self.complete && !self.overflow)
    }
}

/// What an attempt sends its body from.
pub(crate) struct Body<'a> {
    /// Kept for retries (when retries are possible and the request has a body).
    pub replay: Option<&'a Rc<RefCell<Replay>>>,
    /// This attempt sends the kept body rather than the client's.
    pub from_replay: bool,
    /// The request's mirrors, fed what is read of the client's body.
    pub mirrors: Option<&'a Rc<super::mirror::Mirrors>>,
}

/// A route's timeout for this request, as Envoy works it out (`finalTimeout`): the
/// route's, or for a gRPC request on a route with `max_grpc_timeout` its `grpc-timeout`
/// (less `grpc_timeout_offset`, capped, zero meaning none); then, on internal requests,
/// `x-envoy-upstream-rq-timeout-ms`.
/// The flag: the timeout came from `max_grpc_timeout` (it then goes upstream as the
/// request's `grpc-timeout`).
pub(crate) fn route_timeout<D: Downstream>(d: &D, fw: &Forwarding<'_>) -> (Option<Duration>, bool) {
    let f = fw.f;
    let mut t = f.timeout;
    let mut from_grpc = false;
    if let (Some(max), None) = (f.max_grpc_timeout, &f.more().stream_duration) {
        if d.grpc() {
            from_grpc = true;
            let header = crate::http::h1::header_value(d.buf(), &d.head().headers, b"grpc-timeout");
            let mut g = header
                .and_then(|v| crate::model::route::parse_grpc_timeout(&v))
                .unwrap_or(Duration::ZERO);
            if let Some(offset) = f.more().grpc_timeout_offset {
                if offset < g {
                    g -= offset;
                }
            }
            if !max.is_zero() && (g.is_zero() || g > max) {
                g = max;
            }
            t = (!g.is_zero()).then_some(g);
        }
    }
    if d.head().envoy && d.internal() {
        if let Some(ms) = crate::http::h1::header_value(
            d.buf(),
            &d.head().headers,
            b"x-envoy-upstream-rq-timeout-ms",
        )
        .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok())
        {
            t = (ms > 0).then(|| Duration::from_millis(ms));
        }
    }
    (t, from_grpc)
}

/// The failure an attempt's error is, for the retry policy; `None`: final whatever the
/// policy (the global timeout, the client's own errors).
pub(super) fn failure(e: &HttpError) -> Option<Failure> {
    Some(match e {
        HttpError::Connect(_) => Failure::Connect,
        HttpError::Overflow => Failure::Overflow,
        HttpError::UpstreamReset | HttpError::UpstreamRemoteReset | HttpError::UpstreamProtocol => {
            Failure::Reset
        }
        HttpError::UpstreamRefusedStream => Failure::Refused,
        HttpError::UpstreamPerTryTimeout => Failure::PerTryTimeout,
        _ => return None,
    })
}

/// A host for a retry: with `previous_hosts`, up to `host_selection_retry_max_attempts`
/// more picks for one not tried yet (the last pick otherwise).
pub(super) fn pick_again<'c>(
    ctx: &CoreCtx,
    cluster: &'c Cluster,
    rs: &Retry<'_>,
) -> Option<Cow<'c, Endpoint>> {
    let mut last = None;
    for _ in 0..rs.host_picks() {
        let e = ctx.upstreams.borrow_mut().pick(cluster)?;
        last = Some(e);
        if !rs.reject(e.address) {
            break;
        }
    }
    last.map(Cow::Borrowed)
}

/// The route timeout of a forwarded request. As in Envoy it starts once the request has
/// fully gone upstream (on its first attempt), and covers retries, their back-off and the
/// response's head and body.
pub(crate) enum Deadline {
    /// Known once the request is sent (`None` until then, or without a timeout).
    At(Option<Duration>, Option<Instant>),
    /// The request body streams in its own task, which marks its end.
    Shared(RouteDeadline),
}

impl Deadline {
    pub(crate) fn started(&mut self, at: Instant) {
        match self {
            Deadline::At(t, d @ None) => *d = t.map(|t| at + t),
            Deadline::At(_, Some(_)) => {}
            Deadline::Shared(r) => r.request_done(),
        }
    }

    /// The route timeout, for `x-envoy-expected-rq-timeout-ms`.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            Deadline::At(t, _) => *t,
            Deadline::Shared(r) => r.timeout(),
        }
    }

    pub fn at(&self) -> Option<Instant> {
        match self {
            Deadline::At(_, d) => *d,
            Deadline::Shared(r) => r.at(),
        }
    }

    pub(crate) fn expired(&self) -> bool {
        self.at().is_some_and(|d| Instant::now() >= d)
    }

    pub(crate) async fn passed(&self) {
        match self {
            Deadline::At(_, None) => std::future::pending().await,
            Deadline::At(_, Some(at)) => {
                monoio::time::sleep(at.saturating_duration_since(Instant::now())).await
            }
            Deadline::Shared(r) => RouteDeadline::passed(Some(r)).await,
        }
    }
}

/// Whether an internal request asks for 204 rather than 504 when the route timeout passes
/// (`x-envoy-upstream-rq-timeout-alt-response`).
pub(super) fn alt_timeout_response<D: Downstream>(d: &D) -> bool {
    d.head().envoy
        && d.internal()
        && crate::http::h1::header_value(
            d.buf(),
            &d.head().headers,
            b"x-envoy-upstream-rq-timeout-alt-response",
        )
        .is_some()
}

/// `x-envoy-expected-rq-timeout-ms` for an attempt, as Envoy sets it: the per-try timeout
/// where it is the shorter, else the route timeout; on a retry never more than what is left
/// of the route timeout (Envoy 1.40 sends 14999 on a second attempt 1 ms in).
pub(super) fn expected_timeout(
    deadline: &Deadline,
    per_try: Option<Duration>,
    attempt: u32,
) -> Option<Duration> {
    let route = deadline.timeout();
    let t = match per_try {
        Some(p) if route.is_none_or(|g| p < g) => Some(p),
        _ => route,
    };
    match (t, deadline.at()) {
        (Some(t), Some(at)) if attempt > 1 => {
            Some(t.min(at.saturating_duration_since(Instant::now())))
        }
        (t, _) => t,
    }
}

/// Tells the cluster's outlier detection what an attempt came to, as Envoy's router does:
/// the response's status (a `grpc-status` in its head mapped to HTTP's), a connection that
/// failed or broke, or a timeout. An overflow or a client gone says nothing of the host.
pub(super) fn to_detector(
    ctx: &CoreCtx,
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    outcome: &Result<super::Outcome<'_>, HttpError>,
    resp: &crate::http::h1::ResponseHead,
    grpc: bool,
) {
    use crate::model::outlier::Outcome as O;
    let Some(cfg) = &cluster.outlier else { return };
    let o = match outcome {
        Ok(o) => {
            // A gRPC call's `grpc-status` in the head counts as its HTTP equivalent (one
            // that is not a number as 500, Envoy's InvalidCode).
            let head = o.up.head_bytes(resp);
            let status = match grpc {
                true => {
                    crate::http::h1::header_value(head, &resp.headers, b"grpc-status").map(|v| {
                        std::str::from_utf8(&v)
                            .ok()
                            .and_then(|v| v.trim().parse::<u32>().ok())
                            .map_or(500, grpc_to_http)
                    })
                }
                false => None,
            };
            O::Status(status.unwrap_or(resp.status))
        }
        Err(HttpError::Connect(_)) => O::ConnectFailed,
        Err(HttpError::UpstreamReset)
        | Err(HttpError::UpstreamRemoteReset)
        | Err(HttpError::UpstreamProtocol)
        | Err(HttpError::UpstreamRefusedStream) => O::Reset,
        Err(HttpError::UpstreamPerTryTimeout) | Err(HttpError::UpstreamTimeout) => O::Timeout,
        Err(_) => return,
    };
    ctx.upstreams
        .borrow_mut()
        .outlier
        .put(&cluster.name, cfg, addr, o);
}

/// Envoy's `grpcToHttpStatus`.
fn grpc_to_http(status: u32) -> u16 {
    match status {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}
