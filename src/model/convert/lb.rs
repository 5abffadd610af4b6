//! Load balancing: a cluster's `lb_policy` (round robin, random, least request, ring hash,
//! Maglev) with its `lb_config`, and a route's `hash_policy` (the request's key for the
//! consistent-hash policies).

use crate::model::route::{CookieGen, HashKey, HashPolicy};
use crate::model::{LbPolicy, LbTuning, SlowStart};
use crate::proto::envoy::config::cluster::v3 as pb;
use crate::proto::envoy::config::route::v3 as route;

use super::{err, ConvertError};

/// The cluster's policy and its configuration.
pub(super) fn lb_policy(
    c: &pb::Cluster,
    policy: Result<pb::cluster::LbPolicy, prost::UnknownEnumValue>,
    res: &str,
) -> Result<LbPolicy, ConvertError> {
    use pb::cluster::{LbConfig as C, LbPolicy as P};
    let lb = match policy {
        // ORIGINAL_DST: the destination is the endpoint; there is nothing to balance.
        Ok(P::ClusterProvided) => LbPolicy::RoundRobin,
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::Random) => LbPolicy::Random,
        Ok(P::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(C::LeastRequestLbConfig(l)) => l.choice_count.unwrap_or(2),
                _ => 2,
            };
            if choice_count < 2 {
                return Err(err(
                    res,
                    "least_request_lb_config.choice_count",
                    "must be at least 2",
                ));
            }
            LbPolicy::LeastRequest { choice_count }
        }
        Ok(P::RingHash) => {
            let (mut min, mut max) = (1024, 8 * 1024 * 1024);
            if let Some(C::RingHashLbConfig(r)) = &c.lb_config {
                if r.hash_function != 0 {
                    return Err(err(
                        res,
                        "ring_hash_lb_config.hash_function",
                        "only XX_HASH is supported (MURMUR_HASH_2 is not)",
                    ));
                }
                min = r.minimum_ring_size.unwrap_or(min);
                max = r.maximum_ring_size.unwrap_or(max);
            }
            // Envoy's bounds: at most 8M entries, the minimum not above the maximum.
            if max > 8 * 1024 * 1024 {
                return Err(err(
                    res,
                    "ring_hash_lb_config.maximum_ring_size",
                    "must be at most 8388608",
                ));
            }
            if min == 0 || min > max {
                return Err(err(
                    res,
                    "ring_hash_lb_config.minimum_ring_size",
                    format!("must be between 1 and the maximum ring size ({max})"),
                ));
            }
            LbPolicy::RingHash { min, max }
        }
        Ok(P::Maglev) => {
            let table_size = match &c.lb_config {
                Some(C::MaglevLbConfig(m)) => m.table_size.unwrap_or(65537),
                _ => 65537,
            };
            // Envoy requires a prime (the permutations must cover the table), at most 5M.
            if table_size > 5_000_011 || !is_prime(table_size) {
                return Err(err(
                    res,
                    "maglev_lb_config.table_size",
                    format!("{table_size} is not a prime up to 5000011"),
                ));
            }
            LbPolicy::Maglev { table_size }
        }
        Ok(other) => {
            return Err(err(
                res,
                "lb_policy",
                format!("lb_policy {} is not supported", other.as_str_name()),
            ))
        }
        Err(_) => {
            return Err(err(
                res,
                "lb_policy",
                format!("unknown lb_policy {}", c.lb_policy),
            ))
        }
    };
    let fits = match (&c.lb_config, lb) {
        (None, _) => None,
        (Some(C::LeastRequestLbConfig(_)), LbPolicy::LeastRequest { .. }) => None,
        (Some(C::RingHashLbConfig(_)), LbPolicy::RingHash { .. }) => None,
        (Some(C::MaglevLbConfig(_)), LbPolicy::Maglev { .. }) => None,
        (Some(C::RoundRobinLbConfig(_)), LbPolicy::RoundRobin) => None,
        (Some(C::RoundRobinLbConfig(_)), _) => Some(("round_robin_lb_config", "ROUND_ROBIN")),
        (Some(C::LeastRequestLbConfig(_)), _) => Some(("least_request_lb_config", "LEAST_REQUEST")),
        (Some(C::RingHashLbConfig(_)), _) => Some(("ring_hash_lb_config", "RING_HASH")),
        (Some(C::MaglevLbConfig(_)), _) => Some(("maglev_lb_config", "MAGLEV")),
        // Checked with the cluster's type (ORIGINAL_DST only).
        (Some(C::OriginalDstLbConfig(_)), _) => None,
    };
    if let Some((field, policy)) = fits {
        return Err(err(
            res,
            field,
            format!("only valid with lb_policy {policy}"),
        ));
    }
    Ok(lb)
}

