//! `envoy.filters.http.jwt_authn`, compiled: providers, the requirements that name them,
//! and the rules that pick a requirement for a request. Evaluated in `http::filter::jwt`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::matcher::{HeaderMatch, PathMatch, QueryMatch, StringMatcher};
use crate::jwt::jwks::Jwks;
use crate::jwt::remote::RemoteJwks;
use crate::stats::Scope;

/// A connection manager's `jwt_authn` filter.
pub struct JwtAuthn {
    /// By name, in name order (`providers` is a map).
    pub providers: Vec<Arc<Provider>>,
    /// `rules`, in order: the first that matches decides.
    pub rules: Vec<Rule>,
    pub requirement_map: HashMap<Box<str>, Arc<Requirement>>,
    /// The names of `requirement_map`, sorted and joined with ',' (Envoy's error text).
    pub requirement_names: Box<str>,
    pub bypass_cors_preflight: bool,
    pub strip_failure_response: bool,
    /// `http.<prefix>.jwt_authn.<stat_prefix>`.
    pub stats: Arc<Scope>,
}

/// A `RequirementRule`: a route-style match and what it requires (`None`: nothing).
pub struct Rule {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub requires: Option<Arc<Requirement>>,
}

/// A `JwtRequirement`.
pub enum Requirement {
    /// `provider_name` / `provider_and_audiences` (`Some`: audiences that replace the
    /// provider's).
    Provider(usize, Option<Vec<String>>),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// As a whole requirement: every provider's tokens are checked; no token passes.
    AllowMissing,
    /// As a whole requirement: every provider's tokens are checked; nothing fails.
    AllowMissingOrFailed,
    /// A requirement with no type: passes.
    Empty,
}

/// Where a provider looks for tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    /// A header (lower case) and the prefix the token follows (may be empty).
    Header(Box<str>, Box<str>),
    Param(Box<str>),
    Cookie(Box<str>),
}

/// A `JwtProvider`.
pub struct Provider {
    pub name: Box<str>,
    /// Empty: any issuer (and a token without one).
    pub issuer: Box<str>,
    /// Normalised (`normalize_audience`); empty: any audience.
    pub audiences: Vec<String>,
    pub subjects: Option<StringMatcher>,
    /// `require_expiration` / `max_lifetime`: the longest a token may still be valid for
    /// (`Some(Duration::MAX)`: only an expiry is required).
    pub max_lifetime: Option<Duration>,
    pub jwks: JwksSource,
    pub forward: bool,
    /// `from_headers`, `from_params`, `from_cookies` (Envoy's defaults when all are empty).
    pub locations: Vec<Location>,
    pub forward_payload_header: Option<Box<str>>,
    pub pad_forward_payload_header: bool,
    pub payload_in_metadata: Option<Box<str>>,
    pub header_in_metadata: Option<Box<str>>,
    pub failed_status_in_metadata: Option<Box<str>>,
    /// `normalize_payload_in_metadata.space_delimited_claims`.
    pub space_delimited_claims: Vec<String>,
    /// Seconds of clock skew allowed (60 when unset or 0).
    pub clock_skew: u64,
    /// `claim_to_headers`: (header, lower case; claim name).
    pub claim_to_headers: Vec<(Box<str>, Box<str>)>,
    pub clear_route_cache: bool,
}

/// Where a provider's keys come from.
pub enum JwksSource {
    Local(Arc<Jwks>),
    Remote(Arc<RemoteJwks>),
}

impl Provider {
    /// Whether `iss` is this provider's (an empty issuer takes any).
    pub fn takes_issuer(&self, iss: Option<&str>) -> bool {
        self.issuer.is_empty() || iss == Some(&*self.issuer)
    }
}

/// `PerRouteConfig`.
pub enum JwtPerRoute {
    Disabled,
    RequirementName(Box<str>),
}

/// Envoy's default token locations: `Authorization: Bearer <token>` and `access_token`.
pub fn default_locations() -> Vec<Location> {
    vec![
        Location::Header("authorization".into(), "Bearer ".into()),
        Location::Param("access_token".into()),
    ]
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<JwtAuthn>();
}
