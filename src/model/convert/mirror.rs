//! `request_mirror_policies` on a route configuration, a virtual host and a route: the
//! most specific non-empty list applies, as in Envoy.

use std::sync::Arc;

use crate::model::filter::Fraction;
use crate::model::route::{ClusterRef, Mirror, MirrorCluster};
use crate::proto::envoy::config::route::v3::route_action::RequestMirrorPolicy;

use super::{err, ConvertError, Ctx};

/// A list of mirror policies at `path` (`…request_mirror_policies`). `validate_clusters`:
/// a named cluster must exist (Envoy's "unknown shadow cluster").
pub(super) fn policies(
    list: &[RequestMirrorPolicy],
    res: &str,
    path: &str,
    validate_clusters: bool,
    ctx: &Ctx<'_>,
) -> Result<Arc<[Mirror]>, ConvertError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        let cluster = match (m.cluster.as_str(), m.cluster_header.as_str()) {
            ("", "") => {
                return Err(err(
                    res,
                    format!("{path}[{i}]"),
                    "exactly one of cluster or cluster_header is required",
                ))
            }
            (c, "") => {
                let index = ctx.cluster_index.get(c).copied();
                if index.is_none() && validate_clusters {
                    return Err(err(
                        res,
                        at("cluster"),
                        format!("unknown shadow cluster '{c}'"),
                    ));
                }
                MirrorCluster::Named(ClusterRef {
                    name: c.into(),
                    index,
                })
            }
            ("", h) => {
                let h = h.to_ascii_lowercase();
                if http::HeaderName::from_bytes(h.trim_start_matches(':').as_bytes()).is_err() {
                    return Err(err(res, at("cluster_header"), "not a header name"));
                }
                MirrorCluster::Header(h.into())
            }
            (c, h) => {
                return Err(err(
                    res,
                    format!("{path}[{i}]"),
                    format!("only one of cluster '{c}' or cluster_header '{h}' can be specified"),
                ))
            }
        };
        let host = match m.host_rewrite_literal.as_str() {
            "" => None,
            h if http::HeaderValue::from_str(h).is_err() => {
                return Err(err(res, at("host_rewrite_literal"), "not a header value"))
            }
            h => Some(h.into()),
        };
        out.push(Mirror {
            cluster,
            fraction: super::fault::runtime_fraction(
                m.runtime_fraction.as_ref(),
                Fraction::ALL,
                res,
                &at("runtime_fraction"),
            )?,
            trace_sampled: m.trace_sampled,
            suffix: !m.disable_shadow_host_suffix_append,
            host,
        });
    }
    Ok(out.into())
}
