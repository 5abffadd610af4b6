//! Proxy-generated responses: one `match` from error to status, body, stat and flag.

use crate::http::error::HttpError;
use crate::http::flags::ResponseFlags;
use crate::http::h1::HeadError;
use crate::stats::HttpStat;

/// What the proxy answers for an error.
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// The connection-manager counter to bump, if any.
    pub stat: Option<HttpStat>,
    /// Envoy's response flag for the access log.
    pub flag: ResponseFlags,
    /// Envoy's response code details.
    pub details: &'static str,
}

/// What the response code details carry in brackets after `Reply::details`, if anything,
/// and the upstream transport failure reason (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
pub fn details_arg(e: &HttpError) -> (Option<Box<str>>, Option<Box<str>>) {
    let arg = |s: String| (Some(s.into_boxed_str()), None);
    match e {
        HttpError::RbacDenied(policy) => arg(format!("[{policy}]")),
        HttpError::JwtDenied { details, .. } => (Some(details.clone()), None),
        HttpError::InvalidFilterHeader(h) => arg(format!("{{invalid_header_value_for:_{h}}}")),
        // Envoy 1.40: `{remote_connection_failure|delayed_connect_error:_Connection_refused}`.
        HttpError::Connect(c) => match crate::upstream::transport_failure(c) {
            Some(why) => (
                Some(format!("{{remote_connection_failure|{why}}}").into()),
                Some(why.into()),
            ),
            None if matches!(c, crate::upstream::ConnectError::Timeout) => {
                arg("{connection_timeout}".into())
            }
            None => arg("{remote_connection_failure}".into()),
        },
        _ => (None, None),
    }
}

