//! What forwarding a request needs whatever its codecs, shared by the HTTP/1.1 connection
//! (`conn`) and the HTTP/2 server (`h2_server`): the upstream head, path and host
//! rewrites, request ids, upstream choice, redirects, the HTTP/1 response-head reader,
//! timeouts.

use std::time::{Duration, Instant};

use monoio::buf::IoBuf;

use crate::http::h1::{self, ResponseHead};
use crate::http::write_headers;
use crate::model::headers::HeaderMods;
use crate::model::route::{Forward, HostRewrite, Redirect, RedirectPath, TlsRequirement};
use crate::model::{Endpoint, HttpConnectionManager, StripPort};
use crate::stats::ClusterStat;
use crate::upstream::Conn as UpstreamConn;

mod pick;
pub(crate) use pick::{
    chosen_cluster, connect_target, forward_target, pick_upstream, request_hash,
};

/// Header mutations of a level that has none.
pub(crate) static NO_MODS: HeaderMods = HeaderMods::NONE;

/// Read buffer size for each direction of a connection.
pub(crate) const BUF: usize = 16 * 1024;

/// Makes room in a read buffer before a read: capacity for [`BUF`] bytes in all, and at
/// least 4 KB free. (`reserve(BUF)` on a buffer already holding a few bytes at capacity
/// `BUF` doubles it, and the reallocation copies the whole old block: 16 KB per
/// connection whose first bytes a listener sniffed, and a 32 KB buffer held after.)
pub(crate) fn make_room(buf: &mut Vec<u8>) {
    buf.reserve(BUF.saturating_sub(buf.len()).max(4096));
}

/// What a forwarded request's upstream head is made from.
pub(crate) struct HeadParts<'a> {
    pub f: &'a Forward,
    pub prefix_len: Option<usize>,
    pub authority: std::ops::Range<usize>,
    pub path: &'a std::ops::Range<usize>,
    pub weighted: Option<&'a crate::model::route::WeightedTarget>,
    pub req_mods: [&'a HeaderMods; 3],
    pub ep: &'a Endpoint,
    /// The attempt (`x-envoy-attempt-count`), from 1.
    pub attempt: u32,
    /// The route timeout (`x-envoy-expected-rq-timeout-ms`).
    pub timeout: Option<std::time::Duration>,
    /// A gRPC request's `grpc-timeout` becomes this (routes with `max_grpc_timeout`).
    pub grpc_timeout: Option<std::time::Duration>,
}

/// Writes the upstream request head (HTTP/1 form) for either codec: path rewrites, header
/// mutations (most specific first: weighted cluster, route, virtual host, route
/// configuration), the host rewrite and the request id.
pub(crate) fn upstream_head<E: crate::http::exchange::Exchange + ?Sized>(
    out: &mut Vec<u8>,
    conn: &E,
    hop: HeadParts<'_>,
    request_id: Option<&[u8]>,
) {
    let full = conn.bytes(hop.path);
    let rewritten = rewrite_path(hop.f, hop.prefix_len, full);
    let mods: [&HeaderMods; 4] = [
        hop.weighted.map_or(&NO_MODS, |w| &w.request_headers),
        hop.req_mods[0],
        hop.req_mods[1],
        hop.req_mods[2],
    ];
    write_headers::request_head(
        out,
        conn,
        hop.f,
        hop.authority,
        rewritten.as_deref().unwrap_or(full),
        rewritten.is_some().then_some(full),
        host_rewrite(hop.weighted, hop.f, hop.ep),
        &mods,
        request_id,
        (hop.attempt, hop.timeout, hop.grpc_timeout),
    );
}

