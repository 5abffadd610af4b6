//! Role-based access control (`envoy.config.rbac.v3`), compiled: the engines of
//! `envoy.filters.http.rbac` and `envoy.filters.network.rbac` (evaluated by the top-level
//! `rbac` module).

use std::sync::Arc;

pub use super::cidr::Cidr;
use super::matcher::{HeaderMatch, StringMatcher};
use crate::stats::Scope;

/// One `RBAC` message: an action and its policies, in name order (the first that matches
/// is the effective policy, as Envoy's ordered map has it).
pub struct Engine {
    pub action: Action,
    pub policies: Box<[(Box<str>, Policy)]>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// A policy matches when one of its permissions and one of its principals match.
pub struct Policy {
    pub permissions: Box<[Permission]>,
    pub principals: Box<[Principal]>,
}

pub enum Permission {
    Any,
    And(Box<[Permission]>),
    Or(Box<[Permission]>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    /// `url_path`: the path without query or fragment, after normalisation.
    UrlPath(StringMatcher),
    DestinationIp(Cidr),
    DestinationPort(u32),
    /// `[start, end)`.
    DestinationPortRange(i64, i64),
    Metadata(MetadataMatcher),
    RequestedServerName(StringMatcher),
}

pub enum Principal {
    Any,
    And(Box<[Principal]>),
    Or(Box<[Principal]>),
    Not(Box<Principal>),
    /// A TLS connection (with `Some`, whose peer certificate's URI SANs, DNS SANs or
    /// subject match).
    Authenticated(Option<StringMatcher>),
    /// `source_ip` and `direct_remote_ip`: the connection's peer.
    DirectRemoteIp(Cidr),
    /// `remote_ip`: the client as `x-forwarded-for` and the trust settings make it.
    RemoteIp(Cidr),
    Header(HeaderMatch),
    UrlPath(StringMatcher),
    Metadata(MetadataMatcher),
    /// `filter_state` with a string matcher.
    FilterState(Box<str>, StringMatcher),
}

/// `envoy.type.matcher.v3.MetadataMatcher`: a value in the request's dynamic metadata.
pub struct MetadataMatcher {
    pub filter: Box<str>,
    pub path: Box<[Box<str>]>,
    pub value: ValueMatcher,
    pub invert: bool,
}

pub enum ValueMatcher {
    Null,
    Double(DoubleMatch),
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    /// A list value with an element matching.
    List(Box<ValueMatcher>),
    Or(Box<[ValueMatcher]>),
}

pub enum DoubleMatch {
    /// `[start, end)`.
    Range(f64, f64),
    Exact(f64),
}

/// An `envoy.filters.http.rbac` or `envoy.filters.network.rbac` filter.
pub struct RbacFilter {
    /// `rules` (absent: nothing enforced).
    pub rules: Option<Arc<Engine>>,
    pub shadow: Option<Arc<Engine>>,
    /// `<prefix>rbac.<rules_stat_prefix>{allowed,denied}` and
    /// `<prefix>rbac.<shadow_rules_stat_prefix>{shadow_allowed,shadow_denied}`.
    pub stats: Arc<Scope>,
    pub shadow_stats: Arc<Scope>,
    /// `shadow_rules_stat_prefix`: it also prefixes the dynamic metadata the shadow
    /// verdict is written to (`<prefix>shadow_engine_result`,
    /// `<prefix>shadow_effective_policy_id`).
    pub shadow_prefix: Box<str>,
    /// `rules_stat_prefix`: it prefixes the enforced verdict's dynamic metadata
    /// (`<prefix>enforced_engine_result`, `<prefix>enforced_effective_policy_id`).
    pub rules_prefix: Box<str>,
    /// The network filter: evaluated once (on the connection) or on every read; the same
    /// verdict either way, as nothing it reads changes.
    pub continuous: bool,
}

/// A route's `RBACPerRoute`: its own rules replace the filter's (absent: none enforced).
pub struct RbacPerRoute {
    pub rules: Option<Arc<Engine>>,
    pub shadow: Option<Arc<Engine>>,
}
