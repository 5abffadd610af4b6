//! `/config_dump`: the bootstrap and every xDS resource in Envoy's `ConfigDump` form
//! (each `@type` resolvable with Envoy's protos), and its parameters as Envoy applies them:
//! `include_eds` (the `EndpointsConfigDump`, left out otherwise) and `resource` (one
//! repeated field's entries across the dump, each typed as its element message);
//! `name_regex` and `mask` are `dump_filter`'s.

use prost::Message;
use serde_json::{json, Value};

use super::{rfc3339, AdminState};

/// A secret as Envoy dumps it: the private key replaced by `[redacted]`.
fn redacted_secret(e: &crate::model::DumpEntry, to_json: &dyn Fn(&str, Vec<u8>) -> Value) -> Value {
    use crate::proto::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
    let Ok(mut s) = Secret::decode(&*e.resource.bytes()) else {
        return Value::Null;
    };
    if let Some(secret::Type::TlsCertificate(tc)) = &mut s.r#type {
        if tc.private_key.is_some() {
            tc.private_key = Some(crate::proto::envoy::config::core::v3::DataSource {
                specifier: Some(
                    crate::proto::envoy::config::core::v3::data_source::Specifier::InlineBytes(
                        b"[redacted]".to_vec(),
                    ),
                ),
            });
        }
    }
    let mut v = to_json(
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        s.encode_to_vec(),
    );
    v["@type"] = json!(e.resource.type_url);
    v
}

/// `/config_dump` in Envoy's shape: bootstrap, static listeners, clusters and routes.
pub(super) fn config_dump(state: &AdminState) -> Value {
    let snap = state.snapshot.load();
    let updated = rfc3339(snap.built_at);
    let b = &snap.bootstrap;
    let to_json = |name: &str, bytes: Vec<u8>| -> Value {
        let desc = crate::proto::pool()
            .get_message_by_name(name)
            .expect("type in proto/");
        // Envoy dumps proto field names (snake_case), not the JSON mapping's camelCase.
        let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
        match prost_reflect::DynamicMessage::decode(desc, bytes.as_slice()) {
            Ok(m) => m
                .serialize_with_options(serde_json::value::Serializer, &options)
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    };
    let sr = b.static_resources.clone().unwrap_or_default();
    let listeners: Vec<Value> = sr
        .listeners
        .iter()
        .map(|l| json!({"listener": to_json("envoy.config.listener.v3.Listener", l.encode_to_vec()), "last_updated": updated}))
        .collect();
    let clusters: Vec<Value> = sr
        .clusters
        .iter()
        .map(|c| json!({"cluster": to_json("envoy.config.cluster.v3.Cluster", c.encode_to_vec()), "last_updated": updated}))
        .collect();
    let mut listener_dump = listeners;
    for l in listener_dump.iter_mut() {
        l["listener"]["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
    }
    let mut cluster_dump = clusters;
    // Envoy lists its static clusters by name.
    cluster_dump.sort_by(|a, b| {
        a["cluster"]["name"]
            .as_str()
            .cmp(&b["cluster"]["name"].as_str())
    });
    for c in cluster_dump.iter_mut() {
        c["cluster"]["@type"] = json!("type.googleapis.com/envoy.config.cluster.v3.Cluster");
    }
    let d = &snap.dynamic;
    let unpacker = std::cell::RefCell::new(crate::model::Unpacker::new());
    let any_json = |e: &crate::model::DumpEntry| -> Value {
        let name = e.resource.type_url.rsplit('/').next().unwrap_or_default();
        let bytes = unpacker.borrow_mut().bytes(&e.resource).into_owned();
        let mut v = to_json(name, bytes);
        v["@type"] = json!(e.resource.type_url);
        v
    };
    let state_json = |e: &crate::model::DumpEntry, key: &str| -> Value {
        json!({"version_info": e.version.as_ref(), key: any_json(e), "last_updated": rfc3339(e.last_updated)})
    };
    let version_of = |kind: &str| -> String {
        d.versions
            .iter()
            .find(|(k, _, _)| k.ends_with(kind))
            .map(|(_, v, _)| v.to_string())
            .unwrap_or_default()
    };
    let mut dynamic_listeners: Vec<Value> = d
        .listeners
        .iter()
        .map(|e| json!({"name": e.name.as_ref(), "active_state": state_json(e, "listener")}))
        .collect();
    for e in &d.warming_listeners {
        match dynamic_listeners
            .iter_mut()
            .find(|v| v["name"] == json!(e.name.as_ref()))
        {
            Some(v) => v["warming_state"] = state_json(e, "listener"),
            None => dynamic_listeners
                .push(json!({"name": e.name.as_ref(), "warming_state": state_json(e, "listener")})),
        }
    }
    json!({
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                "bootstrap": to_json("envoy.config.bootstrap.v3.Bootstrap", b.encode_to_vec()),
                "last_updated": updated,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "version_info": version_of("Cluster"),
                "static_clusters": cluster_dump,
                "dynamic_active_clusters": d.clusters.iter().map(|e| state_json(e, "cluster")).collect::<Vec<_>>(),
                "dynamic_warming_clusters": d.warming_clusters.iter().map(|e| state_json(e, "cluster")).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                "dynamic_endpoint_configs": d.endpoints.iter().map(|e| state_json(e, "endpoint_config")).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "version_info": version_of("Listener"),
                "static_listeners": listener_dump,
                "dynamic_listeners": dynamic_listeners,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "dynamic_route_configs": d.route_configs.iter().map(|e| state_json(e, "route_config")).collect::<Vec<_>>(),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                "dynamic_active_secrets": d.secrets.iter().map(|e| json!({
                    "name": e.name.as_ref(),
                    "version_info": e.version.as_ref(),
                    "last_updated": rfc3339(e.last_updated),
                    "secret": redacted_secret(e, &to_json),
                })).collect::<Vec<_>>(),
                "dynamic_warming_secrets": d.warming_secrets.iter().map(|n| json!({
                    "name": n.as_ref(),
                    "version_info": "uninitialized",
                    "secret": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret", "name": n.as_ref()},
                })).collect::<Vec<_>>(),
            },
        ],
    })
}

