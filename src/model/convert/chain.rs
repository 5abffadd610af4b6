//! A listener's filter chains (`filter_chains`, `filter_chain_match`,
//! `default_filter_chain`, `filter_chain_matcher`) and its listener filters.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::model::chain::{
    ChainMatch, Chains, FilterChain, Input, IpRange, Matcher, OnMatch, Selector, SourceType, Tree,
};
use crate::model::{Inspectors, PortPredicate};
use crate::proto::envoy::config::listener::v3 as pb;
use crate::proto::xds::r#type::matcher::v3 as xm;

use super::cidr::{cidr, cidrs};
use super::{any_type, err, timeout, ConvertError, Ctx};

const ORIGINAL_DST: &str = "envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const INPUTS: &str = "envoy.extensions.matching.common_inputs.network.v3.";
const IP_MATCHER: &str = "xds.type.matcher.v3.IPMatcher";
const STRING_VALUE: &str = "google.protobuf.StringValue";

/// The filter chains of `l` and how one is chosen.
pub(super) fn chains(
    l: &pb::Listener,
    res: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Chains, ConvertError> {
    if l.filter_chains.is_empty() && l.default_filter_chain.is_none() {
        return Err(err(
            res,
            "filter_chains",
            "at least one filter chain is required",
        ));
    }
    let mut chains = Vec::with_capacity(l.filter_chains.len() + 1);
    let mut matches = Vec::with_capacity(l.filter_chains.len() + 1);
    for (i, c) in l.filter_chains.iter().enumerate() {
        let path = format!("filter_chains[{i}]");
        let (filter, rbac, istio_authn, objects) = super::hcm::chain_filter(c, res, &path, ctx)?;
        let name: Arc<str> = if c.name.is_empty() {
            format!("{}#{i}", l.name).into()
        } else {
            c.name.as_str().into()
        };
        let tls = super::tls::downstream(
            c.transport_socket.as_ref(),
            c.transport_socket_connect_timeout.as_ref(),
            res,
            &path,
            ctx,
        )?;
        chains.push(FilterChain {
            name,
            filter,
            tls,
            rbac,
            istio_authn,
            objects,
        });
        let m = match &c.filter_chain_match {
            Some(m) => chain_match(m, res, &format!("{path}.filter_chain_match"))?,
            None => ChainMatch::default(),
        };
        matches.push(m);
    }
    let default = match &l.default_filter_chain {
        Some(c) => {
            let (filter, rbac, istio_authn, objects) =
                super::hcm::chain_filter(c, res, "default_filter_chain", ctx)?;
            // Envoy ignores it ("the filter chain match is ignored in this field"); istiod
            // sends an empty one. A non-empty one is counted as ignored.
            if c.filter_chain_match
                .as_ref()
                .is_some_and(|m| *m != Default::default())
            {
                ctx.ignored
                    .push(format!("{res}.default_filter_chain.filter_chain_match"));
            }
            let name: Arc<str> = if c.name.is_empty() {
                format!("{}#default", l.name).into()
            } else {
                c.name.as_str().into()
            };
            let tls = super::tls::downstream(
                c.transport_socket.as_ref(),
                c.transport_socket_connect_timeout.as_ref(),
                res,
                "default_filter_chain",
                ctx,
            )?;
            chains.push(FilterChain {
                name,
                filter,
                tls,
                rbac,
                istio_authn,
                objects,
            });
            matches.push(ChainMatch::default());
            Some(chains.len() - 1)
        }
        None => None,
    };
    let select = match &l.filter_chain_matcher {
        Some(m) => {
            if l.filter_chains
                .iter()
                .any(|c| c.filter_chain_match.is_some())
            {
                ctx.ignored.push(format!(
                    "{res}.filter_chains[*].filter_chain_match (filter_chain_matcher decides)"
                ));
            }
            let names: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
            if let Some(i) = names.iter().position(|n| n.is_empty()) {
                return Err(err(
                    res,
                    format!("filter_chains[{i}].name"),
                    "filter chains need names when filter_chain_matcher is set",
                ));
            }
            Selector::Matcher(Arc::new(matcher(
                m,
                &names,
                res,
                "filter_chain_matcher",
                0,
            )?))
        }
        None => {
            // Envoy refuses two chains with the same criteria: which one would serve is
            // undefined.
            for (i, m) in matches.iter().enumerate().take(l.filter_chains.len()) {
                if let Some(j) = (0..i).find(|&j| same_criteria(&matches[j], m)) {
                    return Err(err(
                        res,
                        format!("filter_chains[{i}].filter_chain_match"),
                        format!("the same match as filter_chains[{j}]"),
                    ));
                }
            }
            Selector::Match(matches.into())
        }
    };
    Ok(Chains {
        chains,
        select,
        default,
    })
}

fn same_criteria(a: &ChainMatch, b: &ChainMatch) -> bool {
    a.destination_port == b.destination_port
        && a.prefix_ranges == b.prefix_ranges
        && a.server_names == b.server_names
        && a.transport_protocol == b.transport_protocol
        && a.application_protocols == b.application_protocols
        && a.direct_source_prefix_ranges == b.direct_source_prefix_ranges
        && a.source_type == b.source_type
        && a.source_prefix_ranges == b.source_prefix_ranges
        && a.source_ports == b.source_ports
}

fn port(v: u32, res: &str, path: &str) -> Result<u16, ConvertError> {
    u16::try_from(v)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| err(res, path, format!("{v} is not a port")))
}

