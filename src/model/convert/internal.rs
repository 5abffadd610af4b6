//! Internal listeners' upstream side: endpoints at an `envoy_internal_address` and the
//! `internal_upstream` transport socket that hands them metadata.

use std::sync::Arc;

use super::{err, ConvertError, Ctx};
use crate::proto::envoy::config::cluster::v3 as pb;

const INTERNAL_UPSTREAM: &str =
    "envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport";

type Socket = (
    Option<Arc<crate::model::tls::UpstreamTls>>,
    Option<Arc<crate::model::internal::Passthrough>>,
);

/// A cluster's transport socket: TLS (or plaintext), possibly inside `internal_upstream`,
/// which hands an internal endpoint's connection the metadata it names.
pub(super) fn socket(
    ts: &crate::proto::envoy::config::core::v3::TransportSocket,
    c: &pb::Cluster,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Socket, ConvertError> {
    use crate::proto::envoy::config::core::v3::transport_socket::ConfigType;
    use crate::proto::envoy::extensions::transport_sockets::internal_upstream::v3 as iu;
    use crate::proto::envoy::r#type::metadata::v3::metadata_kind::Kind;
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) if super::any_type(any) == INTERNAL_UPSTREAM => any,
        _ => return Ok((super::tls::upstream(ts, res, path, ctx)?, None)),
    };
    let tpath = format!("{path}.typed_config");
    let m: iu::InternalUpstreamTransport = super::decode_any(any, INTERNAL_UPSTREAM, res, &tpath)?;
    let Some(inner) = &m.transport_socket else {
        return Err(err(
            res,
            format!("{tpath}.transport_socket"),
            "the wrapped transport socket is required",
        ));
    };
    let inner_path = format!("{tpath}.transport_socket");
    if matches!(&inner.config_type, Some(ConfigType::TypedConfig(a)) if super::any_type(a) == INTERNAL_UPSTREAM)
    {
        return Err(err(res, inner_path, "internal_upstream cannot wrap itself"));
    }
    let tls = super::tls::upstream(inner, res, &inner_path, ctx)?;
    let mut p = crate::model::internal::Passthrough::default();
    for (i, src) in m.passthrough_metadata.iter().enumerate() {
        let at = format!("{tpath}.passthrough_metadata[{i}]");
        if src.name.is_empty() {
            return Err(err(
                res,
                format!("{at}.name"),
                "a metadata namespace is required",
            ));
        }
        match src.kind.as_ref().and_then(|k| k.kind.as_ref()) {
            Some(Kind::Host(_)) => p.host.push(src.name.as_str().into()),
            Some(Kind::Cluster(_)) => {
                let value = c
                    .metadata
                    .as_ref()
                    .and_then(|m| m.filter_metadata.get(&src.name))
                    .map(|s| Arc::new(s.clone()));
                p.cluster.push((src.name.as_str().into(), value));
            }
            Some(_) => {
                return Err(err(
                    res,
                    format!("{at}.kind"),
                    "only host and cluster metadata can be passed to an internal connection",
                ))
            }
            None => {
                return Err(err(
                    res,
                    format!("{at}.kind"),
                    "a metadata kind is required",
                ))
            }
        }
    }
    Ok((tls, Some(Arc::new(p))))
}

/// An endpoint at an internal listener, with its metadata for the transport socket's
/// passthrough.
pub(super) fn endpoint(
    listener: &str,
    endpoint_id: &str,
    metadata: Option<&crate::proto::envoy::config::core::v3::Metadata>,
) -> crate::model::internal::InternalEndpoint {
    let mut md: Vec<(Arc<str>, Arc<prost_types::Struct>)> = metadata
        .map(|m| {
            m.filter_metadata
                .iter()
                .map(|(k, v)| (k.as_str().into(), Arc::new(v.clone())))
                .collect()
        })
        .unwrap_or_default();
    md.sort_by(|a, b| a.0.cmp(&b.0));
    crate::model::internal::InternalEndpoint {
        listener: listener.into(),
        endpoint_id: endpoint_id.into(),
        metadata: md.into(),
        display: format!("envoy://{listener}/{endpoint_id}").into(),
    }
}

/// `original_dst_lb_config`: only on ORIGINAL_DST clusters, with the port override and a
/// one-segment metadata key (Istio's `envoy.filters.listener.original_dst`/`waypoint`).
pub(super) fn original_dst_config(
    c: &pb::Cluster,
    discovery: crate::model::Discovery,
    res: &str,
) -> Result<crate::model::OriginalDstConfig, ConvertError> {
    let Some(pb::cluster::LbConfig::OriginalDstLbConfig(o)) = &c.lb_config else {
        return Ok(Default::default());
    };
    if discovery != crate::model::Discovery::OriginalDst {
        return Err(err(
            res,
            "original_dst_lb_config",
            "only ORIGINAL_DST clusters take it",
        ));
    }
    let port_override = match o.upstream_port_override {
        None => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => {
            return Err(err(
                res,
                "original_dst_lb_config.upstream_port_override",
                format!("{p} is not a port"),
            ))
        }
    };
    let metadata_key = match &o.metadata_key {
        None => None,
        Some(k) => match k.path.as_slice() {
            [seg] if !k.key.is_empty() => {
                use crate::proto::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
                let Some(Segment::Key(key)) = &seg.segment else {
                    return Err(err(
                        res,
                        "original_dst_lb_config.metadata_key.path[0].key",
                        "is required",
                    ));
                };
                Some((k.key.as_str().into(), key.as_str().into()))
            }
            _ => {
                return Err(err(
                    res,
                    "original_dst_lb_config.metadata_key",
                    "a namespace (key) and a path of one key are supported",
                ))
            }
        },
    };
    Ok(crate::model::OriginalDstConfig {
        port_override,
        metadata_key,
    })
}
