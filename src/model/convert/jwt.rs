//! `envoy.filters.http.jwt_authn` → [`JwtAuthn`], with Envoy's load-time checks and
//! words: an unknown provider or requirement name, a local key set that does not parse
//! and a remote one without a usable URI are refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::jwt::jwks::Jwks;
use crate::jwt::remote::{AsyncFetch, RemoteJwks};
use crate::jwt::token::normalize_audience;
use crate::model::jwt::*;
use crate::proto::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use crate::stats::JwtAuthnStat;

use super::{duration, err, ConvertError, Ctx};

pub(super) const JWT_AUTHN: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub(super) const PER_ROUTE: &str = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

pub(super) fn jwt_authn(
    m: &pb::JwtAuthentication,
    stat_prefix: &str,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<JwtAuthn, ConvertError> {
    let mut extra = m.stat_prefix.clone();
    if !extra.is_empty() && !extra.ends_with('.') {
        extra.push('.');
    }
    let stats = ctx
        .stats
        .scope::<JwtAuthnStat>(&format!("http.{stat_prefix}.jwt_authn.{extra}"));
    let mut names: Vec<&String> = m.providers.keys().collect();
    names.sort();
    if names.len() > 63 {
        return Err(err(
            res,
            format!("{path}.providers"),
            format!("{} providers; at most 63 are supported", names.len()),
        ));
    }
    let mut providers = Vec::with_capacity(names.len());
    let mut index = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let pp = format!("{path}.providers[{name}]");
        providers.push(Arc::new(provider(
            name,
            &m.providers[*name],
            &stats,
            res,
            &pp,
            ctx,
        )?));
        index.insert(name.as_str(), i);
    }
    let mut requirement_map = HashMap::new();
    let mut req_names: Vec<&String> = m.requirement_map.keys().collect();
    req_names.sort();
    for name in &req_names {
        let r = requirement(
            &m.requirement_map[*name],
            &index,
            res,
            &format!("{path}.requirement_map[{name}]"),
        )?;
        requirement_map.insert(name.as_str().into(), Arc::new(r));
    }
    let requirement_names: Box<str> = req_names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
        .into();
    let mut rules = Vec::with_capacity(m.rules.len());
    for (i, r) in m.rules.iter().enumerate() {
        let rp = format!("{path}.rules[{i}]");
        let Some(mm) = &r.r#match else {
            return Err(err(res, format!("{rp}.match"), "match is required"));
        };
        let (path_match, case_sensitive, headers, query) =
            super::matchers::request_match(mm, res, &rp)?;
        use pb::requirement_rule::RequirementType as T;
        let requires = match &r.requirement_type {
            None => None,
            Some(T::Requires(q)) => Some(Arc::new(requirement(
                q,
                &index,
                res,
                &format!("{rp}.requires"),
            )?)),
            Some(T::RequirementName(n)) => match requirement_map.get(n.as_str()) {
                Some(q) => Some(Arc::clone(q)),
                None => {
                    return Err(err(
                        res,
                        format!("{rp}.requirement_name"),
                        format!(
                            "Wrong requirement_name: {n}. It should be one of [{requirement_names}]"
                        ),
                    ))
                }
            },
        };
        rules.push(Rule {
            path: path_match,
            case_sensitive,
            headers,
            query,
            requires,
        });
    }
    Ok(JwtAuthn {
        providers,
        rules,
        requirement_map,
        requirement_names,
        bypass_cors_preflight: m.bypass_cors_preflight,
        strip_failure_response: m.strip_failure_response,
        stats,
    })
}

