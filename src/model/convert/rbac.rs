//! `envoy.filters.http.rbac`, `RBACPerRoute` and `envoy.filters.network.rbac` → the
//! [`Engine`]s of `model::rbac`. What Ringside does not evaluate (CEL conditions, matcher
//! trees, custom principals) is left out of the proto subset and refused by name.

use std::sync::Arc;

use crate::model::rbac::*;
use crate::proto::envoy::config::rbac::v3 as pb;
use crate::proto::envoy::extensions::filters::http::rbac::v3 as http_pb;
use crate::proto::envoy::extensions::filters::network::rbac::v3 as net_pb;
use crate::proto::envoy::r#type::matcher::v3 as matcher;
use crate::stats::{RbacShadowStat, RbacStat};

use super::{err, ConvertError, Ctx};

pub(super) const HTTP: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
pub(super) const PER_ROUTE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub(super) const NETWORK: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// Policies nest `and`/`or`/`not`: deeper than this is refused (as Envoy's recursion
/// limit would).
const MAX_DEPTH: usize = 64;

/// The HTTP filter of a connection manager with stat prefix `stat_prefix`.
pub(super) fn http(
    m: &http_pb::Rbac,
    stat_prefix: &str,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<RbacFilter, ConvertError> {
    let base = format!("http.{stat_prefix}.rbac.");
    Ok(RbacFilter {
        rules: engine(m.rules.as_ref(), res, &format!("{path}.rules"))?,
        shadow: engine(
            m.shadow_rules.as_ref(),
            res,
            &format!("{path}.shadow_rules"),
        )?,
        stats: ctx
            .stats
            .scope::<RbacStat>(&join(&base, &m.rules_stat_prefix)),
        shadow_stats: ctx
            .stats
            .scope::<RbacShadowStat>(&join(&base, &m.shadow_rules_stat_prefix)),
        shadow_prefix: m.shadow_rules_stat_prefix.as_str().into(),
        rules_prefix: m.rules_stat_prefix.as_str().into(),
        continuous: false,
    })
}

/// A route's `RBACPerRoute`.
pub(super) fn per_route(
    m: &http_pb::RbacPerRoute,
    res: &str,
    path: &str,
) -> Result<RbacPerRoute, ConvertError> {
    let Some(r) = &m.rbac else {
        return Ok(RbacPerRoute {
            rules: None,
            shadow: None,
        });
    };
    Ok(RbacPerRoute {
        rules: engine(r.rules.as_ref(), res, &format!("{path}.rbac.rules"))?,
        shadow: engine(
            r.shadow_rules.as_ref(),
            res,
            &format!("{path}.rbac.shadow_rules"),
        )?,
    })
}

/// The network filter.
pub(super) fn network(
    m: &net_pb::Rbac,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<RbacFilter, ConvertError> {
    if m.stat_prefix.is_empty() {
        return Err(err(res, format!("{path}.stat_prefix"), "is required"));
    }
    // Envoy joins the prefix and `rbac.` with one dot.
    let base = if m.stat_prefix.ends_with('.') {
        format!("{}rbac.", m.stat_prefix)
    } else {
        format!("{}.rbac.", m.stat_prefix)
    };
    use net_pb::rbac::EnforcementType as E;
    let continuous = match E::try_from(m.enforcement_type) {
        Ok(E::OneTimeOnFirstByte) => false,
        Ok(E::Continuous) => true,
        Err(_) => {
            return Err(err(
                res,
                format!("{path}.enforcement_type"),
                format!("unknown enforcement type {}", m.enforcement_type),
            ))
        }
    };
    Ok(RbacFilter {
        rules: engine(m.rules.as_ref(), res, &format!("{path}.rules"))?,
        shadow: engine(
            m.shadow_rules.as_ref(),
            res,
            &format!("{path}.shadow_rules"),
        )?,
        stats: ctx.stats.scope::<RbacStat>(&base),
        shadow_stats: ctx
            .stats
            .scope::<RbacShadowStat>(&join(&base, &m.shadow_rules_stat_prefix)),
        shadow_prefix: m.shadow_rules_stat_prefix.as_str().into(),
        rules_prefix: "".into(),
        continuous,
    })
}

/// A stat prefix and a configured one, joined with a dot as Envoy's stat scopes join them.
fn join(base: &str, prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{base}{prefix}")
    } else {
        format!("{base}{prefix}.")
    }
}

fn engine(
    m: Option<&pb::Rbac>,
    res: &str,
    path: &str,
) -> Result<Option<Arc<Engine>>, ConvertError> {
    let Some(m) = m else { return Ok(None) };
    use pb::rbac::Action as A;
    let action = match A::try_from(m.action) {
        Ok(A::Allow) => Action::Allow,
        Ok(A::Deny) => Action::Deny,
        Ok(A::Log) => Action::Log,
        Err(_) => {
            return Err(err(
                res,
                format!("{path}.action"),
                format!("unknown action {}", m.action),
            ))
        }
    };
    let mut names: Vec<&String> = m.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &m.policies[name];
        let pp = format!("{path}.policies['{name}']");
        if p.permissions.is_empty() || p.principals.is_empty() {
            let field = if p.permissions.is_empty() {
                "permissions"
            } else {
                "principals"
            };
            return Err(err(
                res,
                format!("{pp}.{field}"),
                "at least one is required",
            ));
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, res, &format!("{pp}.permissions[{i}]"), 0))
            .collect::<Result<_, _>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x, res, &format!("{pp}.principals[{i}]"), 0))
            .collect::<Result<_, _>>()?;
        policies.push((
            name.as_str().into(),
            Policy {
                permissions,
                principals,
            },
        ));
    }
    Ok(Some(Arc::new(Engine {
        action,
        policies: policies.into_boxed_slice(),
    })))
}

