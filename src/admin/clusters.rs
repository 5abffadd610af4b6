//! `/clusters`, text and `?format=json`, as Envoy prints them (istioctl proxy-config
//! endpoints reads the JSON): each cluster's observability name, circuit-breaker thresholds
//! and whether it came over xDS, its outlier detector's success-rate figures, and each
//! endpoint's address, health (EDS, outlier ejection), weight, hostname and success rates.
//! Ringside keeps no per-endpoint counters, so Envoy's per-host stats are not printed.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::model::breakers::Thresholds;
use crate::model::{Cluster, Endpoint, Snapshot};
use crate::outlier::detector::{ClusterView, Views};

/// The cluster's detector view, when it has a detector.
fn view(views: &Views, c: &Cluster) -> Option<std::sync::Arc<ClusterView>> {
    c.outlier.as_ref()?;
    Some(views.load().get(&c.name).cloned().unwrap_or_default())
}

/// Whether the detector has the endpoint out.
fn ejected(v: Option<&ClusterView>, e: &Endpoint) -> bool {
    v.is_some_and(|v| v.ejected.contains(&e.address))
}

/// Active health checking's word on the endpoint: failing, not checked yet, out by an
/// immediate failure, last check timed out.
fn checked(h: &crate::health::Views, c: &Cluster, e: &Endpoint) -> [bool; 4] {
    match h.load().get(&c.name) {
        Some(v) => {
            let a = &e.address;
            let (f, p) = (v.failed.contains(a), v.pending.contains(a));
            [f, p, v.immediate.contains(a), v.timed_out.contains(a)]
        }
        None => [false; 4],
    }
}

/// Envoy's health flags, in its order; "healthy" when none.
fn flags(hc: [bool; 4], outlier: bool, eds_healthy: bool) -> String {
    let mut f = String::new();
    for (on, name) in [
        (hc[0], "/failed_active_hc"),
        (outlier, "/failed_outlier_check"),
        (!eds_healthy, "/failed_eds_health"),
        (hc[1], "/pending_active_hc"),
        (hc[2], "/excluded_via_immediate_hc_fail"),
        (hc[3], "/active_hc_timeout"),
    ] {
        if on {
            f.push_str(name);
        }
    }
    if f.is_empty() {
        f.push_str("healthy");
    }
    f
}

/// The endpoint's success rates of the last interval (external, local origin; -1: none).
fn rates(v: Option<&ClusterView>, e: &Endpoint) -> [f64; 2] {
    v.and_then(|v| v.success_rate.get(&e.address).copied())
        .unwrap_or([-1.0; 2])
}

fn observability_name(c: &Cluster) -> &str {
    c.stats
        .prefix()
        .strip_prefix("cluster.")
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or(&c.name)
}

fn added_via_api(snapshot: &Snapshot, c: &Cluster) -> bool {
    !snapshot
        .bootstrap
        .static_resources
        .as_ref()
        .is_some_and(|sr| sr.clusters.iter().any(|s| *s.name == *c.name))
}

/// The hostname Envoy shows: the one configured or resolved from, none for an address.
fn hostname(e: &crate::model::Endpoint) -> &str {
    if e.internal.is_some() || *e.hostname == *e.address.to_string() {
        ""
    } else {
        &e.hostname
    }
}

fn thresholds_json(t: &Thresholds, high: bool) -> Value {
    let mut v = json!({
        "max_connections": t.max_connections,
        "max_pending_requests": t.max_pending_requests,
        "max_requests": t.max_requests,
        "max_retries": t.max_retries,
    });
    if high {
        v["priority"] = json!("HIGH");
    }
    v
}

