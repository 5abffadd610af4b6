//! `/config_dump?name_regex=` and `?mask=`, as Envoy applies them: the regex (matched
//! whole) keeps the resources whose names match, in every config but the bootstrap's; a
//! mask (a FieldMask, comma-separated paths) trims each top-level config it applies to, or
//! with `resource` each element, whose `Any` resources it looks into.

use serde_json::{Map, Value};

/// The repeated fields of the dump's configs, and where each element's name is.
const NAMED: &[(&str, &[&str])] = &[
    ("static_clusters", &["cluster", "name"]),
    ("dynamic_active_clusters", &["cluster", "name"]),
    ("dynamic_warming_clusters", &["cluster", "name"]),
    ("static_listeners", &["listener", "name"]),
    ("dynamic_listeners", &["name"]),
    ("static_route_configs", &["route_config", "name"]),
    ("dynamic_route_configs", &["route_config", "name"]),
    ("static_secrets", &["name"]),
    ("dynamic_active_secrets", &["name"]),
    ("dynamic_warming_secrets", &["name"]),
    (
        "static_endpoint_configs",
        &["endpoint_config", "cluster_name"],
    ),
    (
        "dynamic_endpoint_configs",
        &["endpoint_config", "cluster_name"],
    ),
];

/// The fields of each top-level config message (`envoy.admin.v3.*ConfigDump`).
const CONFIG_FIELDS: &[(&str, &[&str])] = &[
    ("BootstrapConfigDump", &["bootstrap", "last_updated"]),
    (
        "ClustersConfigDump",
        &[
            "version_info",
            "static_clusters",
            "dynamic_active_clusters",
            "dynamic_warming_clusters",
        ],
    ),
    (
        "ListenersConfigDump",
        &["version_info", "static_listeners", "dynamic_listeners"],
    ),
    (
        "RoutesConfigDump",
        &["static_route_configs", "dynamic_route_configs"],
    ),
    (
        "SecretsConfigDump",
        &[
            "static_secrets",
            "dynamic_active_secrets",
            "dynamic_warming_secrets",
        ],
    ),
    (
        "EndpointsConfigDump",
        &["static_endpoint_configs", "dynamic_endpoint_configs"],
    ),
];

/// The fields of each element message, with those that are an `Any` or a message.
const ELEMENT_FIELDS: &[(&str, &[&str])] = &[
    ("StaticCluster", &["cluster", "last_updated"]),
    (
        "DynamicCluster",
        &[
            "version_info",
            "cluster",
            "last_updated",
            "error_state",
            "client_status",
        ],
    ),
    ("StaticListener", &["listener", "last_updated"]),
    (
        "DynamicListener",
        &[
            "name",
            "active_state",
            "warming_state",
            "draining_state",
            "error_state",
            "client_status",
        ],
    ),
    ("StaticRouteConfig", &["route_config", "last_updated"]),
    (
        "DynamicRouteConfig",
        &[
            "version_info",
            "route_config",
            "last_updated",
            "error_state",
            "client_status",
        ],
    ),
    ("StaticSecret", &["name", "last_updated", "secret"]),
    (
        "DynamicSecret",
        &[
            "name",
            "version_info",
            "last_updated",
            "secret",
            "error_state",
            "client_status",
        ],
    ),
    ("StaticEndpointConfig", &["endpoint_config", "last_updated"]),
    (
        "DynamicEndpointConfig",
        &[
            "version_info",
            "endpoint_config",
            "last_updated",
            "error_state",
            "client_status",
        ],
    ),
    (
        "ListenersConfigDump.DynamicListenerState",
        &["version_info", "listener", "last_updated"],
    ),
];

/// A `name_regex`, matched against whole names.
pub(super) fn name_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        format!("INVALID_ARGUMENT: Error while parsing name_regex from {pattern}: {e}")
    })
}

/// Keeps, in every config, the resources whose names `re` matches.
pub(super) fn keep_named(dump: &mut Value, re: &regex::Regex) {
    for c in dump["configs"].as_array_mut().into_iter().flatten() {
        for (field, name_at) in NAMED {
            let Some(items) = c.get_mut(*field).and_then(Value::as_array_mut) else {
                continue;
            };
            items.retain(|item| {
                let name = name_at.iter().fold(item, |v, k| &v[*k]);
                name.as_str().is_some_and(|n| re.is_match(n))
            });
            if items.is_empty() {
                if let Some(o) = c.as_object_mut() {
                    o.remove(*field);
                }
            }
        }
    }
}

