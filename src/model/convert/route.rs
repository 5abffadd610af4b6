//! One route of a `RouteConfiguration` → [`Route`] (the table: `route_table`).

use std::sync::Arc;
use std::time::Duration;

use crate::model::route::*;
use crate::proto::envoy::config::route::v3 as pb;

use super::matchers::{header_mods, regex_substitute, request_match};
use super::{data_source, duration, err, timeout, ConvertError, Ctx};

/// What a virtual host gives its routes' forwarding.
pub(super) struct VhostDefaults<'a> {
    /// `include_request_attempt_count`, `include_attempt_count_in_response`.
    pub attempt_count: (bool, bool),
    pub retry: Option<&'a Arc<crate::model::retry::RetryPolicy>>,
    pub mirrors: &'a Arc<[Mirror]>,
}

pub(super) fn route(
    r: &pb::Route,
    res: &str,
    rp: &str,
    validate_clusters: bool,
    max_body: usize,
    vh: VhostDefaults<'_>,
    ctx: &mut Ctx<'_>,
) -> Result<Route, ConvertError> {
    let VhostDefaults {
        attempt_count,
        retry: vh_retry,
        mirrors,
    } = vh;
    let Some(m) = &r.r#match else {
        return Err(err(res, format!("{rp}.match"), "match is required"));
    };
    let decorator = match &r.decorator {
        Some(d) if d.operation.is_empty() => {
            return Err(err(
                res,
                format!("{rp}.decorator.operation"),
                "must not be empty",
            ))
        }
        Some(d) => Some(Arc::new(crate::model::route::Decorator {
            operation: d.operation.as_str().into(),
            propagate: d.propagate.unwrap_or(true),
        })),
        None => None,
    };
    let (path, case_sensitive, headers, query) = request_match(m, res, rp)?;
    use pb::route::Action as A;
    let action = match &r.action {
        Some(A::Route(ra)) => {
            let mut f = forward(ra, res, &format!("{rp}.route"), validate_clusters, ctx)?;
            f.attempt_count = attempt_count;
            // A route's own policy replaces its virtual host's whole, as in Envoy.
            if f.retry.is_none() {
                f.retry = vh_retry.cloned();
            }
            if f.mirrors.is_empty() {
                f.mirrors = mirrors.clone();
            }
            Action::Forward(Arc::new(f))
        }
        Some(A::Redirect(rd)) => {
            Action::Redirect(Box::new(redirect(rd, res, &format!("{rp}.redirect"))?))
        }
        Some(A::DirectResponse(dr)) => {
            let dp = format!("{rp}.direct_response");
            if !(200..=599).contains(&dr.status) {
                return Err(err(
                    res,
                    format!("{dp}.status"),
                    "must be between 200 and 599",
                ));
            }
            let body = match &dr.body {
                Some(b) => data_source(b, res, &format!("{dp}.body"))?,
                None => bytes::Bytes::new(),
            };
            if body.len() > max_body {
                return Err(err(
                    res,
                    format!("{dp}.body"),
                    format!("body is {} bytes, more than max_direct_response_body_size_bytes ({max_body})", body.len()),
                ));
            }
            Action::Direct(Box::new(DirectResponse {
                status: dr.status as u16,
                body,
            }))
        }
        None => {
            return Err(err(
                res,
                rp,
                "an action (route, redirect, direct_response) is required",
            ))
        }
    };
    Ok(Route {
        decorator,
        metadata: crate::model::metadata::Packed::new(r.metadata.as_ref()),
        per_filter: super::http_filter::per_filter_configs(
            &r.typed_per_filter_config,
            res,
            rp,
            ctx,
        )?,
        name: r.name.as_str().into(),
        path,
        case_sensitive,
        headers,
        query,
        action,
        request_headers: header_mods(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            res,
            rp,
            "request",
        )?,
        response_headers: header_mods(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            res,
            rp,
            "response",
        )?,
    })
}

