//! An xDS stream's gRPC framing, read here rather than by tonic's `Streaming`.
//!
//! tonic's decoder keeps one receive buffer for the stream's life, reserved to the largest
//! message it has held and never shrunk: after istiod's first CDS response at 10,000
//! services that is 11.6 MB held for as long as the connection lasts. Here each message is
//! decoded from the HTTP/2 frames that brought it, which are freed once it is decoded:
//! nothing is kept between messages, and no message is copied into a buffer of its own
//! (which would also fault a big one's pages in again at every push). The request side
//! is framed here too; tonic's channel still carries both (HTTP/2, the Unix socket, the
//! authority and user agent).

use std::collections::VecDeque;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio_stream::StreamExt;
use tonic::client::GrpcService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Length prefix of a gRPC message: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// Opens a bidirectional stream at `path` on `channel`, sending `outbound`'s messages with
/// the request headers `metadata`; returns the inbound messages once the server answered
/// the request's headers.
pub(super) async fn open<Req, Resp>(
    mut channel: Channel,
    path: &'static str,
    metadata: &[(String, String)],
    outbound: impl tokio_stream::Stream<Item = Req> + Send + 'static,
) -> Result<Inbound<Resp>, Status>
where
    Req: prost::Message + Send + 'static,
    Resp: prost::Message + Default,
{
    let frames = outbound.map(|m| Ok::<_, Status>(http_body::Frame::data(encode(&m))));
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    for (k, v) in metadata {
        // As tonic's metadata: a key or value that cannot be a header is left out.
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            req = req.header(k, v);
        }
    }
    let req = req
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
        .map_err(|e| Status::internal(format!("request: {e}")))?;
    std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let resp = GrpcService::call(&mut channel, req)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let (head, body) = resp.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(Status::new(
            http_code(head.status),
            format!("HTTP status {}", head.status),
        ));
    }
    // A trailers-only answer: the status is in the headers and no message follows.
    let ended = match Status::from_header_map(&head.headers) {
        Some(s) if s.code() != Code::Ok => return Err(s),
        Some(_) => true,
        None => false,
    };
    Ok(Inbound {
        body,
        received: Received::default(),
        ended,
        _resp: PhantomData,
    })
}

/// The messages a server streams back.
pub(super) struct Inbound<T> {
    body: tonic::body::Body,
    /// Bytes received and not yet decoded.
    received: Received,
    /// The server's status said OK: no message follows.
    ended: bool,
    _resp: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Inbound<T> {
    /// The next message; `None` once the server ended the stream with an OK status.
    pub(super) async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(m) = self.decoded()? {
                return Ok(Some(m));
            }
            if self.ended {
                return match self.received.remaining() {
                    0 => Ok(None),
                    _ => Err(Status::internal("stream ended inside a message")),
                };
            }
            let frame = match self.body.frame().await {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Err(e),
                None => return Err(Status::internal("stream ended without a gRPC status")),
            };
            match frame.into_data() {
                Ok(data) => self.received.push(data),
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else {
                        continue;
                    };
                    match Status::from_header_map(&trailers) {
                        Some(s) if s.code() == Code::Ok => self.ended = true,
                        Some(s) => return Err(s),
                        None => return Err(Status::internal("trailers without a gRPC status")),
                    }
                }
            }
        }
    }

    /// Decodes the message the received bytes begin with, if they hold all of it.
    fn decoded(&mut self) -> Result<Option<T>, Status> {
        let Some(prefix) = self.received.prefix() else {
            return Ok(None);
        };
        if prefix[0] != 0 {
            // Compression was not offered (no grpc-accept-encoding), so none may be used.
            return Err(Status::internal(
                "compressed message, but no compression was negotiated",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if self.received.remaining() < PREFIX + len {
            return Ok(None);
        }
        self.received.advance(PREFIX);
        let mut message = (&mut self.received).take(len);
        let m = T::decode(&mut message)
            .map_err(|e| Status::internal(format!("cannot decode the message: {e}")))?;
        // What decoding left of the message (nothing, for a well-formed one) goes too.
        let left = message.remaining();
        self.received.advance(left);
        Ok(Some(m))
    }
}

/// Bytes received and not yet decoded, as HTTP/2's DATA frames brought them. A message is
/// decoded across them, never gathered into one buffer: each frame is freed as soon as
/// the message it belongs to is decoded.
#[derive(Default)]
struct Received {
    frames: VecDeque<Bytes>,
    len: usize,
}

impl Received {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.frames.push_back(b);
        }
    }

    /// The next message's prefix, once all five bytes are here.
    fn prefix(&self) -> Option<[u8; PREFIX]> {
        if self.len < PREFIX {
            return None;
        }
        let mut p = [0u8; PREFIX];
        let mut bytes = self.frames.iter().flat_map(|f| f.iter());
        for b in &mut p {
            *b = *bytes.next()?;
        }
        Some(p)
    }
}

