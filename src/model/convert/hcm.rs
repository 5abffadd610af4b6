//! A filter chain's network filters: Istio's telemetry no-ops, then the HTTP connection
//! manager (its settings, access logs and HTTP filters) or the TCP proxy.

use std::sync::Arc;
use std::time::Duration;

use crate::model::{
    Codec, HttpConnectionManager, NetworkFilter, RouteSource, ServerHeader, StripPort,
    UnderscoreAction,
};
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::config::listener::v3 as pb;
use crate::proto::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use crate::stats::HttpStat;

use super::istio::{authn_config, config_type, istio_noop, ISTIO_AUTHN};
use super::{any_type, decode_any, err, timeout, ConvertError, Ctx};

const HCM: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// The network filters of one chain: Istio's telemetry no-ops, then exactly one
/// terminal filter (the connection manager or the TCP proxy).
pub(super) fn chain_filter(
    chain: &pb::FilterChain,
    res: &str,
    cpath: &str,
    ctx: &mut Ctx<'_>,
) -> Result<ChainFilters, ConvertError> {
    // Before the terminal filter: Istio's telemetry filters (documented no-ops: see
    // `istio_noop`), `istio_authn` (the peer principal for RBAC) and network RBAC.
    let mut filters = chain.filters.as_slice();
    let mut skipped = 0;
    let mut rbac = Vec::new();
    let mut istio_authn = crate::model::chain::IstioAuthn::Off;
    let mut objects: Option<Arc<[crate::model::filter_state::SetValue]>> = None;
    let mut tcp: TcpTelemetry = (None, None);
    while let [f, _, ..] = filters {
        let path = format!("{cpath}.filters[{skipped}]");
        match f
            .config_type
            .as_ref()
            .map(|pb::filter::ConfigType::TypedConfig(a)| a)
        {
            Some(any) if config_type(any).as_deref() == Some(super::istio::METADATA_EXCHANGE) => {
                let at = format!("{path}.typed_config");
                tcp.0 = super::telemetry::tcp_exchange(any, res, &at, ctx)?;
            }
            Some(any) if config_type(any).as_deref() == Some("stats.PluginConfig") => {
                let at = format!("{path}.typed_config");
                tcp.1 = Some(super::telemetry::network_stats(any, res, &at, ctx)?);
            }
            Some(any) if istio_noop(&f.name, any, true).is_some() => {
                let why = istio_noop(&f.name, any, true).unwrap_or_default();
                ctx.ignored.push(format!("{res}.{path} ({why})"));
            }
            Some(any) if config_type(any).as_deref() == Some(ISTIO_AUTHN) => {
                istio_authn = if authn_config(any, res, &path)? {
                    crate::model::chain::IstioAuthn::Shared
                } else {
                    crate::model::chain::IstioAuthn::On
                };
            }
            Some(any) if any_type(any) == super::filter_state::NETWORK => {
                use crate::proto::envoy::extensions::filters::network::set_filter_state::v3 as sfs;
                let m: sfs::Config = decode_any(any, super::filter_state::NETWORK, res, &path)?;
                let at = format!("{path}.typed_config.on_new_connection");
                let values = super::filter_state::values(&m.on_new_connection, res, &at)?;
                // Two filters set one list, in order.
                objects = Some(match objects.take() {
                    None => values.into(),
                    Some(o) => o.iter().cloned().chain(values.into_vec()).collect(),
                });
            }
            Some(any) if any_type(any) == super::rbac::NETWORK => {
                let m = decode_any(any, super::rbac::NETWORK, res, &path)?;
                rbac.push(Arc::new(super::rbac::network(
                    &m,
                    res,
                    &format!("{path}.typed_config"),
                    ctx,
                )?));
            }
            _ => break,
        }
        filters = &filters[1..];
        skipped += 1;
    }
    let with = |f: NetworkFilter| (f, rbac.into_boxed_slice(), istio_authn, objects);
    match filters {
        [f] => network_filter(
            f,
            res,
            &format!("{cpath}.filters[{skipped}]"),
            ctx,
            istio_authn.on(),
            tcp,
        )
        .map(with),
        [] => Err(err(
            res,
            format!("{cpath}.filters"),
            "a network filter is required",
        )),
        [first, f, ..] => {
            // Name the filter that is not supported: the first, unless it is a terminal
            // filter, in which case whatever follows it.
            network_filter(
                first,
                res,
                &format!("{cpath}.filters[{skipped}]"),
                ctx,
                istio_authn.on(),
                (None, None),
            )?;
            let t = f
                .config_type
                .as_ref()
                .map(|pb::filter::ConfigType::TypedConfig(a)| any_type(a).to_string())
                .unwrap_or_default();
            Err(err(
                res,
                format!("{cpath}.filters[{}]", skipped + 1),
                format!(
                    "network filter '{}' ({t}) is not supported after a terminal filter",
                    f.name
                ),
            ))
        }
    }
}

