//! Fail closed on the wire: prost drops fields that `proto/` does not declare, so every
//! xDS resource is also scanned against `proto/`'s messages, and any field they do not
//! declare is an error naming it. `Any` values whose type Ringside knows are scanned the
//! same way, recursively. The scan reads the wire format directly (no allocation, no
//! decoded copy): it runs on every resource of every update. The messages' fields are
//! static tables written by build.rs, not the descriptor pool: decoded, the pool is about
//! 4.6 MB of heap, which every update would otherwise decode again.

use std::collections::HashMap;
use std::sync::OnceLock;

/// `proto/`'s messages, sorted by full name, each with its fields sorted by number.
mod schema {
    pub struct Schema {
        pub name: &'static str,
        pub fields: &'static [WireField],
    }

    pub struct WireField {
        pub number: u32,
        pub name: &'static str,
        /// The index of its message type in `MESSAGES` (`NONE`: a scalar).
        pub message: u16,
        /// 0: single, 1: repeated, 2: a map (its message type the map entry).
        pub shape: u8,
    }

    pub const NONE: u16 = u16::MAX;

    include!(concat!(env!("OUT_DIR"), "/wire_schema.rs"));
}

use schema::{Schema, WireField, ANY, MESSAGES, NONE};

/// A message of `proto/`.
#[derive(Clone, Copy)]
struct Desc(&'static Schema);

impl Desc {
    fn by_name(name: &str) -> Option<Desc> {
        let i = MESSAGES.binary_search_by(|m| m.name.cmp(name)).ok()?;
        Some(Desc(&MESSAGES[i]))
    }

    fn full_name(self) -> &'static str {
        self.0.name
    }

    fn get_field(self, number: u32) -> Option<&'static WireField> {
        let f = self.0.fields;
        f.binary_search_by_key(&number, |f| f.number)
            .ok()
            .map(|i| &f[i])
    }
}

impl WireField {
    fn message(&self) -> Option<Desc> {
        (self.message != NONE).then(|| Desc(&MESSAGES[usize::from(self.message)]))
    }

    fn is_any(&self) -> bool {
        self.message == ANY
    }

    fn is_list(&self) -> bool {
        self.shape == 1
    }

    fn is_map(&self) -> bool {
        self.shape == 2
    }
}

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
    let Some(desc) = Desc::by_name(full_name) else {
        return Ok(());
    };
    scan(desc, bytes).map_err(|f| {
        // Segments were pushed innermost first, on the way out.
        let mut path = String::new();
        for seg in f.segments.iter().rev() {
            if !path.is_empty() && !seg.starts_with('[') {
                path.push('.');
            }
            path.push_str(seg);
        }
        // Name every other unimplemented field too, so one NACK shows the whole gap.
        let mut all = Vec::new();
        collect(desc, bytes, "", &mut all);
        let others: Vec<String> = all
            .into_iter()
            .filter(|(_, r)| *r != f.reason)
            .map(|(p, r)| if p.is_empty() { r } else { format!("{p}: {r}") })
            .collect();
        let mut reason = f.reason;
        if !others.is_empty() {
            reason.push_str("; also ");
            reason.push_str(&others.join("; "));
        }
        (path, reason)
    })
}

/// Every unknown field under `bytes` as (path, reason): the slow path, run only once the
/// fast scan found one.
fn collect(desc: Desc, bytes: &[u8], path: &str, out: &mut Vec<(String, String)>) {
    let mut buf = bytes;
    let mut seen: HashMap<u32, usize> = HashMap::new();
    while !buf.is_empty() {
        let Ok((number, data)) = next_field(&mut buf) else {
            return;
        };
        let Some(field) = desc.get_field(number) else {
            let name = omitted()
                .get(&(desc.full_name(), number))
                .map(|f| format!("'{f}' (field {number})"))
                .unwrap_or_else(|| format!("field {number}"));
            let reason = format!(
                "{name} of {} is not implemented by Ringside",
                desc.full_name()
            );
            // Each unimplemented field once, at its first path.
            if !out.iter().any(|(_, r)| *r == reason) {
                out.push((path.to_string(), reason));
            }
            continue;
        };
        let Some(m) = field.message() else {
            continue;
        };
        let sep = if path.is_empty() { "" } else { "." };
        let mut p = format!("{path}{sep}{}", field.name);
        if field.is_list() {
            let i = seen.entry(number).or_insert(0);
            p.push_str(&format!("[{i}]"));
            *i += 1;
        } else if field.is_map() {
            p.push_str(&format!("[\"{}\"]", map_key(data)));
        }
        if field.is_any() {
            let (mut url, mut value): (&[u8], &[u8]) = (&[], &[]);
            let mut d = data;
            while let Ok((k, v)) = next_field(&mut d) {
                match k {
                    1 => url = v,
                    2 => value = v,
                    _ => {}
                }
                if d.is_empty() {
                    break;
                }
            }
            let url = String::from_utf8_lossy(url);
            let name = url.rsplit('/').next().unwrap_or(&url);
            if let Some(inner) = Desc::by_name(name) {
                collect(inner, value, &p, out);
            }
        } else if field.is_map() {
            // The entry's value (field 2) when it is a message.
            if let Some(v) = m.get_field(2).and_then(WireField::message) {
                let mut d = data;
                while let Ok((k, v_bytes)) = next_field(&mut d) {
                    if k == 2 {
                        collect(v, v_bytes, &p, out);
                    }
                    if d.is_empty() {
                        break;
                    }
                }
            }
        } else {
            collect(m, data, &p, out);
        }
    }
}

