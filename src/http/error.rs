//! Everything that ends a request with a proxy-generated answer. Each error knows its side;
//! `local_reply::reply_for` turns it into status, body, stat and response flag.

use crate::http::h1::{ChunkError, HeadError};
use crate::upstream::ConnectError;

/// A request the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    // Downstream: the client sent something we refuse.
    /// Envoy answers codec errors with the status's reason phrase.
    #[error("{}", head_error_text(.0))]
    BadHead(HeadError),
    #[error("Upgrade Required")]
    Http10Rejected,
    #[error("missing host header")]
    MissingHost,
    #[error("header name with underscore")]
    UnderscoreHeader,
    #[error("invalid request target")]
    InvalidPath,
    /// The path has a fragment, `normalize_path` could not canonicalise it (an encoded
    /// NUL), `path_with_escaped_slashes_action: REJECT_REQUEST` met `%2F` or `%5C`, or
    /// `UNESCAPE_AND_REDIRECT` would redirect a gRPC request.
    #[error("path normalization failed")]
    PathNormalizationFailed,
    #[error("request timeout")]
    RequestTimeout,
    #[error("request header timeout")]
    RequestHeadersTimeout,
    #[error("Bad Request")]
    BadBody(ChunkError),
    #[error("upgrade is not configured")]
    UpgradeRejected,
    // Routing.
    #[error("no route")]
    NoRoute,
    #[error("cluster not found")]
    ClusterNotFound(u16),
    // Upstream.
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// The route's `max_stream_duration` (or the request's `grpc-timeout`) passed.
    /// `request_complete`: the whole request had arrived (504) or not (408).
    #[error("downstream duration timeout")]
    MaxDurationReached { request_complete: bool },
    /// CONNECT routed to a route that does not terminate it (`connect_config`).
    #[error(
        "CONNECT is only served on routes that terminate it (upgrade_configs with connect_config)"
    )]
    ConnectNotTerminated,
    /// An HTTP/1.1 upgrade (WebSocket) routed to an HTTP/2 cluster: that needs extended
    /// CONNECT (RFC 8441) upstream, which Ringside does not send; refused rather than
    /// forwarding the request without its upgrade.
    #[error("upgrade requests cannot be forwarded to an HTTP/2 cluster")]
    UpgradeToHttp2Unsupported,
    #[error("upstream connect error or disconnect/reset before headers. reset reason: {0}")]
    Connect(ConnectError),
    /// A circuit breaker of the cluster is open (answered with `x-envoy-overloaded: true`).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    #[error("upstream connect error or disconnect/reset before headers. reset reason: connection termination")]
    UpstreamReset,
    #[error(
        "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
    )]
    UpstreamProtocol,
    #[error("upstream request timeout")]
    UpstreamTimeout,
    /// The route timeout passed on an internal request that asked for 204 instead
    /// (`x-envoy-upstream-rq-timeout-alt-response`).
    #[error("")]
    UpstreamTimeoutAlt,
    /// An attempt's `per_try_timeout` passed (and it was not retried).
    #[error("upstream request timeout")]
    UpstreamPerTryTimeout,
    /// The upstream reset the HTTP/2 stream before its response head (or sent a head
    /// with more headers than the cluster's `max_headers_count`, which Envoy's codec
    /// reports the same way).
    #[error(
        "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
    )]
    UpstreamRemoteReset,
    /// The upstream refused the HTTP/2 stream (REFUSED_STREAM).
    #[error("upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset")]
    UpstreamRefusedStream,
    #[error("stream timeout")]
    StreamIdleTimeout,
    // Answers of HTTP filters.
    /// The fault filter aborted the request: the HTTP status, or for a gRPC abort the
    /// gRPC status (sent as a trailers-only response).
    #[error("fault filter abort")]
    FaultAbort {
        status: u16,
        grpc_status: Option<u32>,
    },
    /// The RBAC filter denied the request (the policy that decided, or `none`).
    #[error("RBAC: access denied")]
    RbacDenied(Box<str>),
    /// jwt_authn refused the request: 401 or 403, jwt_verify_lib's words (empty with
    /// `strip_failure_response`), and the details' bracketed part.
    #[error("{body}")]
    JwtDenied {
        status: u16,
        body: Box<str>,
        details: Box<str>,
    },
    /// A filter set a request header to a value no header may carry.
    #[error("invalid header value for: {0}")]
    InvalidFilterHeader(Box<str>),
    /// The external authorization service denied the request (its status and body).
    #[error("{body}")]
    ExtAuthzDenied { status: u16, body: Box<str> },
    /// A body a filter must read whole is longer than it may (ext_authz's
    /// `with_request_body` without `allow_partial_message`).
    #[error("Payload Too Large")]
    PayloadTooLarge,
    /// The external authorization service's answer cannot be applied.
    #[error("")]
    ExtAuthzInvalid,
    /// The external authorization service could not be asked (`status_on_error`).
    #[error("")]
    ExtAuthzError { status: u16 },
    /// The local rate limit filter refused the request.
    #[error("local_rate_limited")]
    LocalRateLimited {
        status: u16,
        resource_exhausted: bool,
    },
    /// A CORS preflight the CORS filter answers itself (200, headers from the policy).
    #[error("")]
    CorsPreflight,
    /// The client went away mid-exchange: nothing is answered.
    #[error("downstream connection termination")]
    ClientGone,
}

impl HttpError {
    /// A failed connection attempt: a circuit breaker's refusal is an overflow.
    pub fn connect(e: ConnectError) -> HttpError {
        match e {
            ConnectError::Overflow => HttpError::Overflow,
            e => HttpError::Connect(e),
        }
    }

    /// Whether the downstream connection must close after the reply.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            HttpError::BadHead(_)
                | HttpError::Http10Rejected
                | HttpError::MissingHost
                | HttpError::UnderscoreHeader
                | HttpError::InvalidPath
                | HttpError::PathNormalizationFailed
                | HttpError::RequestTimeout
                | HttpError::RequestHeadersTimeout
                | HttpError::BadBody(_)
                | HttpError::UpgradeRejected
                | HttpError::MaxDurationReached { .. }
                | HttpError::ClientGone
        )
    }
}

fn head_error_text(e: &HeadError) -> &'static str {
    match e {
        HeadError::TooLarge | HeadError::TooManyHeaders => "Request Header Fields Too Large",
        HeadError::BadTransferEncoding => "Not Implemented",
        HeadError::UnsupportedVersion => "Upgrade Required",
        _ => "Bad Request",
    }
}
