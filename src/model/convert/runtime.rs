//! `layered_runtime` → [`Runtime`].

use std::collections::BTreeMap;

use crate::model::runtime::{Layer, Runtime, KNOWN};
use crate::proto::envoy::config::bootstrap::v3::{runtime_layer::LayerSpecifier, LayeredRuntime};

use super::{err, ConvertError};

const RES: &str = "bootstrap";

/// The runtime of a bootstrap's `layered_runtime`. Static and admin layers are supported;
/// disk and RTDS layers are refused by name. Keys Ringside does not act on are returned
/// (the caller logs and counts them).
pub fn runtime(lr: Option<&LayeredRuntime>) -> Result<(Runtime, Vec<String>), ConvertError> {
    let Some(lr) = lr else {
        return Ok((Runtime::default(), Vec::new()));
    };
    let mut layers = Vec::new();
    for (i, l) in lr.layers.iter().enumerate() {
        let path = format!("layered_runtime.layers[{i}]");
        let (admin, values) = match &l.layer_specifier {
            Some(LayerSpecifier::StaticLayer(s)) => {
                let mut values = BTreeMap::new();
                flatten("", s, &mut values);
                (false, values)
            }
            Some(LayerSpecifier::AdminLayer(_)) => (true, BTreeMap::new()),
            Some(LayerSpecifier::DiskLayer(_)) => {
                return Err(err(
                    RES,
                    format!("{path}.disk_layer"),
                    "disk runtime layers are not implemented (static and admin layers are)",
                ))
            }
            Some(LayerSpecifier::RtdsLayer(_)) => {
                return Err(err(
                    RES,
                    format!("{path}.rtds_layer"),
                    "RTDS runtime layers are not implemented (static and admin layers are)",
                ))
            }
            None => return Err(err(RES, path, "a layer needs static_layer or admin_layer")),
        };
        layers.push(Layer {
            name: l.name.clone(),
            admin,
            values,
        });
    }
    let rt = Runtime::from_layers(layers);
    let unused = rt
        .keys()
        .into_iter()
        .filter(|k| !KNOWN.contains(k))
        .map(|k| {
            format!("layered_runtime key {k} (kept and shown in /runtime; no effect in Ringside)")
        })
        .collect();
    Ok((rt, unused))
}

/// Envoy flattens nested static-layer maps with `.`; values print as Envoy shows them.
fn flatten(prefix: &str, s: &prost_types::Struct, out: &mut BTreeMap<String, String>) {
    use prost_types::value::Kind;
    for (k, v) in &s.fields {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match &v.kind {
            Some(Kind::StructValue(inner)) => flatten(&key, inner, out),
            Some(Kind::BoolValue(b)) => {
                out.insert(key, b.to_string());
            }
            Some(Kind::NumberValue(n)) => {
                let text = if n.fract() == 0.0 && n.abs() < 1e15 {
                    format!("{}", *n as i64)
                } else {
                    n.to_string()
                };
                out.insert(key, text);
            }
            Some(Kind::StringValue(s)) => {
                out.insert(key, s.clone());
            }
            Some(Kind::NullValue(_)) | Some(Kind::ListValue(_)) | None => {
                out.insert(key, String::new());
            }
        }
    }
}
