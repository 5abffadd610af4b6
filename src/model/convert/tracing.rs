//! The connection manager's `tracing` and `request_id_extension`.

use crate::model::tracing::{RequestIdConfig, Tracing};
use crate::proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::proto::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;

use super::{any_type, decode_any, err, ConvertError, Ctx};

const UUID: &str = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

/// `tracing`: the sampling rates. The span-only settings (custom tags, verbose, path tag
/// length, upstream spans) are accepted and counted as ignored: there are no spans without
/// a provider, and `provider` itself is refused by name (span export is not implemented).
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
    for (set, field) in [
        (!t.custom_tags.is_empty(), "custom_tags"),
        (t.verbose, "verbose"),
        (t.max_path_tag_length.is_some(), "max_path_tag_length"),
        (t.spawn_upstream_span.is_some(), "spawn_upstream_span"),
    ] {
        if set {
            ctx.ignored.push(format!("{path}.{field}"));
        }
    }
    Ok(Tracing {
        client: rate(&t.client_sampling, "client_sampling")?,
        random: rate(&t.random_sampling, "random_sampling")?,
        overall: rate(&t.overall_sampling, "overall_sampling")?,
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
