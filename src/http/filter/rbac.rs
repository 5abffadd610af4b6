//! `envoy.filters.http.rbac`: the shadow engine is evaluated and counted, then the
//! enforced one; a denied request is answered 403 `RBAC: access denied`, its response code
//! details naming the policy that decided (`rbac_access_denied_matched_policy[...]`), as
//! Envoy 1.40 does. A route's `RBACPerRoute` replaces the filter's engines.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use super::FilterHost;
use crate::http::error::HttpError;
use crate::http::h1::header_value;
use crate::model::filter::PerRoute;
use crate::model::matcher::HeaderMatch;
use crate::model::rbac::RbacFilter;
use crate::rbac::{evaluate, missing_header, Input, PeerIdentity};
use crate::router::RequestView;
use crate::stats::{RbacShadowStat, RbacStat};

// Out of line: `decode_headers`, inlined on every request, stays small.
#[inline(never)]
pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    f: &RbacFilter,
    per: Option<&PerRoute>,
) -> Result<(), HttpError> {
    let (rules, shadow) = match per {
        Some(PerRoute::Rbac(p)) => (p.rules.as_deref(), p.shadow.as_deref()),
        _ => (f.rules.as_deref(), f.shadow.as_deref()),
    };
    let core = x.core();
    let input = Request(x);
    let mut shadow_verdict = None;
    if let Some(e) = shadow {
        let v = evaluate(e, &input);
        f.shadow_stats.core(core).inc(if v.allowed {
            RbacShadowStat::ShadowAllowed
        } else {
            RbacShadowStat::ShadowDenied
        } as usize);
        shadow_verdict = Some((v.allowed, v.policy));
    }
    let verdict = rules.map(|e| evaluate(e, &input));
    if let Some((allowed, policy)) = shadow_verdict {
        // The shadow verdict in dynamic metadata, where ext_authz's
        // `filter_enabled_metadata` (Istio's CUSTOM action) and access logs read it.
        let mut m = serde_json::Map::new();
        let result = if allowed { "allowed" } else { "denied" };
        m.insert(
            format!("{}shadow_engine_result", f.shadow_prefix),
            result.into(),
        );
        if let Some(p) = policy {
            m.insert(
                format!("{}shadow_effective_policy_id", f.shadow_prefix),
                p.into(),
            );
        }
        super::set_metadata(x, "envoy.filters.http.rbac", m);
    }
    let Some(v) = verdict else { return Ok(()) };
    {
        // The enforced verdict in dynamic metadata too, as Envoy 1.40 writes it.
        let mut m = serde_json::Map::new();
        let result = if v.allowed { "allowed" } else { "denied" };
        m.insert(
            format!("{}enforced_engine_result", f.rules_prefix),
            result.into(),
        );
        if let Some(p) = v.policy {
            m.insert(
                format!("{}enforced_effective_policy_id", f.rules_prefix),
                p.into(),
            );
        }
        super::set_metadata(x, "envoy.filters.http.rbac", m);
    }
    let c = f.stats.core(core);
    if v.allowed {
        c.inc(RbacStat::Allowed as usize);
        return Ok(());
    }
    c.inc(RbacStat::Denied as usize);
    // Whitespace in the policy name would break the access log's fields.
    let policy = v.policy.unwrap_or("none").replace(char::is_whitespace, "_");
    Err(HttpError::RbacDenied(policy.into()))
}

/// A request as RBAC reads it: the path and authority the router matched (normalised,
/// from an absolute URL when the client sent one), and headers as Envoy's connection
/// manager has them before any filter runs (what it strips from external requests, and a
/// sanitised `x-forwarded-client-cert`, are not there).
pub(super) struct Request<'a, E>(pub &'a E);

impl<E: FilterHost> Request<'_, E> {
    fn connect(&self) -> bool {
        self.0.bytes(&self.0.head().method) == b"CONNECT"
    }

    /// A header an earlier filter added (jwt_authn's claims and payload).
    fn added(&self, name: &str) -> Option<&(Box<str>, Vec<u8>)> {
        self.0
            .filter_state()
            .added_headers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Whether the connection manager removed the client's header `name` before the
    /// filters.
    fn removed(&self, name: &[u8]) -> bool {
        let x = self.0;
        (!x.internal()
            && crate::http::trust::stripped_from_external(name, x.hcm().use_remote_address))
            || (name.eq_ignore_ascii_case(b"x-forwarded-client-cert")
                && matches!(
                    crate::http::xfcc::action(x.hcm().xfcc.0, x.client_cert()),
                    crate::http::xfcc::Action::Remove | crate::http::xfcc::Action::Set(_)
                ))
    }
}

impl<E: FilterHost> RequestView for Request<'_, E> {
    fn method(&self) -> &[u8] {
        self.0.bytes(&self.0.head().method)
    }
    fn path(&self) -> &[u8] {
        self.0.bytes(&self.0.log().path)
    }
    fn authority(&self) -> &[u8] {
        self.0.bytes(&self.0.log().authority)
    }
    fn scheme(&self) -> &[u8] {
        crate::http::exchange::forwarded_proto(self.0)
    }
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        if let Some((_, v)) = self.added(name) {
            return Some(Cow::Borrowed(&v[..]));
        }
        if self.removed(name.as_bytes()) {
            return None;
        }
        header_value(self.0.buf(), &self.0.head().headers, name.as_bytes())
    }
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        if let Some((_, v)) = self.added(name) {
            return Some(f(v));
        }
        if self.removed(name.as_bytes()) {
            return None;
        }
        crate::router::any_header_value(self.0.buf(), &self.0.head().headers, name.as_bytes(), f)
    }
}

impl<E: FilterHost> Input for Request<'_, E> {
    fn header(&self, h: &HeaderMatch) -> bool {
        // A CONNECT request has no `:path`.
        if h.name == ":path" && self.connect() {
            return missing_header(h);
        }
        crate::router::header_matches(h, self)
    }
    fn url_path(&self) -> Option<&[u8]> {
        if self.connect() {
            return None;
        }
        let path = RequestView::path(self);
        let end = path
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(path.len());
        Some(&path[..end])
    }
    fn local(&self) -> SocketAddr {
        self.0.local()
    }
    fn direct_remote(&self) -> IpAddr {
        self.0.peer().ip()
    }
    fn remote(&self) -> IpAddr {
        crate::http::trust::downstream_remote(
            self.0.hcm(),
            self.0.peer().ip(),
            self.0.buf(),
            &self.0.head().headers,
        )
    }
    fn sni(&self) -> &str {
        self.0.authn().map_or("", |a| &a.sni)
    }
    fn tls(&self) -> bool {
        self.0.downstream_tls()
    }
    fn peer(&self) -> Option<&PeerIdentity> {
        self.0.authn()?.peer.as_ref()
    }
    fn filter_state(&self, key: &str) -> Option<&str> {
        self.0.filter_object(key).map(|f| f.value)
    }
    fn metadata(&self, filter: &str) -> Option<&serde_json::Value> {
        self.0.filter_state().metadata.as_ref()?.get(filter)
    }
}