fn permission(
    m: &pb::Permission,
    res: &str,
    path: &str,
    depth: usize,
) -> Result<Permission, ConvertError> {
    use pb::permission::Rule as R;
    if depth > MAX_DEPTH {
        return Err(err(res, path, "rules nest too deep"));
    }
    let set = |rules: &[pb::Permission], field: &str| -> Result<Box<[Permission]>, ConvertError> {
        if rules.is_empty() {
            return Err(err(
                res,
                format!("{path}.{field}.rules"),
                "at least one rule is required",
            ));
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r, res, &format!("{path}.{field}.rules[{i}]"), depth + 1))
            .collect()
    };
    Ok(match &m.rule {
        Some(R::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(R::Any(true)) => Permission::Any,
        Some(R::Any(false)) => return Err(err(res, format!("{path}.any"), "must be true")),
        Some(R::Header(h)) => Permission::Header(super::matchers::header_match(
            h,
            res,
            &format!("{path}.header"),
        )?),
        Some(R::UrlPath(p)) => {
            Permission::UrlPath(path_matcher(p, res, &format!("{path}.url_path"))?)
        }
        Some(R::DestinationIp(c)) => Permission::DestinationIp(super::cidr::cidr(
            &c.address_prefix,
            c.prefix_len,
            res,
            &format!("{path}.destination_ip"),
        )?),
        Some(R::DestinationPort(p)) => {
            if *p > 65535 {
                return Err(err(
                    res,
                    format!("{path}.destination_port"),
                    format!("{p} is not a port"),
                ));
            }
            Permission::DestinationPort(*p)
        }
        Some(R::DestinationPortRange(r)) => {
            Permission::DestinationPortRange(i64::from(r.start), i64::from(r.end))
        }
        Some(R::Metadata(md)) => {
            Permission::Metadata(metadata(md, res, &format!("{path}.metadata"))?)
        }
        Some(R::NotRule(r)) => Permission::Not(Box::new(permission(
            r,
            res,
            &format!("{path}.not_rule"),
            depth + 1,
        )?)),
        Some(R::RequestedServerName(s)) => Permission::RequestedServerName(
            super::matchers::string_matcher(s, res, &format!("{path}.requested_server_name"))?,
        ),
        None => return Err(err(res, path, "a permission rule is required")),
    })
}