/// A top-level `mask`: each config whose message has every path is trimmed to them; the
/// others are left out. `Err`: no config has them all (Envoy's 400).
pub(super) fn mask_configs(dump: Value, mask: &str) -> Result<Value, String> {
    let paths: Vec<Vec<&str>> = mask.split(',').map(|p| p.split('.').collect()).collect();
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        let t = c["@type"]
            .as_str()
            .unwrap_or("")
            .rsplit('.')
            .next()
            .unwrap_or("");
        let Some((_, fields)) = CONFIG_FIELDS.iter().find(|(n, _)| *n == t) else {
            continue;
        };
        // A path stops at its config's own fields: each of them is repeated or an `Any`
        // (the bootstrap's is a message, whose own fields a path may name).
        let valid = paths.iter().all(|p| {
            fields.contains(&p[0])
                && (p.len() == 1 || (p[0] == "bootstrap" && bootstrap_path(&p[1..])))
        });
        if valid {
            out.push(trim(c, &paths));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "FieldMask {mask} could not be successfully applied to any configs."
        ));
    }
    Ok(serde_json::json!({ "configs": out }))
}

/// A `mask` with `resource`: each element trimmed to the paths, which may go into its
/// resource (an `Any`). `Err`: a path the element does not have.
pub(super) fn mask_elements(dump: Value, mask: &str) -> Result<Value, String> {
    let paths: Vec<Vec<&str>> = mask.split(',').map(|p| p.split('.').collect()).collect();
    let mut out = Vec::new();
    for e in dump["configs"].as_array().into_iter().flatten() {
        let t = e["@type"].as_str().unwrap_or("");
        let short = t.rsplit("ConfigDump.").next().unwrap_or("");
        let Some((_, fields)) = ELEMENT_FIELDS.iter().find(|(n, _)| *n == short) else {
            continue;
        };
        for p in &paths {
            if !fields.contains(&p[0]) || !inside(&e[p[0]], &p[1..]) {
                return Err(format!(
                    "FieldMask goo.gle/debugproto  \npaths: \"{}\"\n could not be successfully used.",
                    p.join(".")
                ));
            }
        }
        out.push(trim(e, &paths));
    }
    Ok(serde_json::json!({ "configs": out }))
}

/// Whether `rest` names fields of the message `v` is (an `Any` typed by its `@type`, or a
/// dynamic listener's state), without crossing a repeated field.
fn inside(v: &Value, rest: &[&str]) -> bool {
    if rest.is_empty() {
        return true;
    }
    let desc = match v["@type"].as_str() {
        Some(t) => crate::proto::pool().get_message_by_name(t.rsplit('/').next().unwrap_or("")),
        None => {
            // A DynamicListenerState (the only message-typed element field).
            let state = ELEMENT_FIELDS
                .iter()
                .find(|(n, _)| *n == "ListenersConfigDump.DynamicListenerState");
            return match state {
                Some((_, f)) if f.contains(&rest[0]) => inside(&v[rest[0]], &rest[1..]),
                _ => false,
            };
        }
    };
    let Some(mut desc) = desc else { return false };
    for (i, seg) in rest.iter().enumerate() {
        let Some(f) = desc.get_field_by_name(seg) else {
            return false;
        };
        if i + 1 == rest.len() {
            return true;
        }
        if f.is_list() || f.is_map() {
            return false;
        }
        match f.kind() {
            prost_reflect::Kind::Message(m) => desc = m,
            _ => return false,
        }
    }
    true
}

/// Whether `rest` names fields of the Bootstrap message.
fn bootstrap_path(rest: &[&str]) -> bool {
    let v = serde_json::json!({"@type": "type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap"});
    inside(&v, rest)
}

/// `v` with only the fields the paths name (and every `@type`).
fn trim(v: &Value, paths: &[Vec<&str>]) -> Value {
    let Some(obj) = v.as_object() else {
        return v.clone();
    };
    let mut out = Map::new();
    if let Some(t) = obj.get("@type") {
        out.insert("@type".into(), t.clone());
    }
    for (k, child) in obj {
        let sub: Vec<Vec<&str>> = paths
            .iter()
            .filter(|p| p[0] == k)
            .map(|p| p[1..].to_vec())
            .collect();
        if sub.is_empty() {
            continue;
        }
        let value = if sub.iter().any(|p| p.is_empty()) {
            child.clone()
        } else {
            trim(child, &sub)
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}
