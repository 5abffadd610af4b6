//! `transport_socket` with `envoy.transport_sockets.tls` → [`DownstreamTls`]: the
//! certificate, the trusted CA and SAN matchers, protocol versions, cipher suites, curves,
//! ALPN and session resumption, built into one rustls `ServerConfig`.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{ring as provider, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};

use crate::model::tls::{ClientVerifier, DownstreamTls, SanMatcher, SanType};
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::transport_sockets::tls::v3 as pb;

use super::{any_type, data_source, decode_any, err, timeout, ConvertError, Ctx};

const DOWNSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// The handshake bound when `transport_socket_connect_timeout` is unset. Envoy has none;
/// a client that opens a connection and never finishes its handshake would otherwise
/// hold it until the TCP keep-alive gives up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A filter chain's transport socket: `None` for plaintext (none, or `raw_buffer`).
pub(super) fn downstream(
    ts: Option<&core::TransportSocket>,
    connect_timeout: Option<&prost_types::Duration>,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Option<Arc<DownstreamTls>>, ConvertError> {
    let handshake_timeout = timeout(
        connect_timeout,
        Some(DEFAULT_HANDSHAKE_TIMEOUT),
        res,
        &format!("{path}.transport_socket_connect_timeout"),
    )?
    .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let Some(ts) = ts else {
        return Ok(None);
    };
    let tpath = format!("{path}.transport_socket");
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return match ts.name.as_str() {
            "envoy.transport_sockets.raw_buffer" | "raw_buffer" => Ok(None),
            other => Err(err(
                res,
                format!("{tpath}.typed_config"),
                format!("transport socket '{other}' needs a typed_config"),
            )),
        };
    };
    match any_type(any) {
        RAW_BUFFER => Ok(None),
        DOWNSTREAM => {
            let tc: pb::DownstreamTlsContext =
                decode_any(any, DOWNSTREAM, res, &format!("{tpath}.typed_config"))?;
            let config =
                server_config(&tc, res, &format!("{tpath}.typed_config"), ctx)?;
            Ok(Some(Arc::new(DownstreamTls {
                config: Arc::new(config),
                handshake_timeout,
                require_sni: tc.require_sni.unwrap_or(false),
            })))
        }
        other => Err(err(
            res,
            format!("{tpath}.typed_config"),
            format!("transport socket type '{other}' is not implemented (DownstreamTlsContext, RawBuffer)"),
        )),
    }
}

