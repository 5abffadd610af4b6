//! Configuration objects' `metadata` (routes, clusters, endpoints), for what reads it per
//! request: tracing's `route`, `cluster` and `host` custom tags.
//!
//! istiod puts metadata on nearly every cluster, endpoint and route, and almost nothing
//! reads it, so it is kept as the protobuf encoding of its `filter_metadata` (about 100–200
//! bytes each for istiod's) and decoded only when a span reads it.

use std::sync::Arc;

use prost::Message;

use crate::proto::envoy::config::core::v3::Metadata;

/// An object's `filter_metadata`, encoded (namespaces in order, so that equal metadata
/// encodes equal).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Packed(Arc<[u8]>);

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.0.len())
    }
}

impl Packed {
    /// `None` when there is no `filter_metadata`.
    pub fn new(md: Option<&Metadata>) -> Option<Packed> {
        use prost::encoding::{encode_key, encode_varint, message, string, WireType};
        let md = md.filter(|m| !m.filter_metadata.is_empty())?;
        let mut names: Vec<&String> = md.filter_metadata.keys().collect();
        names.sort_unstable();
        let mut out = Vec::new();
        for name in names {
            let value = &md.filter_metadata[name];
            let len = string::encoded_len(1, name) + message::encoded_len(2, value);
            encode_key(1, WireType::LengthDelimited, &mut out);
            encode_varint(len as u64, &mut out);
            string::encode(1, name, &mut out);
            message::encode(2, value, &mut out);
        }
        Some(Packed(out.into()))
    }

    /// The value at `path` (at least one key) in namespace `namespace`, as JSON (`None`:
    /// not there).
    pub fn value(&self, namespace: &str, path: &[Box<str>]) -> Option<serde_json::Value> {
        use prost_types::value::Kind;
        let (first, rest) = path.split_first()?;
        let md = Metadata::decode(&*self.0).ok()?;
        let st = md.filter_metadata.get(namespace)?;
        let mut at = st.fields.get(&**first)?;
        for key in rest {
            match &at.kind {
                Some(Kind::StructValue(s)) => at = s.fields.get(&**key)?,
                _ => return None,
            }
        }
        Some(json(at))
    }
}

/// A protobuf `Struct`'s fields as JSON (whole numbers as integers, as Envoy prints them).
pub fn json_fields(s: &prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields.iter().map(|(k, v)| (k.clone(), json(v))).collect()
}

/// A protobuf `Value` as JSON (whole numbers as integers, as Envoy prints them).
pub fn json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(json_fields(s)),
        Some(Kind::ListValue(l)) => l.values.iter().map(json).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{value::Kind, Struct, Value};

    fn st(fields: &[(&str, Kind)]) -> Struct {
        Struct {
            fields: fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(v.clone()),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn values_by_path_and_equal_encodings() {
        let inner = st(&[("name", Kind::StringValue("reviews".into()))]);
        let mut md = Metadata::default();
        md.filter_metadata.insert(
            "istio".into(),
            st(&[
                ("port", Kind::NumberValue(9080.0)),
                ("svc", Kind::StructValue(inner)),
            ]),
        );
        md.filter_metadata
            .insert("b".into(), st(&[("x", Kind::BoolValue(true))]));
        let p = Packed::new(Some(&md)).unwrap();
        let path = |p: &[&str]| p.iter().map(|s| Box::<str>::from(*s)).collect::<Vec<_>>();
        assert_eq!(p.value("istio", &path(&["port"])), Some(9080.into()));
        assert_eq!(
            p.value("istio", &path(&["svc", "name"])),
            Some("reviews".into())
        );
        assert_eq!(p.value("istio", &path(&["port", "x"])), None);
        assert_eq!(p.value("istio", &path(&["nothing"])), None);
        assert_eq!(p.value("other", &path(&["x"])), None);
        assert_eq!(
            p.value("istio", &path(&["svc"]))
                .map(|v| v.to_string())
                .as_deref(),
            Some(r#"{"name":"reviews"}"#)
        );
        assert_eq!(p.value("b", &[]), None);
        // The same metadata built in another order encodes the same.
        let mut again = Metadata::default();
        let mut names: Vec<_> = md.filter_metadata.keys().collect();
        names.sort_unstable_by(|a, b| b.cmp(a));
        for k in names {
            again
                .filter_metadata
                .insert(k.clone(), md.filter_metadata[k].clone());
        }
        assert_eq!(Packed::new(Some(&again)), Some(p));
        assert_eq!(Packed::new(Some(&Metadata::default())), None);
        assert_eq!(Packed::new(None), None);
    }
}
