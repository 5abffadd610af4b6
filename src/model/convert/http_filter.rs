//! `http_filters` → [`HttpFilters`] and `typed_per_filter_config` → [`PerFilterConfigs`].
//! A filter Ringside does not implement is refused by type URL; a field of one it does
//! implement but not that field is refused by name (the wire scan in `xds::unknown`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::model::filter::*;
use crate::model::ratelimit::TokenBucket;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::config::route::v3 as route_pb;
use crate::proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use crate::proto::envoy::extensions::filters::http::fault::v3 as fault_pb;
use crate::proto::envoy::extensions::filters::http::grpc_stats::v3 as grpc_pb;
use crate::proto::envoy::extensions::filters::http::local_ratelimit::v3 as rl_pb;
use crate::proto::envoy::extensions::filters::http::router::v3::Router;
use crate::proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::stats::{FaultStat, LocalRateLimitStat};

use super::fault::{fault, runtime_fraction};
use super::{any_type, decode_any, duration, err, ConvertError, Ctx};

pub(super) const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS: &str = "envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";
const GRPC_STATS: &str = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
const LOCAL_RATELIMIT: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const FILTER_CONFIG: &str = "envoy.config.route.v3.FilterConfig";

/// What the router filter configures.
#[derive(Default)]
pub(super) struct RouterConfig {
    pub suppress_envoy_headers: bool,
}

