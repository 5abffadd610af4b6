//! Evaluates RBAC engines (`model::rbac`) as Envoy's RBAC filters do, for a request (the
//! HTTP filter) or a connection (the network filter): a policy matches when one of its
//! permissions and one of its principals do; an ALLOW engine allows what some policy
//! matches, a DENY engine what none does, a LOG engine everything. The effective policy is
//! the first matching one in name order.

use std::net::{IpAddr, SocketAddr};

use crate::model::matcher::{HeaderMatch, HeaderMatchKind};
use crate::model::rbac::*;

/// The identity a TLS peer presented, as RBAC's `authenticated` reads it.
#[derive(Debug, Default, Clone)]
pub struct PeerIdentity {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// RFC 2253, as Envoy prints it.
    pub subject: String,
}

impl PeerIdentity {
    /// The leaf certificate's SANs and subject (`None` when it does not parse).
    pub fn of(leaf: &[u8]) -> Option<PeerIdentity> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let mut id = PeerIdentity {
            subject: crate::peer_cert::rfc2253(cert.subject()),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => id.uri_sans.push(u.to_string()),
                    GeneralName::DNSName(d) => id.dns_sans.push(d.to_string()),
                    _ => {}
                }
            }
        }
        Some(id)
    }

    /// Istio's principal (`istio_authn`): the first URI SAN with the SPIFFE scheme.
    pub fn spiffe(&self) -> Option<&str> {
        self.uri_sans
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .map(String::as_str)
    }
}

/// What a TLS connection tells RBAC and `istio_authn` (read only on chains that use them).
#[derive(Debug, Default)]
pub struct Authn {
    /// The SNI the client sent (empty: none).
    pub sni: Box<str>,
    /// The peer certificate's identity, when one was presented.
    pub peer: Option<PeerIdentity>,
    /// This side's SPIFFE identity (`io.istio.local_principal`).
    pub local_principal: Option<Box<str>>,
}

impl Authn {
    /// The peer's and this side's principals as `istio.stats` reads them: `istio_authn`'s
    /// filter state, else the certificates' first URI SANs (empty where none).
    pub fn istio_principals(&self, istio_authn: bool) -> (&str, &str) {
        let peer = self.filter_state("io.istio.peer_principal", istio_authn);
        let local = self.filter_state("io.istio.local_principal", istio_authn);
        if peer.is_none() && local.is_none() {
            let peer = self.peer.as_ref().and_then(|p| p.uri_sans.first());
            return (
                peer.map_or("", |s| s.as_str()),
                self.local_principal.as_deref().unwrap_or(""),
            );
        }
        (peer.unwrap_or(""), local.unwrap_or(""))
    }

    /// A filter state object `istio_authn` sets, by key: Istio's principals hash (its
    /// `Principal` objects are `Hashable`).
    pub fn filter_object(
        &self,
        key: &str,
        istio_authn: bool,
    ) -> Option<crate::model::filter_state::Found<'_>> {
        self.filter_state(key, istio_authn)
            .map(|value| crate::model::filter_state::Found {
                value,
                hashable: true,
            })
    }

    /// Filter state as `istio_authn` sets it (only on chains where it runs), by key.
    pub fn filter_state(&self, key: &str, istio_authn: bool) -> Option<&str> {
        if !istio_authn || self.peer.is_none() {
            return None;
        }
        match key {
            "io.istio.peer_principal" => self.peer.as_ref()?.spiffe(),
            "io.istio.local_principal" => self.local_principal.as_deref(),
            _ => None,
        }
    }
}

/// What an engine reads: a request (headers, path) or only a connection.
pub trait Input {
    /// A header matcher on the request (a connection has no headers).
    fn header(&self, h: &HeaderMatch) -> bool {
        missing_header(h)
    }
    /// The path without query or fragment, normalised (a connection has none).
    fn url_path(&self) -> Option<&[u8]> {
        None
    }
    /// The connection's local address (the original destination when restored).
    fn local(&self) -> SocketAddr;
    /// The connection's peer.
    fn direct_remote(&self) -> IpAddr;
    /// The client as the trust settings make it (`x-forwarded-for`); the peer otherwise.
    fn remote(&self) -> IpAddr {
        self.direct_remote()
    }
    /// The SNI the client sent (empty: none).
    fn sni(&self) -> &str;
    /// Whether the connection is TLS.
    fn tls(&self) -> bool;
    /// The peer certificate's identity, if one was presented.
    fn peer(&self) -> Option<&PeerIdentity>;
    /// A filter state object's string form (`io.istio.peer_principal`, ...).
    fn filter_state(&self, key: &str) -> Option<&str>;
    /// The dynamic metadata of namespace `filter` (what jwt_authn wrote), if any.
    fn metadata(&self, _filter: &str) -> Option<&serde_json::Value> {
        None
    }
}

/// A header matcher against a header that is not there (Envoy's network filter evaluates
/// header rules on an empty header map).
pub fn missing_header(h: &HeaderMatch) -> bool {
    match &h.kind {
        // A missing header treated as empty is present.
        HeaderMatchKind::Present(want) => (h.treat_missing_as_empty == *want) != h.invert,
        HeaderMatchKind::String(m) if h.treat_missing_as_empty => m.matches(b"") != h.invert,
        HeaderMatchKind::String(_) => false,
    }
}

/// An engine's verdict: allowed or not, and the policy that decided (for the log).
pub struct Verdict<'e> {
    pub allowed: bool,
    pub policy: Option<&'e str>,
}