/// The upstream path after `prefix_rewrite` / `regex_rewrite`, or `None` if unchanged.
pub(crate) fn rewrite_path(f: &Forward, prefix_len: Option<usize>, full: &[u8]) -> Option<Vec<u8>> {
    let q = full.iter().position(|&b| b == b'?').unwrap_or(full.len());
    if let (Some(new), Some(len)) = (&f.more().prefix_rewrite, prefix_len) {
        let mut out = Vec::with_capacity(full.len() + new.len());
        out.extend_from_slice(new.as_bytes());
        out.extend_from_slice(&full[len.min(q)..]);
        return Some(out);
    }
    if let Some((re, sub)) = &f.more().regex_rewrite {
        let p = String::from_utf8_lossy(&full[..q]);
        let mut out = re.replace_all(&p, sub.as_str()).into_owned().into_bytes();
        out.extend_from_slice(&full[q..]);
        return Some(out);
    }
    None
}

/// A new x-request-id when the proxy sets one (Envoy's rules): none present, or an
/// external request's at the edge unless it is preserved.
fn new_request_id(hcm: &HttpConnectionManager, present: bool, internal: bool) -> Option<[u8; 36]> {
    if !hcm.generate_request_id {
        return None;
    }
    let regenerate =
        !present || (hcm.use_remote_address && !internal && !hcm.preserve_external_request_id);
    regenerate.then(uuid4)
}

/// The x-request-id the proxy sends upstream when it sets one: a new id (Envoy's rules in
/// [`new_request_id`]) and, with `tracing` configured, the id carrying the trace decision.
/// `None`: the client's id (or none) goes as it came.
#[inline]
pub(crate) fn request_id<E: crate::http::exchange::Exchange + ?Sized>(x: &E) -> Option<[u8; 36]> {
    let hcm = x.hcm();
    let internal = x.internal();
    let generated = new_request_id(hcm, x.head().request_id.is_some(), internal);
    match &hcm.tracing {
        Some(tracing) if hcm.request_id.use_for_sampling => {
            crate::http::trace::traced_request_id(x, tracing, internal, generated)
        }
        _ => generated,
    }
}

/// Envoy sets `location` on a direct response with a 3xx status: the request's own URL
/// (its scheme as the next hop would be told it, authority, path and query).
pub(crate) fn direct_location<E: crate::http::exchange::Exchange + ?Sized>(
    conn: &E,
    status: u16,
    authority: &[u8],
    path: &[u8],
) -> Option<Vec<u8>> {
    if !(300..400).contains(&status) {
        return None;
    }
    let scheme = write_headers::forwarded_proto(conn);
    let mut l = Vec::with_capacity(scheme.len() + 3 + authority.len() + path.len());
    l.extend_from_slice(scheme);
    l.extend_from_slice(b"://");
    l.extend_from_slice(authority);
    l.extend_from_slice(path);
    Some(l)
}

/// The `Location` of a redirect for a request to `auth` + `full` (path and query).
pub(crate) fn redirect_location(
    r: &Redirect,
    auth: &[u8],
    full: &[u8],
    route_prefix_len: usize,
) -> Vec<u8> {
    let mut location = Vec::with_capacity(128);
    location.extend_from_slice(r.scheme.as_deref().unwrap_or("http").as_bytes());
    location.extend_from_slice(b"://");
    let host_only = crate::router::strip_port(auth);
    match (&r.host, r.port) {
        (Some(h), Some(p)) => location.extend_from_slice(format!("{h}:{p}").as_bytes()),
        (Some(h), None) => location.extend_from_slice(h.as_bytes()),
        (None, Some(p)) => {
            location.extend_from_slice(host_only);
            location.extend_from_slice(format!(":{p}").as_bytes());
        }
        // A scheme change drops the (old scheme's) port, as Envoy does.
        (None, None) if r.scheme.is_some() => location.extend_from_slice(host_only),
        (None, None) => location.extend_from_slice(auth),
    }
    let (p, q) = match full.iter().position(|&b| b == b'?') {
        Some(i) => (&full[..i], &full[i..]),
        None => (full, &b""[..]),
    };
    match &r.path {
        RedirectPath::Keep => location.extend_from_slice(p),
        RedirectPath::Replace(np) => location.extend_from_slice(np.as_bytes()),
        RedirectPath::Prefix(np) => {
            let routed_prefix = route_prefix_len.min(p.len());
            location.extend_from_slice(np.as_bytes());
            location.extend_from_slice(&p[routed_prefix..]);
        }
        RedirectPath::Regex(re, sub) => {
            let s = String::from_utf8_lossy(p);
            location.extend_from_slice(re.replace_all(&s, sub.as_str()).as_bytes());
        }
    }
    let path_has_query = matches!(&r.path, RedirectPath::Replace(np) if np.contains('?'));
    if !r.strip_query && !path_has_query {
        location.extend_from_slice(q);
    }
    location
}