/// A chain's terminal filter, its network RBAC filters, whether `istio_authn` runs and
/// the connection's `set_filter_state` values.
pub(super) type ChainFilters = (
    NetworkFilter,
    Box<[Arc<crate::model::rbac::RbacFilter>]>,
    crate::model::chain::IstioAuthn,
    Option<Arc<[crate::model::filter_state::SetValue]>>,
);

/// Istio's TCP metadata exchange and network `istio.stats` before a chain's terminal filter.
type TcpTelemetry = (
    Option<Arc<crate::model::istio::TcpExchange>>,
    Option<Arc<crate::model::istio::IstioStats>>,
);

fn network_filter(
    f: &pb::Filter,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
    istio_authn: bool,
    tcp: TcpTelemetry,
) -> Result<NetworkFilter, ConvertError> {
    let Some(pb::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(err(
            res,
            format!("{path}.typed_config"),
            "typed_config is required",
        ));
    };
    match any_type(any) {
        HCM => {
            let m: hcm::HttpConnectionManager = decode_any(any, HCM, res, path)?;
            let path = format!("{path}.typed_config");
            let mut hcm = connection_manager(&m, res, &path, ctx)?;
            hcm.istio_authn = istio_authn;
            if tcp.0.is_some() || tcp.1.is_some() {
                // istiod's inbound HTTP chains: their TLS never settles on the exchange's
                // protocol, and the HTTP filters report the requests.
                ctx.ignored.push(format!(
                    "{res}.{path} (Istio's TCP exchange and TCP stats before a connection manager: no effect)"
                ));
            }
            Ok(NetworkFilter::Http(Arc::new(hcm)))
        }
        super::tcp::TCP_PROXY => {
            let mut tp = super::tcp::convert(any, res, path, ctx)?;
            (tp.exchange, tp.istio) = tcp;
            tp.istio_authn = istio_authn;
            Ok(NetworkFilter::Tcp(Arc::new(tp)))
        }
        other => Err(err(
            res,
            format!("{path}.typed_config"),
            format!(
                "network filter '{}' of type {other} is not supported",
                f.name
            ),
        )),
    }
}

