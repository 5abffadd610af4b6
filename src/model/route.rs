//! Compiled route tables: virtual hosts, matchers and actions. Matching lives in `router`.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

mod domains;
pub use domains::{Domains, ExactDomains};

use super::filter::PerFilterConfigs;
use super::headers::HeaderMods;
pub use super::matcher::{
    HeaderMatch, HeaderMatchKind, PathMatch, QueryMatch, StringMatch, StringMatcher,
};

/// A compiled `RouteConfiguration`.
pub struct RouteTable {
    pub name: Arc<str>,
    /// Shared with the configuration's next version where a virtual host is unchanged.
    pub virtual_hosts: Vec<Arc<VirtualHost>>,
    /// Exact domain (lower-case) → virtual host index.
    pub exact: ExactDomains,
    /// `*.suffix` / `*suffix` wildcards, longest first: (suffix, vhost).
    pub suffixes: Vec<(String, usize)>,
    /// `prefix*` wildcards, longest first.
    pub prefixes: Vec<(String, usize)>,
    /// The `*` virtual host.
    pub default: Option<usize>,
    /// `ignore_port_in_host_matching`: virtual hosts are chosen by the host alone.
    pub ignore_port: bool,
    pub headers: HeaderMods,
    pub response_headers: HeaderMods,
    pub per_filter: PerFilterConfigs,
    /// Whether any level of the table (itself, a virtual host, a route, a weighted
    /// cluster) has a `typed_per_filter_config`: when none does, filters skip the lookup.
    pub any_per_filter: bool,
    /// What it was converted from, when that was an xDS encoding.
    pub source: Option<SourceDigests>,
}

/// Digests of the encoding a route table was converted from: the next version's virtual
/// hosts are compared against them (the encoding itself is held compressed), as Envoy
/// compares a resource's hash to its previous version's before applying it.
#[derive(Debug, Clone, Default)]
pub struct SourceDigests {
    /// Of the fields other than the virtual hosts.
    pub rest: u128,
    /// Of each virtual host's encoding, in order.
    pub hosts: Box<[u128]>,
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
    /// `domains`, lower-case (the table indexes them).
    pub domains: Domains,
    pub routes: Vec<Route>,
    /// Present when there are enough routes for it to pay off (boxed: most virtual hosts
    /// have one route).
    pub index: Option<Box<PathIndex>>,
    pub require_tls: TlsRequirement,
    pub headers: HeaderMods,
    pub response_headers: HeaderMods,
    pub per_filter: PerFilterConfigs,
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
    pub per_filter: PerFilterConfigs,
    /// `decorator`: the span's name, and whether it goes to the next hop
    /// (`x-envoy-decorator-operation`).
    pub decorator: Option<Arc<Decorator>>,
    /// `metadata.filter_metadata`, kept encoded (tracing's `route` custom tags).
    pub metadata: Option<super::metadata::Packed>,
}

/// A route's `decorator`.
#[derive(Debug)]
pub struct Decorator {
    pub operation: Box<str>,
    /// `propagate` (default true).
    pub propagate: bool,
}

/// What a matched route does. Redirects and direct responses are boxed: inline, the
/// largest made every route 112 bytes here, forwarding ones (a pointer) included.
pub enum Action {
    Forward(Arc<Forward>),
    Redirect(Box<Redirect>),
    Direct(Box<DirectResponse>),
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
    pub per_filter: PerFilterConfigs,
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

/// `route:` action. What most routes set is inline; the rest is in [`ForwardMore`], boxed
/// only when a route sets any of it (a sidecar holds a forwarding route per service: 328
/// bytes each with all of it inline, 112 now).
pub struct Forward {
    pub target: Target,
    /// `None`: no route timeout (also when `max_stream_duration` is set: Envoy's "new
    /// timeouts" replace the route timeout with the stream's duration limit).
    pub timeout: Option<Duration>,
    /// `max_grpc_timeout`: a gRPC request's `grpc-timeout` is its route timeout, capped
    /// by this (zero: not capped).
    pub max_grpc_timeout: Option<Duration>,
    /// The route's retry policy, else its virtual host's.
    pub retry: Option<Arc<crate::model::retry::RetryPolicy>>,
    /// `request_mirror_policies`: the route's own, else its virtual host's, else its route
    /// configuration's (Envoy's inheritance); empty: no mirroring.
    pub mirrors: Arc<[Mirror]>,
    pub cluster_not_found_status: u16,
    /// The virtual host's `include_request_attempt_count` and
    /// `include_attempt_count_in_response`: `x-envoy-attempt-count` on the upstream
    /// request and on the response.
    pub attempt_count: (bool, bool),
    /// [`ForwardMore::boxed`]; read through [`Forward::more`].
    pub more: Option<Box<ForwardMore>>,
}

/// A forwarding route's less common settings.
pub struct ForwardMore {
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    pub idle_timeout: Option<Duration>,
    /// `max_stream_duration`: a limit on the whole stream, from its start.
    pub stream_duration: Option<StreamDuration>,
    /// `upgrade_configs`: per-route overrides of the connection manager's upgrades.
    pub upgrades: Vec<RouteUpgrade>,
    /// `grpc_timeout_offset`: taken off the `grpc-timeout` when that leaves some time.
    pub grpc_timeout_offset: Option<Duration>,
    /// `hash_policy`: the request's key for a consistent-hash cluster (ring hash,
    /// Maglev); empty: none (such a cluster then picks at random).
    pub hash_policy: Vec<HashPolicy>,
}

impl ForwardMore {
    /// None of it set.
    pub const NONE: ForwardMore = ForwardMore {
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: HostRewrite::None,
        idle_timeout: None,
        stream_duration: None,
        upgrades: Vec::new(),
        grpc_timeout_offset: None,
        hash_policy: Vec::new(),
    };