/// The connection manager's `http_filters`: the built-in filters in order, then the router,
/// which must be last. `noop` decides Istio's telemetry filters (accepted, recorded in
/// `ctx.ignored`).
pub(super) fn http_filters(
    filters: &[hcm::HttpFilter],
    stat_prefix: &str,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
    noop: impl Fn(&str, &prost_types::Any) -> Option<&'static str>,
) -> Result<(HttpFilters, RouterConfig), ConvertError> {
    let mut list = Vec::new();
    let mut router = None;
    let mut istio_stats = false;
    if filters.is_empty() {
        return Err(err(
            res,
            format!("{path}.http_filters"),
            "the router filter is required",
        ));
    }
    for (i, f) in filters.iter().enumerate() {
        let fp = format!("{path}.http_filters[{i}]");
        let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(err(
                res,
                format!("{fp}.typed_config"),
                "typed_config is required",
            ));
        };
        if f.name.is_empty() {
            return Err(err(res, format!("{fp}.name"), "a filter name is required"));
        }
        if router.is_some() {
            return Err(err(
                res,
                format!("{path}.http_filters[{}]", i - 1),
                "the router must be the last HTTP filter",
            ));
        }
        if let Some(kind) = super::telemetry::http_filter(&f.name, any, res, &fp, ctx)? {
            istio_stats |= matches!(kind, FilterKind::IstioStats(_));
            list.push(HttpFilter {
                name: f.name.as_str().into(),
                disabled: f.disabled,
                kind,
            });
            continue;
        }
        if let Some(why) = noop(&f.name, any) {
            ctx.ignored.push(format!("{res}.{fp} ({why})"));
            continue;
        }
        if let Some((t, v)) = super::istio::typed_struct(any) {
            let at = format!("{fp}.typed_config");
            let kind = match t.as_str() {
                // Only the per-route configuration enables it (as in istio-proxy).
                super::istio::CONNECT_AUTHORITY => {
                    super::istio::connect_authority(&v, res, &at)?;
                    Some(FilterKind::ConnectAuthority)
                }
                super::istio::CONNECT_BAGGAGE => {
                    super::istio::connect_baggage(&v, res, &at)?;
                    Some(FilterKind::ConnectBaggage)
                }
                _ => None,
            };
            if let Some(kind) = kind {
                list.push(HttpFilter {
                    name: f.name.as_str().into(),
                    disabled: f.disabled,
                    kind,
                });
                continue;
            }
        }
        let t = any_type(any);
        let kind = match t {
            ROUTER => {
                let r: Router = decode_any(any, ROUTER, res, &fp)?;
                if r.dynamic_stats.is_some() || r.start_child_span {
                    ctx.ignored
                        .push(format!("{fp}.typed_config.dynamic_stats/start_child_span"));
                }
                if f.disabled {
                    return Err(err(
                        res,
                        format!("{fp}.disabled"),
                        "the router cannot be disabled",
                    ));
                }
                router = Some(RouterConfig {
                    suppress_envoy_headers: r.suppress_envoy_headers,
                });
                continue;
            }
            FAULT => {
                let m: fault_pb::HttpFault = decode_any(any, FAULT, res, &fp)?;
                let config = fault(&m, res, &format!("{fp}.typed_config"))?;
                FilterKind::Fault(FaultFilter {
                    // An empty configuration (istiod's) injects nothing: not even looked at.
                    config: (!config.is_empty()).then(|| Arc::new(config)),
                    stats: ctx
                        .stats
                        .scope::<FaultStat>(&format!("http.{stat_prefix}.fault.")),
                    active: Arc::default(),
                })
            }
            CORS => {
                let _: cors_pb::Cors = decode_any(any, CORS, res, &fp)?;
                FilterKind::Cors(CorsFilter {
                    stats: ctx
                        .stats
                        .scope::<crate::stats::CorsStat>(&format!("http.{stat_prefix}.")),
                })
            }
            GRPC_STATS => {
                let m: grpc_pb::FilterConfig = decode_any(any, GRPC_STATS, res, &fp)?;
                FilterKind::GrpcStats(grpc_stats(&m, res, &format!("{fp}.typed_config"))?)
            }
            LOCAL_RATELIMIT => {
                let m: rl_pb::LocalRateLimit = decode_any(any, LOCAL_RATELIMIT, res, &fp)?;
                FilterKind::LocalRateLimit(Arc::new(local_ratelimit(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                    ctx,
                    false,
                )?))
            }
            super::compressor::COMPRESSOR => {
                let m = decode_any(any, super::compressor::COMPRESSOR, res, &fp)?;
                FilterKind::Compressor(Arc::new(super::compressor::compressor(
                    &m,
                    stat_prefix,
                    res,
                    &format!("{fp}.typed_config"),
                    ctx,
                )?))
            }
            super::rbac::HTTP => {
                let m = decode_any(any, super::rbac::HTTP, res, &fp)?;
                FilterKind::Rbac(Arc::new(super::rbac::http(
                    &m,
                    stat_prefix,
                    res,
                    &format!("{fp}.typed_config"),
                    ctx,
                )?))
            }
            super::ext_authz::EXT_AUTHZ => {
                let m = decode_any(any, super::ext_authz::EXT_AUTHZ, res, &fp)?;
                FilterKind::ExtAuthz(Arc::new(super::ext_authz::ext_authz(
                    &m,
                    stat_prefix,
                    res,
                    &format!("{fp}.typed_config"),
                    ctx,
                )?))
            }
            super::jwt::JWT_AUTHN => {
                let m = decode_any(any, super::jwt::JWT_AUTHN, res, &fp)?;
                FilterKind::JwtAuthn(Arc::new(super::jwt::jwt_authn(
                    &m,
                    stat_prefix,
                    res,
                    &format!("{fp}.typed_config"),
                    ctx,
                )?))
            }
            super::filter_state::HTTP => {
                use crate::proto::envoy::extensions::filters::http::set_filter_state::v3 as sfs;
                let m: sfs::Config = decode_any(any, super::filter_state::HTTP, res, &fp)?;
                let at = format!("{fp}.typed_config.on_request_headers");
                FilterKind::SetFilterState(
                    super::filter_state::values(&m.on_request_headers, res, &at)?.into(),
                )
            }
            _ if f.is_optional => {
                // Envoy skips an optional filter it does not know.
                ctx.ignored
                    .push(format!("{res}.{fp} (optional filter of type {t} skipped)"));
                continue;
            }
            _ => {
                return Err(err(
                    res,
                    format!("{fp}.typed_config"),
                    format!("HTTP filter '{}' of type {t} is not supported", f.name),
                ))
            }
        };
        // Two filters may share a name, as in Envoy (istiod names both of its RBAC filters
        // `envoy.filters.http.rbac`); a route's per-filter configuration then reaches both.
        list.push(HttpFilter {
            name: f.name.as_str().into(),
            disabled: f.disabled,
            kind,
        });
    }
    let Some(router) = router else {
        return Err(err(
            res,
            format!("{path}.http_filters"),
            "the router filter is required (last)",
        ));
    };
    Ok((
        HttpFilters {
            list: list.into_boxed_slice(),
            istio_stats,
        },
        router,
    ))
}

