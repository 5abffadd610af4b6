//! Envoy's `json_format`: a structure whose string values are format strings. A value that
//! is one command alone keeps its type (a number stays a number, a missing value is `null`,
//! metadata is a structure); anything else is a string. Keys are written sorted, as Envoy
//! 1.40 writes them.

use super::{parse_parts, parts_commands, write_parts, Command, Context, Part, Val};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    Template(Vec<Part>),
    /// A value written as it is (a number, `true`, `null`, or a quoted string).
    Literal(String),
    Object(Vec<(String, Node)>),
    List(Vec<Node>),
}

/// Converts a `Struct` of `json_format`, keys sorted; errors name the key.
pub(super) fn object(s: &prost_types::Struct, at: &str) -> Result<Vec<(String, Node)>, String> {
    let mut fields = Vec::with_capacity(s.fields.len());
    for (k, v) in &s.fields {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        fields.push((k.clone(), node(v, &path)?));
    }
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(fields)
}

fn node(v: &prost_types::Value, at: &str) -> Result<Node, String> {
    use prost_types::value::Kind;
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => Node::Literal("null".into()),
        Some(Kind::BoolValue(b)) => Node::Literal(b.to_string()),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 1e15 => {
            Node::Literal((*n as i64).to_string())
        }
        Some(Kind::NumberValue(n)) if n.is_finite() => Node::Literal(n.to_string()),
        Some(Kind::NumberValue(_)) => Node::Literal("null".into()),
        Some(Kind::StringValue(s)) => {
            Node::Template(parse_parts(s).map_err(|e| format!("{at}: {e}"))?)
        }
        Some(Kind::StructValue(s)) => Node::Object(object(s, at)?),
        Some(Kind::ListValue(l)) => Node::List(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| node(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

impl Node {
    pub(super) fn for_each_command(&self, f: &mut dyn FnMut(&Command)) {
        match self {
            Node::Template(parts) => parts_commands(parts, f),
            Node::Literal(_) => {}
            Node::Object(fields) => fields.iter().for_each(|(_, n)| n.for_each_command(f)),
            Node::List(items) => items.iter().for_each(|n| n.for_each_command(f)),
        }
    }
}

pub(super) fn write_object(
    fields: &[(String, Node)],
    ctx: &dyn Context,
    omit_empty: bool,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    let mut first = true;
    for (k, n) in fields {
        let mark = out.len();
        if !first {
            out.push(b',');
        }
        escape(k.as_bytes(), out);
        out.push(b':');
        if write_node(n, ctx, omit_empty, out) {
            first = false;
        } else {
            out.truncate(mark);
        }
    }
    out.push(b'}');
}

/// Writes `n`; false when `omit_empty` leaves it out.
fn write_node(n: &Node, ctx: &dyn Context, omit_empty: bool, out: &mut Vec<u8>) -> bool {
    match n {
        Node::Literal(s) => out.extend_from_slice(s.as_bytes()),
        Node::Object(fields) => write_object(fields, ctx, omit_empty, out),
        Node::List(items) => {
            out.push(b'[');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if !write_node(n, ctx, false, out) {
                    out.extend_from_slice(b"null");
                }
            }
            out.push(b']');
        }
        Node::Template(parts) => {
            let mut text = Vec::new();
            if let [Part::Command { cmd, max_len }] = parts.as_slice() {
                // One command alone keeps its type.
                match ctx.write(cmd, &mut text) {
                    Val::None if omit_empty => return false,
                    Val::None => out.extend_from_slice(b"null"),
                    Val::Json if max_len.is_none() => out.extend_from_slice(&text),
                    _ => {
                        if let Some(m) = max_len {
                            text.truncate(*m);
                        }
                        out.extend_from_slice(quoted(&text).as_bytes());
                    }
                }
                return true;
            }
            let missing: &[u8] = if omit_empty { b"" } else { b"-" };
            write_parts(parts, ctx, missing, &mut text);
            out.extend_from_slice(quoted(&text).as_bytes());
        }
    }
    true
}

fn quoted(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    escape(s, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends `s` as a JSON string. A string that is not UTF-8 is written as Envoy writes
/// it: every byte outside printable ASCII as `\u00XX`.
pub(super) fn escape(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let Ok(text) = std::str::from_utf8(s) else {
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x20..=0x7e => out.push(b),
                _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            }
        }
        out.push(b'"');
        return;
    };
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// A JSON value as a protobuf `Struct` (tests build formats from YAML).
#[cfg(test)]
pub(super) fn to_struct(v: &serde_json::Value) -> prost_types::Struct {
    use prost_types::value::Kind;
    fn value(v: &serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.iter().map(value).collect(),
            }),
            serde_json::Value::Object(_) => Kind::StructValue(to_struct(v)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    let serde_json::Value::Object(o) = v else {
        return prost_types::Struct::default();
    };
    prost_types::Struct {
        fields: o.iter().map(|(k, v)| (k.clone(), value(v))).collect(),
    }
}
