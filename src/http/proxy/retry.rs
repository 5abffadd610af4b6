//! Retries, as Envoy's router decides them (`RetryStateImpl`): the route's (or virtual
//! host's) policy, with the `x-envoy-retry-on` family of headers where they survive (on
//! internal requests), decides after each failed attempt or retriable response whether to
//! try again, after a jittered exponential back-off (or the back-off a rate-limited
//! upstream asks for), on which host, within the cluster's `max_retries`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::exchange::{Exchange, RequestHeaders};
use crate::http::h1::{header_value, ResponseHead};
use crate::model::breakers::Permit;
use crate::model::retry::{ResetFormat, RetryOn, RetryPolicy};
use crate::model::Cluster;
use crate::router::{header_matches, RequestView};
use crate::stats::ClusterStat;

/// Why an attempt produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection could not be made.
    Connect,
    /// The upstream reset or closed the stream or connection.
    Reset,
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM).
    Refused,
    /// The attempt's `per_try_timeout` (or idle timeout) passed.
    PerTryTimeout,
    /// A circuit breaker refused the attempt: never retried.
    Overflow,
}

/// What to do after an attempt.
pub(crate) enum Verdict {
    /// Try again after this back-off.
    Retry(Duration),
    /// The outcome stands.
    Done,
    /// The outcome was retriable but no retries are left (URX).
    LimitExceeded,
    /// The outcome was retriable but the cluster's `max_retries` is reached (UO).
    Overflow,
}

/// One request's retry state.
pub(crate) struct Retry<'p> {
    policy: &'p RetryPolicy,
    on: RetryOn,
    remaining: u32,
    /// Extra status codes and header names from `x-envoy-retriable-*` headers.
    extra_codes: Vec<u16>,
    extra_headers: Vec<String>,
    /// The current cap of the exponential back-off.
    interval: Duration,
    retried: bool,
    /// Bytes went upstream on some attempt (ends `reset-before-request`).
    pub sent: bool,
    permit: Option<Permit>,
    /// Hosts already tried (`previous_hosts`).
    tried: Vec<SocketAddr>,
}

/// A request header's value, if the request carries it.
fn request_header<E: Exchange + ?Sized>(x: &E, name: &[u8]) -> Option<String> {
    header_value(x.buf(), &x.head().headers, name)
        .map(|v| String::from_utf8_lossy(&v).trim().to_string())
}