fn chain_match(
    m: &pb::FilterChainMatch,
    res: &str,
    path: &str,
) -> Result<ChainMatch, ConvertError> {
    let p = |f: &str| format!("{path}.{f}");
    use pb::filter_chain_match::ConnectionSourceType as St;
    let source_type = match St::try_from(m.source_type) {
        Ok(St::Any) => SourceType::Any,
        Ok(St::SameIpOrLoopback) => SourceType::SameIpOrLoopback,
        Ok(St::External) => SourceType::External,
        Err(_) => return Err(err(res, p("source_type"), "unknown source type")),
    };
    let transport_protocol = match m.transport_protocol.as_str() {
        "" => None,
        t @ ("tls" | "raw_buffer") => Some(t.into()),
        other => {
            return Err(err(
                res,
                p("transport_protocol"),
                format!("'{other}' is not a transport protocol (tls, raw_buffer)"),
            ))
        }
    };
    let mut server_names = Vec::new();
    for (i, n) in m.server_names.iter().enumerate() {
        let n = n.to_ascii_lowercase();
        if n.is_empty() || (n.contains('*') && !n.starts_with("*.")) || n[1..].contains('*') {
            return Err(err(
                res,
                p(&format!("server_names[{i}]")),
                format!("'{n}': only a leading '*.' wildcard is allowed"),
            ));
        }
        server_names.push(n.into_boxed_str());
    }
    Ok(ChainMatch {
        destination_port: m
            .destination_port
            .map(|v| port(v, res, &p("destination_port")))
            .transpose()?,
        prefix_ranges: cidrs(&m.prefix_ranges, res, &p("prefix_ranges"))?,
        server_names,
        transport_protocol,
        application_protocols: m
            .application_protocols
            .iter()
            .map(|s| s.as_str().into())
            .collect(),
        direct_source_prefix_ranges: cidrs(
            &m.direct_source_prefix_ranges,
            res,
            &p("direct_source_prefix_ranges"),
        )?,
        source_type,
        source_prefix_ranges: cidrs(&m.source_prefix_ranges, res, &p("source_prefix_ranges"))?,
        source_ports: m
            .source_ports
            .iter()
            .enumerate()
            .map(|(i, &v)| port(v, res, &p(&format!("source_ports[{i}]"))))
            .collect::<Result<_, _>>()?,
    })
}

/// Nested matchers deeper than this are refused (a config mistake, and recursion).
const MAX_DEPTH: usize = 16;