/// `/snapshot`: Ringside's own view of what serves, kept out of `/config_dump` so that the
/// dump decodes with Envoy's `envoy.admin.v3.ConfigDump` and nothing else: the snapshot
/// version, the version each core serves, how long the last update took from arrival to
/// the last core, and each cluster's endpoints as the cores use them.
pub(super) fn snapshot(state: &AdminState) -> Value {
    let snap = state.snapshot.load();
    let (published, latency) = state.served.last_publish();
    json!({
        "snapshot_version": snap.version,
        "served_by_core": state.served.all(),
        "last_publish": {
            "version": published,
            "received_to_all_cores_us": latency.map(|l| l.as_micros() as u64),
        },
        "endpoints": snap.clusters.iter().map(|c| json!({
            "cluster_name": c.name.as_ref(),
            "endpoints": c.endpoints.iter().map(|e| e.address.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The element message of each repeated field `resource` may name.
const ELEMENTS: &[(&str, &str)] = &[
    ("static_clusters", "ClustersConfigDump.StaticCluster"),
    (
        "dynamic_active_clusters",
        "ClustersConfigDump.DynamicCluster",
    ),
    (
        "dynamic_warming_clusters",
        "ClustersConfigDump.DynamicCluster",
    ),
    ("static_listeners", "ListenersConfigDump.StaticListener"),
    ("dynamic_listeners", "ListenersConfigDump.DynamicListener"),
    ("static_route_configs", "RoutesConfigDump.StaticRouteConfig"),
    (
        "dynamic_route_configs",
        "RoutesConfigDump.DynamicRouteConfig",
    ),
    ("static_secrets", "SecretsConfigDump.StaticSecret"),
    ("dynamic_active_secrets", "SecretsConfigDump.DynamicSecret"),
    ("dynamic_warming_secrets", "SecretsConfigDump.DynamicSecret"),
    (
        "static_endpoint_configs",
        "EndpointsConfigDump.StaticEndpointConfig",
    ),
    (
        "dynamic_endpoint_configs",
        "EndpointsConfigDump.DynamicEndpointConfig",
    ),
];

/// Whether `resource` names one of the dump's repeated fields.
pub(super) fn is_element(resource: Option<&str>) -> bool {
    resource.is_some_and(|r| ELEMENTS.iter().any(|(f, _)| *f == r))
}

const ENDPOINTS: &str = "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump";

/// Applies `include_eds` and `resource` to `dump`; a `resource` the dump does not have is
/// Envoy's 404 text.
pub(super) fn select(
    mut dump: Value,
    include_eds: bool,
    resource: Option<&str>,
) -> Result<Value, String> {
    if let Some(configs) = dump["configs"].as_array_mut() {
        if !include_eds {
            configs.retain(|c| c["@type"] != ENDPOINTS);
        }
    }
    let Some(resource) = resource else {
        return Ok(dump);
    };
    let not_found = || format!("{resource} not found in config dump");
    let element = ELEMENTS
        .iter()
        .find(|(f, _)| *f == resource)
        .map(|(_, e)| *e)
        .ok_or_else(not_found)?;
    let mut found = false;
    let mut out = Vec::new();
    for c in dump["configs"].as_array().into_iter().flatten() {
        let Some(items) = c.get(resource).and_then(Value::as_array) else {
            continue;
        };
        found = true;
        for item in items {
            let mut typed = serde_json::Map::new();
            typed.insert(
                "@type".into(),
                json!(format!("type.googleapis.com/envoy.admin.v3.{element}")),
            );
            if let Some(fields) = item.as_object() {
                typed.extend(fields.clone());
            }
            out.push(Value::Object(typed));
        }
    }
    if !found {
        return Err(not_found());
    }
    Ok(json!({ "configs": out }))
}