/// The reply for `e`, as Envoy answers it.
pub fn reply_for(e: &HttpError) -> Reply {
    // Envoy answers these with no body: the status and the response code details (in the
    // access log) say it all.
    let silent = matches!(
        e,
        HttpError::NoRoute
            | HttpError::ClusterNotFound(_)
            | HttpError::MissingHost
            | HttpError::UpgradeRejected
            | HttpError::PathNormalizationFailed
    );
    let r = |status, stat, flag, details| Reply {
        status,
        body: if silent { String::new() } else { e.to_string() },
        stat,
        flag,
        details,
    };
    match e {
        HttpError::BadHead(HeadError::TooLarge) => r(
            431,
            Some(HttpStat::DownstreamRqTooLarge),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "http1.headers_too_large",
        ),
        HttpError::BadHead(HeadError::TooManyHeaders) => r(
            431,
            Some(HttpStat::DownstreamRqTooLarge),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "http1.too_many_headers",
        ),
        HttpError::BadHead(HeadError::BadTransferEncoding) => r(
            501,
            Some(HttpStat::DownstreamCxProtocolError),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "http1.invalid_transfer_encoding",
        ),
        HttpError::BadHead(HeadError::UnsupportedVersion) => r(
            426,
            Some(HttpStat::RqUpgradeRequired),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "low_version",
        ),
        HttpError::BadHead(_) => r(
            400,
            Some(HttpStat::DownstreamCxProtocolError),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "http1.codec_error",
        ),
        HttpError::BadBody(_) => r(
            400,
            Some(HttpStat::DownstreamCxProtocolError),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "http1.codec_error",
        ),
        HttpError::Http10Rejected => r(
            426,
            Some(HttpStat::RqUpgradeRequired),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "low_version",
        ),
        HttpError::MissingHost => r(
            400,
            Some(HttpStat::DownstreamCxProtocolError),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "missing_host_header",
        ),
        HttpError::UnderscoreHeader => r(
            400,
            Some(HttpStat::DownstreamCxProtocolError),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "http1.unexpected_underscore",
        ),
        HttpError::InvalidPath => r(
            400,
            Some(HttpStat::DownstreamRqNonRelativePath),
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "absolute_path_rejected",
        ),
        HttpError::PathNormalizationFailed => r(
            400,
            Some(HttpStat::DownstreamRqFailedPathNormalization),
            ResponseFlags::NONE,
            "path_normalization_failed",
        ),
        HttpError::RequestTimeout => r(
            408,
            Some(HttpStat::DownstreamRqTimeout),
            ResponseFlags::DURATION_TIMEOUT,
            "request_overall_timeout",
        ),
        HttpError::RequestHeadersTimeout => r(
            408,
            Some(HttpStat::DownstreamRqHeaderTimeout),
            ResponseFlags::DURATION_TIMEOUT,
            "request_header_timeout",
        ),
        HttpError::UpgradeRejected => r(
            403,
            Some(HttpStat::DownstreamRqWsOnNonWsRoute),
            ResponseFlags::NONE,
            "upgrade_failed",
        ),
        HttpError::NoRoute => r(
            404,
            Some(HttpStat::Rq404NoRoute),
            ResponseFlags::NO_ROUTE_FOUND,
            "route_not_found",
        ),
        HttpError::ClusterNotFound(s) => r(
            *s,
            None,
            ResponseFlags::NO_CLUSTER_FOUND,
            "cluster_not_found",
        ),
        HttpError::NoHealthyUpstream => r(
            503,
            None,
            ResponseFlags::NO_HEALTHY_UPSTREAM,
            "no_healthy_upstream",
        ),
        HttpError::MaxDurationReached { request_complete } => r(
            if *request_complete { 504 } else { 408 },
            Some(HttpStat::DownstreamRqMaxDurationReached),
            ResponseFlags::DURATION_TIMEOUT,
            "max_duration_timeout",
        ),
        HttpError::ConnectNotTerminated => r(403, None, ResponseFlags::NONE, "upgrade_failed"),
        HttpError::UpgradeToHttp2Unsupported => r(
            503,
            None,
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "upgrade_to_http2_upstream_not_supported",
        ),
        HttpError::Connect(_) => r(
            503,
            None,
            ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            "upstream_reset_before_response_started",
        ),
        HttpError::Overflow => r(
            503,
            None,
            ResponseFlags::UPSTREAM_OVERFLOW,
            "upstream_reset_before_response_started{overflow}",
        ),
        HttpError::UpstreamReset => r(
            503,
            None,
            ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
            "upstream_reset_before_response_started{connection_termination}",
        ),
        // Envoy answers an upstream's protocol error with 502 (the runtime guard
        // return_502_for_upstream_protocol_errors, on by default).
        HttpError::UpstreamProtocol => r(
            502,
            None,
            ResponseFlags::UPSTREAM_PROTOCOL_ERROR,
            "upstream_reset_before_response_started{protocol_error}",
        ),
        HttpError::UpstreamTimeout => r(
            504,
            None,
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            "upstream_response_timeout",
        ),
        HttpError::UpstreamTimeoutAlt => r(
            204,
            None,
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            "upstream_response_timeout",
        ),
        HttpError::UpstreamPerTryTimeout => r(
            504,
            None,
            ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            "upstream_per_try_timeout",
        ),
        HttpError::UpstreamRemoteReset => r(
            503,
            None,
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            "upstream_reset_before_response_started{remote_reset}",
        ),
        HttpError::UpstreamRefusedStream => r(
            503,
            None,
            ResponseFlags::UPSTREAM_REMOTE_RESET,
            "upstream_reset_before_response_started{remote_refused_stream_reset}",
        ),
        HttpError::StreamIdleTimeout => r(
            504,
            Some(HttpStat::DownstreamRqIdleTimeout),
            ResponseFlags::STREAM_IDLE_TIMEOUT,
            "stream_idle_timeout",
        ),
        HttpError::FaultAbort { status, .. } => r(
            *status,
            None,
            ResponseFlags::FAULT_INJECTED,
            "fault_filter_abort",
        ),
        HttpError::LocalRateLimited { status, .. } => r(
            *status,
            None,
            ResponseFlags::RATE_LIMITED,
            "local_rate_limited",
        ),
        HttpError::CorsPreflight => r(200, None, ResponseFlags::NONE, "cors_response"),
        // The details name the policy: `rbac_access_denied_matched_policy[<policy>]` (see
        // `details_arg`). Envoy sets no response flag.
        HttpError::RbacDenied(_) => r(
            403,
            None,
            ResponseFlags::NONE,
            "rbac_access_denied_matched_policy",
        ),
        HttpError::JwtDenied { status, .. } => r(
            *status,
            None,
            ResponseFlags::NONE,
            "jwt_authn_access_denied",
        ),
        HttpError::InvalidFilterHeader(_) => r(
            503,
            None,
            ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR,
            "filter_removed_required_request_headers",
        ),
        HttpError::ExtAuthzDenied { status, .. } => r(
            *status,
            None,
            ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            "ext_authz_denied",
        ),
        HttpError::PayloadTooLarge => {
            r(413, None, ResponseFlags::NONE, "request_payload_too_large")
        }
        HttpError::ExtAuthzInvalid => r(
            500,
            None,
            ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            "ext_authz_invalid",
        ),
        HttpError::ExtAuthzError { status } => r(
            *status,
            None,
            ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            "ext_authz_error",
        ),
        // Never sent: there is no one to send it to.
        HttpError::ClientGone => r(
            400,
            None,
            ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            "downstream_remote_disconnect",
        ),
    }
}