fn matcher(
    m: &xm::Matcher,
    chains: &[&str],
    res: &str,
    path: &str,
    depth: usize,
) -> Result<Matcher, ConvertError> {
    if depth > MAX_DEPTH {
        return Err(err(res, path, "matchers nest too deeply"));
    }
    let p = |f: &str| format!("{path}.{f}");
    let Some(xm::matcher::MatcherType::MatcherTree(tree)) = &m.matcher_type else {
        return Err(err(res, p("matcher_tree"), "a matcher_tree is required"));
    };
    let Some(input) = &tree.input else {
        return Err(err(res, p("matcher_tree.input"), "an input is required"));
    };
    let input_type = input.typed_config.as_ref().map(any_type).unwrap_or("");
    let input = match input_type.strip_prefix(INPUTS) {
        Some("DestinationIPInput") => Input::DestinationIp,
        Some("DestinationPortInput") => Input::DestinationPort,
        Some("SourceIPInput") => Input::SourceIp,
        Some("SourcePortInput") => Input::SourcePort,
        Some("DirectSourceIPInput") => Input::DirectSourceIp,
        Some("SourceTypeInput") => Input::SourceType,
        Some("ServerNameInput") => Input::ServerName,
        Some("TransportProtocolInput") => Input::TransportProtocol,
        Some("ApplicationProtocolInput") => Input::ApplicationProtocol,
        _ => {
            return Err(err(
                res,
                p("matcher_tree.input.typed_config"),
                format!("input type '{input_type}' is not supported"),
            ))
        }
    };
    use xm::matcher::matcher_tree::TreeType;
    let tp = p("matcher_tree");
    let tree = match &tree.tree_type {
        Some(TreeType::ExactMatchMap(map)) => {
            let mut out = rustc_hash::FxHashMap::default();
            for (k, v) in &map.map {
                let path = format!("{tp}.exact_match_map.map[{k}]");
                out.insert(k.as_str().into(), on_match(v, chains, res, &path, depth)?);
            }
            Tree::Exact(out)
        }
        Some(TreeType::PrefixMatchMap(map)) => {
            let mut out = Vec::with_capacity(map.map.len());
            for (k, v) in &map.map {
                let path = format!("{tp}.prefix_match_map.map[{k}]");
                out.push((k.as_str().into(), on_match(v, chains, res, &path, depth)?));
            }
            Tree::Prefix(out)
        }
        Some(TreeType::CustomMatch(ext)) => {
            let cp = format!("{tp}.custom_match.typed_config");
            let any = ext
                .typed_config
                .as_ref()
                .ok_or_else(|| err(res, &cp, "typed_config is required"))?;
            if any_type(any) != IP_MATCHER {
                return Err(err(
                    res,
                    cp,
                    format!("custom matcher '{}' is not supported", any_type(any)),
                ));
            }
            let ipm = xm::IpMatcher::decode(any.value.as_slice())
                .map_err(|e| err(res, &cp, format!("cannot decode IPMatcher: {e}")))?;
            let mut out = Vec::with_capacity(ipm.range_matchers.len());
            for (i, r) in ipm.range_matchers.iter().enumerate() {
                let rp = format!("{cp}.range_matchers[{i}]");
                let ranges = r
                    .ranges
                    .iter()
                    .enumerate()
                    .map(|(j, c)| {
                        cidr(
                            &c.address_prefix,
                            c.prefix_len,
                            res,
                            &format!("{rp}.ranges[{j}]"),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let Some(om) = &r.on_match else {
                    return Err(err(res, format!("{rp}.on_match"), "on_match is required"));
                };
                out.push(IpRange {
                    ranges,
                    on_match: on_match(om, chains, res, &format!("{rp}.on_match"), depth)?,
                    exclusive: r.exclusive,
                });
            }
            Tree::Ip(out)
        }
        None => {
            return Err(err(
                res,
                tp,
                "exact_match_map, prefix_match_map or custom_match is required",
            ))
        }
    };
    let on_no_match = m
        .on_no_match
        .as_ref()
        .map(|o| on_match(o, chains, res, &p("on_no_match"), depth))
        .transpose()?;
    Ok(Matcher {
        input,
        tree,
        on_no_match,
    })
}

fn on_match(
    o: &xm::matcher::OnMatch,
    chains: &[&str],
    res: &str,
    path: &str,
    depth: usize,
) -> Result<OnMatch, ConvertError> {
    use xm::matcher::on_match::OnMatch as O;
    match &o.on_match {
        Some(O::Matcher(m)) => Ok(OnMatch::Matcher(Box::new(matcher(
            m,
            chains,
            res,
            &format!("{path}.matcher"),
            depth + 1,
        )?))),
        Some(O::Action(a)) => {
            let ap = format!("{path}.action.typed_config");
            let any = a
                .typed_config
                .as_ref()
                .ok_or_else(|| err(res, &ap, "typed_config is required"))?;
            if any_type(any) != STRING_VALUE {
                return Err(err(
                    res,
                    ap,
                    format!(
                        "a filter chain action is a {STRING_VALUE} naming the chain, not {}",
                        any_type(any)
                    ),
                ));
            }
            let name = String::decode(any.value.as_slice())
                .map_err(|e| err(res, &ap, format!("cannot decode StringValue: {e}")))?;
            // A name no chain has is accepted, as Envoy accepts it: it matches, and the
            // connection is closed with no chain (`no_filter_chain_match`).
            Ok(match chains.iter().position(|c| *c == name) {
                Some(i) => OnMatch::Chain(i),
                None => OnMatch::Missing,
            })
        }
        None => Err(err(res, path, "a matcher or an action is required")),
    }
}

/// The listener filters: returns the inspectors and whether `original_dst` is present.
/// A listener's inspectors, whether `original_dst` runs on it, and whether Istio's
/// `istio.set_internal_dst_address` does (internal listeners only).
pub(super) fn listener_filters(
    l: &pb::Listener,
    res: &str,
    ctx: &mut Ctx<'_>,
) -> Result<(Inspectors, bool, bool), ConvertError> {
    let mut out = Inspectors {
        timeout: timeout(
            l.listener_filters_timeout.as_ref(),
            Some(Duration::from_secs(15)),
            res,
            "listener_filters_timeout",
        )?,
        continue_on_timeout: l.continue_on_listener_filters_timeout,
        ..Inspectors::default()
    };
    let mut original_dst = false;
    let mut istio_tunnel = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        let path = format!("listener_filters[{i}]");
        let Some(pb::listener_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(err(
                res,
                format!("{path}.typed_config"),
                "typed_config is required",
            ));
        };
        let disabled = match &f.filter_disabled {
            Some(p) => predicate(p, res, &format!("{path}.filter_disabled"), 0)?,
            None => PortPredicate::Never,
        };
        match any_type(any) {
            ORIGINAL_DST => {
                if disabled != PortPredicate::Never {
                    return Err(err(
                        res,
                        format!("{path}.filter_disabled"),
                        "original_dst cannot be disabled per port",
                    ));
                }
                original_dst = true;
            }
            TLS_INSPECTOR => {
                // Fingerprinting and the ClientHello size limit are refused by the field scan
                // if set; istiod's `initial_read_buffer_size` is a tuning knob (Ringside
                // reads what the ClientHello needs).
                let m: crate::proto::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector =
                    super::decode_any(any, TLS_INSPECTOR, res, &path)?;
                if m.initial_read_buffer_size.is_some() {
                    ctx.ignored.push(format!(
                        "{res}.{path}.typed_config.initial_read_buffer_size"
                    ));
                }
                out.tls = Some(disabled);
            }
            HTTP_INSPECTOR => out.http = Some(disabled),
            _ if super::istio::config_type(any).as_deref() == Some(SET_INTERNAL_DST) => {
                if !is_internal(l) {
                    return Err(err(
                        res,
                        format!("{path}.typed_config"),
                        "istio.set_internal_dst_address reads what an internal connection was handed: it runs on internal listeners only",
                    ));
                }
                istio_tunnel = true;
            }
            other => {
                return Err(err(
                    res,
                    format!("{path}.typed_config"),
                    format!(
                        "listener filter '{}' of type {other} is not supported",
                        f.name
                    ),
                ))
            }
        }
    }
    if l.listener_filters.is_empty() && l.listener_filters_timeout.is_some() {
        ctx.ignored.push(format!(
            "{res}.listener_filters_timeout (no listener filters)"
        ));
    }
    Ok((out, original_dst, istio_tunnel))
}

/// Istio's listener filter that restores an internal connection's destination (HBONE).
const SET_INTERNAL_DST: &str = "istio.set_internal_dst_address.v1.Config";

fn predicate(
    p: &pb::ListenerFilterChainMatchPredicate,
    res: &str,
    path: &str,
    depth: usize,
) -> Result<PortPredicate, ConvertError> {
    if depth > MAX_DEPTH {
        return Err(err(res, path, "predicates nest too deeply"));
    }
    use pb::listener_filter_chain_match_predicate::Rule;
    let set = |s: &pb::listener_filter_chain_match_predicate::MatchSet, f: &str| {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, r)| predicate(r, res, &format!("{path}.{f}.rules[{i}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.rule {
        Some(Rule::AnyMatch(true)) => PortPredicate::Any,
        Some(Rule::AnyMatch(false)) | None => {
            return Err(err(res, path, "a rule is required"));
        }
        Some(Rule::OrMatch(s)) => PortPredicate::Or(set(s, "or_match")?),
        Some(Rule::AndMatch(s)) => PortPredicate::And(set(s, "and_match")?),
        Some(Rule::NotMatch(n)) => PortPredicate::Not(Box::new(predicate(
            n,
            res,
            &format!("{path}.not_match"),
            depth + 1,
        )?)),
        Some(Rule::DestinationPortRange(r)) => {
            let rp = format!("{path}.destination_port_range");
            if r.start < 0 || r.end > 65536 || r.start >= r.end {
                return Err(err(
                    res,
                    rp,
                    format!("[{}, {}) is not a port range", r.start, r.end),
                ));
            }
            PortPredicate::Range(r.start as u16, r.end as u32)
        }
    })
}

/// The listener has `internal_listener` set.
pub(super) fn is_internal(l: &pb::Listener) -> bool {
    matches!(
        l.listener_specifier,
        Some(pb::listener::ListenerSpecifier::InternalListener(_))
    )
}
