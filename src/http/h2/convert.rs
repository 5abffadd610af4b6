//! Heads between HTTP/2 (`http` types) and the HTTP/1 form the request path works on.
//! Requests are routed and rewritten as HTTP/1 heads whatever their codec, so every
//! header rule has one implementation; these functions are the codec edges.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};

use crate::model::headers::is_hop_by_hop;

/// Writes an HTTP/2 request's head in HTTP/1.1 form: `:authority` becomes Host, split
/// `cookie` headers are joined (RFC 9113 8.2.3), and a body of unknown length is marked
/// chunked so an HTTP/1 upstream gets valid framing.
pub fn request_to_h1(parts: &http::request::Parts, end_stream: bool, out: &mut Vec<u8>) {
    out.clear();
    let connect = parts.method == http::Method::CONNECT;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // The head's size, reserved at once: grown line by line it was five allocations.
    let target = parts
        .uri
        .authority()
        .map_or(0, |a| 2 * a.as_str().len() + 8);
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(parts.method.as_str().len() + path.len() + target + fields + 64);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match parts.uri.authority() {
        // CONNECT's target is its authority (RFC 9110 9.3.6); it has no path.
        Some(a) if connect => out.extend_from_slice(a.as_str().as_bytes()),
        _ if path.is_empty() => out.push(b'/'),
        _ => out.extend_from_slice(path.as_bytes()),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(a) = authority {
        line(out, b"host", a.as_str().as_bytes());
    }
    let mut cookies: Option<Vec<u8>> = None;
    let mut has_length = false;
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        if n == b"host" && authority.is_some() {
            continue;
        }
        if n == b"cookie" {
            let c = cookies.get_or_insert_with(Vec::new);
            if !c.is_empty() {
                c.extend_from_slice(b"; ");
            }
            c.extend_from_slice(value.as_bytes());
            continue;
        }
        if n == b"transfer-encoding" {
            continue;
        }
        has_length |= n == b"content-length";
        line(out, n, value.as_bytes());
    }
    if let Some(c) = cookies {
        line(out, b"cookie", &c);
    }
    // A CONNECT's stream is a tunnel, not a body.
    if !end_stream && !has_length && !connect {
        line(out, b"transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes an HTTP/2 response's head in HTTP/1.1 form (for `h1::parse_response`): without a
/// length, a body that follows is marked chunked and an empty one gets `content-length: 0`.
pub fn response_to_h1(parts: &http::response::Parts, end_stream: bool, out: &mut Vec<u8>) {
    out.clear();
    // Reserved at once, as `request_to_h1`'s.
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    out.reserve(fields + 96);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        if is_hop_by_hop(n) {
            continue;
        }
        has_length |= n == b"content-length";
        line(out, n, value.as_bytes());
    }
    let bodiless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if !has_length && !bodiless {
        if end_stream {
            line(out, b"content-length", b"0");
        } else {
            line(out, b"transfer-encoding", b"chunked");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Why an HTTP/1 head could not be expressed in HTTP/2.
#[derive(Debug)]
pub struct Unrepresentable;

/// The HTTP/2 request for an HTTP/1.1 request head the proxy wrote (Host becomes
/// `:authority`; connection-specific headers are dropped, `te: trailers` kept).
pub fn h1_to_request(head: &[u8]) -> Result<Request<()>, Unrepresentable> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Unrepresentable),
    }
    let method = http::Method::from_bytes(req.method.unwrap_or("GET").as_bytes())
        .map_err(|_| Unrepresentable)?;
    // The target, the authority and the header values are slices of one copy of the head.
    let shared = bytes::Bytes::copy_from_slice(head);
    let slice = |part: &[u8]| -> Option<bytes::Bytes> {
        let at = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
        let range = at..at.checked_add(part.len())?;
        (head.get(range.clone())?.as_ptr() == part.as_ptr()).then(|| shared.slice(range))
    };
    let path = match req.path.and_then(|p| slice(p.as_bytes())) {
        Some(p) => http::uri::PathAndQuery::from_maybe_shared(p),
        None => Ok(http::uri::PathAndQuery::from_static("/")),
    }
    .map_err(|_| Unrepresentable)?;
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let mut uri = Uri::builder().scheme("http").path_and_query(path);
    if let Some(h) = host {
        let authority = match slice(h) {
            Some(h) => http::uri::Authority::from_maybe_shared(h),
            None => http::uri::Authority::try_from(h),
        }
        .map_err(|_| Unrepresentable)?;
        uri = uri.authority(authority);
    }
    let mut builder = Request::builder()
        .method(method)
        .uri(uri.build().map_err(|_| Unrepresentable)?)
        .version(http::Version::HTTP_2);
    let headers = builder.headers_mut().ok_or(Unrepresentable)?;
    copy_headers(req.headers, headers, true, head, Some(shared))?;
    builder.body(()).map_err(|_| Unrepresentable)
}

/// The HTTP/2 response for an HTTP/1.1 response head the proxy wrote.
pub fn h1_to_response(head: &[u8]) -> Result<Response<()>, Unrepresentable> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Unrepresentable),
    }
    let status = StatusCode::from_u16(resp.code.unwrap_or(502)).map_err(|_| Unrepresentable)?;
    let mut builder = Response::builder().status(status);
    let headers = builder.headers_mut().ok_or(Unrepresentable)?;
    copy_headers(resp.headers, headers, false, head, None)?;
    builder.body(()).map_err(|_| Unrepresentable)
}