/// After retries, Envoy's reset answers say so: "... retried and the latest reset
/// Charges an upstream failure's local reply to the cluster, as Envoy's router does
/// (`chargeUpstreamAbort`): its status in `upstream_rq_<code>` and the class, and
/// `upstream_rq_completed`. Only the request's final outcome is charged, never a retried
/// attempt; errors of the client's own or of filters are not the upstream's.
pub fn charge_abort(cells: &crate::stats::CoreCells, e: &HttpError) {
    use crate::stats::ClusterStat;
    let upstream = matches!(
        e,
        HttpError::NoHealthyUpstream
            | HttpError::Overflow
            | HttpError::Connect(_)
            | HttpError::UpstreamReset
            | HttpError::UpstreamRemoteReset
            | HttpError::UpstreamRefusedStream
            | HttpError::UpstreamProtocol
            | HttpError::UpstreamTimeout
            | HttpError::UpstreamTimeoutAlt
            | HttpError::UpstreamPerTryTimeout
    );
    if upstream {
        let status = reply_for(e).status;
        cells.count_status(status, ClusterStat::UpstreamRq1xx as usize);
        cells.inc(ClusterStat::UpstreamRqCompleted as usize);
    }
}

/// reason: ...".
pub fn after_retries(reply: &mut Reply, attempts: u32) {
    const PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";
    if attempts > 1 && reply.body.starts_with(PREFIX) {
        reply
            .body
            .insert_str(PREFIX.len(), "retried and the latest ");
    }
}

/// The header Envoy adds to an answer a circuit breaker gave: `x-envoy-overloaded: true`.
pub fn overload_mods(e: &HttpError) -> &'static [&'static crate::model::headers::HeaderMods] {
    static MODS: std::sync::OnceLock<crate::model::headers::HeaderMods> =
        std::sync::OnceLock::new();
    static LIST: std::sync::OnceLock<[&'static crate::model::headers::HeaderMods; 1]> =
        std::sync::OnceLock::new();
    if !matches!(e, HttpError::Overflow) {
        return &[];
    }
    LIST.get_or_init(|| {
        [MODS.get_or_init(|| {
            crate::model::headers::HeaderMods::new(
                vec![crate::model::headers::HeaderAdd {
                    name: "x-envoy-overloaded".into(),
                    value: crate::model::format::Format::parse("true").expect("a literal"),
                    action: crate::model::headers::AppendAction::OverwriteIfExistsOrAdd,
                    keep_empty: false,
                }],
                Vec::new(),
            )
        })]
    })
}

/// `content-type` says gRPC: `application/grpc` or `application/grpc+…` (Envoy's rule:
/// `application/grpc-web` is not).
pub fn is_grpc_content_type(v: &[u8]) -> bool {
    v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+'))
}

/// Envoy's mapping from an HTTP status to a gRPC status (`Grpc::Utility::httpToGrpcStatus`).
pub fn grpc_status_for(http_status: u16) -> u32 {
    match http_status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// The gRPC status a gRPC request gets for `e`: the code an answer chose itself, or the
/// mapping of its HTTP status.
pub fn grpc_status(e: &HttpError, http_status: u16) -> u32 {
    match e {
        HttpError::FaultAbort {
            grpc_status: Some(c),
            ..
        } => *c,
        HttpError::LocalRateLimited {
            resource_exhausted: true,
            ..
        } => 8, // RESOURCE_EXHAUSTED
        HttpError::UpstreamTimeout | HttpError::MaxDurationReached { .. } => 4, // DEADLINE_EXCEEDED
        _ => grpc_status_for(http_status),
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII (gRPC over HTTP/2 spec).
pub fn grpc_message(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Writes a status line.
pub fn status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}
