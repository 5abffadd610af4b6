//! The connection manager's `forward_client_cert_details` and
//! `set_current_client_cert_details`: what happens to `x-forwarded-client-cert`.

/// `HttpConnectionManager.ForwardClientCertDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardClientCert {
    /// Remove the header (Envoy's default).
    #[default]
    Sanitize,
    /// Forward it unchanged on mutual TLS connections; remove it otherwise.
    ForwardOnly,
    /// On mutual TLS connections append this hop's client certificate details.
    AppendForward,
    /// On mutual TLS connections replace it with this hop's details.
    SanitizeSet,
    /// Forward it unchanged, whatever the connection.
    AlwaysForwardOnly,
}

impl ForwardClientCert {
    /// Whether this hop writes its own client certificate details.
    pub fn writes_details(self) -> bool {
        matches!(
            self,
            ForwardClientCert::AppendForward | ForwardClientCert::SanitizeSet
        )
    }
}

/// `set_current_client_cert_details`: what this hop's element says besides `By` and
/// `Hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CertDetails {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}
