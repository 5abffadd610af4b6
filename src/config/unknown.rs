//! `--allow-unknown-static-fields`: a bootstrap field that is not in Envoy's API at all (a
//! newer Istio writing for a newer Envoy) is dropped with a warning, as Envoy drops it; a
//! field that is in Envoy's API but not implemented by Ringside (listed in
//! `proto/omitted_fields.txt`) stays and is refused by name.

use std::collections::HashSet;
use std::sync::OnceLock;

use prost_reflect::{Kind, MessageDescriptor};
use serde_yaml_ng::Value;

/// Envoy's fields left out of `proto/`: (message, field name).
fn omitted() -> &'static HashSet<(String, String)> {
    static SET: OnceLock<HashSet<(String, String)>> = OnceLock::new();
    SET.get_or_init(|| {
        include_str!("../../proto/omitted_fields.txt")
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (msg, _num, name) = (it.next()?, it.next()?, it.next()?);
                Some((msg.to_string(), name.to_string()))
            })
            .collect()
    })
}

/// A proto field name in its JSON (lowerCamel) spelling.
pub(crate) fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = false;
    for c in name.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `key` names a field of Envoy's `msg` that `proto/` leaves out.
fn in_envoys_api(msg: &str, key: &str) -> bool {
    omitted()
        .iter()
        .any(|(m, f)| m == msg && (f == key || camel(f) == key))
}

/// Removes from `v` (a `desc` message in YAML/JSON form) every field that is in neither
/// `proto/` nor Envoy's API, and records where each was (`a.b[2].c`).
pub(super) fn strip(
    v: &mut Value,
    desc: &MessageDescriptor,
    path: &str,
    removed: &mut Vec<String>,
) {
    let Value::Mapping(map) = v else {
        return;
    };
    let full = desc.full_name();
    if full == "google.protobuf.Any" {
        let inner = map
            .get("@type")
            .and_then(Value::as_str)
            .and_then(|t| t.rsplit('/').next())
            .and_then(|name| desc.parent_pool().get_message_by_name(name));
        if let Some(inner) = inner {
            let mut rest = Value::Mapping(std::mem::take(map));
            strip(&mut rest, &inner, path, removed);
            if let Value::Mapping(m) = rest {
                *map = m;
            }
        }
        return;
    }
    // Struct, Value and the other well-known types take any keys.
    if full.starts_with("google.protobuf.") {
        return;
    }
    let keys: Vec<Value> = map.keys().cloned().collect();
    for key in keys {
        let Some(k) = key.as_str() else { continue };
        if k == "@type" {
            continue;
        }
        let field = desc
            .get_field_by_name(k)
            .or_else(|| desc.get_field_by_json_name(k));
        let at = if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        };
        let Some(field) = field else {
            if !in_envoys_api(full, k) {
                map.remove(&key);
                removed.push(at);
            }
            continue;
        };
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        let Some(child) = map.get_mut(&key) else {
            continue;
        };
        if field.is_map() {
            let value_kind = inner.map_entry_value_field().kind();
            if let (Kind::Message(vm), Value::Mapping(entries)) = (value_kind, child) {
                for (ek, ev) in entries.iter_mut() {
                    let name = ek.as_str().unwrap_or("?");
                    strip(ev, &vm, &format!("{at}.{name}"), removed);
                }
            }
        } else if let Value::Sequence(items) = child {
            for (i, item) in items.iter_mut().enumerate() {
                strip(item, &inner, &format!("{at}[{i}]"), removed);
            }
        } else {
            strip(child, &inner, &at, removed);
        }
    }
}