fn cors_policy(m: &cors_pb::CorsPolicy, res: &str, path: &str) -> Result<CorsPolicy, ConvertError> {
    let p = |f: &str| format!("{path}.{f}");
    let mut allow_origin = Vec::with_capacity(m.allow_origin_string_match.len());
    for (i, s) in m.allow_origin_string_match.iter().enumerate() {
        allow_origin.push(super::matchers::string_matcher(
            s,
            res,
            &p(&format!("allow_origin_string_match[{i}]")),
        )?);
    }
    let text = |s: &str| (!s.is_empty()).then(|| s.into());
    let fraction_of = |f: Option<&core::RuntimeFractionalPercent>, field: &str| {
        f.map(|f| runtime_fraction(Some(f), Fraction::ALL, res, &p(field)))
            .transpose()
    };
    Ok(CorsPolicy {
        allow_origin,
        allow_methods: text(&m.allow_methods),
        allow_headers: text(&m.allow_headers),
        expose_headers: text(&m.expose_headers),
        max_age: text(&m.max_age),
        allow_credentials: m.allow_credentials,
        allow_private_network_access: m.allow_private_network_access,
        forward_not_matching_preflights: m.forward_not_matching_preflights,
        enabled: fraction_of(m.filter_enabled.as_ref(), "filter_enabled")?,
        shadow: fraction_of(m.shadow_enabled.as_ref(), "shadow_enabled")?,
    })
}

fn grpc_stats(
    m: &grpc_pb::FilterConfig,
    res: &str,
    path: &str,
) -> Result<GrpcStatsConfig, ConvertError> {
    use grpc_pb::filter_config::PerMethodStatSpecifier as S;
    let per_method = match &m.per_method_stat_specifier {
        None => PerMethod::None,
        Some(S::StatsForAllMethods(v)) if !v => PerMethod::None,
        Some(S::StatsForAllMethods(_)) => {
            return Err(err(
                res,
                format!("{path}.stats_for_all_methods"),
                "stats for every method name (unbounded stat names) are not supported; \
                 use individual_method_stats_allowlist",
            ))
        }
        Some(S::IndividualMethodStatsAllowlist(_)) => {
            return Err(err(
                res,
                format!("{path}.individual_method_stats_allowlist"),
                "per-method gRPC stats are not supported yet",
            ))
        }
    };
    if m.enable_upstream_stats {
        return Err(err(
            res,
            format!("{path}.enable_upstream_stats"),
            "upstream gRPC timing stats are not supported yet",
        ));
    }
    Ok(GrpcStatsConfig {
        emit_filter_state: m.emit_filter_state,
        per_method,
        enable_upstream_stats: false,
        replace_dots_in_service_name: m.replace_dots_in_grpc_service_name,
    })
}

fn local_ratelimit(
    m: &rl_pb::LocalRateLimit,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
    per_route: bool,
) -> Result<LocalRateLimit, ConvertError> {
    let p = |f: &str| format!("{path}.{f}");
    if m.stat_prefix.is_empty() {
        return Err(err(res, p("stat_prefix"), "stat_prefix is required"));
    }
    if m.local_rate_limit_per_downstream_connection {
        return Err(err(
            res,
            p("local_rate_limit_per_downstream_connection"),
            "per-connection buckets are not supported",
        ));
    }
    if !m.request_headers_to_add_when_not_enforced.is_empty() {
        return Err(err(
            res,
            p("request_headers_to_add_when_not_enforced"),
            "not supported yet",
        ));
    }
    // Envoy answers a status below 400 with 429.
    let status = match &m.status {
        None => 429,
        Some(s) if s.code == 0 => {
            return Err(err(res, p("status.code"), "a status code is required"))
        }
        Some(s) if (400..600).contains(&s.code) => s.code as u16,
        Some(_) => 429,
    };
    if per_route && m.token_bucket.is_none() {
        return Err(err(
            res,
            p("token_bucket"),
            "a per-route local rate limit needs its own token_bucket",
        ));
    }
    let bucket = match &m.token_bucket {
        None => None,
        Some(b) => {
            let fill = match &b.fill_interval {
                Some(d) => duration(d, res, &p("token_bucket.fill_interval"))?,
                None => {
                    return Err(err(
                        res,
                        p("token_bucket.fill_interval"),
                        "fill_interval is required",
                    ))
                }
            };
            if fill < Duration::from_millis(50) {
                return Err(err(
                    res,
                    p("token_bucket.fill_interval"),
                    "must be at least 50ms",
                ));
            }
            let per_fill = b.tokens_per_fill.unwrap_or(1);
            Some(Arc::new(TokenBucket::new(
                u64::from(b.max_tokens),
                u64::from(per_fill),
                fill,
            )))
        }
    };
    let none = Fraction {
        numerator: 0,
        denominator: 100,
    };
    Ok(LocalRateLimit {
        stats: ctx
            .stats
            .scope::<LocalRateLimitStat>(&format!("{}.http_local_rate_limit.", m.stat_prefix)),
        status,
        bucket,
        enabled: runtime_fraction(m.filter_enabled.as_ref(), none, res, &p("filter_enabled"))?,
        enforced: runtime_fraction(m.filter_enforced.as_ref(), none, res, &p("filter_enforced"))?,
        response_headers: super::matchers::header_mods(
            &m.response_headers_to_add,
            &[],
            res,
            path,
            "response",
        )?,
        x_ratelimit_headers: m.enable_x_ratelimit_headers != 0,
        resource_exhausted: m.rate_limited_as_resource_exhausted,
    })
}

