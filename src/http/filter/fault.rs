//! `envoy.filters.http.fault`: delays and aborts, configured or asked for by headers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{draw, FilterHost, Routed};
use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::h1::header_value;
use crate::model::filter::{AbortKind, DelayKind, Fault, FaultFilter, Fraction, PerRoute};
use crate::stats::{FaultStat, Scope};

const DELAY: &[u8] = b"x-envoy-fault-delay-request";
const DELAY_PERCENT: &[u8] = b"x-envoy-fault-delay-request-percentage";
const ABORT: &[u8] = b"x-envoy-fault-abort-request";
const ABORT_GRPC: &[u8] = b"x-envoy-fault-abort-grpc-request";
const ABORT_PERCENT: &[u8] = b"x-envoy-fault-abort-request-percentage";
const DOWNSTREAM_NODE: &[u8] = b"x-envoy-downstream-service-node";

/// A fault in progress: counted in `active_faults` (and the proxy-wide count that
/// `max_active_faults` reads) until the request ends.
pub(crate) struct Active {
    stats: Arc<Scope>,
    core: usize,
    count: Arc<AtomicU64>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .core(self.core)
            .dec(FaultStat::ActiveFaults as usize);
    }
}

/// `Ok(Some(d))`: delay the request by `d`, then call again with `resumed` (which only
/// decides the abort).
pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    filter: &FaultFilter,
    per: Option<&PerRoute>,
    routed: &Routed<'_>,
    resumed: bool,
) -> Result<Option<Duration>, HttpError> {
    // A route's configuration replaces the listener's whole.
    let config: &Arc<Fault> = match per {
        Some(PerRoute::Fault(c)) => c,
        _ => match &filter.config {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let cells = filter.stats.core(x.core());
    if !resumed {
        if config.is_empty() || !applies(x, config, routed) {
            return Ok(None);
        }
        if let Some(d) = delay(x, config) {
            if take_slot(x, filter, config.max_active_faults) {
                cells.inc(FaultStat::DelaysInjected as usize);
                x.log_mut().flags.set(ResponseFlags::DELAY_INJECTED);
                return Ok(Some(d));
            }
        }
    }
    // No delay, or after it (sampled again then, as in Envoy): the abort.
    if let Some((status, grpc_status)) = abort(x, config) {
        if take_slot(x, filter, config.max_active_faults) {
            cells.inc(FaultStat::AbortsInjected as usize);
            return Err(HttpError::FaultAbort {
                status,
                grpc_status,
            });
        }
    }
    Ok(None)
}

/// A fault about to be applied takes the request's slot under `max_active_faults` (one
/// per request, whatever it injects); false, counted in `faults_overflow`, when the
/// proxy has as many faults in progress as allowed.
fn take_slot<E: FilterHost>(x: &mut E, filter: &FaultFilter, max: Option<u64>) -> bool {
    if x.filter_state_mut().fault.is_some() {
        return true;
    }
    let core = x.core();
    let max = max.unwrap_or(u64::MAX);
    if filter.active.load(Ordering::Relaxed) >= max {
        filter
            .stats
            .core(core)
            .inc(FaultStat::FaultsOverflow as usize);
        return false;
    }
    filter.active.fetch_add(1, Ordering::Relaxed);
    filter
        .stats
        .core(core)
        .inc(FaultStat::ActiveFaults as usize);
    x.filter_state_mut().fault = Some(Active {
        stats: filter.stats.clone(),
        core,
        count: filter.active.clone(),
    });
    true
}

/// Whether the fault applies to this request at all: its cluster, downstream node and
/// headers.
fn applies<E: FilterHost>(x: &E, c: &Fault, routed: &Routed<'_>) -> bool {
    if let Some(want) = &c.upstream_cluster {
        if routed.cluster() != Some(&**want) {
            return false;
        }
    }
    if !c.downstream_nodes.is_empty() {
        let node = header_value(x.buf(), &x.head().headers, DOWNSTREAM_NODE);
        match node {
            Some(n) if c.downstream_nodes.iter().any(|d| d.as_bytes() == &n[..]) => {}
            _ => return false,
        }
    }
    if !c.headers.is_empty() {
        let view = crate::http::h1::RequestRef {
            buf: x.buf(),
            head: x.head(),
            authority: x.bytes(&x.log().authority),
            path: x.bytes(&x.log().path),
        };
        if !c
            .headers
            .iter()
            .all(|h| crate::router::header_matches(h, &view))
        {
            return false;
        }
    }
    true
}

/// The first value of a header as an unsigned decimal number (surrounding whitespace
/// allowed, as Envoy's `SimpleAtoi`).
fn number<E: FilterHost>(x: &E, name: &[u8]) -> Option<u64> {
    let buf = x.buf();
    let (_, v) = x
        .head()
        .headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))?;
    std::str::from_utf8(&buf[v.clone()])
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The configured percentage, lowered by the request's percentage header (never raised).
fn percentage<E: FilterHost>(x: &E, configured: Fraction, header: &[u8]) -> Fraction {
    match number(x, header) {
        Some(n) => Fraction {
            numerator: (n.min(u64::from(u32::MAX)) as u32).min(configured.numerator),
            denominator: configured.denominator,
        },
        None => configured,
    }
}

fn delay<E: FilterHost>(x: &E, c: &Fault) -> Option<Duration> {
    let d = c.delay.as_ref()?;
    let (duration, pct) = match d.kind {
        DelayKind::Fixed(t) => (t, d.percentage),
        DelayKind::Header => (
            Duration::from_millis(number(x, DELAY)?),
            percentage(x, d.percentage, DELAY_PERCENT),
        ),
    };
    (!duration.is_zero() && pct.sample(draw())).then_some(duration)
}

fn abort<E: FilterHost>(x: &E, c: &Fault) -> Option<(u16, Option<u32>)> {
    let a = c.abort.as_ref()?;
    let (status, pct) = match a.kind {
        AbortKind::Http(s) => ((s, None), a.percentage),
        AbortKind::Grpc(g) => ((200, Some(g)), a.percentage),
        AbortKind::Header => {
            let pct = percentage(x, a.percentage, ABORT_PERCENT);
            // A valid HTTP status wins over a gRPC one; the gRPC status is not checked.
            match number(x, ABORT).filter(|s| (200..600).contains(s)) {
                Some(s) => ((s as u16, None), pct),
                None => ((200, Some(number(x, ABORT_GRPC)? as u32)), pct),
            }
        }
    };
    pct.sample(draw()).then_some(status)
}