fn forward(
    ra: &pb::RouteAction,
    res: &str,
    fp: &str,
    validate_clusters: bool,
    ctx: &mut Ctx<'_>,
) -> Result<Forward, ConvertError> {
    // Weighted clusters' per-filter configurations, before `cluster_ref` borrows `ctx`.
    let mut weighted_per_filter = Vec::new();
    if let Some(pb::route_action::ClusterSpecifier::WeightedClusters(wc)) = &ra.cluster_specifier {
        for (i, cw) in wc.clusters.iter().enumerate() {
            let wp = format!("{fp}.weighted_clusters.clusters[{i}]");
            weighted_per_filter.push(super::http_filter::per_filter_configs(
                &cw.typed_per_filter_config,
                res,
                &wp,
                ctx,
            )?);
        }
    }
    let mut weighted_per_filter = weighted_per_filter.into_iter();
    let cluster_ref = |name: &str, path: String| -> Result<ClusterRef, ConvertError> {
        let index = ctx.cluster_index.get(name).copied();
        if index.is_none() && validate_clusters {
            return Err(err(res, path, format!("unknown cluster '{name}'")));
        }
        Ok(ClusterRef {
            name: name.into(),
            index,
        })
    };
    use pb::route_action::ClusterSpecifier as CS;
    let target = match &ra.cluster_specifier {
        Some(CS::Cluster(c)) if !c.is_empty() => {
            Target::Cluster(cluster_ref(c, format!("{fp}.cluster"))?)
        }
        Some(CS::Cluster(_)) | None => {
            return Err(err(res, fp, "cluster or weighted_clusters is required"))
        }
        Some(CS::WeightedClusters(wc)) => {
            let mut targets = Vec::with_capacity(wc.clusters.len());
            let mut total = 0u32;
            for (i, cw) in wc.clusters.iter().enumerate() {
                let wp = format!("{fp}.weighted_clusters.clusters[{i}]");
                let weight = cw.weight.unwrap_or(0);
                total = total
                    .checked_add(weight)
                    .ok_or_else(|| err(res, format!("{wp}.weight"), "total weight overflows"))?;
                use pb::weighted_cluster::cluster_weight::HostRewriteSpecifier as H;
                targets.push(WeightedTarget {
                    per_filter: weighted_per_filter.next().unwrap_or_default(),
                    cluster: cluster_ref(&cw.name, format!("{wp}.name"))?,
                    weight,
                    request_headers: header_mods(
                        &cw.request_headers_to_add,
                        &cw.request_headers_to_remove,
                        res,
                        &wp,
                        "request",
                    )?,
                    response_headers: header_mods(
                        &cw.response_headers_to_add,
                        &cw.response_headers_to_remove,
                        res,
                        &wp,
                        "response",
                    )?,
                    host_rewrite: cw
                        .host_rewrite_specifier
                        .as_ref()
                        .map(|H::HostRewriteLiteral(h)| h.as_str().into()),
                });
            }
            if total == 0 {
                return Err(err(
                    res,
                    format!("{fp}.weighted_clusters"),
                    "weights must add up to more than 0",
                ));
            }
            if let Some(t) = wc.total_weight {
                if t != total {
                    return Err(err(
                        res,
                        format!("{fp}.weighted_clusters.total_weight"),
                        format!("is {t} but the weights add up to {total}"),
                    ));
                }
            }
            Target::Weighted { targets, total }
        }
    };
    use pb::route_action::ClusterNotFoundResponseCode as C;
    let cluster_not_found_status = match C::try_from(ra.cluster_not_found_response_code) {
        Ok(C::ServiceUnavailable) => 503,
        Ok(C::NotFound) => 404,
        Ok(C::InternalServerError) => 500,
        Err(_) => {
            return Err(err(
                res,
                format!("{fp}.cluster_not_found_response_code"),
                "unknown value",
            ))
        }
    };
    if !ra.prefix_rewrite.is_empty() && ra.regex_rewrite.is_some() {
        return Err(err(
            res,
            format!("{fp}.regex_rewrite"),
            "prefix_rewrite and regex_rewrite are exclusive",
        ));
    }
    let regex_rewrite = match &ra.regex_rewrite {
        Some(rr) => Some(regex_substitute(rr, res, &format!("{fp}.regex_rewrite"))?),
        None => None,
    };
    use pb::route_action::HostRewriteSpecifier as H;
    let host_rewrite = match &ra.host_rewrite_specifier {
        Some(H::HostRewriteLiteral(h)) => HostRewrite::Literal(h.as_str().into()),
        Some(H::AutoHostRewrite(true)) => HostRewrite::Auto,
        Some(H::AutoHostRewrite(false)) | None => HostRewrite::None,
    };
    let stream_duration = match &ra.max_stream_duration {
        None => None,
        Some(m) => {
            let mp = format!("{fp}.max_stream_duration");
            let opt = |d: Option<&prost_types::Duration>, field: &str| {
                d.map(|d| duration(d, res, &format!("{mp}.{field}")))
                    .transpose()
            };
            Some(StreamDuration {
                max: opt(m.max_stream_duration.as_ref(), "max_stream_duration")?
                    .filter(|d| !d.is_zero()),
                grpc_header_max: opt(
                    m.grpc_timeout_header_max.as_ref(),
                    "grpc_timeout_header_max",
                )?,
                grpc_header_offset: opt(
                    m.grpc_timeout_header_offset.as_ref(),
                    "grpc_timeout_header_offset",
                )?,
            })
        }
    };
    let mut upgrades = Vec::with_capacity(ra.upgrade_configs.len());
    for (i, u) in ra.upgrade_configs.iter().enumerate() {
        let up = format!("{fp}.upgrade_configs[{i}]");
        if u.upgrade_type.is_empty() {
            return Err(err(
                res,
                format!("{up}.upgrade_type"),
                "upgrade_type is required",
            ));
        }
        let connect = u.upgrade_type.eq_ignore_ascii_case("connect");
        if !connect && u.connect_config.is_some() {
            return Err(err(
                res,
                format!("{up}.connect_config"),
                "only a CONNECT upgrade takes connect_config",
            ));
        }
        if connect && u.connect_config.is_none() && u.enabled.unwrap_or(true) {
            return Err(err(
                res,
                format!("{up}.connect_config"),
                "CONNECT is only terminated by the proxy (set connect_config: {}); forwarding CONNECT to an upstream proxy is not supported",
            ));
        }
        upgrades.push(RouteUpgrade {
            kind: u.upgrade_type.to_ascii_lowercase().into_boxed_str(),
            enabled: u.enabled.unwrap_or(true),
            terminate_connect: connect && u.connect_config.is_some(),
        });
    }
    // With max_stream_duration set, Envoy uses its "new timeouts": no route timeout.
    let route_timeout = if stream_duration.is_some() {
        None
    } else {
        timeout(
            ra.timeout.as_ref(),
            Some(Duration::from_secs(15)),
            res,
            &format!("{fp}.timeout"),
        )?
    };
    let retry = match &ra.retry_policy {
        Some(p) => Some(ctx.retry_policy(p, res, &format!("{fp}.retry_policy"))?),
        None => None,
    };
    let max_grpc_timeout = ra
        .max_grpc_timeout
        .as_ref()
        .map(|d| duration(d, res, &format!("{fp}.max_grpc_timeout")))
        .transpose()?;
    let mirrors = super::mirror::policies(
        &ra.request_mirror_policies,
        res,
        &format!("{fp}.request_mirror_policies"),
        validate_clusters,
        ctx,
    )?;
    let more = ForwardMore {
        prefix_rewrite: (!ra.prefix_rewrite.is_empty()).then(|| ra.prefix_rewrite.clone()),
        regex_rewrite,
        host_rewrite,
        idle_timeout: timeout(
            ra.idle_timeout.as_ref(),
            None,
            res,
            &format!("{fp}.idle_timeout"),
        )?,
        stream_duration,
        upgrades,
        grpc_timeout_offset: ra
            .grpc_timeout_offset
            .as_ref()
            .map(|d| duration(d, res, &format!("{fp}.grpc_timeout_offset")))
            .transpose()?,
        hash_policy: super::lb::hash_policy(&ra.hash_policy, res, &format!("{fp}.hash_policy"))?
            .into_vec(),
    };
    Ok(Forward {
        target,
        timeout: route_timeout,
        max_grpc_timeout,
        retry,
        mirrors,
        cluster_not_found_status,
        attempt_count: (false, false),
        more: more.boxed(),
    })
}

