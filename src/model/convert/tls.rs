//! `transport_socket` with `envoy.transport_sockets.tls` → [`DownstreamTls`] (listeners)
//! and [`UpstreamTls`] (clusters): the
//! certificate, the trusted CA and SAN matchers, protocol versions, cipher suites, curves,
//! ALPN and session resumption, built into one rustls `ServerConfig` or `ClientConfig`,
//! with certificates and trust bundles from files, inline, or SDS secrets.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{ring as provider, CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};

use crate::model::tls::{
    ClientVerifier, DownstreamTls, SanMatcher, ServerVerifier, TlsCerts, UpstreamTls,
};
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::transport_sockets::tls::v3 as pb;

use super::{any_type, data_source, decode_any, err, timeout, ConvertError, Ctx, SdsSource};

const DOWNSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
/// Sessions per core for stateful (session ID) resumption: rustls's default size.
const SESSION_CACHE: usize = 256;

const UPSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
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
            let (config, local_uri_sans, certs) =
                server_config(&tc, res, &format!("{tpath}.typed_config"), ctx)?;
            Ok(Some(Arc::new(DownstreamTls {
                certs,
                config: Arc::new(config),
                local_uri_sans,
                handshake_timeout,
                require_sni: tc.require_sni.unwrap_or(false),
                session_cache: if tc.disable_stateful_session_resumption {
                    0
                } else {
                    SESSION_CACHE
                },
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
) -> Result<(rustls::ServerConfig, Vec<String>, TlsCerts), ConvertError> {
    let cpath = format!("{path}.common_tls_context");
    let common = tc.common_tls_context.clone().unwrap_or_default();
    let c = resolve(&common, res, &cpath, ctx)?;
    let require = tc.require_client_certificate.unwrap_or(false);
    let provider = Arc::new(c.params.provider.clone());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&c.params.versions)
        .map_err(|e| err(res, format!("{cpath}.tls_params"), e.to_string()))?;
    let builder = match c.validation {
        Some((roots, sans)) => {
            let mut chain_check =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
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
        None if require && c.missing.is_none() => {
            return Err(err(
                res,
                format!("{path}.require_client_certificate"),
                "requiring a client certificate needs a validation_context with trusted_ca",
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let local_uri_sans: Vec<String> = c.certs.uri_sans().map(str::to_string).collect();
    let mut config = match c.cert {
        Some((chain, key)) => builder
            .with_single_cert(chain, key)
            .map_err(|e| err(res, c.cert_path, cert_error(&e)))?,
        // An SDS secret has not arrived: the listener warms until it does, and would
        // refuse every handshake if it served.
        None if c.missing.is_some() => builder.with_cert_resolver(Arc::new(NoCertYet)),
        None => {
            return Err(err(
                res,
                format!("{cpath}.tls_certificates"),
                "a TLS listener needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)",
            ))
        }
    };
    config.alpn_protocols = c.alpn;
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
    Ok((config, local_uri_sans, c.certs))
}

/// Answers no handshake: the certificate of a listener whose SDS secret is still missing.
#[derive(Debug)]
struct NoCertYet;

impl rustls::server::ResolvesServerCert for NoCertYet {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// A cluster's transport socket: `None` for plaintext (none, or `raw_buffer`).
pub(super) fn upstream(
    ts: &core::TransportSocket,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Option<Arc<UpstreamTls>>, ConvertError> {
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return match ts.name.as_str() {
            "envoy.transport_sockets.raw_buffer" | "raw_buffer" => Ok(None),
            other => Err(err(
                res,
                format!("{path}.typed_config"),
                format!("transport socket '{other}' needs a typed_config"),
            )),
        };
    };
    let tpath = format!("{path}.typed_config");
    match any_type(any) {
        RAW_BUFFER => Ok(None),
        UPSTREAM => {
            let tc: pb::UpstreamTlsContext = decode_any(any, UPSTREAM, res, &tpath)?;
            client_config(&tc, any, res, &tpath, ctx).map(|t| Some(Arc::new(t)))
        }
        other => Err(err(
            res,
            tpath,
            format!("transport socket type '{other}' is not implemented (UpstreamTlsContext, RawBuffer)"),
        )),
    }
}

fn client_config(
    tc: &pb::UpstreamTlsContext,
    any: &prost_types::Any,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<UpstreamTls, ConvertError> {
    let cpath = format!("{path}.common_tls_context");
    let common = tc.common_tls_context.clone().unwrap_or_default();
    let c = resolve(&common, res, &cpath, ctx)?;
    if tc.allow_renegotiation {
        return Err(err(
            res,
            format!("{path}.allow_renegotiation"),
            "TLS renegotiation is not implemented (rustls refuses it)",
        ));
    }
    let provider = Arc::new(c.params.provider.clone());
    let verifier = ServerVerifier {
        roots: c.validation.as_ref().map(|(r, _)| Arc::new(r.clone())),
        sans: c.validation.map(|(_, s)| s).unwrap_or_default().into(),
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&c.params.versions)
        .map_err(|e| err(res, format!("{cpath}.tls_params"), e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let local_uri_san = c.certs.uri_sans().next().map(Into::into);
    let mut config = match c.cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| err(res, c.cert_path, cert_error(&e)))?,
        None => builder.with_no_client_auth(),
    };
    if let Some(n) = tc.max_session_keys {
        config.resumption = rustls::client::Resumption::in_memory_sessions(n.max(1) as usize);
        if n == 0 {
            config.resumption = rustls::client::Resumption::disabled();
        }
    }
    config.alpn_protocols.clone_from(&c.alpn);
    let mut h2 = config.clone();
    if h2.alpn_protocols.is_empty() {
        h2.alpn_protocols = vec![b"h2".to_vec()];
    }
    let sni = if tc.sni.is_empty() {
        None
    } else {
        Some(
            rustls::pki_types::ServerName::try_from(tc.sni.clone())
                .map_err(|e| err(res, format!("{path}.sni"), format!("'{}': {e}", tc.sni)))?,
        )
    };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.value.hash(&mut h);
    c.secrets_used.hash(&mut h);
    Ok(UpstreamTls {
        certs: c.certs,
        h1: Arc::new(config),
        h2: Arc::new(h2),
        sni,
        auto_host_sni: tc.auto_host_sni,
        key: h.finish() | 1,
        missing_secret: c.missing,
        local_uri_san,
    })
}

/// A `CommonTlsContext` with its SDS secrets looked up: what both directions build from.
struct Common {
    params: Params,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Where the certificate came from, for errors.
    cert_path: String,
    validation: Option<(RootCertStore, Vec<SanMatcher>)>,
    alpn: Vec<Vec<u8>>,
    /// An SDS secret it names that has not arrived.
    missing: Option<Arc<str>>,
    /// The encoded secrets it used (part of an upstream pool's identity).
    secrets_used: Vec<Vec<u8>>,
    certs: TlsCerts,
}

fn resolve(
    common: &pb::CommonTlsContext,
    res: &str,
    cpath: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Common, ConvertError> {
    let params = tls_params(
        common.tls_params.as_ref(),
        res,
        &format!("{cpath}.tls_params"),
        ctx,
    )?;
    let mut out = Common {
        params,
        cert: None,
        cert_path: String::new(),
        validation: None,
        alpn: common
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect(),
        missing: None,
        secrets_used: Vec::new(),
        certs: TlsCerts::default(),
    };
    match (
        common.tls_certificates.as_slice(),
        common.tls_certificate_sds_secret_configs.as_slice(),
    ) {
        ([], []) => {}
        ([one], []) => {
            out.cert_path = format!("{cpath}.tls_certificates[0]");
            out.cert = Some(certificate(one, res, &out.cert_path)?);
            out.certs.chain = certs::leaf(one, out.cert.as_ref());
        }
        ([], [sds]) => {
            let at = format!("{cpath}.tls_certificate_sds_secret_configs[0]");
            if let Some(secret) = secret(sds, res, &at, ctx, &mut out)? {
                let Some(pb::secret::Type::TlsCertificate(tc)) = &secret.r#type else {
                    return Err(err(
                        res,
                        at,
                        format!("secret '{}' is not a tls_certificate", sds.name),
                    ));
                };
                out.cert_path = format!("secret '{}'.tls_certificate", sds.name);
                out.cert = Some(certificate(tc, res, &out.cert_path)?);
                out.certs.chain = certs::leaf(tc, out.cert.as_ref());
            }
        }
        ([_, ..], [_, ..]) => {
            return Err(err(
                res,
                format!("{cpath}.tls_certificate_sds_secret_configs"),
                "give tls_certificates or tls_certificate_sds_secret_configs, not both",
            ))
        }
        ([_, _, ..], _) => {
            return Err(err(
                res,
                format!("{cpath}.tls_certificates[1]"),
                "only one certificate per context is implemented",
            ))
        }
        (_, [_, _, ..]) => {
            return Err(err(
                res,
                format!("{cpath}.tls_certificate_sds_secret_configs[1]"),
                "only one certificate per context is implemented",
            ))
        }
    }
    use pb::common_tls_context::ValidationContextType as V;
    out.validation = match &common.validation_context_type {
        None => None,
        Some(V::ValidationContext(vc)) => {
            out.certs.ca = certs::ca(vc);
            validation_context(vc, res, &format!("{cpath}.validation_context"))?
        }
        Some(V::ValidationContextSdsSecretConfig(sds)) => {
            let at = format!("{cpath}.validation_context_sds_secret_config");
            match secret(sds, res, &at, ctx, &mut out)? {
                Some(secret) => {
                    let vc = secret_validation(&secret, res, &at)?;
                    out.certs.ca = certs::ca(vc);
                    validation_context(
                        vc,
                        res,
                        &format!("secret '{}'.validation_context", sds.name),
                    )?
                }
                None => None,
            }
        }
        Some(V::CombinedValidationContext(cv)) => {
            let at = format!("{cpath}.combined_validation_context");
            let Some(sds) = &cv.validation_context_sds_secret_config else {
                return Err(err(
                    res,
                    format!("{at}.validation_context_sds_secret_config"),
                    "a combined validation context needs its SDS secret",
                ));
            };
            let sat = format!("{at}.validation_context_sds_secret_config");
            match secret(sds, res, &sat, ctx, &mut out)? {
                Some(secret) => {
                    // The secret brings the trust bundle; the default context adds its
                    // SAN matchers (Envoy merges the two the same way).
                    let from_sds = secret_validation(&secret, res, &sat)?;
                    let mut merged = cv.default_validation_context.clone().unwrap_or_default();
                    if merged.trusted_ca.is_none() {
                        merged.trusted_ca.clone_from(&from_sds.trusted_ca);
                    }
                    merged
                        .match_subject_alt_names
                        .extend(from_sds.match_subject_alt_names.iter().cloned());
                    merged
                        .match_typed_subject_alt_names
                        .extend(from_sds.match_typed_subject_alt_names.iter().cloned());
                    out.certs.ca = certs::ca(&merged);
                    validation_context(&merged, res, &at)?
                }
                None => None,
            }
        }
    };
    Ok(out)
}

/// The validation context a trust-bundle secret (Istio's `ROOTCA`) carries.
fn secret_validation<'s>(
    secret: &'s pb::Secret,
    res: &str,
    at: &str,
) -> Result<&'s pb::CertificateValidationContext, ConvertError> {
    match &secret.r#type {
        Some(pb::secret::Type::ValidationContext(vc)) => Ok(vc),
        _ => Err(err(
            res,
            at,
            format!("secret '{}' is not a validation_context", secret.name),
        )),
    }
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

mod certs;
mod params;
mod secret;

use certs::validation_context;

use params::{tls_params, Params};
pub use secret::check_secret;
use secret::secret;

/// What is wrong with a configured certificate, in words: rustls (webpki) reads only X.509
/// version 3 certificates, where BoringSSL also takes version 1.
fn cert_error(e: &rustls::Error) -> String {
    if format!("{e:?}").contains("UnsupportedCertVersion") {
        "X.509 version 1 certificates are not supported (version 3 only)".into()
    } else {
        e.to_string()
    }
}
