//! `tls_params` (protocol versions, cipher suites, curves) → one rustls crypto provider.

use super::*;

/// Protocol versions, cipher suites and curves as one crypto provider.
pub(super) struct Params {
    pub(super) provider: CryptoProvider,
    pub(super) versions: Vec<&'static SupportedProtocolVersion>,
}

pub(super) fn tls_params(
    p: Option<&pb::TlsParameters>,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Params, ConvertError> {
    use pb::tls_parameters::TlsProtocol as V;
    let mut provider = provider::default_provider();
    let Some(p) = p else {
        return Ok(Params {
            provider,
            versions: vec![&rustls::version::TLS12, &rustls::version::TLS13],
        });
    };
    let version = |v: i32, field: &str, default: V| -> Result<V, ConvertError> {
        match V::try_from(v) {
            Ok(V::TlsAuto) => Ok(default),
            Ok(v) => Ok(v),
            Err(_) => Err(err(
                res,
                format!("{path}.{field}"),
                format!("unknown TLS version {v}"),
            )),
        }
    };
    let min = version(
        p.tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
        V::TlSv12,
    )?;
    let max = version(
        p.tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
        V::TlSv13,
    )?;
    if matches!(min, V::TlSv10 | V::TlSv11) {
        // rustls has no TLS 1.0/1.1: the floor is TLS 1.2 whatever the config allows.
        ctx.ignored.push(format!(
            "{res}.{path}.tls_minimum_protocol_version (below TLS 1.2: rustls implements 1.2 and 1.3)"
        ));
    }
    if matches!(max, V::TlSv10 | V::TlSv11) {
        return Err(err(
            res,
            format!("{path}.tls_maximum_protocol_version"),
            "TLS 1.0 and 1.1 are not implemented",
        ));
    }
    if min == V::TlSv13 && max == V::TlSv12 {
        return Err(err(res, path, "the minimum version is above the maximum"));
    }
    let mut versions = Vec::new();
    if min != V::TlSv13 {
        versions.push(&rustls::version::TLS12);
    }
    if max == V::TlSv13 {
        versions.push(&rustls::version::TLS13);
    }
    if !p.cipher_suites.is_empty() {
        let mut chosen: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .collect();
        let mut tls12 = 0;
        for (i, name) in p.cipher_suites.iter().enumerate() {
            // BoringSSL's equal-preference groups: "[A|B]".
            for n in name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split('|')
            {
                match cipher_suite(n) {
                    Suite::Rustls(s) => {
                        if !chosen.iter().any(|c| c.suite() == s.suite()) {
                            chosen.push(s);
                            tls12 += 1;
                        }
                    }
                    Suite::NotInRustls => ctx.ignored.push(format!(
                        "{res}.{path}.cipher_suites[{i}] ({n}: not implemented by rustls)"
                    )),
                    Suite::Unknown => {
                        return Err(err(
                            res,
                            format!("{path}.cipher_suites[{i}]"),
                            format!("unknown cipher suite '{n}'"),
                        ))
                    }
                }
            }
        }
        if tls12 == 0 && !versions.contains(&&rustls::version::TLS13) {
            return Err(err(
                res,
                format!("{path}.cipher_suites"),
                "none of these TLS 1.2 cipher suites is implemented (ECDHE with AES-GCM or CHACHA20-POLY1305 are)",
            ));
        }
        provider.cipher_suites = chosen;
    }
    if !p.ecdh_curves.is_empty() {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for (i, c) in p.ecdh_curves.iter().enumerate() {
            let g: &'static dyn SupportedKxGroup = match c.as_str() {
                "X25519" => provider::kx_group::X25519,
                "P-256" | "prime256v1" => provider::kx_group::SECP256R1,
                "P-384" | "secp384r1" => provider::kx_group::SECP384R1,
                other => {
                    return Err(err(
                        res,
                        format!("{path}.ecdh_curves[{i}]"),
                        format!("curve '{other}' is not implemented (X25519, P-256, P-384)"),
                    ))
                }
            };
            groups.push(g);
        }
        provider.kx_groups = groups;
    }
    Ok(Params { provider, versions })
}

pub(super) enum Suite {
    Rustls(SupportedCipherSuite),
    /// A name BoringSSL knows (Envoy's default lists and Istio's carry them) that rustls
    /// does not implement: RSA key exchange, CBC modes.
    NotInRustls,
    Unknown,
}

/// An OpenSSL-style TLS 1.2 cipher suite name.
pub(super) fn cipher_suite(name: &str) -> Suite {
    use provider::cipher_suite as cs;
    let s = match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        "ECDHE-RSA-AES128-GCM-SHA256" => Some(cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        "ECDHE-ECDSA-AES256-GCM-SHA384" => Some(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        "ECDHE-RSA-AES256-GCM-SHA384" => Some(cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        "ECDHE-ECDSA-CHACHA20-POLY1305" => Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        "ECDHE-RSA-CHACHA20-POLY1305" => Some(cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        "AES128-GCM-SHA256"
        | "AES256-GCM-SHA384"
        | "AES128-SHA"
        | "AES256-SHA"
        | "ECDHE-ECDSA-AES128-SHA"
        | "ECDHE-RSA-AES128-SHA"
        | "ECDHE-ECDSA-AES256-SHA"
        | "ECDHE-RSA-AES256-SHA"
        | "ECDHE-PSK-AES128-CBC-SHA"
        | "ECDHE-PSK-CHACHA20-POLY1305"
        | "PSK-AES128-CBC-SHA"
        | "DES-CBC3-SHA" => return Suite::NotInRustls,
        _ => return Suite::Unknown,
    };
    s.map_or(Suite::Unknown, Suite::Rustls)
}
