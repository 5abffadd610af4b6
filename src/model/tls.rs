//! TLS as the snapshot holds it: validated rustls configurations, built once per
//! configuration change (a bad key, chain or CA is a conversion error, so it NACKs), and
//! the peer-certificate checks Envoy's `CertificateValidationContext` asks for beyond the
//! chain: subject alternative name matchers (SPIFFE URIs in a mesh).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::route::StringMatcher;

/// A certificate as the admin's `/certs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDetails {
    /// The file it came from, or `<inline>` (inline data, SDS).
    pub path: Arc<str>,
    /// Lower-case hex, no leading zero bytes.
    pub serial: String,
    pub sans: Vec<(SanType, String)>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// A TLS context's certificates for `/certs`: its trusted CA (the first of the bundle) and
/// its own certificate (the leaf), as Envoy lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsCerts {
    pub ca: Option<CertDetails>,
    pub chain: Option<CertDetails>,
}

impl TlsCerts {
    /// The URI SANs of the context's own certificate, in order.
    pub fn uri_sans(&self) -> impl Iterator<Item = &str> {
        self.chain
            .iter()
            .flat_map(|c| &c.sans)
            .filter(|(t, _)| *t == SanType::Uri)
            .map(|(_, n)| n.as_str())
    }
}

/// A filter chain's `DownstreamTlsContext`, ready for handshakes.
pub struct DownstreamTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `transport_socket_connect_timeout`: the handshake must finish within this.
    pub handshake_timeout: Duration,
    /// `require_sni`: a client that names no server is refused.
    pub require_sni: bool,
    /// Sessions each core's cache keeps for stateful resumption (0: disabled).
    pub session_cache: usize,
    /// The URI SANs of the listener's own certificate (`By` in x-forwarded-client-cert).
    pub local_uri_sans: Vec<String>,
    pub certs: TlsCerts,
}

/// Which subject alternative names a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    Dns,
    Uri,
    Email,
    IpAddress,
}

/// One of `match_typed_subject_alt_names` (or the untyped `match_subject_alt_names`, which
/// Envoy applies to DNS, URI, email and IP names alike).
pub struct SanMatcher {
    pub types: &'static [SanType],
    pub matcher: StringMatcher,
}

impl fmt::Debug for SanMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SanMatcher")
            .field("types", &self.types)
            .finish_non_exhaustive()
    }
}

/// The subject alternative names of a DER certificate as (type, text); IP addresses in
/// their usual text form. `None` when the certificate cannot be parsed.
pub fn subject_alt_names(der: &[u8]) -> Option<Vec<(SanType, String)>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut out = Vec::new();
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Some(out);
    };
    for name in &ext.value.general_names {
        match name {
            GeneralName::DNSName(s) => out.push((SanType::Dns, s.to_string())),
            GeneralName::URI(s) => out.push((SanType::Uri, s.to_string())),
            GeneralName::RFC822Name(s) => out.push((SanType::Email, s.to_string())),
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?),
                    _ => continue,
                };
                out.push((SanType::IpAddress, ip.to_string()));
            }
            _ => {}
        }
    }
    Some(out)
}

/// Whether a certificate satisfies the matchers: any one matcher matching any name of
/// its types is enough (Envoy's rule); no matchers accept every certificate.
pub fn sans_match(der: &[u8], matchers: &[SanMatcher]) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Some(names) = subject_alt_names(der) else {
        return false;
    };
    matchers.iter().any(|m| {
        names
            .iter()
            .any(|(t, n)| m.types.contains(t) && m.matcher.matches(n.as_bytes()))
    })
}

