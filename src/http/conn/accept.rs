//! Which codec serves a downstream connection: HTTP/2 by the connection manager's codec,
//! ALPN, or the preface the client sends first (Envoy's `AUTO`); HTTP/1.1 otherwise.

use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpStream;

use super::serve_h1;
use crate::ctx::{CoreCtx, Downstream, DrainEvent};
use crate::http::forwarding::with_timeout;
use crate::io::MaybeTls;
use crate::model::{Codec, HttpConnectionManager};

/// What serves a connection once its codec is known: HTTP/1.1 or HTTP/2, each boxed at
/// its own size.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Picks the codec of one downstream connection (the connection manager's, or with
/// `AUTO` the client's first bytes: HTTP/2 when they are its preface, prior knowledge
/// h2c) and returns what serves it; `None` when the client went before telling. Awaited
/// while the connection is set up, so this future is gone once it is served.
pub async fn serve(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    mut stream: TcpStream,
    down: Downstream,
    drain: Rc<DrainEvent>,
    mut prefix: Vec<u8>,
) -> Option<Serving> {
    let h2 = match hcm.codec {
        Codec::Http2 => true,
        Codec::Http1 => false,
        Codec::Auto => {
            if !sniff_preface(&mut stream, &mut prefix, hcm.idle_timeout).await {
                return None;
            }
            prefix.starts_with(crate::http::h2::PREFACE)
        }
    };
    Some(if h2 {
        crate::ctx::boxed(|| crate::http::h2_server::serve(ctx, hcm, stream, down, drain, prefix))
    } else {
        crate::ctx::boxed(|| serve_h1(ctx, hcm, MaybeTls::Plain(stream), down, drain, prefix))
    })
}

/// As [`serve`], after the TLS handshake: HTTP/2 when ALPN chose `h2` (or the connection
/// manager speaks nothing else), HTTP/1.1 when it chose another protocol. Without ALPN
/// the first bytes decide, as in Envoy's `AUTO` codec: Istio's client sidecars offer only
/// `istio-*` protocols, so between sidecars no protocol is agreed and an HTTP/2 client is
/// known by its preface.
pub async fn serve_tls(
    ctx: Rc<CoreCtx>,
    hcm: Arc<HttpConnectionManager>,
    mut stream: crate::tls::ServerStream,
    down: Downstream,
    drain: Rc<DrainEvent>,
) -> Option<Serving> {
    let mut prefix = Vec::new();
    let h2 = match hcm.codec {
        Codec::Http2 => true,
        Codec::Http1 => false,
        Codec::Auto => match crate::tls::alpn(&stream) {
            Some(p) => p == b"h2",
            None => {
                if !sniff_tls_preface(&mut stream, &mut prefix, hcm.idle_timeout).await {
                    return None;
                }
                prefix.starts_with(crate::http::h2::PREFACE)
            }
        },
    };
    Some(if h2 {
        let io = crate::io::Rewind::new(prefix, stream);
        crate::ctx::boxed(|| crate::http::h2_server::serve_io(ctx, hcm, io, down, drain))
    } else {
        crate::ctx::boxed(|| serve_h1(ctx, hcm, crate::tls::down_io(stream), down, drain, prefix))
    })
}

/// As [`sniff_preface`], over TLS.
async fn sniff_tls_preface(
    stream: &mut crate::tls::ServerStream,
    buf: &mut Vec<u8>,
    limit: Option<std::time::Duration>,
) -> bool {
    use tokio::io::AsyncReadExt;
    while !preface_told(buf) {
        let mut chunk = [0u8; 64];
        match with_timeout(limit, stream.read(&mut chunk)).await {
            Some(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return false,
        }
    }
    true
}

/// Reads until `buf` holds the HTTP/2 preface or bytes that cannot begin it. False: the
/// client closed (or timed out) before sending enough to tell.
async fn sniff_preface(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Option<std::time::Duration>,
) -> bool {
    while !preface_told(buf) {
        crate::http::forwarding::make_room(buf);
        let taken = std::mem::take(buf);
        let Some((res, b)) = with_timeout(limit, crate::io::read_more(stream, taken)).await else {
            return false;
        };
        *buf = b;
        match res {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// Whether `buf` holds the whole HTTP/2 preface or bytes that cannot begin it.
fn preface_told(buf: &[u8]) -> bool {
    let preface = crate::http::h2::PREFACE;
    let n = buf.len().min(preface.len());
    buf[..n] != preface[..n] || n == preface.len()
}