fn principal(
    m: &pb::Principal,
    res: &str,
    path: &str,
    depth: usize,
) -> Result<Principal, ConvertError> {
    use pb::principal::Identifier as I;
    if depth > MAX_DEPTH {
        return Err(err(res, path, "identifiers nest too deep"));
    }
    let set = |ids: &[pb::Principal], field: &str| -> Result<Box<[Principal]>, ConvertError> {
        if ids.is_empty() {
            return Err(err(
                res,
                format!("{path}.{field}.ids"),
                "at least one id is required",
            ));
        }
        ids.iter()
            .enumerate()
            .map(|(i, r)| principal(r, res, &format!("{path}.{field}.ids[{i}]"), depth + 1))
            .collect()
    };
    let cidr = |c: &crate::proto::envoy::config::core::v3::CidrRange, field: &str| {
        super::cidr::cidr(
            &c.address_prefix,
            c.prefix_len,
            res,
            &format!("{path}.{field}"),
        )
    };
    Ok(match &m.identifier {
        Some(I::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(I::Any(true)) => Principal::Any,
        Some(I::Any(false)) => return Err(err(res, format!("{path}.any"), "must be true")),
        Some(I::Authenticated(a)) => Principal::Authenticated(match &a.principal_name {
            Some(s) => Some(super::matchers::string_matcher(
                s,
                res,
                &format!("{path}.authenticated.principal_name"),
            )?),
            None => None,
        }),
        #[allow(deprecated)]
        Some(I::SourceIp(c)) => Principal::DirectRemoteIp(cidr(c, "source_ip")?),
        Some(I::DirectRemoteIp(c)) => Principal::DirectRemoteIp(cidr(c, "direct_remote_ip")?),
        Some(I::RemoteIp(c)) => Principal::RemoteIp(cidr(c, "remote_ip")?),
        Some(I::Header(h)) => Principal::Header(super::matchers::header_match(
            h,
            res,
            &format!("{path}.header"),
        )?),
        Some(I::UrlPath(p)) => {
            Principal::UrlPath(path_matcher(p, res, &format!("{path}.url_path"))?)
        }
        Some(I::Metadata(md)) => {
            Principal::Metadata(metadata(md, res, &format!("{path}.metadata"))?)
        }
        Some(I::FilterState(f)) => {
            use matcher::filter_state_matcher::Matcher as F;
            match &f.matcher {
                Some(F::StringMatch(s)) => Principal::FilterState(
                    f.key.as_str().into(),
                    super::matchers::string_matcher(
                        s,
                        res,
                        &format!("{path}.filter_state.string_match"),
                    )?,
                ),
                None => {
                    return Err(err(
                        res,
                        format!("{path}.filter_state"),
                        "string_match is required",
                    ))
                }
            }
        }
        Some(I::NotId(p)) => Principal::Not(Box::new(principal(
            p,
            res,
            &format!("{path}.not_id"),
            depth + 1,
        )?)),
        None => return Err(err(res, path, "a principal identifier is required")),
    })
}

fn path_matcher(
    m: &matcher::PathMatcher,
    res: &str,
    path: &str,
) -> Result<crate::model::matcher::StringMatcher, ConvertError> {
    use matcher::path_matcher::Rule;
    match &m.rule {
        Some(Rule::Path(s)) => super::matchers::string_matcher(s, res, &format!("{path}.path")),
        None => Err(err(res, format!("{path}.path"), "is required")),
    }
}

pub(super) fn metadata(
    m: &matcher::MetadataMatcher,
    res: &str,
    path: &str,
) -> Result<MetadataMatcher, ConvertError> {
    use matcher::metadata_matcher::path_segment::Segment;
    let mut segments = Vec::with_capacity(m.path.len());
    for (i, s) in m.path.iter().enumerate() {
        match &s.segment {
            Some(Segment::Key(k)) if !k.is_empty() => segments.push(k.as_str().into()),
            _ => {
                return Err(err(
                    res,
                    format!("{path}.path[{i}].key"),
                    "a non-empty key is required",
                ))
            }
        }
    }
    if segments.is_empty() {
        return Err(err(
            res,
            format!("{path}.path"),
            "at least one segment is required",
        ));
    }
    let Some(v) = &m.value else {
        return Err(err(res, format!("{path}.value"), "is required"));
    };
    Ok(MetadataMatcher {
        filter: m.filter.as_str().into(),
        path: segments.into_boxed_slice(),
        value: value(v, res, &format!("{path}.value"))?,
        invert: m.invert,
    })
}

fn value(m: &matcher::ValueMatcher, res: &str, path: &str) -> Result<ValueMatcher, ConvertError> {
    use matcher::value_matcher::MatchPattern as P;
    Ok(match &m.match_pattern {
        Some(P::NullMatch(_)) => ValueMatcher::Null,
        Some(P::DoubleMatch(d)) => {
            use matcher::double_matcher::MatchPattern as D;
            ValueMatcher::Double(match &d.match_pattern {
                Some(D::Range(r)) => DoubleMatch::Range(r.start, r.end),
                Some(D::Exact(x)) => DoubleMatch::Exact(*x),
                None => {
                    return Err(err(
                        res,
                        format!("{path}.double_match"),
                        "range or exact is required",
                    ))
                }
            })
        }
        Some(P::StringMatch(s)) => ValueMatcher::String(super::matchers::string_matcher(
            s,
            res,
            &format!("{path}.string_match"),
        )?),
        Some(P::BoolMatch(b)) => ValueMatcher::Bool(*b),
        Some(P::PresentMatch(b)) => ValueMatcher::Present(*b),
        Some(P::ListMatch(l)) => {
            use matcher::list_matcher::MatchPattern as L;
            match &l.match_pattern {
                Some(L::OneOf(v)) => ValueMatcher::List(Box::new(value(
                    v,
                    res,
                    &format!("{path}.list_match.one_of"),
                )?)),
                None => return Err(err(res, format!("{path}.list_match"), "one_of is required")),
            }
        }
        Some(P::OrMatch(o)) => ValueMatcher::Or(
            o.value_matchers
                .iter()
                .enumerate()
                .map(|(i, v)| value(v, res, &format!("{path}.or_match.value_matchers[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        None => return Err(err(res, path, "a value matcher is required")),
    })
}
