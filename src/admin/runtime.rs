//! `/runtime` and `/runtime_modify`: the layered runtime as Envoy shows it, and changes to
//! its admin layer, published as a new snapshot (the request path reads the runtime from
//! the snapshot, so it never takes a lock).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::AdminState;

/// Envoy's `/runtime` JSON: every key's final value and its value in each layer.
pub(super) fn show(state: &AdminState) -> Value {
    let snap = state.snapshot.load();
    let rt = &snap.runtime;
    let mut entries = Map::new();
    for key in rt.keys() {
        let layer_values: Vec<Value> = rt
            .layers
            .iter()
            .map(|l| Value::String(l.values.get(key).cloned().unwrap_or_default()))
            .collect();
        entries.insert(
            key.to_string(),
            json!({"final_value": rt.get(key).unwrap_or_default(), "layer_values": layer_values}),
        );
    }
    let layers: Vec<&str> = rt.layers.iter().map(|l| l.name.as_str()).collect();
    json!({"entries": entries, "layers": layers})
}

/// Sets (or, with an empty value, removes) the query's keys in the admin layer.
pub(super) fn modify(state: &AdminState, params: &HashMap<&str, &str>) -> (u16, Vec<u8>) {
    let changes: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (super::decode(k), super::decode(v)))
        .collect();
    if changes.is_empty() {
        return (
            400,
            b"usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n".to_vec(),
        );
    }
    let Some(next) = state.snapshot.load().runtime.modified(&changes) else {
        return (503, b"No admin layer specified\n".to_vec());
    };
    let next = Arc::new(next);
    let published = state.snapshot.rcu(|cur| {
        let mut s = (**cur).clone();
        s.version = cur.version + 1;
        s.runtime = next.clone();
        s
    });
    let version = published.version + 1;
    crate::wake::announce();
    for core in &state.cores {
        let _ = core.send(crate::worker::CoreCommand::Snapshot(version));
    }
    for (k, v) in &changes {
        tracing::info!(key = %k, value = %v, "runtime admin layer changed");
    }
    (200, b"OK\n".to_vec())
}