/// The cluster's `slow_start_config`, `active_request_bias` and
/// `common_lb_config.locality_weighted_lb_config`.
pub(super) fn lb_tuning(
    c: &pb::Cluster,
    lb: LbPolicy,
    discovery: crate::model::Discovery,
    res: &str,
) -> Result<LbTuning, ConvertError> {
    use pb::cluster::LbConfig as C;
    let mut t = LbTuning::default();
    let (slow, path) = match &c.lb_config {
        Some(C::RoundRobinLbConfig(r)) => (r.slow_start_config.as_ref(), "round_robin_lb_config"),
        Some(C::LeastRequestLbConfig(l)) => {
            // Envoy takes a negative bias as 1.0 (with a warning).
            if let Some(b) = &l.active_request_bias {
                t.bias = match b.default_value {
                    v if v >= 0.0 => v,
                    v => {
                        tracing::warn!(
                            "{res}: active_request_bias {v} is negative: 1.0 instead, as Envoy"
                        );
                        1.0
                    }
                };
            }
            (l.slow_start_config.as_ref(), "least_request_lb_config")
        }
        _ => (None, ""),
    };
    if let Some(s) = slow {
        let at = |f: &str| format!("{path}.slow_start_config.{f}");
        let window = match &s.slow_start_window {
            Some(d) => super::duration(d, res, &at("slow_start_window"))?,
            None => std::time::Duration::ZERO,
        };
        // Envoy: an aggression of 0 or less (or none) is 1.0.
        let aggression = s
            .aggression
            .as_ref()
            .map(|a| a.default_value)
            .filter(|a| *a > 0.0)
            .unwrap_or(1.0);
        let min = s.min_weight_percent.as_ref().map_or(10.0, |p| p.value);
        if !(0.0..=100.0).contains(&min) {
            return Err(err(
                res,
                at("min_weight_percent"),
                "must be between 0 and 100",
            ));
        }
        // Without a window, slow start is off (Envoy's isSlowStartEnabled).
        t.slow_start = (!window.is_zero()).then_some(SlowStart {
            window,
            aggression,
            min_weight: min / 100.0,
        });
    }
    if let Some(cl) = &c.common_lb_config {
        if cl.locality_config_specifier.is_some() {
            let why = match (lb, discovery) {
                (LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }, _) => {
                    "is not implemented with RING_HASH or MAGLEV"
                }
                (_, crate::model::Discovery::Static | crate::model::Discovery::Eds) => "",
                _ => "is implemented for STATIC and EDS clusters only",
            };
            if !why.is_empty() {
                return Err(err(
                    res,
                    "common_lb_config.locality_weighted_lb_config",
                    why,
                ));
            }
            t.locality_weighted = true;
        }
    }
    Ok(t)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// A route's `hash_policy`.
pub(super) fn hash_policy(
    list: &[route::route_action::HashPolicy],
    res: &str,
    path: &str,
) -> Result<Box<[HashPolicy]>, ConvertError> {
    use route::route_action::hash_policy::PolicySpecifier as S;
    let mut out = Vec::with_capacity(list.len());
    for (i, h) in list.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        let key = match &h.policy_specifier {
            Some(S::Header(h)) => {
                let name = h.header_name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.trim_start_matches(':').as_bytes()).is_err() {
                    return Err(err(res, at("header.header_name"), "not a header name"));
                }
                match &h.regex_rewrite {
                    None => HashKey::Header(name.into()),
                    Some(rr) => {
                        let rw = super::matchers::regex_substitute(
                            rr,
                            res,
                            &at("header.regex_rewrite"),
                        )?;
                        HashKey::HeaderRewritten(
                            name.into(),
                            crate::model::route::HashRewrite(std::sync::Arc::new(rw)),
                        )
                    }
                }
            }
            Some(S::Cookie(c)) => {
                let token = |v: &str| http::HeaderName::from_bytes(v.as_bytes()).is_ok();
                let value_ok = |v: &str| !v.bytes().any(|b| b < b' ' || b == 0x7f || b == b';');
                if c.name.is_empty() || !token(&c.name) {
                    return Err(err(res, at("cookie.name"), "not a cookie name"));
                }
                if !value_ok(&c.path) {
                    return Err(err(res, at("cookie.path"), "not a cookie path"));
                }
                let mut attributes = Vec::new();
                for (j, a) in c.attributes.iter().enumerate() {
                    if a.name.is_empty() || !token(&a.name) || !value_ok(&a.value) {
                        return Err(err(
                            res,
                            at(&format!("cookie.attributes[{j}]")),
                            "not a cookie attribute",
                        ));
                    }
                    attributes.push((a.name.as_str().into(), a.value.as_str().into()));
                }
                let generate = match &c.ttl {
                    Some(t) if t.seconds < 0 || t.nanos < 0 => {
                        return Err(err(res, at("cookie.ttl"), "must not be negative"))
                    }
                    Some(t) => Some(Box::new(CookieGen {
                        ttl_secs: t.seconds as u64,
                        path: c.path.as_str().into(),
                        attributes: attributes.into(),
                    })),
                    None => None,
                };
                HashKey::Cookie {
                    name: c.name.as_str().into(),
                    generate,
                }
            }
            Some(S::ConnectionProperties(p)) if p.source_ip => HashKey::SourceIp,
            // Hashes nothing (as in Envoy, where it makes no hash).
            Some(S::ConnectionProperties(_)) => continue,
            Some(S::QueryParameter(q)) => {
                if q.name.is_empty() {
                    return Err(err(res, at("query_parameter.name"), "is required"));
                }
                HashKey::QueryParameter(q.name.as_str().into())
            }
            Some(S::FilterState(f)) => {
                if f.key.is_empty() {
                    return Err(err(res, at("filter_state.key"), "is required"));
                }
                HashKey::FilterState(f.key.as_str().into())
            }
            None => {
                return Err(err(
                    res,
                    at("policy_specifier"),
                    "header, cookie, connection_properties, query_parameter or filter_state is \
                     required",
                ))
            }
        };
        out.push(HashPolicy {
            key,
            terminal: h.terminal,
        });
    }
    Ok(out.into())
}