/// A `typed_per_filter_config` map. Keys are filter names; the value is the filter's own
/// configuration type, or a `FilterConfig` wrapping one (or only disabling the filter).
pub(super) fn per_filter_configs(
    map: &HashMap<String, prost_types::Any>,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<PerFilterConfigs, ConvertError> {
    if map.is_empty() {
        return Ok(PerFilterConfigs::default());
    }
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let fp = format!("{path}.typed_per_filter_config['{name}']");
        let any = &map[name];
        let (any, optional, disabled, fp) = if any_type(any) == FILTER_CONFIG {
            let fc: route_pb::FilterConfig = decode_any(any, FILTER_CONFIG, res, &fp)?;
            match fc.config {
                None if fc.disabled => {
                    out.push((name.as_str().into(), PerRoute::Disabled));
                    continue;
                }
                None => {
                    out.push((name.as_str().into(), PerRoute::Enabled));
                    continue;
                }
                Some(inner) => (inner, fc.is_optional, fc.disabled, format!("{fp}.config")),
            }
        } else {
            (any.clone(), false, false, fp)
        };
        if disabled {
            out.push((name.as_str().into(), PerRoute::Disabled));
            continue;
        }
        if let Some((ts, v)) = super::istio::typed_struct(&any) {
            if ts == super::istio::CONNECT_AUTHORITY {
                if let Some(port) = super::istio::connect_authority(&v, res, &fp)? {
                    out.push((name.as_str().into(), PerRoute::ConnectAuthority { port }));
                }
                continue;
            }
        }
        let t = any_type(&any);
        let config = match t {
            FAULT => {
                let m: fault_pb::HttpFault = decode_any(&any, FAULT, res, &fp)?;
                PerRoute::Fault(Arc::new(fault(&m, res, &format!("{fp}.typed_config"))?))
            }
            CORS_POLICY => {
                let m: cors_pb::CorsPolicy = decode_any(&any, CORS_POLICY, res, &fp)?;
                PerRoute::Cors(Arc::new(cors_policy(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                )?))
            }
            LOCAL_RATELIMIT => {
                let m: rl_pb::LocalRateLimit = decode_any(&any, LOCAL_RATELIMIT, res, &fp)?;
                PerRoute::LocalRateLimit(Arc::new(local_ratelimit(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                    ctx,
                    true,
                )?))
            }
            super::compressor::PER_ROUTE => {
                let m = decode_any(&any, super::compressor::PER_ROUTE, res, &fp)?;
                PerRoute::Compressor(Arc::new(super::compressor::per_route(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                )?))
            }
            super::rbac::PER_ROUTE => {
                let m = decode_any(&any, super::rbac::PER_ROUTE, res, &fp)?;
                PerRoute::Rbac(Arc::new(super::rbac::per_route(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                )?))
            }
            super::ext_authz::PER_ROUTE => {
                let m = decode_any(&any, super::ext_authz::PER_ROUTE, res, &fp)?;
                PerRoute::ExtAuthz(Arc::new(super::ext_authz::per_route(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                )?))
            }
            super::jwt::PER_ROUTE => {
                let m = decode_any(&any, super::jwt::PER_ROUTE, res, &fp)?;
                PerRoute::Jwt(Arc::new(super::jwt::per_route(
                    &m,
                    res,
                    &format!("{fp}.typed_config"),
                )?))
            }
            _ if optional => {
                ctx.ignored
                    .push(format!("{res}.{fp} (optional config of type {t} skipped)"));
                continue;
            }
            _ => {
                return Err(err(
                    res,
                    fp,
                    format!("per-route configuration of type {t} is not supported"),
                ))
            }
        };
        out.push((name.as_str().into(), config));
    }
    Ok(PerFilterConfigs(out.into_boxed_slice()))
}
