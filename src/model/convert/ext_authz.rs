//! `envoy.filters.http.ext_authz` (gRPC service) → [`ExtAuthz`], and its per-route
//! configuration. The HTTP service, request body buffering and the knobs Ringside does not
//! implement are left out of the proto subset, so a configuration that sets them is
//! refused by field name.

use crate::model::filter::*;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::filters::http::ext_authz::v3 as pb;
use crate::stats::ExtAuthzStat;

use super::{duration, err, ConvertError, Ctx};
use crate::model::matcher::StringMatcher;
use crate::proto::envoy::r#type::matcher::v3::ListStringMatcher;

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
    let (cluster, service, timeout) = match &m.services {
        Some(pb::ext_authz::Services::GrpcService(g)) => grpc_service(g, res, path)?,
        Some(pb::ext_authz::Services::HttpService(h)) => http_service(h, res, path)?,
        None => {
            return Err(err(
                res,
                f("services"),
                "grpc_service or http_service is required",
            ))
        }
    };
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
    let list = |l: &Option<ListStringMatcher>, field: &str| string_list(l, res, &f(field));
    let mut extra = m.stat_prefix.clone();
    if !extra.is_empty() {
        extra.push('.');
    }
    // The HTTP service always hears the request's authorization, method, path and host,
    // besides what allowed_headers names (the deprecated list of the service when the
    // filter has none).
    let mut allowed_headers = list(&m.allowed_headers, "allowed_headers")?;
    if let AuthzService::Http(_) = service {
        if m.allowed_headers.is_none() {
            if let Some(pb::ext_authz::Services::HttpService(h)) = &m.services {
                let old = h
                    .authorization_request
                    .as_ref()
                    .and_then(|r| r.allowed_headers.clone());
                allowed_headers = list(&old, "http_service.authorization_request.allowed_headers")?;
            }
        }
        for key in ["authorization", ":method", ":path", ":authority"] {
            allowed_headers.push(exact(key));
        }
    }
    Ok(ExtAuthz {
        cluster,
        service,
        timeout,
        failure_mode_allow: m.failure_mode_allow,
        failure_mode_allow_header_add: m.failure_mode_allow_header_add,
        status_on_error,
        filter_enabled,
        filter_enabled_metadata,
        include_tls_session: m.include_tls_session,
        allowed_headers,
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

/// A service's cluster, how it is called and the call's deadline.
pub(super) type Service = (
    std::sync::Arc<str>,
    AuthzService,
    Option<std::time::Duration>,
);

/// A telemetry exporter's `grpc_service` (OpenTelemetry's loggers and tracer): required,
/// and `envoy_grpc` only.
pub(super) struct Exporter {
    pub cluster: std::sync::Arc<str>,
    pub authority: Box<str>,
    pub metadata: Vec<(Box<str>, Box<str>)>,
    pub timeout: Option<std::time::Duration>,
}

pub(super) fn exporter(
    g: Option<&core::GrpcService>,
    res: &str,
    path: &str,
) -> Result<Exporter, ConvertError> {
    let Some(g) = g else {
        return Err(err(
            res,
            format!("{path}.grpc_service"),
            "is required (http_service is not supported)",
        ));
    };
    let (cluster, service, timeout) = grpc_service(g, res, path)?;
    let AuthzService::Grpc {
        authority,
        initial_metadata,
    } = service
    else {
        return Err(err(
            res,
            format!("{path}.grpc_service"),
            "envoy_grpc is required",
        ));
    };
    Ok(Exporter {
        cluster,
        authority,
        metadata: initial_metadata,
        timeout,
    })
}

/// `grpc_service`: its cluster, how it is called and its deadline.
pub(super) fn grpc_service(
    g: &core::GrpcService,
    res: &str,
    path: &str,
) -> Result<Service, ConvertError> {
    let f = |field: &str| format!("{path}.grpc_service.{field}");
    let Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(eg)) = &g.target_specifier else {
        return Err(err(
            res,
            f("envoy_grpc"),
            "envoy_grpc is required (google_grpc is not supported)",
        ));
    };
    if eg.cluster_name.is_empty() {
        return Err(err(res, f("envoy_grpc.cluster_name"), "is required"));
    }
    // Envoy's gRPC clients wait 200 ms when no timeout is set; 0 waits for ever.
    let timeout = match &g.timeout {
        Some(t) => Some(duration(t, res, &f("timeout"))?).filter(|t| !t.is_zero()),
        None => Some(std::time::Duration::from_millis(200)),
    };
    for (i, h) in g.initial_metadata.iter().enumerate() {
        if http::HeaderName::from_bytes(h.key.as_bytes()).is_err()
            || h.key.starts_with(':')
            || http::HeaderValue::from_str(&h.value).is_err()
        {
            return Err(err(
                res,
                f(&format!("initial_metadata[{i}]")),
                "not a valid header",
            ));
        }
    }
    if !eg.authority.is_empty() && http::uri::Authority::try_from(eg.authority.as_str()).is_err() {
        return Err(err(res, f("envoy_grpc.authority"), "not a valid authority"));
    }
    let service = AuthzService::Grpc {
        authority: if eg.authority.is_empty() {
            eg.cluster_name.as_str().into()
        } else {
            eg.authority.as_str().into()
        },
        initial_metadata: g
            .initial_metadata
            .iter()
            .map(|h| (h.key.to_ascii_lowercase().into(), h.value.as_str().into()))
            .collect(),
    };
    Ok((eg.cluster_name.as_str().into(), service, timeout))
}

/// `http_service`: its cluster, what the call carries and which of the answer's headers
/// go where, and its deadline (`server_uri.timeout`; 0: none).
fn http_service(h: &pb::HttpService, res: &str, path: &str) -> Result<Service, ConvertError> {
    let f = |field: &str| format!("{path}.http_service.{field}");
    let Some(uri) = &h.server_uri else {
        return Err(err(res, f("server_uri"), "is required"));
    };
    let Some(core::http_uri::HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
        return Err(err(res, f("server_uri.cluster"), "is required"));
    };
    if cluster.is_empty() {
        return Err(err(res, f("server_uri.cluster"), "is required"));
    }
    let Some(t) = &uri.timeout else {
        return Err(err(res, f("server_uri.timeout"), "is required"));
    };
    let timeout = Some(duration(t, res, &f("server_uri.timeout"))?).filter(|t| !t.is_zero());
    if !h.path_prefix.is_empty()
        && (!h.path_prefix.starts_with('/')
            || h.path_prefix
                .bytes()
                .any(|b| b <= b' ' || b == 0x7f || b == b'?'))
    {
        return Err(err(
            res,
            f("path_prefix"),
            "must start with / and hold no spaces, controls or ?",
        ));
    }
    let mut headers_to_add = Vec::new();
    if let Some(r) = &h.authorization_request {
        for (i, hv) in r.headers_to_add.iter().enumerate() {
            let at = f(&format!("authorization_request.headers_to_add[{i}]"));
            let name = hv.key.to_ascii_lowercase();
            if name.starts_with(':')
                || matches!(&*name, "host" | "content-length" | "transfer-encoding")
                || crate::model::headers::is_hop_by_hop(name.as_bytes())
                || http::HeaderName::from_bytes(name.as_bytes()).is_err()
            {
                return Err(err(
                    res,
                    format!("{at}.key"),
                    "not a header that can be added",
                ));
            }
            let raw = if hv.value.is_empty() {
                String::from_utf8(hv.raw_value.clone())
                    .map_err(|_| err(res, format!("{at}.raw_value"), "not UTF-8"))?
            } else {
                hv.value.clone()
            };
            if raw.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(err(
                    res,
                    format!("{at}.value"),
                    "header values must not contain CR, LF or NUL",
                ));
            }
            let value = crate::model::format::Format::parse(&raw)
                .map_err(|e| err(res, format!("{at}.value"), e))?;
            headers_to_add.push((name.into(), value));
        }
    }
    let default_response = pb::AuthorizationResponse::default();
    let r = h
        .authorization_response
        .as_ref()
        .unwrap_or(&default_response);
    let at = |field: &str| f(&format!("authorization_response.{field}"));
    let client = match &r.allowed_client_headers {
        Some(l) if !l.patterns.is_empty() => {
            let mut v = string_list(
                &r.allowed_client_headers,
                res,
                &at("allowed_client_headers"),
            )?;
            for key in [":status", "content-length", "www-authenticate", "location"] {
                v.push(exact(key));
            }
            Some(v)
        }
        _ => None,
    };
    let service = HttpAuthz {
        path_prefix: h.path_prefix.as_str().into(),
        headers_to_add,
        upstream: string_list(
            &r.allowed_upstream_headers,
            res,
            &at("allowed_upstream_headers"),
        )?,
        upstream_append: string_list(
            &r.allowed_upstream_headers_to_append,
            res,
            &at("allowed_upstream_headers_to_append"),
        )?,
        client,
        client_on_success: string_list(
            &r.allowed_client_headers_on_success,
            res,
            &at("allowed_client_headers_on_success"),
        )?,
        metadata: string_list(
            &r.dynamic_metadata_from_headers,
            res,
            &at("dynamic_metadata_from_headers"),
        )?,
    };
    Ok((
        cluster.as_str().into(),
        AuthzService::Http(Box::new(service)),
        timeout,
    ))
}

/// A `ListStringMatcher`'s patterns (none when it is absent).
fn string_list(
    l: &Option<ListStringMatcher>,
    res: &str,
    path: &str,
) -> Result<Vec<StringMatcher>, ConvertError> {
    let mut out = Vec::new();
    if let Some(l) = l {
        for (i, p) in l.patterns.iter().enumerate() {
            out.push(super::matchers::string_matcher(
                p,
                res,
                &format!("{path}.patterns[{i}]"),
            )?);
        }
    }
    Ok(out)
}

/// A matcher of exactly `name`.
fn exact(name: &str) -> StringMatcher {
    StringMatcher {
        pattern: crate::model::matcher::StringMatch::Exact(name.into()),
        ignore_case: false,
    }
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
