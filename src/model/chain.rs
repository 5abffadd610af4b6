//! Filter chain selection, as Envoy does it: `filter_chain_match` (hierarchical — at each
//! criterion the most specific match wins, chains that leave it empty are the fallback,
//! and there is no backtracking to a less specific level) or the unified
//! `filter_chain_matcher` tree. Pure: no I/O, so the whole decision is unit tested.
//!
//! What the listener filters would find (TLS or not, SNI, ALPN) is asked for only when a
//! candidate chain depends on it: [`Choice::NeedSniff`] tells the caller to inspect the
//! first bytes and ask again. A connection whose chain does not depend on those bytes is
//! never delayed (server-speaks-first protocols).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::NetworkFilter;

/// One filter chain of a listener.
#[derive(Clone)]
pub struct FilterChain {
    pub name: Arc<str>,
    pub filter: NetworkFilter,
    /// `transport_socket` TLS: the handshake runs before the filter sees a byte.
    pub tls: Option<Arc<super::tls::DownstreamTls>>,
    /// `envoy.filters.network.rbac` filters before the terminal one, in order.
    pub rbac: Box<[Arc<super::rbac::RbacFilter>]>,
    /// Istio's `istio_authn` runs on the chain: the peer's SPIFFE identity is the filter
    /// state `io.istio.peer_principal`.
    pub istio_authn: IstioAuthn,
    /// `set_filter_state` on the connection: its objects, set when it opens.
    pub objects: Option<Arc<[super::filter_state::SetValue]>>,
}

/// Whether `istio_authn` runs on a chain, and whether its principals are shared with the
/// upstream connections the chain opens (`shared: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IstioAuthn {
    #[default]
    Off,
    On,
    Shared,
}

impl IstioAuthn {
    pub fn on(self) -> bool {
        self != IstioAuthn::Off
    }
}

impl FilterChain {
    /// Whether the peer certificate's identity is read (RBAC or `istio_authn` need it).
    pub fn reads_identity(&self) -> bool {
        self.istio_authn.on()
            || !self.rbac.is_empty()
            || matches!(&self.filter, super::NetworkFilter::Http(h) if h.reads_identity)
    }

    /// Whether `istio.stats` or an access log reports the peer's identity (read when it
    /// can be; never a reason to refuse the connection).
    pub fn reports_identity(&self) -> bool {
        match &self.filter {
            super::NetworkFilter::Tcp(t) => t.istio.is_some() || t.log_needs.tls,
            super::NetworkFilter::Http(h) => h.filters.istio_stats || h.log_needs.tls,
        }
    }
}

/// A listener's filter chains and how one is chosen.
#[derive(Clone)]
pub struct Chains {
    pub chains: Vec<FilterChain>,
    pub select: Selector,
    /// `default_filter_chain`: index into `chains`.
    pub default: Option<usize>,
}

/// How a chain is chosen.
#[derive(Clone)]
pub enum Selector {
    /// `filter_chain_match` per chain (index-aligned with `Chains::chains`; the default
    /// chain's entry is never consulted).
    Match(Arc<[ChainMatch]>),
    /// `filter_chain_matcher`.
    Matcher(Arc<Matcher>),
}

pub use super::cidr::Cidr;

/// `FilterChainMatch`, validated. Empty criteria match anything.
#[derive(Debug, Clone, Default)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    /// Lower-cased; `*.example.com` wildcards allowed.
    pub server_names: Vec<Box<str>>,
    pub transport_protocol: Option<Box<str>>,
    pub application_protocols: Vec<Box<str>>,
    pub direct_source_prefix_ranges: Vec<Cidr>,
    pub source_type: SourceType,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
}

impl ChainMatch {
    /// No criterion set.
    pub fn is_empty(&self) -> bool {
        self.destination_port.is_none()
            && self.prefix_ranges.is_empty()
            && self.server_names.is_empty()
            && self.transport_protocol.is_none()
            && self.application_protocols.is_empty()
            && self.direct_source_prefix_ranges.is_empty()
            && self.source_type == SourceType::Any
            && self.source_prefix_ranges.is_empty()
            && self.source_ports.is_empty()
    }
}

/// `FilterChainMatch.source_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

/// What the listener filters found in a connection's first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sniffed {
    /// `"tls"` or `"raw_buffer"`.
    pub transport: &'static str,
    /// SNI, lower-cased.
    pub server_name: Option<String>,
    /// ALPN offered by a TLS client, or the HTTP version found by the HTTP inspector
    /// (`http/1.0`, `http/1.1`, `h2c`).
    pub application_protocols: Vec<String>,
}

impl Sniffed {
    /// What a connection looks like when no inspector runs.
    pub const RAW: Sniffed = Sniffed {
        transport: "raw_buffer",
        server_name: None,
        application_protocols: Vec::new(),
    };
}

