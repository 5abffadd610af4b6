//! `/stats` in Envoy's forms: histogram quantiles as text and JSON, and the Prometheus
//! exposition with Envoy's tag extraction.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// A histogram as Envoy's `/stats` prints it: each quantile as `P<q>(interval,cumulative)`.
/// Ringside keeps no flush intervals, so the interval value is `nan`, as Envoy prints it
/// for an interval without samples.
pub(super) fn quantiles_text(h: &crate::stats::HistValue) -> String {
    if h.count == 0 {
        return "No recorded values".into();
    }
    let mut out = String::new();
    for q in crate::stats::QUANTILES {
        if !out.is_empty() {
            out.push(' ');
        }
        let v = h.quantile(q).unwrap_or(f64::NAN);
        let _ = write!(out, "P{q}(nan,{v})");
    }
    out
}

/// Envoy's JSON form of histograms: an entry of the `stats` list.
pub(super) fn histograms_json(hists: &[crate::stats::HistValue]) -> Value {
    let computed: Vec<Value> = hists
        .iter()
        .map(|h| {
            let values: Vec<Value> = crate::stats::QUANTILES
                .iter()
                .map(|&q| json!({"interval": null, "cumulative": h.quantile(q)}))
                .collect();
            json!({"name": h.name, "values": values})
        })
        .collect();
    json!({"histograms": {"supported_quantiles": crate::stats::QUANTILES, "computed_quantiles": computed}})
}

/// The Prometheus exposition as Envoy prints it: counters, then gauges, then histograms;
/// within each, one `# TYPE` per tag-extracted name (ordered token by token, as Envoy's
/// symbol table orders them) and its stats by full name, each with its tags as labels.
pub(super) fn prometheus(
    store: &crate::stats::Store,
    stats: &[crate::stats::StatValue],
    hists: &[crate::stats::HistValue],
) -> String {
    let mut out = String::new();
    for gauges in [false, true] {
        let group = stats
            .iter()
            .filter(|s| s.gauge == gauges)
            .map(|s| (store.tagged(&s.name), s));
        let kind = if gauges { "gauge" } else { "counter" };
        for_each_family(
            group,
            |s| &s.name,
            &mut out,
            kind,
            |out, name, labels, s| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", s.value as u64);
            },
        );
    }
    let group = hists.iter().map(|h| (store.tagged(&h.name), h));
    for_each_family(
        group,
        |h| &h.name,
        &mut out,
        "histogram",
        |out, name, labels, h| {
            let sep = if labels.is_empty() { "" } else { "," };
            for (i, c) in h.cumulative.iter().enumerate() {
                let le = match crate::stats::HISTOGRAM_BOUNDS.get(i) {
                    Some(b) => b.to_string(),
                    None => "+Inf".into(),
                };
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        },
    );
    out
}