    /// Boxed, or `None` when nothing in it is set (most routes).
    pub fn boxed(self) -> Option<Box<ForwardMore>> {
        (!self.is_none()).then(|| Box::new(self))
    }

    fn is_none(&self) -> bool {
        let ForwardMore {
            prefix_rewrite,
            regex_rewrite,
            host_rewrite,
            idle_timeout,
            stream_duration,
            upgrades,
            grpc_timeout_offset,
            hash_policy,
        } = self;
        prefix_rewrite.is_none()
            && regex_rewrite.is_none()
            && matches!(host_rewrite, HostRewrite::None)
            && idle_timeout.is_none()
            && stream_duration.is_none()
            && upgrades.is_empty()
            && grpc_timeout_offset.is_none()
            && hash_policy.is_empty()
    }
}

static NO_MORE: ForwardMore = ForwardMore::NONE;

/// One `RequestMirrorPolicy`: a copy of the request goes to another cluster, fire and
/// forget.
#[derive(Debug)]
pub struct Mirror {
    pub cluster: MirrorCluster,
    /// `runtime_fraction`'s default (100% when unset). Every policy of a request draws
    /// with the same number, as Envoy draws with the stream id.
    pub fraction: super::filter::Fraction,
    /// `trace_sampled`: the mirror's sampling decision; unset, the request's.
    pub trace_sampled: Option<bool>,
    /// `-shadow` is appended to the host (unless `disable_shadow_host_suffix_append`).
    pub suffix: bool,
    /// `host_rewrite_literal`: the mirror's host.
    pub host: Option<Box<str>>,
}

/// Where a mirror goes.
#[derive(Debug)]
pub enum MirrorCluster {
    Named(ClusterRef),
    /// `cluster_header`: the cluster named by this request header (lower case); no mirror
    /// when the request lacks it.
    Header(Box<str>),
}

/// How a hash cookie is made when the request has none (`ttl` set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieGen {
    /// `Max-Age` (0: a session cookie, without one).
    pub ttl_secs: u64,
    pub path: Box<str>,
    /// `attributes`: `name` or `name=value`, in order.
    pub attributes: Box<[(Box<str>, Box<str>)]>,
}

/// A hash key's `regex_rewrite`: the pattern and Envoy's substitution (as the regex
/// crate writes it). Equal when written the same.
#[derive(Debug, Clone)]
pub struct HashRewrite(pub Arc<(Regex, String)>);

impl PartialEq for HashRewrite {
    fn eq(&self, o: &HashRewrite) -> bool {
        self.0 .0.as_str() == o.0 .0.as_str() && self.0 .1 == o.0 .1
    }
}

impl Eq for HashRewrite {}

/// One `RouteAction.hash_policy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
    /// Once a hash is made, the policies after this one are not looked at.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's values (lower-case name; `:authority`, `:path`, `:method` too).
    Header(Box<str>),
    /// As `Header`, each value rewritten first (`regex_rewrite`).
    HeaderRewritten(Box<str>, HashRewrite),
    /// A cookie's value, when the request has it; else, with `generate`, a value the
    /// proxy makes up and sets on the response (Envoy's sticky-session cookie).
    Cookie {
        name: Box<str>,
        generate: Option<Box<CookieGen>>,
    },
    /// The downstream address's IP.
    SourceIp,
    /// A query parameter's first value.
    QueryParameter(Box<str>),
    /// A filter state object's hash, when the object is hashable.
    FilterState(Box<str>),
}

/// One `RouteAction.upgrade_configs` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpgrade {
    /// Lower-cased (`websocket`, `connect`).
    pub kind: Box<str>,
    pub enabled: bool,
    /// CONNECT with `connect_config`: the proxy answers 200 itself and tunnels the bytes
    /// to the upstream over TCP.
    pub terminate_connect: bool,
}