impl<'p> Retry<'p> {
    /// The request's retry state, or `None` when nothing can be retried (no policy, no
    /// condition, or `retriable_request_headers` that the request does not match).
    pub fn new<E: Exchange + ?Sized>(
        policy: Option<&'p RetryPolicy>,
        x: &E,
        per_try: &mut Option<Duration>,
    ) -> Option<Retry<'p>> {
        static EMPTY: std::sync::OnceLock<RetryPolicy> = std::sync::OnceLock::new();
        // These headers count only on internal requests (the trust boundary drops them
        // from external ones), as in Envoy.
        let has_headers = x.head().envoy && x.internal();
        if policy.is_none() && !has_headers {
            return None;
        }
        let policy = policy.unwrap_or_else(|| EMPTY.get_or_init(RetryPolicy::default));
        let mut on = policy.on;
        let mut extra_codes = Vec::new();
        let mut extra_headers = Vec::new();
        let mut max = None;
        if has_headers {
            if let Some(v) = request_header(x, b"x-envoy-retry-on") {
                on.0 |= lenient(&v, false);
            }
            if let Some(v) = request_header(x, b"x-envoy-retry-grpc-on") {
                on.0 |= lenient(&v, true);
            }
            if let Some(v) = request_header(x, b"x-envoy-retriable-status-codes") {
                extra_codes.extend(v.split(',').filter_map(|c| c.trim().parse::<u16>().ok()));
            }
            if let Some(v) = request_header(x, b"x-envoy-retriable-header-names") {
                extra_headers.extend(
                    v.split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty()),
                );
            }
            max = request_header(x, b"x-envoy-max-retries").and_then(|v| v.parse::<u32>().ok());
            if let Some(ms) = request_header(x, b"x-envoy-upstream-rq-per-try-timeout-ms")
                .and_then(|v| v.parse::<u64>().ok())
            {
                *per_try = Some(Duration::from_millis(ms)).filter(|d| !d.is_zero());
            }
        }
        if !policy.request_headers.is_empty() {
            let view = RequestHeaders(x);
            if !policy
                .request_headers
                .iter()
                .any(|h| header_matches(h, &view))
            {
                return None;
            }
        }
        if on.0 == 0 {
            return None;
        }
        Some(Retry {
            policy,
            on,
            remaining: max.unwrap_or(policy.num_retries),
            extra_codes,
            extra_headers,
            interval: policy.base_interval,
            retried: false,
            sent: false,
            permit: None,
            tried: Vec::new(),
        })
    }

    /// After an attempt that produced no response.
    pub fn on_failure(&mut self, f: Failure, cluster: &Cluster, core: usize) -> Verdict {
        let on = self.on;
        let would = match f {
            Failure::Overflow => false,
            _ if f == Failure::Connect && on.has(RetryOn::CONNECT_FAILURE) => true,
            _ if on.has(RetryOn::RESET_BEFORE_REQUEST)
                && !self.sent
                && f != Failure::PerTryTimeout =>
            {
                true
            }
            _ if on.has(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR) => true,
            Failure::Refused => on.has(RetryOn::REFUSED_STREAM),
            _ => false,
        };
        self.decide(would, cluster, core, None)
    }

    /// After a response head: whether it is retried rather than passed on.
    pub fn on_response(
        &mut self,
        resp: &ResponseHead,
        head: &[u8],
        cluster: &Cluster,
        core: usize,
    ) -> Verdict {
        let view = ResponseHeaders { resp, head };
        let on = self.on;
        let status = resp.status;
        let (rate_limited_header, grpc_status) = retry_headers(head, &resp.headers);
        let would = if rate_limited_header {
            on.has(RetryOn::ENVOY_RATE_LIMITED)
        } else {
            (on.has(RetryOn::FIVE_XX) && (500..600).contains(&status))
                || (on.has(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status))
                || (on.has(RetryOn::RETRIABLE_4XX) && status == 409)
                || (on.has(RetryOn::RETRIABLE_STATUS_CODES)
                    && (self.policy.status_codes.contains(&status)
                        || self.extra_codes.contains(&status)))
                || (on.has(RetryOn::RETRIABLE_HEADERS)
                    && (self.policy.headers.iter().any(|h| header_matches(h, &view))
                        || self.extra_headers.iter().any(|n| view.header(n).is_some())))
                || grpc_status.is_some_and(|g| on.grpc_status(g))
        };
        let rate_limited = match (&self.policy.rate_limited, would) {
            (Some(r), true) => reset_backoff(r, head, &resp.headers),
            _ => None,
        };
        self.decide(would, cluster, core, rate_limited)
    }

    fn decide(
        &mut self,
        would: bool,
        cluster: &Cluster,
        core: usize,
        rate_limited: Option<Duration>,
    ) -> Verdict {
        let cs = cluster.stats.core(core);
        // The previous retry's place under max_retries ends with its outcome.
        self.permit = None;
        if !would {
            if self.retried {
                cs.inc(ClusterStat::UpstreamRqRetrySuccess as usize);
            }
            return Verdict::Done;
        }
        if self.remaining == 0 {
            cs.inc(ClusterStat::UpstreamRqRetryLimitExceeded as usize);
            return Verdict::LimitExceeded;
        }
        self.remaining -= 1;
        let active = || {
            let n = cluster.stats.total(ClusterStat::UpstreamRqActive as usize);
            n.max(0) as u64
        };
        match cluster.breakers.acquire_retry(active) {
            Ok(p) => self.permit = p,
            Err(()) => {
                cs.inc(ClusterStat::UpstreamRqRetryOverflow as usize);
                return Verdict::Overflow;
            }
        }
        cs.inc(ClusterStat::UpstreamRqRetry as usize);
        self.retried = true;
        if let Some(d) = rate_limited {
            cs.inc(ClusterStat::UpstreamRqRetryBackoffRatelimited as usize);
            let ms = d.as_millis() as u64;
            return Verdict::Retry(Duration::from_millis(ms + fastrand::u64(..(ms / 2).max(1))));
        }
        cs.inc(ClusterStat::UpstreamRqRetryBackoffExponential as usize);
        let cap = self.interval.min(self.policy.max_interval);
        self.interval = (self.interval * 2).min(self.policy.max_interval);
        let ms = (cap.as_millis() as u64).max(1);
        Verdict::Retry(Duration::from_millis(fastrand::u64(..ms)))
    }

    /// The attempt that is being retried went to `addr` (for `previous_hosts`; kept only
    /// when a retry happens, so a request that needs none allocates nothing).
    pub fn tried(&mut self, addr: SocketAddr) {
        if self.policy.previous_hosts {
            self.tried.push(addr);
        }
    }

    /// Whether a retry should look for another host than `addr`: up to
    /// `host_selection_retry_max_attempts` more picks.
    pub fn reject(&self, addr: SocketAddr) -> bool {
        self.tried.contains(&addr)
    }

    pub fn host_picks(&self) -> u32 {
        if self.policy.previous_hosts {
            self.policy.host_selection_attempts.saturating_add(1)
        } else {
            1
        }
    }
}

