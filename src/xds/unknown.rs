//! Fail closed on the wire: prost drops fields that `proto/` does not declare, so every
//! xDS resource is also decoded through the descriptor pool, which keeps them as unknown
//! fields, and any such field is an error naming it. `Any` values whose type Ringside
//! knows are checked the same way, recursively.

use std::collections::HashMap;
use std::sync::OnceLock;

use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};

/// Upstream names of the fields `proto/` leaves out, by (message, number).
fn omitted() -> &'static HashMap<(&'static str, u32), &'static str> {
    static TABLE: OnceLock<HashMap<(&'static str, u32), &'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        include_str!("../../proto/omitted_fields.txt")
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                let (m, n, f) = (it.next()?, it.next()?.parse().ok()?, it.next()?);
                Some(((m, n), f))
            })
            .collect()
    })
}

/// Checks a resource of message type `full_name`; the error is (field path, reason).
pub fn check(full_name: &str, bytes: &[u8]) -> Result<(), (String, String)> {
    let Some(desc) = crate::proto::pool().get_message_by_name(full_name) else {
        return Ok(());
    };
    let msg = DynamicMessage::decode(desc, bytes)
        .map_err(|e| (String::new(), format!("cannot decode {full_name}: {e}")))?;
    walk(&msg, "")
}

fn walk(msg: &DynamicMessage, path: &str) -> Result<(), (String, String)> {
    let desc = msg.descriptor();
    if let Some(u) = msg.unknown_fields().next() {
        let n = u.number();
        let name = omitted()
            .get(&(desc.full_name(), n))
            .map(|f| format!("'{f}' (field {n})"))
            .unwrap_or_else(|| format!("field {n}"));
        return Err((
            path.to_string(),
            format!(
                "{name} of {} is not implemented by Ringside",
                desc.full_name()
            ),
        ));
    }
    if desc.full_name() == "google.protobuf.Any" {
        return walk_any(msg, path);
    }
    for (field, value) in msg.fields() {
        let p = if path.is_empty() {
            field.name().to_string()
        } else {
            format!("{path}.{}", field.name())
        };
        walk_value(value, &p)?;
    }
    Ok(())
}

fn walk_value(value: &Value, path: &str) -> Result<(), (String, String)> {
    match value {
        Value::Message(m) => walk(m, path),
        Value::List(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_value(v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        Value::Map(map) => {
            for (k, v) in map {
                let key = match k {
                    prost_reflect::MapKey::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                walk_value(v, &format!("{path}[\"{key}\"]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An `Any` of a known type is checked too; unknown types are left to conversion, which
/// refuses them by type URL.
fn walk_any(any: &DynamicMessage, path: &str) -> Result<(), (String, String)> {
    let url = match any.get_field_by_name("type_url").as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => return Ok(()),
    };
    let bytes = match any.get_field_by_name("value").as_deref() {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return Ok(()),
    };
    let name = url.rsplit('/').next().unwrap_or(&url);
    let desc: Option<MessageDescriptor> = crate::proto::pool().get_message_by_name(name);
    let Some(desc) = desc else { return Ok(()) };
    let inner = DynamicMessage::decode(desc, bytes.as_ref())
        .map_err(|e| (path.to_string(), format!("cannot decode {name}: {e}")))?;
    walk(&inner, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn an_undeclared_field_is_named() {
        // Cluster.circuit_breakers (10) is not in proto/: encode it by hand after a name.
        let mut bytes = crate::proto::envoy::config::cluster::v3::Cluster {
            name: "c".into(),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0x52, 0x00]); // field 10, length-delimited, empty
        let (path, reason) = check("envoy.config.cluster.v3.Cluster", &bytes).unwrap_err();
        assert_eq!(path, "");
        assert!(reason.contains("'circuit_breakers' (field 10)"), "{reason}");
    }

    #[test]
    fn declared_fields_pass_and_nested_anys_are_checked() {
        use crate::proto::envoy::config::listener::v3 as l;
        // A filter whose typed_config (a known type) carries an undeclared field.
        let mut router = crate::proto::envoy::extensions::filters::http::router::v3::Router {
            suppress_envoy_headers: true,
            ..Default::default()
        }
        .encode_to_vec();
        router.extend_from_slice(&[0xa0, 0x06, 0x01]); // field 100, varint
        let any = prost_types::Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into(),
            value: router,
        };
        let listener = l::Listener {
            name: "x".into(),
            filter_chains: vec![l::FilterChain {
                filters: vec![l::Filter {
                    name: "f".into(),
                    config_type: Some(l::filter::ConfigType::TypedConfig(any)),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = listener.encode_to_vec();
        let (path, reason) = check("envoy.config.listener.v3.Listener", &bytes).unwrap_err();
        assert_eq!(path, "filter_chains[0].filters[0].typed_config");
        assert!(reason.contains("field 100"), "{reason}");
        let clean = l::Listener {
            name: "x".into(),
            ..Default::default()
        };
        assert!(check("envoy.config.listener.v3.Listener", &clean.encode_to_vec()).is_ok());
    }
}
