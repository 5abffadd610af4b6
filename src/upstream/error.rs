//! Why an upstream connection could not be had, in Envoy's words.

use std::io;

/// Why no upstream connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Envoy's wording; the OS error is logged at debug level.
    #[error("remote connection failure")]
    Failed(io::Error),
    #[error("connection timeout")]
    Timeout,
    /// The TLS handshake failed (Envoy's wording for a transport failure).
    #[error("TLS error: handshake failed")]
    Tls(crate::tls::Refused),
    /// The cluster's circuit breakers allow no new connection (and no pending request).
    #[error("overflow")]
    Overflow,
}

/// Envoy's upstream transport failure reason for `e`, as its access log prints it (spaces
/// made underscores): `delayed_connect_error:_Connection_refused`, or BoringSSL's words for
/// a certificate that did not verify.
pub fn transport_failure(e: &ConnectError) -> Option<String> {
    let why = match e {
        ConnectError::Failed(io) => {
            let text = io.to_string();
            // std's "Connection refused (os error 111)": the OS's words alone.
            let text = match text.rfind(" (os error ") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            format!("delayed connect error: {text}")
        }
        ConnectError::Tls(crate::tls::Refused::Untrusted | crate::tls::Refused::SanMismatch) => {
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end".into()
        }
        ConnectError::Tls(crate::tls::Refused::Timeout) | ConnectError::Timeout => return None,
        ConnectError::Tls(r) => format!("TLS_error: handshake failed ({r:?})"),
        ConnectError::Overflow => return None,
    };
    Some(why.replace(' ', "_"))
}