fn provider(
    name: &str,
    p: &pb::JwtProvider,
    stats: &Arc<crate::stats::Scope>,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Provider, ConvertError> {
    let f = |field: &str| format!("{path}.{field}");
    use pb::jwt_provider::JwksSourceSpecifier as J;
    let jwks = match &p.jwks_source_specifier {
        None => return Err(err(res, path, "remote_jwks or local_jwks is required")),
        Some(J::LocalJwks(ds)) => {
            let text = super::data_source(ds, res, &f("local_jwks"))?;
            let jwks = Jwks::parse(&text).map_err(|s| {
                err(
                    res,
                    f("local_jwks"),
                    format!(
                        "Provider '{name}' in jwt_authn config has invalid local jwks: {}",
                        s.text()
                    ),
                )
            })?;
            JwksSource::Local(Arc::new(jwks))
        }
        Some(J::RemoteJwks(r)) => {
            JwksSource::Remote(remote(name, r, stats, res, &f("remote_jwks"))?)
        }
    };
    if p.jwt_cache_config.is_some() {
        // A cache of verified tokens: a saving of CPU, never a change of verdict.
        ctx.ignored.push(format!("{res}.{path}.jwt_cache_config"));
    }
    let mut locations = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            return Err(err(
                res,
                f(&format!("from_headers[{i}].name")),
                "must not be empty",
            ));
        }
        locations.push(Location::Header(
            h.name.to_ascii_lowercase().into(),
            h.value_prefix.as_str().into(),
        ));
    }
    for q in &p.from_params {
        locations.push(Location::Param(q.as_str().into()));
    }
    for c in &p.from_cookies {
        locations.push(Location::Cookie(c.as_str().into()));
    }
    if locations.is_empty() {
        locations = default_locations();
    }
    let mut claim_to_headers = Vec::with_capacity(p.claim_to_headers.len());
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let cp = f(&format!("claim_to_headers[{i}]"));
        if !writable(&c.header_name) {
            return Err(err(res, format!("{cp}.header_name"), NOT_WRITABLE));
        }
        if c.claim_name.is_empty() {
            return Err(err(res, format!("{cp}.claim_name"), "must not be empty"));
        }
        claim_to_headers.push((
            c.header_name.to_ascii_lowercase().into(),
            c.claim_name.as_str().into(),
        ));
    }
    let forward_payload_header: Option<Box<str>> = (!p.forward_payload_header.is_empty())
        .then(|| p.forward_payload_header.to_ascii_lowercase().into());
    if let Some(h) = &forward_payload_header {
        if !writable(h) {
            return Err(err(res, f("forward_payload_header"), NOT_WRITABLE));
        }
    }
    let subjects = match &p.subjects {
        Some(s) => Some(super::matchers::string_matcher(s, res, &f("subjects"))?),
        None => None,
    };
    let max_lifetime = match &p.max_lifetime {
        Some(d) => Some(duration(d, res, &f("max_lifetime"))?),
        None if p.require_expiration => Some(Duration::MAX),
        None => None,
    };
    let opt = |s: &str| (!s.is_empty()).then(|| s.into());
    Ok(Provider {
        name: name.into(),
        issuer: p.issuer.as_str().into(),
        audiences: p
            .audiences
            .iter()
            .map(|a| normalize_audience(a).to_string())
            .collect(),
        subjects,
        max_lifetime,
        jwks,
        forward: p.forward,
        locations,
        forward_payload_header,
        pad_forward_payload_header: p.pad_forward_payload_header,
        payload_in_metadata: opt(&p.payload_in_metadata),
        header_in_metadata: opt(&p.header_in_metadata),
        failed_status_in_metadata: opt(&p.failed_status_in_metadata),
        space_delimited_claims: p
            .normalize_payload_in_metadata
            .as_ref()
            .map(|n| n.space_delimited_claims.clone())
            .unwrap_or_default(),
        clock_skew: if p.clock_skew_seconds == 0 {
            60
        } else {
            u64::from(p.clock_skew_seconds)
        },
        claim_to_headers,
        clear_route_cache: p.clear_route_cache,
    })
}

