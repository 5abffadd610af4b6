//! The connection manager's `tracing` and `request_id_extension`, and the tracing
//! providers (the connection manager's `tracing.provider`, the bootstrap's `tracing.http`).

use std::sync::Arc;

use crate::model::tracing::{
    CustomTag, MetadataKind, OtelTracer, RequestIdConfig, TagValue, Tracer, TracerKind, Tracing,
    Zipkin,
};
use crate::proto::envoy::config::trace::v3 as trace_pb;
use crate::proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::proto::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use crate::proto::envoy::r#type::tracing::v3 as tag_pb;

use super::{any_type, decode_any, err, ConvertError, Ctx};

const UUID: &str = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";
const ZIPKIN: &str = "envoy.config.trace.v3.ZipkinConfig";
const OTEL: &str = "envoy.config.trace.v3.OpenTelemetryConfig";
/// Where the bootstrap's provider is kept for the connection managers xDS sends.
const BOOTSTRAP_TRACER: &str = "bootstrap tracing.http";

/// `tracing`: the sampling rates, the provider (its own, else the bootstrap's) and what
/// each span carries. `verbose` and `spawn_upstream_span` change spans: with a provider
/// they are refused by name (not implemented); without one there are no spans and they
/// are counted as ignored.
pub(super) fn tracing(
    t: &hcm::http_connection_manager::Tracing,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Tracing, ConvertError> {
    let rate = |p: &Option<crate::proto::envoy::r#type::v3::Percent>, field: &str| match p {
        None => Ok(10_000),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok((p.value * 100.0).round() as u32),
        Some(_) => Err(err(
            res,
            format!("{path}.{field}.value"),
            "must be between 0 and 100",
        )),
    };
    let tracer = match &t.provider {
        Some(p) => Some(provider(p, res, &format!("{path}.provider"), ctx)?),
        None => ctx.stats.held::<Tracer>(BOOTSTRAP_TRACER),
    };
    for (set, field) in [
        (t.verbose, "verbose"),
        (
            t.spawn_upstream_span.is_some_and(|s| s),
            "spawn_upstream_span",
        ),
    ] {
        match (set, &tracer) {
            (true, Some(_)) => {
                return Err(err(
                    res,
                    format!("{path}.{field}"),
                    "is not supported with a tracing provider",
                ))
            }
            (true, None) => ctx.ignored.push(format!("{path}.{field}")),
            _ => {}
        }
    }
    let custom_tags = t
        .custom_tags
        .iter()
        .enumerate()
        .map(|(i, c)| custom_tag(c, res, &format!("{path}.custom_tags[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let reads = |k: MetadataKind| {
        custom_tags
            .iter()
            .any(|c: &CustomTag| matches!(&c.value, TagValue::Metadata { kind, .. } if *kind == k))
    };
    Ok(Tracing {
        route_metadata: reads(MetadataKind::Route),
        host_metadata: reads(MetadataKind::Host),
        client: rate(&t.client_sampling, "client_sampling")?,
        random: rate(&t.random_sampling, "random_sampling")?,
        overall: rate(&t.overall_sampling, "overall_sampling")?,
        tracer,
        custom_tags: custom_tags.into(),
        max_path_tag_length: t.max_path_tag_length.map_or(256, |v| v as usize),
        egress: ctx.outbound,
    })
}

/// The bootstrap's `tracing.http`: the provider of connection managers with `tracing`
/// and none of their own.
pub(super) fn bootstrap_tracing(
    t: Option<&trace_pb::Tracing>,
    ctx: &mut Ctx<'_>,
) -> Result<(), ConvertError> {
    let tracer = match t.and_then(|t| t.http.as_ref()) {
        Some(http) => Some(provider(http, "bootstrap", "tracing.http", ctx)?),
        None => None,
    };
    ctx.stats.hold(BOOTSTRAP_TRACER, tracer);
    Ok(())
}

/// One provider (`envoy.tracers.zipkin` or `envoy.tracers.opentelemetry`), chosen by its
/// configuration's type; any other is refused by type.
fn provider(
    p: &trace_pb::tracing::Http,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Arc<Tracer>, ConvertError> {
    use trace_pb::tracing::http::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
        return Err(err(res, format!("{path}.typed_config"), "is required"));
    };
    let kind = match any_type(any) {
        ZIPKIN => {
            let z: trace_pb::ZipkinConfig = decode_any(any, ZIPKIN, res, path)?;
            TracerKind::Zipkin(zipkin(&z, res, &format!("{path}.typed_config"), ctx)?)
        }
        OTEL => {
            let o: trace_pb::OpenTelemetryConfig = decode_any(any, OTEL, res, path)?;
            TracerKind::OpenTelemetry(otel(&o, res, &format!("{path}.typed_config"), ctx)?)
        }
        other => {
            return Err(err(
                res,
                format!("{path}.typed_config"),
                format!("tracer {other} is not supported (Zipkin and OpenTelemetry are)"),
            ))
        }
    };
    // One batch per core for each distinct exporter configuration.
    let id = crate::model::otel_log::intern(&format!("trace\n{}\n{:?}", any.type_url, any.value));
    let node = ctx.stats.istio.node.load();
    Ok(Arc::new(Tracer {
        id,
        kind,
        node_id: node.id.clone(),
        zone: node.node_zone.clone(),
        service_cluster: node.node_cluster.clone(),
    }))
}

fn check_cluster(
    name: &str,
    tracer: &str,
    res: &str,
    at: String,
    ctx: &Ctx<'_>,
) -> Result<(), ConvertError> {
    if name.is_empty() {
        return Err(err(res, at, "is required"));
    }
    // Envoy checks the cluster when it creates the tracer; static clusters are known now
    // (xDS listeners may name clusters that CDS sends).
    if !ctx.dynamic && !ctx.cluster_index.contains_key(name) {
        return Err(err(res, at, format!("{tracer}: unknown cluster '{name}'")));
    }
    Ok(())
}

fn zipkin(
    z: &trace_pb::ZipkinConfig,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Zipkin, ConvertError> {
    use trace_pb::zipkin_config::{CollectorEndpointVersion as V, TraceContextOption as O};
    check_cluster(
        &z.collector_cluster,
        "envoy.tracers.zipkin",
        res,
        format!("{path}.collector_cluster"),
        ctx,
    )?;
    if !z.collector_endpoint.starts_with('/') {
        return Err(err(
            res,
            format!("{path}.collector_endpoint"),
            "must be a path (starting with /)",
        ));
    }
    match V::try_from(z.collector_endpoint_version) {
        Ok(V::HttpJson) => {}
        Ok(V::HttpProto) | Ok(V::Grpc) => {
            return Err(err(
                res,
                format!("{path}.collector_endpoint_version"),
                "only HTTP_JSON is supported",
            ))
        }
        _ => {
            return Err(err(
                res,
                format!("{path}.collector_endpoint_version"),
                "HTTP_JSON is required (the default is no longer available in Envoy)",
            ))
        }
    }
    let w3c = match O::try_from(z.trace_context_option) {
        Ok(O::UseB3) => false,
        Ok(O::UseB3WithW3cPropagation) => true,
        Err(_) => {
            return Err(err(
                res,
                format!("{path}.trace_context_option"),
                "unknown value",
            ))
        }
    };
    let hostname = if z.collector_hostname.is_empty() {
        z.collector_cluster.as_str()
    } else {
        z.collector_hostname.as_str()
    };
    if hostname.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(err(
            res,
            format!("{path}.collector_hostname"),
            "not a valid host",
        ));
    }
    Ok(Zipkin {
        cluster: z.collector_cluster.as_str().into(),
        endpoint: z.collector_endpoint.as_str().into(),
        hostname: hostname.into(),
        trace_id_128bit: z.trace_id_128bit,
        shared_span_context: z.shared_span_context.unwrap_or(true),
        split_spans: z.split_spans_for_request,
        w3c,
        stats: ctx
            .stats
            .scope::<crate::stats::ZipkinStat>("tracing.zipkin."),
    })
}

fn otel(
    o: &trace_pb::OpenTelemetryConfig,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<OtelTracer, ConvertError> {
    let super::ext_authz::Exporter {
        cluster,
        authority,
        metadata,
        timeout,
    } = super::ext_authz::exporter(o.grpc_service.as_ref(), res, path)?;
    check_cluster(
        &cluster,
        "envoy.tracers.opentelemetry",
        res,
        format!("{path}.grpc_service.envoy_grpc.cluster_name"),
        ctx,
    )?;
    Ok(OtelTracer {
        cluster,
        authority,
        timeout,
        metadata,
        service_name: if o.service_name.is_empty() {
            "unknown_service:envoy".into()
        } else {
            o.service_name.as_str().into()
        },
        stats: ctx
            .stats
            .scope::<crate::stats::OtelTraceStat>("tracing.opentelemetry."),
    })
}

/// One of `custom_tags`. `environment` is read now, as Envoy reads it when it loads the
/// configuration. The formatter `value` is refused by name.
fn custom_tag(c: &tag_pb::CustomTag, res: &str, path: &str) -> Result<CustomTag, ConvertError> {
    use tag_pb::custom_tag::Type;
    if c.tag.is_empty() {
        return Err(err(res, format!("{path}.tag"), "must not be empty"));
    }
    let nonempty = |s: &str| (!s.is_empty()).then(|| Box::<str>::from(s));
    let value = match &c.r#type {
        Some(Type::Literal(l)) => TagValue::Fixed(nonempty(&l.value)),
        Some(Type::Environment(e)) => {
            if e.name.is_empty() {
                return Err(err(
                    res,
                    format!("{path}.environment.name"),
                    "must not be empty",
                ));
            }
            let v = std::env::var(&e.name).ok().filter(|v| !v.is_empty());
            TagValue::Fixed(v.map(Into::into).or_else(|| nonempty(&e.default_value)))
        }
        Some(Type::RequestHeader(h)) => {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(err(
                    res,
                    format!("{path}.request_header.name"),
                    "not a valid header name",
                ));
            }
            TagValue::Header {
                name: h.name.to_ascii_lowercase().into(),
                default: nonempty(&h.default_value),
            }
        }
        Some(Type::Metadata(m)) => {
            use crate::proto::envoy::r#type::metadata::v3::metadata_kind::Kind;
            let kind = match m.kind.as_ref().and_then(|k| k.kind.as_ref()) {
                Some(Kind::Request(_)) => MetadataKind::Request,
                Some(Kind::Route(_)) => MetadataKind::Route,
                Some(Kind::Cluster(_)) => MetadataKind::Cluster,
                Some(Kind::Host(_)) => MetadataKind::Host,
                None => {
                    return Err(err(
                        res,
                        format!("{path}.metadata.kind"),
                        "a kind (request, route, cluster, host) is required",
                    ))
                }
            };
            let Some(key) = &m.metadata_key else {
                return Err(err(
                    res,
                    format!("{path}.metadata.metadata_key"),
                    "is required",
                ));
            };
            use crate::proto::envoy::r#type::metadata::v3::metadata_key::path_segment::Segment;
            for (empty, field, what) in [
                (key.key.is_empty(), "key", "must not be empty"),
                (key.path.is_empty(), "path", "needs at least one segment"),
            ] {
                if empty {
                    return Err(err(
                        res,
                        format!("{path}.metadata.metadata_key.{field}"),
                        what,
                    ));
                }
            }
            let segments = key
                .path
                .iter()
                .map(|s| match &s.segment {
                    Some(Segment::Key(k)) => Ok(Box::<str>::from(k.as_str())),
                    None => Err(err(
                        res,
                        format!("{path}.metadata.metadata_key.path"),
                        "a segment needs a key",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            TagValue::Metadata {
                kind,
                namespace: key.key.as_str().into(),
                path: segments.into(),
                default: nonempty(&m.default_value),
            }
        }
        Some(Type::Value(_)) => {
            return Err(err(
                res,
                format!("{path}.value"),
                "formatter tag values are not supported",
            ))
        }
        None => {
            return Err(err(
                res,
                path,
                "a tag value (literal, environment, request_header, metadata) is required",
            ))
        }
    };
    Ok(CustomTag {
        tag: c.tag.as_str().into(),
        value,
    })
}

/// `request_id_extension`: only the UUID extension exists in Envoy.
pub(super) fn request_id(
    ext: Option<&hcm::RequestIdExtension>,
    res: &str,
    path: &str,
) -> Result<RequestIdConfig, ConvertError> {
    let Some(any) = ext.and_then(|e| e.typed_config.as_ref()) else {
        return Ok(RequestIdConfig::default());
    };
    let tpath = format!("{path}.typed_config");
    if any_type(any) != UUID {
        return Err(err(
            res,
            &tpath,
            format!("request id extension {} is not supported", any_type(any)),
        ));
    }
    let c: UuidRequestIdConfig = decode_any(any, UUID, res, &tpath)?;
    Ok(RequestIdConfig {
        pack_trace_reason: c.pack_trace_reason.unwrap_or(true),
        use_for_sampling: c.use_request_id_for_trace_sampling.unwrap_or(true),
    })
}