/// Checks client certificates as Envoy does: the chain against the trusted CA (webpki),
/// then the subject alternative names. A SAN mismatch fails the handshake with
/// `ApplicationVerificationFailure`, so the listener can count it apart
/// (`ssl.fail_verify_san`).
pub struct ClientVerifier {
    pub chain: Arc<dyn ClientCertVerifier>,
    pub sans: Arc<[SanMatcher]>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.chain.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.chain.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if !sans_match(end_entity, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// A cluster's (or one `transport_socket_matches` entry's) `UpstreamTlsContext`, ready
/// for handshakes.
pub struct UpstreamTls {
    /// For HTTP/1.1 and opaque TCP connections.
    pub h1: Arc<rustls::ClientConfig>,
    /// For HTTP/2 connections: the same, with ALPN `h2` when the context names none.
    pub h2: Arc<rustls::ClientConfig>,
    /// `sni` (Istio's `outbound_.PORT_.SUBSET_.HOST`); `None`: no SNI, unless
    /// `auto_host_sni` names the endpoint's host.
    pub sni: Option<rustls::pki_types::ServerName<'static>>,
    /// `auto_host_sni`: the endpoint's hostname is the SNI.
    pub auto_host_sni: bool,
    /// The identity pools are keyed by: a hash of the context and the secrets it uses, so
    /// that the same TLS settings in a new snapshot keep their warm connections, and
    /// different ones never share a connection. Never 0 (plaintext's key).
    pub key: u64,
    /// `Some(name)` while an SDS secret it needs has not arrived: every handshake fails
    /// (the cluster is kept warming meanwhile, so this is a safety net, not a path).
    pub missing_secret: Option<Arc<str>>,
    /// The client certificate's first URI SAN (Istio's `source_principal`).
    pub local_uri_san: Option<Arc<str>>,
    pub certs: TlsCerts,
}

/// Both ends' identities on an upstream TLS connection (first URI SANs), as `istio.stats`
/// reports them on the client's side.
#[derive(Debug, Default)]
pub struct UpstreamPrincipals {
    pub peer: Box<str>,
    pub local: Box<str>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The server name the handshake sends: `sni`, the endpoint's host (`auto_host_sni`),
    /// else its address (rustls sends no SNI for an address).
    pub fn server_name(
        &self,
        hostname: &str,
        addr: std::net::IpAddr,
    ) -> rustls::pki_types::ServerName<'static> {
        if let Some(s) = &self.sni {
            return s.clone();
        }
        if self.auto_host_sni {
            let host = hostname.rsplit_once(':').map_or(hostname, |(h, _)| h);
            if let Ok(n) = rustls::pki_types::ServerName::try_from(host.to_string()) {
                return n;
            }
        }
        rustls::pki_types::ServerName::IpAddress(addr.into())
    }
}

/// `transport_socket_matches`: the first entry whose labels all appear in an endpoint's
/// `envoy.transport_socket_match` metadata picks its transport socket (`None`: plaintext).
#[derive(Debug)]
pub struct TlsMatch {
    pub name: Arc<str>,
    pub labels: Vec<super::Label>,
    pub tls: Option<Arc<UpstreamTls>>,
    /// Inside `internal_upstream`: what an internal endpoint's connection is handed.
    pub passthrough: Option<Arc<super::internal::Passthrough>>,
}

impl TlsMatch {
    pub fn matches(&self, labels: &[super::Label]) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }
}

/// Checks server certificates as Envoy does for an `UpstreamTlsContext` with a validation
/// context: the chain against the trusted CA and the subject alternative name matchers.
/// The server name is not compared with the certificate (Envoy does not either: Istio's
/// SNI `outbound_.9080_._.reviews...` names a cluster, the SAN is a SPIFFE identity); the
/// SAN matchers are the identity check. A SAN mismatch fails with
/// `ApplicationVerificationFailure`, counted apart as `ssl.fail_verify_san`.
///
/// Without a validation context (`roots: None`) this is Envoy's behaviour too: the
/// connection is encrypted but the server's certificate is not checked (its signature over
/// the handshake still is). Only reached when the configuration asks for exactly that.
pub struct ServerVerifier {
    pub roots: Option<Arc<rustls::RootCertStore>>,
    pub sans: Arc<[SanMatcher]>,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

impl rustls::client::danger::ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !sans_match(end_entity, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