/// A connection at chain selection time.
pub struct ConnInfo<'a> {
    /// The destination (the original one when restored).
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// `None` while the inspectors have not run.
    pub sniffed: Option<&'a Sniffed>,
}

impl ConnInfo<'_> {
    fn same_ip_or_loopback(&self) -> bool {
        let p = self.peer.ip();
        p.is_loopback()
            || p == self.local.ip()
            || matches!(p, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
    }
}

/// The outcome of chain selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Chain(usize),
    /// No chain matches and there is no default: the connection is closed
    /// (`no_filter_chain_match`).
    NoMatch,
    /// A candidate depends on what the inspectors find: inspect, then ask again.
    NeedSniff,
}

impl Chains {
    /// A listener with one unconditional chain.
    pub fn single(chain: FilterChain) -> Chains {
        Chains {
            chains: vec![chain],
            select: Selector::Match(Arc::new([ChainMatch::default()])),
            default: None,
        }
    }

    /// Chooses the chain for `c`.
    pub fn choose(&self, c: &ConnInfo<'_>) -> Choice {
        if let Selector::Match(m) = &self.select {
            // The common case (one chain, no conditions) allocates nothing.
            if let ([only], None) = (&**m, self.default) {
                if only.is_empty() {
                    return Choice::Chain(0);
                }
            }
        }
        let found = match &self.select {
            Selector::Match(m) => select_match(m, self.default, c),
            Selector::Matcher(m) => match m.eval(c) {
                Eval::Chain(i) => Ok(Some(i)),
                Eval::NoMatch => Ok(None),
                Eval::NeedSniff => Err(()),
                Eval::Missing => return Choice::NoMatch,
            },
        };
        match found {
            Err(()) => Choice::NeedSniff,
            Ok(Some(i)) => Choice::Chain(i),
            Ok(None) => self.default.map_or(Choice::NoMatch, Choice::Chain),
        }
    }

    /// Every network filter of every chain.
    pub fn filters(&self) -> impl Iterator<Item = &NetworkFilter> {
        self.chains.iter().map(|c| &c.filter)
    }
}

/// How well one chain's criterion matches: `None` rules it out, `Some(0)` is "left
/// empty" (the fallback), higher is more specific.
type Score = Option<u32>;

fn cidr_score(ranges: &[Cidr], ip: IpAddr) -> Score {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.len) + 1)
        .max()
}

fn server_name_score(names: &[Box<str>], sni: Option<&str>) -> Score {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|n| {
            if **n == *sni {
                Some(1_000_000)
            } else if let Some(suffix) = n.strip_prefix('*') {
                // `*.example.com` matches `a.example.com` and `a.b.example.com`.
                (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len() as u32)
            } else {
                None
            }
        })
        .max()
}

fn select_match(
    matches: &[ChainMatch],
    default: Option<usize>,
    c: &ConnInfo<'_>,
) -> Result<Option<usize>, ()> {
    // Candidates: every chain but the default, narrowed criterion by criterion.
    let mut cands: Vec<usize> = (0..matches.len()).filter(|&i| Some(i) != default).collect();
    let narrow = |cands: &mut Vec<usize>, score: &dyn Fn(&ChainMatch) -> Score| {
        let scored: Vec<(usize, u32)> = cands
            .iter()
            .filter_map(|&i| score(&matches[i]).map(|s| (i, s)))
            .collect();
        let best = scored.iter().map(|&(_, s)| s).max();
        cands.clear();
        if let Some(best) = best {
            cands.extend(scored.iter().filter(|&&(_, s)| s == best).map(|&(i, _)| i));
        }
    };
    let port = c.local.port();
    narrow(&mut cands, &|m| match m.destination_port {
        None => Some(0),
        Some(p) => (p == port).then_some(1),
    });
    narrow(&mut cands, &|m| cidr_score(&m.prefix_ranges, c.local.ip()));
    // The criteria that need the inspectors.
    let sniff_needed = cands.iter().any(|&i| {
        let m = &matches[i];
        !m.server_names.is_empty()
            || m.transport_protocol.is_some()
            || !m.application_protocols.is_empty()
    });
    if sniff_needed {
        let Some(s) = c.sniffed else {
            return Err(());
        };
        narrow(&mut cands, &|m| {
            server_name_score(&m.server_names, s.server_name.as_deref())
        });
        narrow(&mut cands, &|m| match &m.transport_protocol {
            None => Some(0),
            Some(t) => (**t == *s.transport).then_some(1),
        });
        narrow(&mut cands, &|m| {
            if m.application_protocols.is_empty() {
                Some(0)
            } else {
                m.application_protocols
                    .iter()
                    .any(|p| s.application_protocols.iter().any(|q| **p == **q))
                    .then_some(1)
            }
        });
    }
    narrow(&mut cands, &|m| {
        cidr_score(&m.direct_source_prefix_ranges, c.peer.ip())
    });
    let local = c.same_ip_or_loopback();
    narrow(&mut cands, &|m| match m.source_type {
        SourceType::Any => Some(0),
        SourceType::SameIpOrLoopback => local.then_some(1),
        SourceType::External => (!local).then_some(1),
    });
    narrow(&mut cands, &|m| {
        cidr_score(&m.source_prefix_ranges, c.peer.ip())
    });
    narrow(&mut cands, &|m| {
        if m.source_ports.is_empty() {
            Some(0)
        } else {
            m.source_ports.contains(&c.peer.port()).then_some(1)
        }
    });
    // Identical criteria on two chains are refused at conversion; the first wins anyway.
    Ok(cands.first().copied())
}