fn connection_manager(
    m: &hcm::HttpConnectionManager,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<HttpConnectionManager, ConvertError> {
    let p = |f: &str| format!("{path}.{f}");
    if m.stat_prefix.is_empty() {
        return Err(err(res, p("stat_prefix"), "stat_prefix is required"));
    }
    use hcm::http_connection_manager::{CodecType, RouteSpecifier, ServerHeaderTransformation};
    let codec = match CodecType::try_from(m.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => {
            return Err(err(
                res,
                p("codec_type"),
                "only the AUTO, HTTP1 and HTTP2 codecs are supported",
            ))
        }
    };
    let http2 = match &m.http2_protocol_options {
        Some(o) => super::http2_settings(o, res, &p("http2_protocol_options"), true)?,
        None => Default::default(),
    };
    let routes = match &m.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Static(Arc::new(
            super::route_table::convert(rc, res, &p("route_config"), ctx)?,
        )),
        Some(RouteSpecifier::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(err(
                    res,
                    p("rds.route_config_name"),
                    "route_config_name is required",
                ));
            }
            super::config_source(
                rds.config_source.as_ref(),
                ctx.ads,
                res,
                &p("rds.config_source"),
            )?;
            RouteSource::Rds(rds.route_config_name.as_str().into())
        }
        None => {
            return Err(err(
                res,
                p("route_config"),
                "route_config or rds is required",
            ))
        }
    };
    let (filters, router) = super::http_filter::http_filters(
        &m.http_filters,
        &m.stat_prefix,
        res,
        path,
        ctx,
        |name, any| istio_noop(name, any, false),
    )?;
    let suppress_envoy_headers = router.suppress_envoy_headers;
    // istio.stats' dimension expressions read the request as a log does.
    let mut expr_needs = crate::model::access_log::LogNeeds::default();
    for f in &filters.list {
        if let crate::model::filter::FilterKind::IstioStats(s) = &f.kind {
            s.exprs
                .iter()
                .for_each(|e| e.for_each_command(&mut |c| expr_needs.note(c)));
        }
    }
    let mut access_logs = Vec::new();
    for (i, al) in m.access_log.iter().enumerate() {
        access_logs.push(super::access_log::access_log(
            al,
            res,
            &p(&format!("access_log[{i}]")),
            Some(&mut *ctx),
        )?);
    }
    let common = m.common_http_protocol_options.unwrap_or_default();
    let cp = |f: &str| p(&format!("common_http_protocol_options.{f}"));
    let idle_timeout = timeout(
        common.idle_timeout.as_ref(),
        Some(Duration::from_secs(3600)),
        res,
        &cp("idle_timeout"),
    )?;
    let max_connection_duration = timeout(
        common.max_connection_duration.as_ref(),
        None,
        res,
        &cp("max_connection_duration"),
    )?;
    let max_headers_count = common.max_headers_count.unwrap_or(100) as usize;
    if max_headers_count == 0 {
        return Err(err(res, cp("max_headers_count"), "must be at least 1"));
    }
    use core::http_protocol_options::HeadersWithUnderscoresAction as U;
    let headers_with_underscores = match U::try_from(common.headers_with_underscores_action) {
        Ok(U::Allow) => UnderscoreAction::Allow,
        Ok(U::RejectRequest) => UnderscoreAction::RejectRequest,
        Ok(U::DropHeader) => UnderscoreAction::DropHeader,
        Err(_) => {
            return Err(err(
                res,
                cp("headers_with_underscores_action"),
                "unknown value",
            ))
        }
    };
    let h1 = m.http_protocol_options.clone().unwrap_or_default();
    let max_kb = m.max_request_headers_kb.unwrap_or(60);
    if max_kb == 0 || max_kb > 8192 {
        return Err(err(
            res,
            p("max_request_headers_kb"),
            "must be between 1 and 8192",
        ));
    }
    let server_header = match ServerHeaderTransformation::try_from(m.server_header_transformation) {
        Ok(ServerHeaderTransformation::Overwrite) => ServerHeader::Overwrite,
        Ok(ServerHeaderTransformation::AppendIfAbsent) => ServerHeader::AppendIfAbsent,
        Ok(ServerHeaderTransformation::PassThrough) => ServerHeader::PassThrough,
        Err(_) => return Err(err(res, p("server_header_transformation"), "unknown value")),
    };
    use hcm::http_connection_manager::StripPortMode;
    let strip_port = match (m.strip_matching_host_port, &m.strip_port_mode) {
        (true, Some(StripPortMode::StripAnyHostPort(true))) => {
            return Err(err(
                res,
                p("strip_any_host_port"),
                "exclusive with strip_matching_host_port",
            ))
        }
        (_, Some(StripPortMode::StripAnyHostPort(true))) => StripPort::Any,
        (true, _) => StripPort::Matching,
        _ => StripPort::None,
    };
    if m.drain_timeout.is_some() {
        ctx.ignored.push(p("drain_timeout"));
    }
    let stats = ctx
        .stats
        .scope::<HttpStat>(&format!("http.{}.", m.stat_prefix));
    let mut upgrades = Vec::new();
    for (i, u) in m.upgrade_configs.iter().enumerate() {
        if u.upgrade_type.is_empty() {
            return Err(err(
                res,
                p(&format!("upgrade_configs[{i}].upgrade_type")),
                "upgrade_type is required",
            ));
        }
        upgrades.push((
            u.upgrade_type.to_ascii_lowercase().into_boxed_str(),
            u.enabled.unwrap_or(true),
        ));
    }
    let internal = match &m.internal_address_config {
        None => Vec::new(),
        Some(c) => {
            if c.unix_sockets {
                // Ringside listens on IP sockets only: no request can come over one.
                ctx.ignored.push(p("internal_address_config.unix_sockets"));
            }
            super::cidr::cidrs(
                &c.cidr_ranges,
                res,
                &p("internal_address_config.cidr_ranges"),
            )?
        }
    };
    use crate::model::path::EscapedSlashes;
    use hcm::http_connection_manager::PathWithEscapedSlashesAction as A;
    let escaped_slashes = match A::try_from(m.path_with_escaped_slashes_action) {
        Ok(A::ImplementationSpecificDefault | A::KeepUnchanged) => EscapedSlashes::Keep,
        Ok(A::RejectRequest) => EscapedSlashes::Reject,
        Ok(A::UnescapeAndRedirect) => EscapedSlashes::UnescapeAndRedirect,
        Ok(A::UnescapeAndForward) => EscapedSlashes::UnescapeAndForward,
        Err(_) => {
            return Err(err(
                res,
                p("path_with_escaped_slashes_action"),
                "unknown value",
            ))
        }
    };
    let path_normalization = crate::model::path::Normalization {
        normalize: m.normalize_path.unwrap_or(false),
        merge_slashes: m.merge_slashes,
        escaped_slashes,
    };
    let tracing = m
        .tracing
        .as_ref()
        .map(|t| super::tracing::tracing(t, res, &p("tracing"), ctx))
        .transpose()?;
    let traces = tracing.as_ref().is_some_and(|t| t.tracer.is_some());
    let request_id = super::tracing::request_id(
        m.request_id_extension.as_ref(),
        res,
        &p("request_id_extension"),
    )?;
    use crate::model::xfcc::{CertDetails, ForwardClientCert as F};
    use hcm::http_connection_manager::ForwardClientCertDetails as X;
    let forward_client_cert = match X::try_from(m.forward_client_cert_details) {
        Ok(X::Sanitize) => F::Sanitize,
        Ok(X::ForwardOnly) => F::ForwardOnly,
        Ok(X::AppendForward) => F::AppendForward,
        Ok(X::SanitizeSet) => F::SanitizeSet,
        Ok(X::AlwaysForwardOnly) => F::AlwaysForwardOnly,
        Err(_) => return Err(err(res, p("forward_client_cert_details"), "unknown value")),
    };
    let client_cert_details = m
        .set_current_client_cert_details
        .as_ref()
        .map(|d| CertDetails {
            subject: d.subject.unwrap_or(false),
            cert: d.cert,
            chain: d.chain,
            dns: d.dns,
            uri: d.uri,
        })
        .unwrap_or_default();
    // RBAC, and `set_filter_state` values naming the peer's certificate (HBONE's
    // `connect_authority` shares the client's principal), read the TLS identity.
    let reads_identity = filters.list.iter().any(|f| match &f.kind {
        crate::model::filter::FilterKind::Rbac(_) => true,
        crate::model::filter::FilterKind::SetFilterState(values) => values.iter().any(|v| {
            v.format.any_command(|c| {
                matches!(
                    c,
                    crate::model::format::Command::DownstreamPeerUriSan
                        | crate::model::format::Command::DownstreamLocalUriSan
                )
            })
        }),
        _ => false,
    });
    Ok(HttpConnectionManager {
        istio_authn: false,
        reads_identity,
        xfcc: (forward_client_cert, client_cert_details),
        tracing,
        request_id,
        path_normalization,
        http2_stats: ctx.stats.scope::<crate::stats::Http2Stat>("http2."),
        internal,
        upgrades,
        stat_prefix: m.stat_prefix.clone(),
        stats,
        codec,
        http2,
        routes,
        filters,
        log_needs: {
            let mut needs = crate::model::access_log::LogNeeds::of(&access_logs);
            // A span reads a gRPC call's status.
            needs.grpc |= traces;
            needs.response_head |= expr_needs.response_head;
            needs.grpc |= expr_needs.grpc;
            needs
        },
        access_logs,
        suppress_envoy_headers,
        use_remote_address: m.use_remote_address.unwrap_or(false),
        xff_num_trusted_hops: m.xff_num_trusted_hops,
        skip_xff_append: m.skip_xff_append,
        via: (!m.via.is_empty()).then(|| m.via.as_str().into()),
        generate_request_id: m.generate_request_id.unwrap_or(true),
        preserve_external_request_id: m.preserve_external_request_id,
        always_set_request_id_in_response: m.always_set_request_id_in_response,
        server_name: if m.server_name.is_empty() {
            "envoy".into()
        } else {
            m.server_name.as_str().into()
        },
        server_header,
        strip_port,
        accept_http_10: h1.accept_http_10,
        default_host_for_http_10: (!h1.default_host_for_http_10.is_empty())
            .then(|| h1.default_host_for_http_10.as_str().into()),
        idle_timeout,
        stream_idle_timeout: timeout(
            m.stream_idle_timeout.as_ref(),
            Some(Duration::from_secs(300)),
            res,
            &p("stream_idle_timeout"),
        )?,
        request_timeout: timeout(m.request_timeout.as_ref(), None, res, &p("request_timeout"))?,
        request_headers_timeout: timeout(
            m.request_headers_timeout.as_ref(),
            None,
            res,
            &p("request_headers_timeout"),
        )?,
        max_connection_duration,
        max_requests_per_connection: common.max_requests_per_connection.filter(|&n| n > 0),
        max_request_headers_bytes: max_kb as usize * 1024,
        max_headers_count,
        headers_with_underscores,
    })
}
