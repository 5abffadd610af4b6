//! What header serialisation and access logs read of one request, whatever its codec: an
//! HTTP/1 connection's current request or one HTTP/2 stream. Both keep the request head in
//! HTTP/1 form (ranges over a byte buffer), so routing, header rules and `%COMMAND%`
//! values have one implementation. [`Entry`] is what a request leaves for its log line.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::http::h1::RequestHead;
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
    /// Whether the downstream connection is TLS.
    fn downstream_tls(&self) -> bool;
    /// The client's certificate, on a mutual TLS connection.
    fn client_cert(&self) -> Option<&crate::peer_cert::ClientCert>;
    /// Whether the request is internal (`internal_address_config`), decided once per
    /// request.
    fn internal(&self) -> bool;
    /// The `Upgrade` value of an allowed upgrade (HTTP/1 only).
    fn upgrade(&self) -> Option<&Range<usize>>;
    /// `%PROTOCOL%`.
    fn protocol(&self) -> &'static [u8];
    /// Whether the request is gRPC (its `content-type`): the proxy's own answers are then
    /// gRPC-shaped.
    /// Whether a compressor filter removed the request's Accept-Encoding.
    fn accept_encoding_removed(&self) -> bool {
        false
    }
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
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream: Option<SocketAddr>,
    pub cluster: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub service_time_ms: Option<u64>,
    pub request_id: Option<[u8; 36]>,
    pub route_prefix_len: usize,
    /// Upstream attempts made (0 before the first).
    pub attempts: u32,
    /// The route's `include_attempt_count_in_response` (local replies after attempts
    /// carry the count too).
    pub attempt_count_in_response: bool,
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
            bytes_received: 0,
            bytes_sent: 0,
            upstream: None,
            cluster: None,
            route: None,
            service_time_ms: None,
            request_id: None,
            route_prefix_len: 0,
            attempts: 0,
            attempt_count_in_response: false,
        }
    }
}

impl Entry {
    /// Resets the entry for a new request; `timed` records when it started.
    pub fn start(&mut self, timed: bool) {
        *self = Entry::default();
        if timed {
            self.start = SystemTime::now();
            self.started = Some(Instant::now());
        }
    }
}