/// Sorts `items` into families by tag-extracted name and prints each under its `# TYPE`.
fn for_each_family<'a, T: 'a>(
    items: impl Iterator<Item = (std::sync::Arc<crate::stats::tags::Tagged>, &'a T)>,
    full_name: impl Fn(&T) -> &str,
    out: &mut String,
    kind: &str,
    mut print: impl FnMut(&mut String, &str, &str, &T),
) {
    // Token by token, compared in place: a big mesh has hundreds of thousands of stats,
    // and each name's tokens collected as strings were a third of a gigabyte.
    let by_tokens = |a: &str, b: &str| a.split('.').cmp(b.split('.'));
    let mut items: Vec<_> = items.collect();
    items.sort_by(|(ta, va), (tb, vb)| {
        by_tokens(&ta.name, &tb.name).then_with(|| by_tokens(full_name(va), full_name(vb)))
    });
    let mut last: Option<&str> = None;
    for (tagged, v) in &items {
        // A custom namespace's stats (Istio's `istiocustom`) are printed without it and
        // without `envoy_`, as Envoy does.
        let name = match tagged
            .name
            .strip_prefix(crate::stats::istio::NAMESPACE)
            .and_then(|n| n.strip_prefix('.'))
        {
            Some(n) => sanitize(n),
            None => format!("envoy_{}", sanitize(&tagged.name)),
        };
        if last != Some(tagged.name.as_str()) {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last = Some(&tagged.name);
        }
        let labels: Vec<String> = tagged
            .tags
            .iter()
            .map(|(k, v)| format!("{}=\"{}\"", sanitize(k), escape(v)))
            .collect();
        print(out, &name, &labels.join(","), v);
    }
}

/// Envoy's Prometheus name rule: every character outside `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A label value with `\`, newline and `"` escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

/// Each cluster's `circuit_breakers.<priority>.*` gauges as of now, told to `emit` (full
/// name, value, gauge, used): open while a limited resource is in use up to its limit;
/// `remaining_*` with `track_remaining`. Resources that are not counted read their use
/// from the per-core `upstream_*_active` stats. Computed when read, so a cluster holds no
/// cells for them (two to four scopes a cluster, 10,000 clusters in a big mesh); the
/// store asks for them on every read (`Store::set_computed`).
pub fn breaker_stats(
    snapshot: &crate::model::Snapshot,
    emit: &mut dyn FnMut(&str, i64, bool, bool),
) {
    use crate::model::breakers::Resource;
    use crate::stats::{BreakerRemainingStat as R, BreakerStat as B, ClusterStat, StatNames};
    let mut name = String::new();
    let mut gauge = |prefix: &str, priority: &str, stat: &str, value: u64, used: bool| {
        name.clear();
        let _ = write!(name, "{prefix}{priority}.{stat}");
        emit(&name, value as i64, true, used);
    };
    for c in snapshot.clusters.iter() {
        let b = &c.breakers;
        let prefix = &*b.stats_prefix;
        let active = |i: ClusterStat| c.stats.total(i as usize).max(0) as u64;
        let (cx, rq) = (
            b.in_use(Resource::Connections, active(ClusterStat::UpstreamCxActive)),
            b.in_use(Resource::Requests, active(ClusterStat::UpstreamRqActive)),
        );
        let pending = b.in_use(Resource::Pending, 0);
        let retries = b.in_use(Resource::Retries, 0);
        let open = |n: u64, limit: u64| u64::from(n > 0 && n >= limit);
        let retry_limit = b.retry_limit(|| active(ClusterStat::UpstreamRqActive));
        for (priority, th, (cx, pending, rq, retries)) in [
            ("default", &b.default, (cx, pending, rq, retries)),
            ("high", &b.high, (0, 0, 0, 0)),
        ] {
            // Only DEFAULT is used (routes set no other priority): HIGH's counts are 0, so
            // its gauges never open.
            let opened = [
                (B::CxOpen, open(cx, th.max_connections)),
                (B::CxPoolOpen, 0),
                (B::RqOpen, open(rq, th.max_requests)),
                (B::RqPendingOpen, open(pending, th.max_pending_requests)),
                (B::RqRetryOpen, open(retries, retry_limit)),
            ];
            for (stat, v) in opened {
                gauge(prefix, priority, B::NAMES[stat as usize], v, v != 0);
            }
            if th.track_remaining {
                let remaining = [
                    (R::RemainingCx, th.max_connections.saturating_sub(cx)),
                    (R::RemainingCxPools, u64::MAX),
                    (
                        R::RemainingPending,
                        th.max_pending_requests.saturating_sub(pending),
                    ),
                    // Envoy clears the gauge under a retry budget (its remaining is
                    // meaningless).
                    (
                        R::RemainingRetries,
                        match th.retry_budget {
                            Some(_) => 0,
                            None => th.max_retries.saturating_sub(retries),
                        },
                    ),
                    (R::RemainingRq, th.max_requests.saturating_sub(rq)),
                ];
                for (stat, v) in remaining {
                    gauge(prefix, priority, R::NAMES[stat as usize], v, true);
                }
            }
        }
    }
}

/// `server.state` and `listener_manager.workers_started` as of now (Envoy sets them on
/// its stats flush; reading them fresh is never staler).
fn refresh_server_gauges(state: &super::AdminState) {
    use crate::stats::{ListenerManagerStat, ServerStat};
    let control = state.stats.control_core();
    let server = state.stats.scope::<ServerStat>("server.");
    server
        .core(control)
        .set(ServerStat::State as usize, super::server_state(state).0);
    // `access_log_file.*` exist once access logs were written, as Envoy's exist only with a
    // file logger.
    let q = &crate::ctx::LOG_QUEUE;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    if load(&q.lines) + load(&q.dropped_lines) > 0 {
        use crate::stats::AccessLogFileStat as A;
        let log = state.stats.scope::<A>("access_log_file.");
        for (stat, v) in [
            (A::WriteBuffered, load(&q.lines)),
            (A::WriteCompleted, load(&q.written)),
            (A::WriteFailed, load(&q.failed)),
            (A::WriteTotalBuffered, load(&q.queued_bytes)),
            (A::DroppedLines, load(&q.dropped_lines)),
        ] {
            log.core(control).set(stat as usize, v);
        }
    }
    let lm = state
        .stats
        .scope::<ListenerManagerStat>("listener_manager.");
    let started = state.initialized.load(std::sync::atomic::Ordering::Acquire);
    lm.core(control).set(
        ListenerManagerStat::WorkersStarted as usize,
        u64::from(started),
    );
}

/// The stats `/stats` lists: `filter` (a regex on the full name; an invalid one is a 400,
/// as in Envoy) and `usedonly` (stats that moved: a counter or gauge that is not 0, a
/// histogram with samples; Envoy also lists a gauge that was set back to 0).
#[allow(clippy::type_complexity)]
pub(super) fn selected_stats(
    state: &super::AdminState,
    params: &std::collections::HashMap<&str, &str>,
) -> Result<(Vec<crate::stats::StatValue>, Vec<crate::stats::HistValue>), String> {
    let filter = match params.get("filter") {
        Some(f) => Some(
            regex::Regex::new(&super::decode(f)).map_err(|e| format!("Invalid re2 regex: {e}"))?,
        ),
        None => None,
    };
    let keep = |name: &str| filter.as_ref().is_none_or(|f| f.is_match(name));
    let used_only = params.contains_key("usedonly");
    refresh_server_gauges(state);
    // Kept as they are read: a big mesh has hundreds of thousands of stats, and a
    // readiness probe wants a few.
    let stats = state
        .stats
        .snapshot_where(&|name, used| (!used_only || used) && keep(name));
    let mut hists = state.stats.histograms();
    hists.retain(|h| keep(&h.name) && (!used_only || h.count > 0));
    Ok((stats, hists))
}
