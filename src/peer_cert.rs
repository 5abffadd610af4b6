//! What a mutual TLS client presented, turned once per connection into what its requests
//! carry: the `x-forwarded-client-cert` element (`By` = our URI SANs, `Hash`, then `Cert`,
//! `Chain`, `Subject`, `URI`, `DNS` as configured), as Envoy builds it.

use crate::model::xfcc::CertDetails;

/// What a mutual TLS connection's client presented, for its requests' headers.
#[derive(Debug)]
pub struct ClientCert {
    /// This hop's element, when the connection manager writes one.
    pub element: Option<Box<str>>,
}

/// The element for a client that presented `chain` (its certificate first) to a listener
/// whose own certificate has `local_uri_sans`.
pub fn element(chain: &[&[u8]], local_uri_sans: &[String], details: CertDetails) -> String {
    let mut parts: Vec<String> = local_uri_sans.iter().map(|u| format!("By={u}")).collect();
    let Some(leaf) = chain.first() else {
        return parts.join(";");
    };
    parts.push(format!("Hash={}", sha256_hex(leaf)));
    if details.cert {
        parts.push(format!("Cert=\"{}\"", url_encoded_pem(&[leaf])));
    }
    if details.chain {
        parts.push(format!("Chain=\"{}\"", url_encoded_pem(chain)));
    }
    let parsed = x509_parser::parse_x509_certificate(leaf)
        .ok()
        .map(|(_, c)| c);
    if details.subject {
        let subject = parsed
            .as_ref()
            .map(|c| rfc2253(c.subject()))
            .unwrap_or_default();
        parts.push(format!("Subject=\"{subject}\""));
    }
    let sans = crate::model::tls::subject_alt_names(leaf).unwrap_or_default();
    let of = |t| sans.iter().filter(move |(ty, _)| *ty == t).map(|(_, n)| n);
    if details.uri {
        let mut any = false;
        for u in of(crate::model::tls::SanType::Uri) {
            parts.push(format!("URI={u}"));
            any = true;
        }
        if !any {
            parts.push("URI=".into());
        }
    }
    if details.dns {
        for d in of(crate::model::tls::SanType::Dns) {
            parts.push(format!("DNS={d}"));
        }
    }
    parts.join(";")
}

fn sha256_hex(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificates as PEM, with Envoy's URL encoding of newline, space, `+`, `/`, `=`.
fn url_encoded_pem(chain: &[&[u8]]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in chain {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    let mut enc = String::with_capacity(out.len() + 64);
    for c in out.chars() {
        match c {
            '\n' => enc.push_str("%0A"),
            ' ' => enc.push_str("%20"),
            '+' => enc.push_str("%2B"),
            '/' => enc.push_str("%2F"),
            '=' => enc.push_str("%3D"),
            c => enc.push(c),
        }
    }
    enc
}

/// A distinguished name as OpenSSL prints it with `XN_FLAG_RFC2253` (what Envoy uses): the
/// last RDN first, `,` between RDNs and `+` inside one, short attribute names, RFC 2253
/// escapes, bytes outside printable ASCII as `\XX`, unknown attributes as `OID=#DER`.
pub(crate) fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    // OpenSSL reverses the flat list of attributes (so inside a multi-valued RDN too), and
    // joins neighbours of the same RDN with `+`.
    let flat: Vec<(usize, _)> = name
        .iter()
        .enumerate()
        .flat_map(|(i, rdn)| rdn.iter().map(move |a| (i, a)))
        .collect();
    let mut out = String::new();
    let mut last = None;
    for (rdn, attr) in flat.into_iter().rev() {
        if let Some(l) = last {
            out.push(if l == rdn { '+' } else { ',' });
        }
        last = Some(rdn);
        let oid = attr.attr_type().to_id_string();
        match (short_name(&oid), attr.as_str()) {
            (Some(sn), Ok(text)) => {
                out.push_str(sn);
                out.push('=');
                out.push_str(&escape_2253(text));
            }
            _ => {
                let value = attr.attr_value();
                let der: String = value.data.iter().map(|b| format!("{b:02X}")).collect();
                let tag = value.header.tag().0 as u8;
                let len = value.data.len();
                out.push_str(&format!("{oid}=#{tag:02X}{len:02X}{der}"));
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.4" => "SN",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.5" => "serialNumber",
        "2.5.4.41" => "name",
        "2.5.4.65" => "pseudonym",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

fn escape_2253(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    for (i, &b) in bytes.iter().enumerate() {
        let edge = (i == 0 && (b == b'#' || b == b' ')) || (i + 1 == bytes.len() && b == b' ');
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            _ if edge => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_print_as_openssl_rfc2253() {
        assert_eq!(escape_2253("Sue, Grabbit+Runn"), "Sue\\, Grabbit\\+Runn");
        assert_eq!(escape_2253(" #x "), "\\ #x\\ ");
        assert_eq!(escape_2253("caf\u{e9}"), "caf\\C3\\A9");
    }
}