/// A network input of the unified matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    DestinationIp,
    DestinationPort,
    SourceIp,
    SourcePort,
    DirectSourceIp,
    SourceType,
    ServerName,
    TransportProtocol,
    ApplicationProtocol,
}

/// `xds.type.matcher.v3.Matcher` over network inputs, validated.
pub struct Matcher {
    pub input: Input,
    pub tree: Tree,
    pub on_no_match: Option<OnMatch>,
}

/// The lookup of a matcher tree.
pub enum Tree {
    Exact(FxHashMap<Box<str>, OnMatch>),
    /// Longest prefix wins.
    Prefix(Vec<(Box<str>, OnMatch)>),
    /// `xds.type.matcher.v3.IPMatcher`: the most specific range containing the address.
    Ip(Vec<IpRange>),
}

/// One `IPMatcher.range_matchers` entry.
pub struct IpRange {
    pub ranges: Vec<Cidr>,
    pub on_match: OnMatch,
    /// When its `on_match` finds nothing, less specific ranges are not tried.
    pub exclusive: bool,
}

/// What a match leads to.
pub enum OnMatch {
    Matcher(Box<Matcher>),
    /// A filter chain, by index.
    Chain(usize),
    /// A chain name the listener does not have: Envoy accepts it and serves the
    /// connection no chain, not even the default.
    Missing,
}

enum Eval {
    Chain(usize),
    NoMatch,
    NeedSniff,
    Missing,
}

impl OnMatch {
    fn eval(&self, c: &ConnInfo<'_>) -> Eval {
        match self {
            OnMatch::Chain(i) => Eval::Chain(*i),
            OnMatch::Missing => Eval::Missing,
            OnMatch::Matcher(m) => m.eval(c),
        }
    }
}

impl Matcher {
    fn input(&self, c: &ConnInfo<'_>) -> Result<Option<String>, ()> {
        let sniffed = || c.sniffed.ok_or(());
        Ok(match self.input {
            Input::DestinationIp => Some(c.local.ip().to_string()),
            Input::DestinationPort => Some(c.local.port().to_string()),
            Input::SourceIp | Input::DirectSourceIp => Some(c.peer.ip().to_string()),
            Input::SourcePort => Some(c.peer.port().to_string()),
            Input::SourceType => c.same_ip_or_loopback().then(|| "local".to_string()),
            Input::ServerName => sniffed()?.server_name.clone(),
            Input::TransportProtocol => Some(sniffed()?.transport.to_string()),
            // Envoy's form: every protocol quoted, comma-separated.
            Input::ApplicationProtocol => {
                let p = &sniffed()?.application_protocols;
                (!p.is_empty()).then(|| {
                    p.iter()
                        .map(|p| format!("'{p}'"))
                        .collect::<Vec<_>>()
                        .join(",")
                })
            }
        })
    }

    fn eval(&self, c: &ConnInfo<'_>) -> Eval {
        let Ok(value) = self.input(c) else {
            return Eval::NeedSniff;
        };
        let found = value.and_then(|v| self.lookup(&v, c));
        match found {
            Some(Eval::NoMatch) | None => match &self.on_no_match {
                Some(m) => m.eval(c),
                None => Eval::NoMatch,
            },
            Some(e) => e,
        }
    }

    fn lookup(&self, v: &str, c: &ConnInfo<'_>) -> Option<Eval> {
        match &self.tree {
            Tree::Exact(map) => map.get(v).map(|m| m.eval(c)),
            Tree::Prefix(list) => list
                .iter()
                .filter(|(p, _)| v.starts_with(&**p))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, m)| m.eval(c)),
            Tree::Ip(ranges) => {
                let ip: IpAddr = v.parse().ok()?;
                let mut hits: Vec<(u8, &IpRange)> = ranges
                    .iter()
                    .filter_map(|r| {
                        r.ranges
                            .iter()
                            .filter(|cidr| cidr.contains(ip))
                            .map(|cidr| cidr.len)
                            .max()
                            .map(|len| (len, r))
                    })
                    .collect();
                hits.sort_by_key(|h| std::cmp::Reverse(h.0));
                for (_, r) in hits {
                    match r.on_match.eval(c) {
                        Eval::NoMatch if !r.exclusive => continue,
                        e => return Some(e),
                    }
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