/// How many bytes of an authority are kept after `strip_matching_host_port` /
/// `strip_any_host_port` (a port equal to the listener's, or any port).
pub(crate) fn kept_authority(mode: StripPort, local_port: u16, a: &[u8]) -> usize {
    if mode == StripPort::None {
        return a.len();
    }
    let Some(colon) = a.iter().rposition(|&b| b == b':') else {
        return a.len();
    };
    let port = &a[colon + 1..];
    let is_port = !port.is_empty() && port.iter().all(u8::is_ascii_digit);
    let bracketed = a.first() == Some(&b'[');
    if !is_port || (!bracketed && a[..colon].contains(&b':')) || (bracketed && a[colon - 1] != b']')
    {
        return a.len();
    }
    let strip = match mode {
        StripPort::Any => true,
        StripPort::Matching => {
            std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                == Some(local_port)
        }
        StripPort::None => false,
    };
    if strip {
        colon
    } else {
        a.len()
    }
}

/// The Host sent upstream when the route rewrites it (the weighted entry's literal first,
/// then the route's literal or the endpoint's hostname); `None` keeps the client's.
pub(crate) fn host_rewrite<'a>(
    weighted: Option<&'a crate::model::route::WeightedTarget>,
    f: &'a Forward,
    ep: &'a Endpoint,
) -> Option<&'a [u8]> {
    match (
        weighted.and_then(|w| w.host_rewrite.as_deref()),
        &f.more().host_rewrite,
    ) {
        (Some(h), _) => Some(h.as_bytes()),
        (None, HostRewrite::Literal(h)) => Some(h.as_bytes()),
        (None, HostRewrite::Auto) => Some(ep.hostname.as_bytes()),
        (None, HostRewrite::None) => None,
    }
}

/// Why no response head arrived.
pub(crate) enum RespError {
    Closed,
    Malformed,
    Timeout,
    Idle,
}

/// Reads the upstream response head, skipping 1xx interim responses.
pub(crate) async fn read_response_head(
    up: &mut UpstreamConn,
    resp: &mut ResponseHead,
    max_headers: usize,
    now: Instant,
    deadline: Option<Instant>,
    idle: Option<Duration>,
) -> Result<(), RespError> {
    // The caller's clock reading serves the first wait.
    let mut now = Some(now);
    loop {
        if !up.buf.is_empty() {
            match h1::parse_response(&up.buf, 64 * 1024, max_headers, resp) {
                Ok(Some(())) if (100..200).contains(&resp.status) && resp.status != 101 => {
                    up.buf.drain(..resp.len);
                    continue;
                }
                Ok(Some(())) => return Ok(()),
                Ok(None) => {}
                Err(_) => {
                    up.count(ClusterStat::UpstreamCxProtocolError);
                    return Err(RespError::Malformed);
                }
            }
        }
        make_room(&mut up.buf);
        let buf = std::mem::take(&mut up.buf);
        // Whichever comes first, the route's deadline or the idle limit; as an instant, so
        // the clock is read once (a Duration timeout reads it again).
        let idle_at = idle.and_then(|i| now.take().unwrap_or_else(Instant::now).checked_add(i));
        let (at, is_deadline) = match (deadline, idle_at) {
            (Some(d), Some(i)) if d <= i => (Some(d), true),
            (Some(_), Some(i)) => (Some(i), false),
            (Some(d), None) => (Some(d), true),
            (None, i) => (i, false),
        };
        let read = with_deadline(at, crate::io::read_more(&mut up.stream, buf));
        let (res, buf) = match read.await {
            Some(r) => r,
            None if is_deadline => return Err(RespError::Timeout),
            None => return Err(RespError::Idle),
        };
        up.buf = buf;
        match res {
            Ok(0) | Err(_) => return Err(RespError::Closed),
            Ok(_) => {}
        }
    }
}

