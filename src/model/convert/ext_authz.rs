//! `envoy.filters.http.ext_authz` (gRPC service) → [`ExtAuthz`], and its per-route
//! configuration. The HTTP service, request body buffering and the knobs Ringside does not
//! implement are left out of the proto subset, so a configuration that sets them is
//! refused by field name.

use crate::model::filter::*;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::filters::http::ext_authz::v3 as pb;
use crate::stats::ExtAuthzStat;

use super::{duration, err, ConvertError, Ctx};

pub(super) const EXT_AUTHZ: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
pub(super) const PER_ROUTE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

pub(super) fn ext_authz(
    m: &pb::ExtAuthz,
    stat_prefix: &str,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<ExtAuthz, ConvertError> {
    let f = |field: &str| format!("{path}.{field}");
    let Some(pb::ext_authz::Services::GrpcService(g)) = &m.services else {
        return Err(err(res, f("grpc_service"), "grpc_service is required"));
    };
    let Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(eg)) = &g.target_specifier else {
        return Err(err(
            res,
            f("grpc_service.envoy_grpc"),
            "envoy_grpc is required (google_grpc is not supported)",
        ));
    };
    if eg.cluster_name.is_empty() {
        return Err(err(
            res,
            f("grpc_service.envoy_grpc.cluster_name"),
            "is required",
        ));
    }
    // transport_api_version: V3 (2) or AUTO (0, which means V3 now).
    if m.transport_api_version != 0 && m.transport_api_version != 2 {
        return Err(err(res, f("transport_api_version"), "only V3 is supported"));
    }
    if m.include_peer_certificate {
        return Err(err(
            res,
            f("include_peer_certificate"),
            "is not supported (the peer's certificate is not kept)",
        ));
    }
    // Envoy's gRPC clients wait 200 ms when no timeout is set; 0 waits for ever.
    let timeout = match &g.timeout {
        Some(t) => Some(duration(t, res, &f("grpc_service.timeout"))?).filter(|t| !t.is_zero()),
        None => Some(std::time::Duration::from_millis(200)),
    };
    for (i, h) in g.initial_metadata.iter().enumerate() {
        if http::HeaderName::from_bytes(h.key.as_bytes()).is_err()
            || h.key.starts_with(':')
            || http::HeaderValue::from_str(&h.value).is_err()
        {
            return Err(err(
                res,
                f(&format!("grpc_service.initial_metadata[{i}]")),
                "not a valid header",
            ));
        }
    }
    if !eg.authority.is_empty() && http::uri::Authority::try_from(eg.authority.as_str()).is_err() {
        return Err(err(
            res,
            f("grpc_service.envoy_grpc.authority"),
            "not a valid authority",
        ));
    }
    let status_on_error = match &m.status_on_error {
        None => 403,
        Some(s) if (200..600).contains(&s.code) => s.code as u16,
        Some(s) => {
            return Err(err(
                res,
                f("status_on_error.code"),
                format!("{} is not an HTTP status", s.code),
            ))
        }
    };
    let filter_enabled = match &m.filter_enabled {
        None => None,
        Some(r) => Some(super::fault::runtime_fraction(
            Some(r),
            Fraction::ALL,
            res,
            &f("filter_enabled"),
        )?),
    };
    let filter_enabled_metadata = match &m.filter_enabled_metadata {
        None => None,
        Some(md) => Some(super::rbac::metadata(
            md,
            res,
            &f("filter_enabled_metadata"),
        )?),
    };
    let list = |l: &Option<crate::proto::envoy::r#type::matcher::v3::ListStringMatcher>,
                field: &str| {
        let mut out = Vec::new();
        if let Some(l) = l {
            for (i, p) in l.patterns.iter().enumerate() {
                out.push(super::matchers::string_matcher(
                    p,
                    res,
                    &f(&format!("{field}.patterns[{i}]")),
                )?);
            }
        }
        Ok::<_, ConvertError>(out)
    };
    let mut extra = m.stat_prefix.clone();
    if !extra.is_empty() {
        extra.push('.');
    }
    Ok(ExtAuthz {
        cluster: eg.cluster_name.as_str().into(),
        authority: if eg.authority.is_empty() {
            eg.cluster_name.as_str().into()
        } else {
            eg.authority.as_str().into()
        },
        timeout,
        initial_metadata: g
            .initial_metadata
            .iter()
            .map(|h| (h.key.to_ascii_lowercase().into(), h.value.as_str().into()))
            .collect(),
        failure_mode_allow: m.failure_mode_allow,
        failure_mode_allow_header_add: m.failure_mode_allow_header_add,
        status_on_error,
        filter_enabled,
        filter_enabled_metadata,
        include_tls_session: m.include_tls_session,
        allowed_headers: list(&m.allowed_headers, "allowed_headers")?,
        disallowed_headers: list(&m.disallowed_headers, "disallowed_headers")?,
        with_body: m.with_request_body.as_ref().map(|b| BodySettings {
            max_bytes: b.max_request_bytes as usize,
            allow_partial: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        }),
        stats: ctx
            .stats
            .scope::<ExtAuthzStat>(&format!("http.{stat_prefix}.ext_authz.{extra}")),
    })
}

pub(super) fn per_route(
    m: &pb::ExtAuthzPerRoute,
    res: &str,
    path: &str,
) -> Result<ExtAuthzPerRoute, ConvertError> {
    use pb::ext_authz_per_route::Override as O;
    match &m.r#override {
        Some(O::Disabled(true)) => Ok(ExtAuthzPerRoute::Disabled),
        Some(O::Disabled(false)) => {
            Err(err(res, format!("{path}.disabled"), "only true is allowed"))
        }
        Some(O::CheckSettings(c)) => {
            let mut ext: Vec<(String, String)> = c
                .context_extensions
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            ext.sort();
            Ok(ExtAuthzPerRoute::Check(ext))
        }
        None => Err(err(res, path, "disabled or check_settings is required")),
    }
}
