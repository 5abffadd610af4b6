//! `set_filter_state`'s values (the HTTP filter's `on_request_headers`, the network
//! filter's `on_new_connection`).

use std::sync::Arc;

use super::{err, ConvertError};
use crate::model::filter_state::SetValue;
use crate::proto::envoy::extensions::filters::common::set_filter_state::v3 as pb;

/// The HTTP filter's configuration type.
pub(super) const HTTP: &str = "envoy.extensions.filters.http.set_filter_state.v3.Config";
/// The network filter's configuration type.
pub(super) const NETWORK: &str = "envoy.extensions.filters.network.set_filter_state.v3.Config";

/// Whether the object factory `name` makes a hashable object; `None`: no such factory.
/// Envoy's string factories, and those Istio's proxy registers for its principals.
fn factory(name: &str) -> Option<bool> {
    match name {
        "envoy.string" | "io.istio.peer_principal" | "io.istio.local_principal" => Some(false),
        // Addresses an internal listener's `original_dst` restores (Istio's HBONE
        // `connect_authority`); a value that is not ip:port is not set.
        crate::model::internal::LOCAL_IP | crate::model::internal::REMOTE_IP => Some(false),
        "envoy.hashable_string" | "istio.hashable_string" => Some(true),
        _ => None,
    }
}

/// The values to set, validated as Envoy validates them.
pub(super) fn values(
    list: &[pb::FilterStateValue],
    res: &str,
    path: &str,
) -> Result<Box<[SetValue]>, ConvertError> {
    use pb::filter_state_value::{Key, SharedWithUpstream, Value};
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        let key = match &v.key {
            Some(Key::ObjectKey(k)) if !k.is_empty() => k.as_str(),
            _ => return Err(err(res, at("object_key"), "is required")),
        };
        let factory_key = if v.factory_key.is_empty() {
            key
        } else {
            v.factory_key.as_str()
        };
        let Some(hashable) = factory(factory_key) else {
            let field = if v.factory_key.is_empty() {
                "object_key"
            } else {
                "factory_key"
            };
            return Err(err(
                res,
                at(field),
                format!(
                    "'{factory_key}' is not a supported object factory (envoy.string, \
                     envoy.hashable_string)"
                ),
            ));
        };
        use crate::model::filter_state::Shared;
        let shared = match SharedWithUpstream::try_from(v.shared_with_upstream) {
            Ok(SharedWithUpstream::None) => Shared::None,
            Ok(SharedWithUpstream::Once) => Shared::Once,
            Ok(SharedWithUpstream::Transitive) => Shared::Transitive,
            Err(_) => return Err(err(res, at("shared_with_upstream"), "unknown value")),
        };
        let Some(Value::FormatString(sfs)) = &v.value else {
            return Err(err(res, at("format_string"), "is required"));
        };
        if sfs.format.is_none() {
            return Err(err(
                res,
                at("format_string"),
                "text_format, text_format_source or json_format is required",
            ));
        }
        let format = super::access_log::substitution_format(sfs, "", res, &at("format_string"))?;
        out.push(SetValue {
            key: key.into(),
            hashable,
            format: Arc::new(format),
            read_only: v.read_only,
            skip_if_empty: v.skip_if_empty,
            shared,
        });
    }
    Ok(out.into())
}