impl Buf for Received {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.frames.front().map(|f| &f[..]).unwrap_or_default()
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advance past the received bytes");
        self.len -= n;
        while n > 0 {
            let front = self
                .frames
                .front_mut()
                .expect("len counts the frames' bytes");
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.frames.pop_front();
        }
    }
}

/// `m` with its gRPC prefix (uncompressed).
fn encode(m: &impl prost::Message) -> Bytes {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(PREFIX + len);
    b.put_u8(0);
    b.put_u32(len as u32);
    m.encode(&mut b)
        .expect("the buffer was sized by encoded_len");
    b.freeze()
}

/// The gRPC code of an HTTP status other than 200, as gRPC's HTTP/2 mapping gives it.
fn http_code(s: http::StatusCode) -> Code {
    match s.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envoy::service::discovery::v3 as pb;

    fn inbound(
        chunks: Vec<Bytes>,
        trailers: Option<http::HeaderMap>,
    ) -> Inbound<pb::DiscoveryResponse> {
        let mut frames: Vec<Result<http_body::Frame<Bytes>, Status>> = chunks
            .into_iter()
            .map(|c| Ok(http_body::Frame::data(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(http_body::Frame::trailers(t)));
        }
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        Inbound {
            body: tonic::body::Body::new(body),
            received: Received::default(),
            ended: false,
            _resp: PhantomData,
        }
    }

    fn ok() -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("0"));
        h
    }

    fn response(version: &str, size: usize) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: version.into(),
            nonce: "x".repeat(size),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_frames_are_decoded_in_order() {
        let a = encode(&response("1", 10));
        let b = encode(&response("2", 100_000));
        let c = encode(&response("3", 3));
        // a and two bytes of b's prefix in one frame, the rest of the prefix and five
        // bytes of b, b's middle alone, b's end with all of c.
        let mut all = BytesMut::new();
        for m in [&a, &b, &c] {
            all.extend_from_slice(m);
        }
        let all = all.freeze();
        let cuts = [0, a.len() + 2, a.len() + 10, a.len() + 50_000, all.len()];
        let chunks = cuts.windows(2).map(|w| all.slice(w[0]..w[1])).collect();
        let mut s = inbound(chunks, Some(ok()));
        for v in ["1", "2", "3"] {
            let m = s.message().await.unwrap().unwrap();
            assert_eq!(m.version_info, v);
        }
        assert!(s.message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_decoded_message_leaves_none_of_its_frames_behind() {
        let big = encode(&response("1", 1 << 20));
        let small = encode(&response("2", 10));
        let mut both = BytesMut::from(&big[..]);
        both.extend_from_slice(&small[..3]);
        let chunks = vec![both.freeze(), small.slice(3..)];
        let mut s = inbound(chunks, None);
        assert_eq!(s.message().await.unwrap().unwrap().version_info, "1");
        // Only the next message's start is held, in the frame that brought it.
        assert_eq!(s.received.remaining(), 3);
        assert_eq!(s.received.frames.len(), 1);
        assert_eq!(s.received.frames[0].len(), 3);
        assert_eq!(s.message().await.unwrap().unwrap().version_info, "2");
        assert_eq!(s.received.remaining(), 0);
    }

    #[tokio::test]
    async fn the_servers_status_ends_the_stream() {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("14"));
        t.insert("grpc-message", http::HeaderValue::from_static("going away"));
        let mut s = inbound(vec![encode(&response("1", 1))], Some(t));
        assert_eq!(s.message().await.unwrap().unwrap().version_info, "1");
        let e = s.message().await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::Unavailable, "going away"));
    }

    #[tokio::test]
    async fn a_stream_cut_short_is_an_error_not_an_end() {
        let m = encode(&response("1", 100));
        let mut s = inbound(vec![m.slice(..20)], Some(ok()));
        assert_eq!(
            s.message().await.unwrap_err().message(),
            "stream ended inside a message"
        );
        let mut s = inbound(vec![m.clone()], None);
        assert_eq!(s.message().await.unwrap().unwrap().version_info, "1");
        let e = s.message().await.unwrap_err();
        assert_eq!(e.message(), "stream ended without a gRPC status");
        let mut compressed = BytesMut::from(&m[..]);
        compressed[0] = 1;
        let mut s = inbound(vec![compressed.freeze()], Some(ok()));
        assert_eq!(s.message().await.unwrap_err().code(), Code::Internal);
    }
}