fn redirect(rd: &pb::RedirectAction, res: &str, rp: &str) -> Result<Redirect, ConvertError> {
    use pb::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let scheme = match &rd.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path = match &rd.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => RedirectPath::Replace(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::Prefix(p.clone()),
        Some(P::RegexRewrite(rr)) => {
            let (re, sub) = regex_substitute(rr, res, &format!("{rp}.regex_rewrite"))?;
            RedirectPath::Regex(re, sub)
        }
        None => RedirectPath::Keep,
    };
    let status = match C::try_from(rd.response_code) {
        Ok(C::MovedPermanently) => 301,
        Ok(C::Found) => 302,
        Ok(C::SeeOther) => 303,
        Ok(C::TemporaryRedirect) => 307,
        Ok(C::PermanentRedirect) => 308,
        Err(_) => return Err(err(res, format!("{rp}.response_code"), "unknown value")),
    };
    if rd.port_redirect > 65535 {
        return Err(err(res, format!("{rp}.port_redirect"), "not a port"));
    }
    Ok(Redirect {
        scheme,
        host: (!rd.host_redirect.is_empty()).then(|| rd.host_redirect.clone()),
        port: (rd.port_redirect != 0).then_some(rd.port_redirect as u16),
        path,
        status,
        strip_query: rd.strip_query,
    })
}