pub fn evaluate<'e, I: Input + ?Sized>(e: &'e Engine, input: &I) -> Verdict<'e> {
    let matched = e
        .policies
        .iter()
        .find(|(_, p)| {
            p.permissions.iter().any(|x| permission(x, input))
                && p.principals.iter().any(|x| principal(x, input))
        })
        .map(|(name, _)| &**name);
    Verdict {
        allowed: match e.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
            Action::Log => true,
        },
        policy: matched,
    }
}

fn permission<I: Input + ?Sized>(p: &Permission, input: &I) -> bool {
    match p {
        Permission::Any => true,
        Permission::And(rules) => rules.iter().all(|r| permission(r, input)),
        Permission::Or(rules) => rules.iter().any(|r| permission(r, input)),
        Permission::Not(r) => !permission(r, input),
        Permission::Header(h) => input.header(h),
        Permission::UrlPath(m) => input.url_path().is_some_and(|p| m.matches(p)),
        Permission::DestinationIp(c) => c.contains(input.local().ip()),
        Permission::DestinationPort(port) => u32::from(input.local().port()) == *port,
        Permission::DestinationPortRange(start, end) => {
            let port = i64::from(input.local().port());
            *start <= port && port < *end
        }
        Permission::Metadata(m) => metadata(m, input),
        Permission::RequestedServerName(m) => m.matches(input.sni().as_bytes()),
    }
}

fn principal<I: Input + ?Sized>(p: &Principal, input: &I) -> bool {
    match p {
        Principal::Any => true,
        Principal::And(ids) => ids.iter().all(|r| principal(r, input)),
        Principal::Or(ids) => ids.iter().any(|r| principal(r, input)),
        Principal::Not(r) => !principal(r, input),
        Principal::Authenticated(m) => {
            if !input.tls() {
                return false;
            }
            let Some(m) = m else { return true };
            match input.peer() {
                // URI SANs, then DNS SANs, then the subject.
                Some(id) => {
                    id.uri_sans.iter().any(|u| m.matches(u.as_bytes()))
                        || id.dns_sans.iter().any(|d| m.matches(d.as_bytes()))
                        || m.matches(id.subject.as_bytes())
                }
                None => m.matches(b""),
            }
        }
        Principal::DirectRemoteIp(c) => c.contains(input.direct_remote()),
        Principal::RemoteIp(c) => c.contains(input.remote()),
        Principal::Header(h) => input.header(h),
        Principal::UrlPath(m) => input.url_path().is_some_and(|p| m.matches(p)),
        Principal::Metadata(m) => metadata(m, input),
        Principal::FilterState(key, m) => input
            .filter_state(key)
            .is_some_and(|v| m.matches(v.as_bytes())),
    }
}

/// A dynamic metadata matcher: the value at `path` in namespace `filter`. An absent
/// value matches no value matcher (not even `present_match: false`, as in Envoy), and
/// `invert` turns the result over.
fn metadata<I: Input + ?Sized>(m: &MetadataMatcher, input: &I) -> bool {
    let mut v = input.metadata(&m.filter);
    for key in m.path.iter() {
        v = v.and_then(|v| v.as_object()).and_then(|o| o.get(&**key));
    }
    v.is_some_and(|v| value_matches(&m.value, v)) != m.invert
}

/// A metadata matcher against a request's dynamic metadata (by namespace), outside RBAC
/// (ext_authz's `filter_enabled_metadata`).
pub fn metadata_matches(
    m: &MetadataMatcher,
    md: Option<&serde_json::Map<String, serde_json::Value>>,
) -> bool {
    let mut v = md.and_then(|md| md.get(&*m.filter));
    for key in m.path.iter() {
        v = v.and_then(|v| v.as_object()).and_then(|o| o.get(&**key));
    }
    v.is_some_and(|v| value_matches(&m.value, v)) != m.invert
}

fn value_matches(m: &ValueMatcher, v: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match m {
        ValueMatcher::Null => v.is_null(),
        ValueMatcher::Double(d) => v.as_f64().is_some_and(|x| match d {
            DoubleMatch::Range(start, end) => *start <= x && x < *end,
            DoubleMatch::Exact(e) => x == *e,
        }),
        ValueMatcher::String(s) => matches!(v, V::String(t) if s.matches(t.as_bytes())),
        ValueMatcher::Bool(b) => v.as_bool() == Some(*b),
        ValueMatcher::Present(b) => *b,
        ValueMatcher::List(inner) => {
            matches!(v, V::Array(list) if list.iter().any(|e| value_matches(inner, e)))
        }
        ValueMatcher::Or(list) => list.iter().any(|x| value_matches(x, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::PeerIdentity;

    #[test]
    fn a_certificate_s_sans_and_subject_or_none() {
        let mut p = rcgen::CertificateParams::new(vec!["svc.local".to_string()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/a/sa/b".try_into().unwrap(),
        ));
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "workload");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let id = PeerIdentity::of(cert.der()).expect("parses");
        assert_eq!(id.uri_sans, ["spiffe://cluster.local/ns/a/sa/b"]);
        assert_eq!(id.dns_sans, ["svc.local"]);
        assert_eq!(id.subject, "CN=workload");
        assert_eq!(id.spiffe(), Some("spiffe://cluster.local/ns/a/sa/b"));
        // What cannot be read gives no identity (the listener then refuses the connection).
        assert!(PeerIdentity::of(b"not a certificate").is_none());
    }
}
