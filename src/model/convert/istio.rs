//! Istio's own extensions in a filter chain, each decided deliberately: the TCP telemetry
//! filters Ringside accepts as documented no-ops, `istio_authn` (the peer principal RBAC
//! reads), and the TypedStruct wrapping istiod sends them in. The HTTP telemetry filters
//! are in `telemetry.rs`.

use super::{any_type, err, ConvertError};

/// Istio's TCP metadata exchange (network filter downstream, cluster filter upstream).
pub(crate) const METADATA_EXCHANGE: &str = "envoy.tcp.metadataexchange.config.MetadataExchange";

pub(super) const TYPED_STRUCTS: [&str; 2] = ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// The type of an extension's configuration: its own, or for a TypedStruct the one it
/// wraps (the last segment of its `type_url`).
pub(super) fn config_type(any: &prost_types::Any) -> Option<String> {
    let t = any_type(any);
    if !TYPED_STRUCTS.contains(&t) {
        return Some(t.to_string());
    }
    use prost::Message;
    let inner = TypedStructUrl::decode(any.value.as_slice()).ok()?;
    Some(inner.type_url.rsplit('/').next()?.to_string())
}

/// The `type_url` inside a TypedStruct (its `value` Struct is not needed to decide).
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStructUrl {
    #[prost(string, tag = "1")]
    type_url: String,
}

/// Istio's own extension filters accepted as documented no-ops (docs/xds.md, "Istio's
/// extension filters"): `istio.alpn`, which only overrides the ALPN of upstream TLS.
/// The telemetry filters are implemented (`telemetry.rs`), as are `istio_authn` and RBAC;
/// anything else (Wasm in general) is refused by type as usual.
/// Returns why it is a no-op, or `None` if the filter is not one of them.
pub(super) fn istio_noop(
    _name: &str,
    any: &prost_types::Any,
    network: bool,
) -> Option<&'static str> {
    let mut t = any_type(any).to_string();
    if TYPED_STRUCTS.contains(&t.as_str()) {
        use prost::Message;
        let inner = TypedStructUrl::decode(any.value.as_slice()).ok()?;
        t = inner.type_url.rsplit('/').next()?.to_string();
    }
    match (t.as_str(), network) {
        ("istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig", false) => {
            Some("istio.alpn: upstream TLS ALPN override; no upstream TLS yet, a documented no-op")
        }
        _ => None,
    }
}

/// Istio's `istio_authn` network filter (`io.istio.network.authn.Config`, usually in a
/// TypedStruct).
pub(super) const ISTIO_AUTHN: &str = "io.istio.network.authn.Config";

/// `io.istio.network.authn.Config`: whether its `shared` is set (the principals then go
/// to the upstream connections the chain opens: HBONE's `connect_terminate` hands them to
/// `main_internal`); any other field is refused by name.
pub(super) fn authn_config(
    any: &prost_types::Any,
    res: &str,
    path: &str,
) -> Result<bool, ConvertError> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct WithValue {
        #[prost(message, optional, tag = "2")]
        value: Option<prost_types::Struct>,
    }
    if TYPED_STRUCTS.contains(&any_type(any)) {
        use prost::Message;
        let v = WithValue::decode(any.value.as_slice()).unwrap_or_default();
        let mut shared = false;
        for (field, value) in v.value.map(|s| s.fields).unwrap_or_default() {
            use prost_types::value::Kind;
            match (field.as_str(), value.kind) {
                ("shared", Some(Kind::BoolValue(b))) => shared = b,
                _ => {
                    return Err(err(
                        res,
                        format!("{path}.typed_config.value.{field}"),
                        "io.istio.network.authn.Config has no such field (only shared, a bool)",
                    ))
                }
            }
        }
        return Ok(shared);
    }
    Ok(false)
}

/// The `type_url` (its last segment) and `value` of a TypedStruct; `None` for any other
/// message.
pub(super) fn typed_struct(any: &prost_types::Any) -> Option<(String, prost_types::Struct)> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Ts {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(message, optional, tag = "2")]
        value: Option<prost_types::Struct>,
    }
    if !TYPED_STRUCTS.contains(&any_type(any)) {
        return None;
    }
    use prost::Message;
    let t = Ts::decode(any.value.as_slice()).ok()?;
    Some((
        t.type_url.rsplit('/').next().unwrap_or("").to_string(),
        t.value.unwrap_or_default(),
    ))
}

pub(super) const CONNECT_AUTHORITY: &str = "io.istio.http.connect_authority.Config";
pub(super) const CONNECT_BAGGAGE: &str = "io.istio.http.connect_baggage.Config";

/// `io.istio.http.connect_authority.Config` (`enabled`, `port`): the port when enabled.
pub(super) fn connect_authority(
    v: &prost_types::Struct,
    res: &str,
    path: &str,
) -> Result<Option<u16>, ConvertError> {
    use prost_types::value::Kind;
    let (mut enabled, mut port) = (false, 0u16);
    for (k, val) in &v.fields {
        match (k.as_str(), &val.kind) {
            ("enabled", Some(Kind::BoolValue(b))) => enabled = *b,
            ("port", Some(Kind::NumberValue(n))) if (0.0..=65535.0).contains(n) && n.fract() == 0.0 => {
                port = *n as u16
            }
            _ => {
                return Err(err(
                    res,
                    format!("{path}.value.{k}"),
                    "io.istio.http.connect_authority.Config has enabled (bool) and port (0..65535) only",
                ))
            }
        }
    }
    Ok(enabled.then_some(port))
}

/// `io.istio.http.connect_baggage.Config`: empty in current istio-proxy; an older
/// `propagate: true` (write a baggage header from the peer) is refused by name.
pub(super) fn connect_baggage(
    v: &prost_types::Struct,
    res: &str,
    path: &str,
) -> Result<(), ConvertError> {
    use prost_types::value::Kind;
    for (k, val) in &v.fields {
        match (k.as_str(), &val.kind) {
            ("propagate", Some(Kind::BoolValue(false))) => {}
            _ => {
                return Err(err(
                    res,
                    format!("{path}.value.{k}"),
                    "io.istio.http.connect_baggage.Config: only reading baggage is implemented (propagate is not)",
                ))
            }
        }
    }
    Ok(())
}