/// An unknown field, and the path to it, built only once one is found.
struct Found {
    segments: Vec<String>,
    reason: String,
}

impl Found {
    fn new(reason: String) -> Found {
        Found {
            segments: Vec::new(),
            reason,
        }
    }
}

fn varint(buf: &mut &[u8]) -> Result<u64, Found> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&b, rest)) = buf.split_first() else {
            break;
        };
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Found::new("malformed varint".into()))
}

fn take<'a>(buf: &mut &'a [u8], n: u64) -> Result<&'a [u8], Found> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > buf.len() {
        return Err(Found::new("truncated field".into()));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

/// One field of a message: its number, wire type and (for length-delimited) its bytes.
fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, &'a [u8]), Found> {
    let key = varint(buf)?;
    let number = (key >> 3) as u32;
    let data: &[u8] = match key & 7 {
        0 => {
            varint(buf)?;
            &[]
        }
        1 => take(buf, 8)?,
        5 => take(buf, 4)?,
        2 => {
            let len = varint(buf)?;
            take(buf, len)?
        }
        w => return Err(Found::new(format!("unsupported wire type {w}"))),
    };
    Ok((number, data))
}

fn scan(desc: Desc, bytes: &[u8]) -> Result<(), Found> {
    let mut buf = bytes;
    while !buf.is_empty() {
        let start = bytes.len() - buf.len();
        let (number, data) = next_field(&mut buf)?;
        let Some(field) = desc.get_field(number) else {
            let name = omitted()
                .get(&(desc.full_name(), number))
                .map(|f| format!("'{f}' (field {number})"))
                .unwrap_or_else(|| format!("field {number}"));
            return Err(Found::new(format!(
                "{name} of {} is not implemented by Ringside",
                desc.full_name()
            )));
        };
        let Some(m) = field.message() else {
            continue;
        };
        let inner = if field.is_any() {
            scan_any(data)
        } else {
            scan(m, data)
        };
        if let Err(mut f) = inner {
            if field.is_map() {
                f.segments.pop(); // the entry's own "value"
                f.segments.push(format!("[\"{}\"]", map_key(data)));
            } else if field.is_list() {
                f.segments
                    .push(format!("[{}]", occurrences(&bytes[..start], number)));
            }
            f.segments.push(field.name.to_string());
            return Err(f);
        }
    }
    Ok(())
}

/// How many times field `number` occurs in `bytes` (the index of the next occurrence).
fn occurrences(mut bytes: &[u8], number: u32) -> usize {
    let mut n = 0;
    while let Ok((k, _)) = next_field(&mut bytes) {
        n += usize::from(k == number);
        if bytes.is_empty() {
            break;
        }
    }
    n
}

/// The (string) key of a map entry.
fn map_key(mut entry: &[u8]) -> String {
    while let Ok((k, data)) = next_field(&mut entry) {
        if k == 1 {
            return String::from_utf8_lossy(data).into_owned();
        }
        if entry.is_empty() {
            break;
        }
    }
    String::new()
}

/// An `Any` of a known type is scanned too; unknown types are left to conversion, which
/// refuses them by type URL.
fn scan_any(mut bytes: &[u8]) -> Result<(), Found> {
    let (mut url, mut value): (&[u8], &[u8]) = (&[], &[]);
    while !bytes.is_empty() {
        match next_field(&mut bytes)? {
            (1, d) => url = d,
            (2, d) => value = d,
            _ => {}
        }
    }
    let url = String::from_utf8_lossy(url);
    let name = url.rsplit('/').next().unwrap_or(&url);
    match Desc::by_name(name) {
        Some(desc) => scan(desc, value),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn the_static_tables_describe_every_message_as_the_descriptor_pool_does() {
        let pool = crate::proto::pool();
        let mut n = 0;
        for m in pool.all_messages() {
            let d = Desc::by_name(m.full_name()).unwrap_or_else(|| panic!("{}", m.full_name()));
            assert_eq!(d.0.fields.len(), m.fields().len(), "{}", m.full_name());
            for f in m.fields() {
                let w = d.get_field(f.number()).expect("field by number");
                assert_eq!(w.name, f.name(), "{}", m.full_name());
                assert_eq!(w.is_map(), f.is_map(), "{}.{}", m.full_name(), f.name());
                assert_eq!(w.is_list(), f.is_list(), "{}.{}", m.full_name(), f.name());
                let inner = match f.kind() {
                    prost_reflect::Kind::Message(t) => Some(t.full_name().to_string()),
                    _ => None,
                };
                assert_eq!(w.message().map(|d| d.full_name().to_string()), inner);
                assert_eq!(w.is_any(), inner.as_deref() == Some("google.protobuf.Any"));
            }
            n += 1;
        }
        assert_eq!(n, MESSAGES.len());
    }

    #[test]
    fn an_undeclared_field_is_named() {
        // Cluster.lb_subset_config (22) is not in proto/: encode it by hand after a name.
        let mut bytes = crate::proto::envoy::config::cluster::v3::Cluster {
            name: "c".into(),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.extend_from_slice(&[0xb2, 0x01, 0x00]); // field 22, length-delimited, empty
        let (path, reason) = check("envoy.config.cluster.v3.Cluster", &bytes).unwrap_err();
        assert_eq!(path, "");
        assert!(reason.contains("'lb_subset_config' (field 22)"), "{reason}");
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