/// Headers the proxy itself adds that are not among `http`'s standard names: named from
/// these, they are not allocated again for every response.
static OWN: [HeaderName; 9] = [
    HeaderName::from_static("x-envoy-upstream-service-time"),
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-attempt-count"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-internal"),
    HeaderName::from_static("x-forwarded-client-cert"),
];

/// Copies the headers parsed from `head` into `to`. The values share one copy of `head`
/// (one allocation for the whole head, not one per value): `shared` when the caller made
/// it already.
fn copy_headers(
    from: &[httparse::Header<'_>],
    to: &mut HeaderMap,
    request: bool,
    head: &[u8],
    mut shared: Option<bytes::Bytes>,
) -> Result<(), Unrepresentable> {
    to.reserve(from.len());
    for h in from {
        if h.name.is_empty() {
            continue;
        }
        let n = h.name.as_bytes();
        let te_trailers = n.eq_ignore_ascii_case(b"te") && h.value == b"trailers";
        if (is_hop_by_hop(n) && !te_trailers) || (request && n.eq_ignore_ascii_case(b"host")) {
            continue;
        }
        // Only `x-` names are looked for among the proxy's own.
        let own = match n.get(..2) {
            Some(x) if x.eq_ignore_ascii_case(b"x-") => OWN
                .iter()
                .find(|o| n.eq_ignore_ascii_case(o.as_str().as_bytes())),
            _ => None,
        };
        let name = match own {
            Some(own) => own.clone(),
            None => HeaderName::from_bytes(n).map_err(|_| Unrepresentable)?,
        };
        // httparse's values are slices of `head`.
        let at = (h.value.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
        let range = at..at.saturating_add(h.value.len());
        let value = match head.get(range.clone()) {
            Some(v) if v.as_ptr() == h.value.as_ptr() => {
                let shared = shared.get_or_insert_with(|| bytes::Bytes::copy_from_slice(head));
                HeaderValue::from_maybe_shared(shared.slice(range))
            }
            _ => HeaderValue::from_bytes(h.value),
        }
        .map_err(|_| Unrepresentable)?;
        to.append(name, value);
    }
    Ok(())
}

/// Trailers as the last chunk of a chunked HTTP/1.1 body.
pub fn trailers_to_h1(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a request is gRPC (its content type is `application/grpc[+proto|;...]`).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    content_type.is_some_and(crate::http::local_reply::is_grpc_content_type)
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
