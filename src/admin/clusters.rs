//! `/clusters`, text and `?format=json`, as Envoy prints them (istioctl proxy-config
//! endpoints reads the JSON): each cluster's observability name, circuit-breaker thresholds
//! and whether it came over xDS, and each endpoint's address, health, weight and hostname.
//! Ringside keeps no per-endpoint counters, so Envoy's per-host stats are not printed.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::model::breakers::Thresholds;
use crate::model::{Cluster, Snapshot};

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
    if *e.hostname == *e.address.to_string() {
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
pub(super) fn json(snapshot: &Snapshot) -> Value {
    let statuses: Vec<Value> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let hosts: Vec<Value> = c
                .endpoints
                .iter()
                .map(|e| {
                    let mut h = json!({
                        "address": {"socket_address": {
                            "address": e.address.ip().to_string(),
                            "port_value": e.address.port(),
                        }},
                        "health_status": {
                            "eds_health_status": if e.healthy { "HEALTHY" } else { "UNHEALTHY" },
                        },
                        "weight": e.weight,
                    });
                    if !hostname(e).is_empty() {
                        h["hostname"] = json!(hostname(e));
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
            v
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

/// `/clusters` as text.
pub(super) fn text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for c in &snapshot.clusters {
        let n = &c.name;
        let _ = writeln!(out, "{n}::observability_name::{}", observability_name(c));
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
            let a = e.address;
            let _ = writeln!(out, "{n}::{a}::hostname::{}", hostname(e));
            let flags = if e.healthy {
                "healthy"
            } else {
                "/failed_eds_health"
            };
            let _ = writeln!(out, "{n}::{a}::health_flags::{flags}");
            let _ = writeln!(out, "{n}::{a}::weight::{}", e.weight);
        }
    }
    out
}
