//! What header serialisation and access logs read of one request, whatever its codec: an
//! HTTP/1 connection's current request or one HTTP/2 stream. Both keep the request head in
//! HTTP/1 form (ranges over a byte buffer), so routing, header rules and `%COMMAND%`
//! values have one implementation.

use std::net::SocketAddr;
use std::ops::Range;

use crate::http::h1::RequestHead;
use crate::http::log::Entry;
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
    /// Whether the request is internal (`internal_address_config`), decided once per
    /// request.
    fn internal(&self) -> bool;
    /// The `Upgrade` value of an allowed upgrade (HTTP/1 only).
    fn upgrade(&self) -> Option<&Range<usize>>;
    /// `%PROTOCOL%`.
    fn protocol(&self) -> &'static [u8];
}
