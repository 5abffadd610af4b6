//! `x-forwarded-client-cert` per request: whether the client's header is removed, kept,
//! appended to or replaced (the element itself is built per connection in `peer_cert`).

use crate::model::xfcc::ForwardClientCert;
pub use crate::peer_cert::ClientCert;

/// What happens to the request's `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Remove,
    Keep,
    /// Keep the client's value and add this element after a comma.
    Append(&'a str),
    /// Replace the client's value with this element.
    Set(&'a str),
}

/// Envoy's rule: always forwarded with `ALWAYS_FORWARD_ONLY`; removed with `SANITIZE` or
/// without mutual TLS; otherwise kept, appended to or replaced.
pub fn action(mode: ForwardClientCert, cert: Option<&ClientCert>) -> Action<'_> {
    use ForwardClientCert as F;
    match (mode, cert) {
        (F::AlwaysForwardOnly, _) => Action::Keep,
        (F::Sanitize, _) | (_, None) => Action::Remove,
        (F::ForwardOnly, Some(_)) => Action::Keep,
        (F::AppendForward, Some(c)) => Action::Append(c.element.as_deref().unwrap_or("")),
        (F::SanitizeSet, Some(c)) => Action::Set(c.element.as_deref().unwrap_or("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_header_is_removed_unless_mutual_tls_and_a_forwarding_mode() {
        use ForwardClientCert as F;
        let c = ClientCert {
            element: Some("By=x".into()),
        };
        assert_eq!(action(F::Sanitize, Some(&c)), Action::Remove);
        assert_eq!(action(F::ForwardOnly, None), Action::Remove);
        assert_eq!(action(F::AppendForward, None), Action::Remove);
        assert_eq!(action(F::AlwaysForwardOnly, None), Action::Keep);
        assert_eq!(action(F::ForwardOnly, Some(&c)), Action::Keep);
        assert_eq!(action(F::AppendForward, Some(&c)), Action::Append("By=x"));
        assert_eq!(action(F::SanitizeSet, Some(&c)), Action::Set("By=x"));
    }
}
