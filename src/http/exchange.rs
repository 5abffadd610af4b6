//! What header serialisation and access logs read of one request, whatever its codec: an
//! HTTP/1 connection's current request or one HTTP/2 stream. Both keep the request head in
//! HTTP/1 form (ranges over a byte buffer), so routing, header rules and `%COMMAND%`
//! values have one implementation. [`Entry`] is what a request leaves for its log line.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::http::h1::{header_value, RequestHead};
use crate::model::HttpConnectionManager;

pub(crate) trait Exchange {
    fn hcm(&self) -> &HttpConnectionManager;
    /// The buffer the head's ranges point into.
    fn buf(&self) -> &[u8];
    fn head(&self) -> &RequestHead;
    /// The bytes of a range over the request (may point at bytes the request did not
    /// carry, such as a default Host).
    fn bytes(&self, r: &Range<usize>) -> &[u8];
    fn peer(&self) -> SocketAddr;
    fn local(&self) -> SocketAddr;
    fn log(&self) -> &Entry;
    fn hostname(&self) -> &str;
    /// The host's address (`x-forwarded-for` for loopback peers).
    fn local_ip(&self) -> std::net::IpAddr;
    /// The downstream connection: its addresses, TLS, the client's identity.
    fn down(&self) -> &crate::ctx::Downstream;
    /// Whether the downstream connection is TLS.
    fn downstream_tls(&self) -> bool {
        self.down().tls
    }
    /// The client's certificate, on a mutual TLS connection.
    fn client_cert(&self) -> Option<&crate::peer_cert::ClientCert> {
        self.down().client_cert.as_deref()
    }
    /// Whether the request is internal (`internal_address_config`), decided once per
    /// request.
    fn internal(&self) -> bool;
    /// The `Upgrade` value of an allowed upgrade (HTTP/1 only).
    fn upgrade(&self) -> Option<&Range<usize>>;
    /// `%PROTOCOL%`.
    fn protocol(&self) -> &'static [u8];
    /// SNI and identities, on TLS chains whose RBAC or `istio_authn` read them.
    fn authn(&self) -> Option<&crate::rbac::Authn> {
        self.down().authn.as_deref()
    }
    /// Whether a compressor filter removed the request's Accept-Encoding.
    fn accept_encoding_removed(&self) -> bool;
    /// The request's dynamic metadata, by namespace (what its HTTP filters wrote).
    fn dynamic_metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        None
    }
    /// Headers the HTTP filters add to the upstream request (jwt_authn's).
    fn added_headers(&self) -> &[(Box<str>, Vec<u8>)] {
        &[]
    }
    /// The filter state objects the request's filters set.
    fn filter_objects(&self) -> &[crate::model::filter_state::Object] {
        &[]
    }
    /// The filter state object `key`: the request's own, else the connection's
    /// (`istio_authn`'s principals).
    fn filter_object(&self, key: &str) -> Option<crate::model::filter_state::Found<'_>> {
        crate::model::filter_state::find(self.filter_objects(), key)
            .or_else(|| self.down().filter_object(key, self.hcm().istio_authn))
    }
    /// The `grpc-status` a gRPC call's response carried (trailers over headers), where
    /// the request path watched for it.
    fn grpc_status_seen(&self) -> Option<i32> {
        None
    }
    /// The `grpc-message` that came with it, if any.
    fn grpc_message_seen(&self) -> Option<Box<str>> {
        None
    }
    /// This workload, when Istio's metadata exchange sends it on the upstream request.
    fn peer_exchange(&self) -> Option<&crate::model::istio::LocalNode> {
        None
    }
    /// Whether the request is gRPC (its `content-type`): the proxy's own answers are then
    /// gRPC-shaped.
    fn grpc(&self) -> bool {
        let buf = self.buf();
        self.head().headers.iter().any(|(n, v)| {
            buf[n.clone()].eq_ignore_ascii_case(b"content-type")
                && crate::http::local_reply::is_grpc_content_type(&buf[v.clone()])
        })
    }
}

/// What one request leaves for its log line.
#[derive(Debug)]
pub struct Entry {
    pub start: SystemTime,
    /// Set only when an access log will read it (clock reads are not free).
    pub started: Option<Instant>,
    pub authority: std::ops::Range<usize>,
    pub path: std::ops::Range<usize>,
    pub status: u16,
    pub flags: crate::http::flags::ResponseFlags,
    pub details: &'static str,
    /// Written after `details`, brackets included (the RBAC policy that denied,
    /// jwt_authn's reason).
    pub details_arg: Option<Box<str>>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The response head's size (HTTP/1 form), for `istio.stats`' response bytes.
    pub head_bytes_sent: u64,
    pub upstream: Option<SocketAddr>,
    /// What only access logs read: kept (and reused from request to request) only where
    /// the connection manager has access logs.
    pub extra: Option<Box<LogExtra>>,
    /// The upstream endpoint's workload (istiod's `istio.workload` metadata), if any.
    pub upstream_workload: Option<Arc<crate::model::istio::Peer>>,
    /// The upstream TLS connection's identities (set for `istio.stats` only).
    pub upstream_principals: Option<Arc<crate::model::tls::UpstreamPrincipals>>,
    pub cluster: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    /// The route's and the upstream host's metadata, kept where a span's custom tags
    /// read them.
    pub route_metadata: Option<crate::model::metadata::Packed>,
    pub host_metadata: Option<crate::model::metadata::Packed>,
    pub service_time_ms: Option<u64>,
    pub request_id: Option<[u8; 36]>,
    /// The request's span, where the connection manager exports spans.
    pub span: Option<crate::model::tracing::SpanCtx>,
    /// The tracing decision has been made (and counted) for this request.
    pub trace_begun: bool,
    /// On ingress, the caller named the operation (`x-envoy-decorator-operation`).
    pub operation_asked: bool,
    /// On egress, the operation the upstream's response named (the span's name).
    pub operation: Option<Box<str>>,
    /// The matched route's `decorator`, where the connection manager traces.
    pub decorator: Option<Arc<crate::model::route::Decorator>>,
    pub route_prefix_len: usize,
    /// Upstream attempts made (0 before the first).
    pub attempts: u32,
    /// The route's `include_attempt_count_in_response` (local replies after attempts
    /// carry the count too).
    pub attempt_count_in_response: bool,
}