/// `/clusters?format=json`.
pub(super) fn json(snapshot: &Snapshot, views: &Views, health: &crate::health::Views) -> Value {
    let statuses: Vec<Value> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let v = view(views, c);
            let v = v.as_deref();
            let hosts: Vec<Value> = c
                .endpoints
                .iter()
                .map(|e| {
                    let address = match &e.internal {
                        Some(i) => json!({"envoy_internal_address": {
                            "server_listener_name": &*i.listener,
                            "endpoint_id": &*i.endpoint_id,
                        }}),
                        None => json!({"socket_address": {
                            "address": e.address.ip().to_string(),
                            "port_value": e.address.port(),
                        }}),
                    };
                    let mut h = json!({
                        "address": address,
                        "health_status": {
                            "eds_health_status": if e.healthy { "HEALTHY" } else { "UNHEALTHY" },
                        },
                        "weight": e.weight,
                    });
                    if !hostname(e).is_empty() {
                        h["hostname"] = json!(hostname(e));
                    }
                    if ejected(v, e) {
                        h["health_status"]["failed_outlier_check"] = json!(true);
                    }
                    let hc = checked(health, c, e);
                    for (on, key) in [
                        (hc[0], "failed_active_health_check"),
                        (hc[1], "pending_active_hc"),
                        (hc[2], "excluded_via_immediate_hc_fail"),
                        (hc[3], "active_hc_timeout"),
                    ] {
                        if on {
                            h["health_status"][key] = json!(true);
                        }
                    }
                    if let Some(l) = &e.locality {
                        let mut loc = serde_json::Map::new();
                        for (k, v) in [
                            ("region", &l.region),
                            ("zone", &l.zone),
                            ("sub_zone", &l.sub_zone),
                        ] {
                            if !v.is_empty() {
                                loc.insert(k.into(), json!(&**v));
                            }
                        }
                        h["locality"] = Value::Object(loc);
                    }
                    if e.priority > 0 {
                        h["priority"] = json!(e.priority);
                    }
                    let [sr, local] = rates(v, e);
                    if sr >= 0.0 {
                        h["success_rate"] = json!({"value": sr});
                    }
                    if local >= 0.0 {
                        h["local_origin_success_rate"] = json!({"value": local});
                    }
                    h
                })
                .collect();
            let mut v = json!({
                "name": &*c.name,
                "host_statuses": hosts,
                "circuit_breakers": {"thresholds": [
                    thresholds_json(&c.breakers.default, false),
                    thresholds_json(&c.breakers.high, true),
                ]},
                "observability_name": observability_name(c),
            });
            if added_via_api(snapshot, c) {
                v["added_via_api"] = json!(true);
            }
            let o = view(views, c);
            for (i, key) in [
                "success_rate_ejection_threshold",
                "local_origin_success_rate_ejection_threshold",
            ]
            .into_iter()
            .enumerate()
            {
                if let Some(t) = o.as_ref().map(|o| o.threshold[i]).filter(|t| *t > 0.0) {
                    v[key] = json!({"value": t});
                }
            }
            v
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// `/clusters` as text.
pub(super) fn text(snapshot: &Snapshot, views: &Views, health: &crate::health::Views) -> String {
    let mut out = String::new();
    for c in &snapshot.clusters {
        let n = &c.name;
        let _ = writeln!(out, "{n}::observability_name::{}", observability_name(c));
        let v = view(views, c);
        let v = v.as_deref();
        if let Some(o) = v {
            for (i, what) in ["", "local_origin_"].into_iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{n}::outlier::{what}success_rate_average::{}",
                    crate::outlier::rates::g(o.average[i])
                );
                let _ = writeln!(
                    out,
                    "{n}::outlier::{what}success_rate_ejection_threshold::{}",
                    crate::outlier::rates::g(o.threshold[i])
                );
            }
        }
        for (p, t) in [
            ("default_priority", &c.breakers.default),
            ("high_priority", &c.breakers.high),
        ] {
            let _ = writeln!(out, "{n}::{p}::max_connections::{}", t.max_connections);
            let _ = writeln!(
                out,
                "{n}::{p}::max_pending_requests::{}",
                t.max_pending_requests
            );
            let _ = writeln!(out, "{n}::{p}::max_requests::{}", t.max_requests);
            let _ = writeln!(out, "{n}::{p}::max_retries::{}", t.max_retries);
        }
        let _ = writeln!(out, "{n}::added_via_api::{}", added_via_api(snapshot, c));
        for e in c.endpoints.iter() {
            let a: &dyn std::fmt::Display = match &e.internal {
                Some(i) => &i.display,
                None => &e.address,
            };
            let _ = writeln!(out, "{n}::{a}::hostname::{}", hostname(e));
            let flags = flags(checked(health, c, e), ejected(v, e), e.healthy);
            let _ = writeln!(out, "{n}::{a}::health_flags::{flags}");
            let _ = writeln!(out, "{n}::{a}::weight::{}", e.weight);
            let l = e.locality.as_deref().cloned().unwrap_or_default();
            let _ = writeln!(out, "{n}::{a}::region::{}", l.region);
            let _ = writeln!(out, "{n}::{a}::zone::{}", l.zone);
            let _ = writeln!(out, "{n}::{a}::sub_zone::{}", l.sub_zone);
            let _ = writeln!(out, "{n}::{a}::canary::false");
            let _ = writeln!(out, "{n}::{a}::priority::{}", e.priority);
            let [sr, local] = rates(v, e);
            let _ = writeln!(out, "{n}::{a}::success_rate::{sr}");
            let _ = writeln!(out, "{n}::{a}::local_origin_success_rate::{local}");
        }
    }
    out
}