impl Forward {
    /// The less common settings (all unset when the route has none of them).
    #[inline]
    pub fn more(&self) -> &ForwardMore {
        self.more.as_deref().unwrap_or(&NO_MORE)
    }

    /// Whether an upgrade (or CONNECT, as `connect`) is allowed on this route. As in Envoy,
    /// the connection manager must list the type (`hcm`: `None` when it does not, else its
    /// `enabled`); the route's own entry, when it has one, overrides `enabled`.
    pub fn upgrade_allowed(&self, kind: &[u8], hcm: Option<bool>) -> bool {
        let Some(hcm_allows) = hcm else {
            return false;
        };
        match self
            .more()
            .upgrades
            .iter()
            .find(|u| u.kind.as_bytes().eq_ignore_ascii_case(kind))
        {
            Some(u) => u.enabled,
            None => hcm_allows,
        }
    }

    /// Whether this route terminates CONNECT itself.
    pub fn terminates_connect(&self) -> bool {
        self.more()
            .upgrades
            .iter()
            .any(|u| u.enabled && u.terminate_connect)
    }
}

/// `RouteAction.max_stream_duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDuration {
    /// `max_stream_duration`; `None` when unset or 0 (no limit).
    pub max: Option<Duration>,
    /// `grpc_timeout_header_max`: `None` ignores `grpc-timeout`; `Some(ZERO)` honours it
    /// without a cap.
    pub grpc_header_max: Option<Duration>,
    /// `grpc_timeout_header_offset`, taken off a `grpc-timeout`.
    pub grpc_header_offset: Option<Duration>,
}

impl StreamDuration {
    /// How long a stream may last given its `grpc-timeout` header, as Envoy works it out
    /// (`refreshDurationTimeout`): the header (capped, less the offset) when the route
    /// honours it, else `max_stream_duration`. `None`: no limit.
    pub fn limit(&self, grpc_timeout: Option<&[u8]>) -> Option<Duration> {
        let header = grpc_timeout.and_then(parse_grpc_timeout);
        match (header, self.grpc_header_max) {
            (Some(mut t), Some(cap)) => {
                if !cap.is_zero() && t > cap {
                    t = cap;
                }
                if let Some(offset) = self.grpc_header_offset {
                    if !t.is_zero() {
                        t = t.saturating_sub(offset);
                    }
                }
                Some(t)
            }
            _ => self.max,
        }
    }
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (H, M, S, m, u, n), per the gRPC over
/// HTTP/2 spec. Anything else is ignored, as Envoy ignores it.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
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

/// An index over a virtual host's routes by path, so that finding the first matching route
/// costs about the same for ten routes as for ten thousand. It only narrows the candidates:
/// every candidate is still checked in configuration order, so first-match semantics hold.
#[derive(Default)]
pub struct PathIndex {
    /// Byte trie of `prefix` / `path_separated_prefix` routes; node 0 is the root.
    pub nodes: Vec<TrieNode>,
    /// `path` (exact) routes.
    pub exact: rustc_hash::FxHashMap<Box<[u8]>, Vec<u32>>,
    /// Routes the index cannot narrow (regex, case-insensitive): always candidates.
    pub always: Vec<u32>,
}

/// One trie node: children by next byte (sorted), and the routes whose prefix ends here.
#[derive(Default)]
pub struct TrieNode {
    pub children: Vec<(u8, u32)>,
    pub routes: Vec<u32>,
}

impl PathIndex {
    /// Below this many routes a plain scan is faster than the index.
    pub const MIN_ROUTES: usize = 16;

    /// Builds the index for `routes`.
    pub fn build(routes: &[Route]) -> PathIndex {
        let mut idx = PathIndex {
            nodes: vec![TrieNode::default()],
            ..Default::default()
        };
        for (i, r) in routes.iter().enumerate() {
            let i = i as u32;
            match &r.path {
                _ if !r.case_sensitive => idx.always.push(i),
                PathMatch::Prefix(p) | PathMatch::Separated(p) => {
                    let mut node = 0usize;
                    for &b in p.as_bytes() {
                        node = match idx.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                            Ok(k) => idx.nodes[node].children[k].1 as usize,
                            Err(k) => {
                                let new = idx.nodes.len() as u32;
                                idx.nodes.push(TrieNode::default());
                                idx.nodes[node].children.insert(k, (b, new));
                                new as usize
                            }
                        };
                    }
                    idx.nodes[node].routes.push(i);
                }
                PathMatch::Exact(p) => idx.exact.entry(p.as_bytes().into()).or_default().push(i),
                PathMatch::Regex(_) | PathMatch::Connect => idx.always.push(i),
            }
        }
        idx
    }
}
