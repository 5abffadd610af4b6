//! `envoy.filters.network.tcp_proxy` → [`TcpProxy`].

use std::time::Duration;

use crate::model::{TcpHash, TcpProxy};
use crate::proto::envoy::extensions::filters::network::tcp_proxy::v3 as pb;
use crate::stats::TcpStat;

use super::{decode_any, err, timeout, ConvertError, Ctx};

pub(super) const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

pub(super) fn convert(
    any: &prost_types::Any,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<TcpProxy, ConvertError> {
    let t: pb::TcpProxy = decode_any(any, TCP_PROXY, res, path)?;
    let p = |f: &str| format!("{path}.typed_config.{f}");
    if t.stat_prefix.is_empty() {
        return Err(err(res, p("stat_prefix"), "stat_prefix is required"));
    }
    use pb::tcp_proxy::ClusterSpecifier;
    let clusters = match &t.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![(c.as_str().into(), 1)],
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut out = Vec::with_capacity(w.clusters.len());
            for (i, c) in w.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    return Err(err(
                        res,
                        p(&format!("weighted_clusters.clusters[{i}].name")),
                        "a cluster name is required",
                    ));
                }
                if c.weight > 0 {
                    out.push((c.name.as_str().into(), c.weight));
                }
            }
            if out.is_empty() {
                return Err(err(
                    res,
                    p("weighted_clusters"),
                    "at least one cluster with a weight above 0 is required",
                ));
            }
            out
        }
        _ => {
            return Err(err(
                res,
                p("cluster"),
                "cluster or weighted_clusters is required",
            ))
        }
    };
    // Envoy takes at most one.
    if t.hash_policy.len() > 1 {
        return Err(err(
            res,
            p("hash_policy"),
            "at most one hash policy (as in Envoy)",
        ));
    }
    let hash = {
        use crate::proto::envoy::r#type::v3::hash_policy::PolicySpecifier as S;
        match t.hash_policy.first().map(|h| &h.policy_specifier) {
            None => None,
            Some(Some(S::SourceIp(_))) => Some(TcpHash::SourceIp),
            Some(Some(S::FilterState(f))) if f.key.is_empty() => {
                return Err(err(
                    res,
                    p("hash_policy[0].filter_state.key"),
                    "is required",
                ))
            }
            Some(Some(S::FilterState(f))) => Some(TcpHash::FilterState(f.key.as_str().into())),
            Some(None) => {
                return Err(err(
                    res,
                    p("hash_policy[0]"),
                    "source_ip or filter_state is required",
                ))
            }
        }
    };
    let max_connect_attempts = match t.max_connect_attempts {
        None => 1,
        Some(v) if v >= 1 => v,
        Some(_) => return Err(err(res, p("max_connect_attempts"), "must be at least 1")),
    };
    let stats = ctx
        .stats
        .scope::<TcpStat>(&format!("tcp.{}.", t.stat_prefix));
    let mut access_logs = Vec::new();
    for (i, al) in t.access_log.iter().enumerate() {
        let at = p(&format!("access_log[{i}]"));
        access_logs.push(super::access_log::access_log(
            al,
            res,
            &at,
            Some(&mut *ctx),
        )?);
    }
    Ok(TcpProxy {
        log_needs: crate::model::access_log::LogNeeds::of(&access_logs),
        access_logs,
        stat_prefix: t.stat_prefix.clone(),
        stats,
        clusters,
        idle_timeout: timeout(
            t.idle_timeout.as_ref(),
            Some(Duration::from_secs(3600)),
            res,
            &p("idle_timeout"),
        )?,
        max_connect_attempts,
        max_downstream_connection_duration: timeout(
            t.max_downstream_connection_duration.as_ref(),
            None,
            res,
            &p("max_downstream_connection_duration"),
        )?,
        exchange: None,
        istio: None,
        istio_authn: false,
        hash,
        tunneling: t
            .tunneling_config
            .as_ref()
            .map(|c| tunneling(c, res, &p("tunneling_config")))
            .transpose()?
            .map(std::sync::Arc::new),
    })
}

fn tunneling(
    c: &pb::tcp_proxy::TunnelingConfig,
    res: &str,
    path: &str,
) -> Result<crate::model::Tunneling, ConvertError> {
    if c.hostname.is_empty() {
        return Err(err(res, format!("{path}.hostname"), "is required"));
    }
    let hostname = crate::model::format::Format::parse(&c.hostname)
        .map_err(|e| err(res, format!("{path}.hostname"), e))?;
    let post_path = match (c.use_post, c.post_path.as_str()) {
        (false, "") => None,
        (false, _) => {
            return Err(err(
                res,
                format!("{path}.post_path"),
                "can be set only with use_post",
            ))
        }
        (true, "") => Some("/".into()),
        (true, p) if p.starts_with('/') => Some(p.into()),
        (true, _) => return Err(err(res, format!("{path}.post_path"), "must start with '/'")),
    };
    let headers = super::matchers::header_mods(&c.headers_to_add, &[], res, path, "")?;
    Ok(crate::model::Tunneling {
        hostname,
        post_path,
        headers,
    })
}