fn server_config(
    tc: &pb::DownstreamTlsContext,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<rustls::ServerConfig, ConvertError> {
    let cpath = format!("{path}.common_tls_context");
    let common = tc.common_tls_context.clone().unwrap_or_default();
    let params = tls_params(
        common.tls_params.as_ref(),
        res,
        &format!("{cpath}.tls_params"),
        ctx,
    )?;
    if !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(err(
            res,
            format!("{cpath}.tls_certificate_sds_secret_configs"),
            "certificates over SDS are not implemented yet: give tls_certificates (files or inline)",
        ));
    }
    let (chain, key) = match common.tls_certificates.as_slice() {
        [one] => certificate(one, res, &format!("{cpath}.tls_certificates[0]"))?,
        [] => {
            return Err(err(
                res,
                format!("{cpath}.tls_certificates"),
                "a TLS listener needs a certificate",
            ))
        }
        _ => {
            return Err(err(
                res,
                format!("{cpath}.tls_certificates[1]"),
                "only one certificate per context is implemented",
            ))
        }
    };
    let validation = validation_context(&common, res, &cpath)?;
    let require = tc.require_client_certificate.unwrap_or(false);
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(params.provider.clone()))
        .with_protocol_versions(&params.versions)
        .map_err(|e| err(res, format!("{cpath}.tls_params"), e.to_string()))?;
    let builder = match validation {
        Some((roots, sans)) => {
            let mut chain_check = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(params.provider.clone()),
            );
            if !require {
                // Envoy asks for a certificate and checks one that is sent, but lets a
                // client without one through.
                chain_check = chain_check.allow_unauthenticated();
            }
            let chain_check = chain_check
                .build()
                .map_err(|e| err(res, format!("{cpath}.validation_context"), e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                chain: chain_check,
                sans: sans.into(),
            }))
        }
        None if require => {
            return Err(err(
                res,
                format!("{path}.require_client_certificate"),
                "requiring a client certificate needs a validation_context with trusted_ca",
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| err(res, format!("{cpath}.tls_certificates[0]"), e.to_string()))?;
    config.alpn_protocols = common
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    // Resumption both ways by default, as in Envoy: stateless tickets and a session cache.
    let stateless = !matches!(
        tc.session_ticket_keys_type,
        Some(
            pb::downstream_tls_context::SessionTicketKeysType::DisableStatelessSessionResumption(
                true
            )
        )
    );
    if stateless {
        config.ticketer = provider::Ticketer::new()
            .map_err(|e| err(res, path, format!("session tickets: {e}")))?;
        config.send_tls13_tickets = 2;
    } else {
        config.send_tls13_tickets = 0;
    }
    if tc.disable_stateful_session_resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    if tc.session_timeout.is_some() {
        ctx.ignored.push(format!(
            "{res}.{path}.session_timeout (tickets and cached sessions live as rustls keeps them)"
        ));
    }
    Ok(config)
}

/// A certificate chain and its key from PEM data sources.
fn certificate(
    c: &pb::TlsCertificate,
    res: &str,
    path: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConvertError> {
    let Some(chain) = &c.certificate_chain else {
        return Err(err(
            res,
            format!("{path}.certificate_chain"),
            "a certificate chain is required",
        ));
    };
    let Some(key) = &c.private_key else {
        return Err(err(
            res,
            format!("{path}.private_key"),
            "a private key is required",
        ));
    };
    let cp = format!("{path}.certificate_chain");
    let pem = data_source(chain, res, &cp)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(res, &cp, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(err(res, cp, "no certificate in the PEM data"));
    }
    let kp = format!("{path}.private_key");
    let pem = data_source(key, res, &kp)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| err(res, kp, format!("not a PEM private key: {e}")))?;
    Ok((chain, key))
}

/// The trusted CA and SAN matchers, when the context has a validation context.
fn validation_context(
    common: &pb::CommonTlsContext,
    res: &str,
    cpath: &str,
) -> Result<Option<(RootCertStore, Vec<SanMatcher>)>, ConvertError> {
    use pb::common_tls_context::ValidationContextType as V;
    let (vc, vpath) = match &common.validation_context_type {
        None => return Ok(None),
        Some(V::ValidationContext(vc)) => (vc, format!("{cpath}.validation_context")),
        Some(V::ValidationContextSdsSecretConfig(_)) => return Err(err(
            res,
            format!("{cpath}.validation_context_sds_secret_config"),
            "trust bundles over SDS are not implemented yet: give validation_context.trusted_ca",
        )),
        Some(V::CombinedValidationContext(_)) => return Err(err(
            res,
            format!("{cpath}.combined_validation_context"),
            "trust bundles over SDS are not implemented yet: give validation_context.trusted_ca",
        )),
    };
    if vc.allow_expired_certificate {
        return Err(err(
            res,
            format!("{vpath}.allow_expired_certificate"),
            "accepting expired certificates is not implemented",
        ));
    }
    if vc.trust_chain_verification != 0 {
        return Err(err(
            res,
            format!("{vpath}.trust_chain_verification"),
            "only VERIFY_TRUST_CHAIN is implemented",
        ));
    }
    let Some(ca) = &vc.trusted_ca else {
        return Err(err(
            res,
            format!("{vpath}.trusted_ca"),
            "peer certificates can only be checked against a trusted_ca",
        ));
    };
    let tp = format!("{vpath}.trusted_ca");
    let pem = data_source(ca, res, &tp)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(res, &tp, format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(res, &tp, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err(res, tp, "no CA certificate in the PEM data"));
    }
    let mut sans = Vec::new();
    const ALL: &[SanType] = &[
        SanType::Dns,
        SanType::Uri,
        SanType::Email,
        SanType::IpAddress,
    ];
    for (i, m) in vc.match_subject_alt_names.iter().enumerate() {
        let matcher =
            super::route::string_matcher(m, res, &format!("{vpath}.match_subject_alt_names[{i}]"))?;
        sans.push(SanMatcher {
            types: ALL,
            matcher,
        });
    }
    for (i, m) in vc.match_typed_subject_alt_names.iter().enumerate() {
        let mp = format!("{vpath}.match_typed_subject_alt_names[{i}]");
        use pb::subject_alt_name_matcher::SanType as T;
        let types: &'static [SanType] = match T::try_from(m.san_type) {
            Ok(T::Dns) => &[SanType::Dns],
            Ok(T::Uri) => &[SanType::Uri],
            Ok(T::Email) => &[SanType::Email],
            Ok(T::IpAddress) => &[SanType::IpAddress],
            Ok(T::OtherName) => {
                return Err(err(
                    res,
                    format!("{mp}.san_type"),
                    "OTHER_NAME is not implemented",
                ))
            }
            _ => return Err(err(res, format!("{mp}.san_type"), "a SAN type is required")),
        };
        let Some(sm) = &m.matcher else {
            return Err(err(res, format!("{mp}.matcher"), "a matcher is required"));
        };
        let matcher = super::route::string_matcher(sm, res, &format!("{mp}.matcher"))?;
        sans.push(SanMatcher { types, matcher });
    }
    Ok(Some((roots, sans)))
}

/// Protocol versions, cipher suites and curves as one crypto provider.
struct Params {
    provider: CryptoProvider,
    versions: Vec<&'static SupportedProtocolVersion>,
}

fn tls_params(
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

enum Suite {
    Rustls(SupportedCipherSuite),
    /// A name BoringSSL knows (Envoy's default lists and Istio's carry them) that rustls
    /// does not implement: RSA key exchange, CBC modes.
    NotInRustls,
    Unknown,
}

/// An OpenSSL-style TLS 1.2 cipher suite name.
fn cipher_suite(name: &str) -> Suite {
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
