//! `/certs`: every TLS context's certificates as Envoy's admin lists them: the clusters'
//! contexts, then the listeners' (one entry per context), each with its trusted CA and its
//! own certificate, their files (`<inline>` for inline data and SDS), serial numbers,
//! subject alternative names, validity and days left.

use std::fmt::Write as _;

use crate::model::tls::{CertDetails, SanType, TlsCerts};

/// A JSON string literal, `<` and `>` escaped as Envoy's protobuf printer escapes them.
fn quote(s: &str) -> String {
    serde_json::Value::from(s)
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
}

/// One certificate at indent `pad`, fields in Envoy's order.
fn cert(out: &mut String, c: &CertDetails, now: i64, pad: &str) {
    let sans: Vec<String> = c
        .sans
        .iter()
        .filter_map(|(t, v)| {
            let key = match t {
                SanType::Dns => "dns",
                SanType::Uri => "uri",
                SanType::IpAddress => "ip_address",
                SanType::Email => return None,
            };
            Some(format!(
                "{pad}  {{\n{pad}   \"{key}\": {}\n{pad}  }}",
                quote(v)
            ))
        })
        .collect();
    let sans = if sans.is_empty() {
        "[]".to_string()
    } else {
        format!("[\n{}\n{pad} ]", sans.join(",\n"))
    };
    // Whole days left (none once expired), as a string: a uint64 in protobuf's JSON.
    let days = (c.not_after - now).max(0) / 86_400;
    let _ = write!(
        out,
        "{pad}{{\n{pad} \"path\": {},\n{pad} \"serial_number\": {},\n{pad} \"subject_alt_names\": {sans},\n{pad} \"days_until_expiration\": \"{days}\",\n{pad} \"valid_from\": \"{}\",\n{pad} \"expiration_time\": \"{}\"\n{pad}}}",
        quote(&c.path),
        quote(&c.serial),
        rfc3339(c.not_before),
        rfc3339(c.not_after),
    );
}

fn rfc3339(secs: i64) -> String {
    let (y, m, d) = crate::model::format::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

fn list(out: &mut String, name: &str, c: Option<&CertDetails>, now: i64) {
    let _ = write!(out, "   \"{name}\": [");
    if let Some(c) = c {
        out.push('\n');
        cert(out, c, now, "    ");
        out.push_str("\n   ");
    }
    out.push(']');
}

fn context(out: &mut String, c: &TlsCerts, now: i64) {
    out.push_str("  {\n");
    list(out, "ca_cert", c.ca.as_ref(), now);
    out.push_str(",\n");
    list(out, "cert_chain", c.chain.as_ref(), now);
    out.push_str("\n  }");
}

/// The `/certs` body, laid out as Envoy's protobuf printer writes it (one-space indents,
/// Envoy's field order).
pub(super) fn certs(snap: &crate::model::Snapshot) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut contexts = Vec::new();
    for c in &snap.clusters {
        for tls in c
            .tls
            .iter()
            .chain(c.tls_matches.iter().filter_map(|m| m.tls.as_ref()))
        {
            contexts.push(&tls.certs);
        }
    }
    for l in &snap.listeners {
        for ch in &l.chains.chains {
            if let Some(tls) = &ch.tls {
                contexts.push(&tls.certs);
            }
        }
    }
    let mut out = String::from("{\n \"certificates\": [");
    for (i, c) in contexts.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        context(&mut out, c, now);
    }
    if !contexts.is_empty() {
        out.push_str("\n ");
    }
    out.push_str("]\n}\n");
    out.into_bytes()
}