/// Parses a header's condition list, ignoring what Envoy ignores (unknown tokens).
fn lenient(list: &str, grpc_only: bool) -> u32 {
    RetryOn::parse(list, grpc_only).0 .0
}

/// The back-off a rate-limited upstream asks for: the first configured reset header that
/// reads as an interval above 1 ms and within the maximum.
fn reset_backoff(
    r: &crate::model::retry::RateLimitedBackOff,
    head: &[u8],
    headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
) -> Option<Duration> {
    for (name, format) in &r.headers {
        let Some(v) = header_value(head, headers, name.as_bytes()) else {
            continue;
        };
        let first = v.split(|&b| b == b',').next().unwrap_or(&[]);
        let Some(n) = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let d = match format {
            ResetFormat::Seconds => Duration::from_secs(n),
            ResetFormat::UnixTimestamp => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
                match Duration::from_secs(n).checked_sub(now) {
                    Some(d) => d,
                    None => continue,
                }
            }
        };
        if d > r.max || d <= Duration::from_millis(1) {
            continue;
        }
        return Some(d);
    }
    None
}

/// A response head for `retriable_headers`.
struct ResponseHeaders<'a> {
    resp: &'a ResponseHead,
    head: &'a [u8],
}

impl RequestView for ResponseHeaders<'_> {
    fn method(&self) -> &[u8] {
        b""
    }
    fn path(&self) -> &[u8] {
        b""
    }
    fn authority(&self) -> &[u8] {
        b""
    }
    fn scheme(&self) -> &[u8] {
        b""
    }
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        if name == ":status" {
            let s = itoa::Buffer::new()
                .format(self.resp.status)
                .as_bytes()
                .to_vec();
            return Some(Cow::Owned(s));
        }
        header_value(self.head, &self.resp.headers, name.as_bytes())
    }
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        if name == ":status" {
            return self.header(name).map(|v| f(&v));
        }
        crate::router::any_header_value(self.head, &self.resp.headers, name.as_bytes(), f)
    }
}

/// The response's `x-envoy-ratelimited` (whether present) and `grpc-status` (its number,
/// when it is sent once and reads as one), in one pass over the headers: every response of
/// a route with a retry policy is looked at, so this is on the request path.
fn retry_headers(
    head: &[u8],
    headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
) -> (bool, Option<u32>) {
    const LIMITED: &[u8] = b"x-envoy-ratelimited";
    const GRPC: &[u8] = b"grpc-status";
    let mut limited = false;
    // None: absent; Some(None): repeated or unreadable.
    let mut grpc: Option<Option<u32>> = None;
    for (n, v) in headers {
        let len = n.end - n.start;
        if len == LIMITED.len() && head[n.clone()].eq_ignore_ascii_case(LIMITED) {
            limited = true;
        } else if len == GRPC.len() && head[n.clone()].eq_ignore_ascii_case(GRPC) {
            let parse = || {
                std::str::from_utf8(&head[v.clone()])
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            grpc = Some(match grpc {
                None => parse(),
                Some(_) => None,
            });
        }
    }
    (limited, grpc.flatten())
}
