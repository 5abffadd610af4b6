//! What the request path and the access log read of an HTTP/2 stream.

use std::net::SocketAddr;

use super::Stream;
use crate::http::exchange::Exchange;
use crate::http::h1::RequestHead;
use crate::http::log::Entry;
use crate::model::HttpConnectionManager;

impl Exchange for Stream {
    fn hcm(&self) -> &HttpConnectionManager {
        &self.hcm
    }
    fn buf(&self) -> &[u8] {
        &self.buf
    }
    fn head(&self) -> &RequestHead {
        &self.head
    }
    fn bytes(&self, r: &std::ops::Range<usize>) -> &[u8] {
        &self.buf[r.clone()]
    }
    fn peer(&self) -> SocketAddr {
        self.down.peer
    }
    fn local(&self) -> SocketAddr {
        self.down.dst
    }
    fn log(&self) -> &Entry {
        &self.log
    }
    fn hostname(&self) -> &str {
        &self.ctx.hostname
    }
    fn local_ip(&self) -> std::net::IpAddr {
        self.ctx.local_ip
    }
    fn down(&self) -> &crate::ctx::Downstream {
        &self.down
    }
    fn added_headers(&self) -> &[(Box<str>, Vec<u8>)] {
        self.filters.added_headers()
    }
    fn grpc_status_seen(&self) -> Option<i32> {
        self.filters.grpc.as_ref()?.seen.as_ref()?.status.get()
    }
    fn grpc_message_seen(&self) -> Option<Box<str>> {
        self.filters
            .grpc
            .as_ref()?
            .seen
            .as_ref()?
            .message
            .borrow()
            .clone()
    }
    fn peer_exchange(&self) -> Option<&crate::model::istio::LocalNode> {
        self.filters.istio.as_deref()?.propagate_up.as_deref()
    }
    fn dynamic_metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.filters.metadata.as_deref()
    }
    fn filter_objects(&self) -> &[crate::model::filter_state::Object] {
        &self.filters.objects
    }
    fn accept_encoding_removed(&self) -> bool {
        self.filters
            .compression
            .as_ref()
            .is_some_and(|c| c.accept_encoding_removed)
    }
    fn internal(&self) -> bool {
        crate::http::trust::is_internal(
            &self.hcm,
            self.down.peer.ip(),
            &self.buf,
            &self.head.headers,
        )
    }
    fn upgrade(&self) -> Option<&std::ops::Range<usize>> {
        None
    }
    fn protocol(&self) -> &'static [u8] {
        b"HTTP/2"
    }
}
