//! Compiled route tables: virtual hosts, matchers and actions. Matching lives in `router`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::headers::HeaderMods;

/// A compiled `RouteConfiguration`.
pub struct RouteTable {
    pub name: Arc<str>,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Exact domain (lower-case, no port) → virtual host index.
    pub exact: HashMap<String, usize>,
    /// `*.suffix` / `*suffix` wildcards, longest first: (suffix, vhost).
    pub suffixes: Vec<(String, usize)>,
    /// `prefix*` wildcards, longest first.
    pub prefixes: Vec<(String, usize)>,
    /// The `*` virtual host.
    pub default: Option<usize>,
    pub headers: HeaderMods,
    pub response_headers: HeaderMods,
}

/// How a virtual host treats plaintext requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRequirement {
    None,
    ExternalOnly,
    All,
}

/// A compiled virtual host.
pub struct VirtualHost {
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    pub require_tls: TlsRequirement,
    pub headers: HeaderMods,
    pub response_headers: HeaderMods,
}

/// A compiled route.
pub struct Route {
    pub name: Arc<str>,
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub action: Action,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
}

/// How a route matches the path (query string excluded).
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `path_separated_prefix`: the prefix, then end of path or `/`.
    Separated(String),
    Regex(Regex),
}

/// A string matcher (Envoy's `StringMatcher`).
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A compiled `StringMatcher` with its case rule.
pub struct StringMatcher {
    pub pattern: StringMatch,
    pub ignore_case: bool,
}

/// A header condition.
pub struct HeaderMatch {
    /// Lower-cased; `:method`, `:path`, `:authority`, `:scheme` for pseudo-headers.
    pub name: String,
    pub kind: HeaderMatchKind,
    pub invert: bool,
    pub treat_missing_as_empty: bool,
}

/// What a header must look like.
pub enum HeaderMatchKind {
    Present(bool),
    String(StringMatcher),
}

/// A query parameter condition.
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatcher>,
}

/// What a matched route does.
pub enum Action {
    Forward(Arc<Forward>),
    Redirect(Redirect),
    Direct(DirectResponse),
}

/// A cluster this route may send to; `index` points into `Snapshot::clusters`.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    pub name: Arc<str>,
    pub index: Option<usize>,
}

/// One entry of `weighted_clusters`.
pub struct WeightedTarget {
    pub cluster: ClusterRef,
    pub weight: u32,
    pub request_headers: HeaderMods,
    pub response_headers: HeaderMods,
    pub host_rewrite: Option<Arc<str>>,
}

/// Which cluster(s) a forwarding route uses.
pub enum Target {
    Cluster(ClusterRef),
    Weighted {
        targets: Vec<WeightedTarget>,
        total: u32,
    },
}

/// How the Host header is rewritten.
pub enum HostRewrite {
    None,
    Literal(Arc<str>),
    /// The upstream host's hostname.
    Auto,
}

/// `route:` action.
pub struct Forward {
    pub target: Target,
    pub cluster_not_found_status: u16,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    /// `None`: no route timeout.
    pub timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
}

/// `redirect:` action.
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: RedirectPath,
    pub status: u16,
    pub strip_query: bool,
}

/// How a redirect rewrites the path.
pub enum RedirectPath {
    Keep,
    Replace(String),
    Prefix(String),
    Regex(Regex, String),
}

/// `direct_response:` action.
pub struct DirectResponse {
    pub status: u16,
    pub body: bytes::Bytes,
}