/// A random version-4 UUID in its text form.
fn uuid4() -> [u8; 36] {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Hex digit pairs from a table, at fixed positions (8-4-4-4-12): no per-byte branch.
    let mut out = [b'-'; 36];
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (b, at) in bytes.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&HEX_PAIRS[*b as usize]);
    }
    out
}

/// Each byte's two lowercase hex digits.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

pub(super) struct Discard;

impl monoio::io::AsyncWriteRent for Discard {
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(buf.bytes_init()), buf)
    }
    async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        (Ok(0), buf)
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    async fn shutdown(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `f`, or `None` once `limit` passes first (no limit: never).
pub(crate) fn with_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    f: F,
) -> WithTimeout<F> {
    WithTimeout {
        f,
        sleep: limit.map(monoio::time::sleep),
    }
}

/// `f`, or `None` once `at` passes first (none: never).
pub(crate) fn with_deadline<F: std::future::Future>(at: Option<Instant>, f: F) -> WithTimeout<F> {
    WithTimeout {
        f,
        sleep: at.map(|at| monoio::time::sleep_until(monoio::time::Instant::from_std(at))),
    }
}

pin_project_lite::pin_project! {
    /// A future bounded by an optional timer, polled where it lies: `f` is moved once, into
    /// this, where an async wrapper around `monoio::time::timeout` moved it twice (each
    /// read's future is about a hundred bytes, on every request).
    pub(crate) struct WithTimeout<F> {
        #[pin]
        f: F,
        #[pin]
        sleep: Option<monoio::time::Sleep>,
    }
}

impl<F: std::future::Future> std::future::Future for WithTimeout<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.project();
        // The future first, as monoio's Timeout: what is ready wins over the timer.
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.as_pin_mut() {
            Some(s) => s.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

/// Whether `require_tls` sends this request to https: `ALL` for any request that is not
/// already https, `EXTERNAL_ONLY` for external ones. The scheme is the downstream
/// transport's, or at a non-edge hop the `x-forwarded-proto` the previous hop set.
pub(crate) fn requires_tls_redirect<E: crate::http::exchange::Exchange + ?Sized>(
    conn: &E,
    require: TlsRequirement,
) -> bool {
    if require == TlsRequirement::None || write_headers::forwarded_proto(conn) == b"https" {
        return false;
    }
    require == TlsRequirement::All || !conn.internal()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid4_is_a_version_4_variant_1_uuid() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = super::uuid4();
            let s = std::str::from_utf8(&id).unwrap();
            let parts: Vec<&str> = s.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{s}"
            );
            assert!(s
                .bytes()
                .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert_eq!(&s[14..15], "4", "{s}");
            assert!("89ab".contains(&s[19..20]), "{s}");
            // Parsed back, the digits are the bytes: the same text round-trips.
            let hex: String = parts.concat();
            let n = u128::from_str_radix(&hex, 16).unwrap();
            assert_eq!(format!("{n:032x}"), hex);
            seen.insert(id);
        }
        assert_eq!(seen.len(), 1000);
    }

    /// A buffer holding a few sniffed bytes at capacity `BUF` reads on in place; a full one
    /// gets at least 4 KB more.
    #[test]
    fn room_for_a_read_does_not_double_a_buffer_that_has_it() {
        use super::{make_room, BUF};
        let mut buf = Vec::with_capacity(BUF);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let at = buf.as_ptr();
        make_room(&mut buf);
        assert_eq!((buf.as_ptr(), buf.capacity()), (at, BUF));
        buf.resize(BUF, b'a');
        make_room(&mut buf);
        assert!(buf.capacity() - buf.len() >= 4096);
    }
}