fn remote(
    name: &str,
    r: &pb::RemoteJwks,
    stats: &Arc<crate::stats::Scope>,
    res: &str,
    path: &str,
) -> Result<Arc<RemoteJwks>, ConvertError> {
    let f = |field: &str| format!("{path}.{field}");
    let Some(u) = &r.http_uri else {
        return Err(err(res, f("http_uri"), "http_uri is required"));
    };
    let bad_uri = || {
        err(
            res,
            f("http_uri.uri"),
            format!("Provider '{name}' has an invalid URI: '{}'", u.uri),
        )
    };
    let (scheme, rest) = u.uri.split_once("://").ok_or_else(bad_uri)?;
    if !matches!(scheme, "http" | "https") {
        return Err(bad_uri());
    }
    let (authority, p) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(bad_uri());
    }
    use crate::proto::envoy::config::core::v3::http_uri::HttpUpstreamType as U;
    let cluster = match &u.http_upstream_type {
        Some(U::Cluster(c)) if !c.is_empty() => c.as_str(),
        _ => return Err(err(res, f("http_uri.cluster"), "cluster is required")),
    };
    let Some(t) = &u.timeout else {
        return Err(err(res, f("http_uri.timeout"), "timeout is required"));
    };
    let timeout = duration(t, res, &f("http_uri.timeout"))?;
    let cache_duration = match &r.cache_duration {
        Some(d) => duration(d, res, &f("cache_duration"))?,
        None => Duration::from_secs(600),
    };
    if cache_duration < Duration::from_millis(1) || cache_duration.as_secs() >= 9_000_000_000 {
        return Err(err(
            res,
            f("cache_duration"),
            "must be at least 1ms and less than 9e9 seconds",
        ));
    }
    let async_fetch = match &r.async_fetch {
        Some(a) => Some(AsyncFetch {
            failed_refetch: match &a.failed_refetch_duration {
                Some(d) => duration(d, res, &f("async_fetch.failed_refetch_duration"))?,
                None => Duration::from_secs(1),
            },
        }),
        None => None,
    };
    let (retries, backoff) = match &r.retry_policy {
        None => (0, (Duration::ZERO, Duration::ZERO)),
        Some(rp) => {
            let base = match rp
                .retry_back_off
                .as_ref()
                .and_then(|b| b.base_interval.as_ref())
            {
                Some(d) => duration(d, res, &f("retry_policy.retry_back_off.base_interval"))?,
                None => Duration::from_secs(1),
            };
            let max = match rp
                .retry_back_off
                .as_ref()
                .and_then(|b| b.max_interval.as_ref())
            {
                Some(d) => duration(d, res, &f("retry_policy.retry_back_off.max_interval"))?,
                None => base.saturating_mul(10),
            };
            if max < base {
                return Err(err(
                    res,
                    f("retry_policy.retry_back_off.max_interval"),
                    "must be at least base_interval",
                ));
            }
            let retries = rp.num_retries.unwrap_or(1);
            if retries > 10 {
                return Err(err(
                    res,
                    f("retry_policy.num_retries"),
                    "at most 10 retries are supported",
                ));
            }
            (retries, (base, max))
        }
    };
    Ok(RemoteJwks::new(
        &u.uri,
        (scheme, authority, p),
        cluster,
        timeout,
        cache_duration,
        async_fetch,
        retries,
        backoff,
        stats.clone(),
    ))
}

fn requirement(
    r: &pb::JwtRequirement,
    index: &HashMap<&str, usize>,
    res: &str,
    path: &str,
) -> Result<Requirement, ConvertError> {
    use pb::jwt_requirement::RequiresType as T;
    let provider = |name: &str, field: &str| {
        index.get(name).copied().ok_or_else(|| {
            err(
                res,
                format!("{path}.{field}"),
                format!("Required provider ['{name}'] is not configured."),
            )
        })
    };
    let list = |items: &[pb::JwtRequirement], field: &str| {
        if items.len() < 2 {
            return Err(err(
                res,
                format!("{path}.{field}.requirements"),
                "needs at least 2 requirements",
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, q)| requirement(q, index, res, &format!("{path}.{field}.requirements[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &r.requires_type {
        None => Requirement::Empty,
        Some(T::ProviderName(n)) => Requirement::Provider(provider(n, "provider_name")?, None),
        Some(T::ProviderAndAudiences(pa)) => Requirement::Provider(
            provider(&pa.provider_name, "provider_and_audiences.provider_name")?,
            (!pa.audiences.is_empty()).then(|| {
                pa.audiences
                    .iter()
                    .map(|a| normalize_audience(a).to_string())
                    .collect()
            }),
        ),
        Some(T::RequiresAny(l)) => Requirement::Any(list(&l.requirements, "requires_any")?),
        Some(T::RequiresAll(l)) => Requirement::All(list(&l.requirements, "requires_all")?),
        Some(T::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(T::AllowMissing(_)) => Requirement::AllowMissing,
    })
}

pub(super) fn per_route(
    m: &pb::PerRouteConfig,
    res: &str,
    path: &str,
) -> Result<JwtPerRoute, ConvertError> {
    use pb::per_route_config::RequirementSpecifier as S;
    match &m.requirement_specifier {
        Some(S::Disabled(true)) => Ok(JwtPerRoute::Disabled),
        Some(S::Disabled(false)) => {
            Err(err(res, format!("{path}.disabled"), "only true is allowed"))
        }
        Some(S::RequirementName(n)) if !n.is_empty() => {
            Ok(JwtPerRoute::RequirementName(n.as_str().into()))
        }
        _ => Err(err(res, path, "disabled or requirement_name is required")),
    }
}

const NOT_WRITABLE: &str =
    "must be a header the filter may write (not a pseudo-header, host, framing or hop-by-hop)";

/// A name the filter may set on the request: valid, and none the proxy frames the
/// request with or owns.
fn writable(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    !n.is_empty()
        && !n.starts_with(':')
        && http::HeaderName::from_bytes(n.as_bytes()).is_ok()
        && !matches!(n.as_str(), "host" | "content-length" | "transfer-encoding")
        && !crate::model::headers::is_hop_by_hop(n.as_bytes())
}