/// What a request leaves only for its access log lines.
#[derive(Debug, Default)]
pub struct LogExtra {
    /// This side's address on the upstream connection, once connected.
    pub upstream_local: Option<SocketAddr>,
    /// Why the upstream connection failed (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub transport_failure: Option<Box<str>>,
    /// The response head as written (HTTP/1 form), kept only when a format reads a
    /// response header.
    pub response_head: Vec<u8>,
}

impl LogExtra {
    /// `old` cleared for the next request (no allocation), or a new one.
    fn reused(old: Option<Box<LogExtra>>) -> Box<LogExtra> {
        let mut x = old.unwrap_or_default();
        x.upstream_local = None;
        x.transport_failure = None;
        x.response_head.clear();
        x
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            start: SystemTime::UNIX_EPOCH,
            started: None,
            authority: 0..0,
            path: 0..0,
            status: 0,
            flags: crate::http::flags::ResponseFlags::NONE,
            details: "via_upstream",
            details_arg: None,
            bytes_received: 0,
            bytes_sent: 0,
            head_bytes_sent: 0,
            upstream: None,
            extra: None,
            upstream_workload: None,
            upstream_principals: None,
            cluster: None,
            route: None,
            route_metadata: None,
            host_metadata: None,
            service_time_ms: None,
            request_id: None,
            span: None,
            trace_begun: false,
            operation_asked: false,
            operation: None,
            decorator: None,
            route_prefix_len: 0,
            attempts: 0,
            attempt_count_in_response: false,
        }
    }
}

impl Entry {
    /// Resets the entry for a new request; `timed` records when it started.
    #[inline]
    pub fn start(&mut self, timed: bool, logged: bool) {
        let extra = self.extra.take();
        *self = Entry::default();
        if logged {
            self.extra = Some(LogExtra::reused(extra));
        }
        if timed {
            self.start = SystemTime::now();
            self.started = Some(Instant::now());
        }
    }
}

impl Entry {
    /// Notes the response head as written: its size, and the head itself where a format
    /// reads response headers.
    #[inline]
    pub fn sent_head(&mut self, head: &[u8], keep: bool) {
        self.head_bytes_sent = head.len() as u64;
        if let (true, Some(x)) = (keep, &mut self.extra) {
            x.response_head.clear();
            x.response_head.extend_from_slice(head);
        }
    }

    /// Notes what the details carry after the reply's own words, and the upstream
    /// transport failure reason, for a request answered with `e`.
    pub fn note_error(&mut self, e: &crate::http::error::HttpError) {
        let (arg, why) = crate::http::local_reply::details_arg(e);
        self.details_arg = arg;
        if let Some(x) = &mut self.extra {
            x.transport_failure = why;
        }
    }

    /// Notes this side's address on the upstream connection (`None`: not connected).
    #[inline]
    pub fn set_upstream_local(&mut self, a: Option<SocketAddr>) {
        if let Some(x) = &mut self.extra {
            x.upstream_local = a;
        }
    }
}

/// A request's headers as the matchers read them (pseudo-headers included).
pub(crate) struct RequestHeaders<'a, E: ?Sized>(pub &'a E);

impl<E: Exchange + ?Sized> crate::router::RequestView for RequestHeaders<'_, E> {
    fn method(&self) -> &[u8] {
        &self.0.buf()[self.0.head().method.clone()]
    }
    fn path(&self) -> &[u8] {
        &self.0.buf()[self.0.head().target.clone()]
    }
    fn authority(&self) -> &[u8] {
        self.0.head().host.map_or(&b""[..], |h| {
            &self.0.buf()[self.0.head().headers[h].1.clone()]
        })
    }
    fn scheme(&self) -> &[u8] {
        forwarded_proto(self.0)
    }
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        header_value(self.0.buf(), &self.0.head().headers, name.as_bytes())
    }
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        crate::router::any_header_value(self.0.buf(), &self.0.head().headers, name.as_bytes(), f)
    }
}

/// The scheme of the request as the next hop is told it (`x-forwarded-proto`): the
/// downstream transport's at the edge; at an inner hop the previous hop's word, if any.
pub(crate) fn forwarded_proto<E: Exchange + ?Sized>(conn: &E) -> &[u8] {
    let transport: &[u8] = if conn.downstream_tls() {
        b"https"
    } else {
        b"http"
    };
    if conn.hcm().use_remote_address {
        return transport;
    }
    let buf = conn.buf();
    conn.head()
        .headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"x-forwarded-proto"))
        .map_or(transport, |(_, v)| &buf[v.clone()])
}
