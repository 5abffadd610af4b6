//! HTTP/1.x heads and body framing: buffer → check → parse → advance.
//!
//! Heads are parsed with `httparse` into ranges over the connection's read buffer, so a
//! parsed head costs no allocation and the bytes are never copied until they are written
//! upstream. "Need more bytes" is `Ok(None)`, not an error.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::router::RequestView;

mod chunked;
mod validate;

pub use chunked::{is_tchar, ChunkError, ChunkedDecoder};
pub use validate::{bodyless_method, repair, valid_authority};
use validate::{
    is_nomination, known_method, other_version, valid_target, MAX_NOMINATED, UNNOMINABLE,
};

/// Why a head could not be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed HTTP/1 head")]
    Malformed,
    #[error("headers too large")]
    TooLarge,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("invalid content-length")]
    BadContentLength,
    #[error("both content-length and transfer-encoding")]
    LengthAndChunked,
    #[error("unsupported transfer-encoding")]
    BadTransferEncoding,
    /// Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1: faulty framing).
    #[error("transfer-encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
    /// `HTTP/x.y` other than 1.0 and 1.1.
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    /// A method Envoy's HTTP/1 codec does not know (methods are case-sensitive).
    #[error("invalid method")]
    BadMethod,
    /// A byte outside ASCII in the request target.
    #[error("invalid request target")]
    BadTarget,
    /// A Host value that is not a valid authority.
    #[error("invalid host")]
    BadHost,
    /// `Connection` nominates a header the proxy must keep (Host, `x-forwarded-*`), or
    /// too many headers.
    #[error("invalid nominated headers in Connection")]
    BadConnection,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    #[default]
    None,
    Length(u64),
    Chunked,
    /// Response bodies only: until the upstream closes.
    UntilClose,
}

/// A parsed request head: ranges into the buffer it was parsed from.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    pub len: usize,
    pub host: Option<usize>,
    pub body: BodyKind,
    /// The request's Content-Length, when it had one (`body` is `None` for 0).
    pub content_length: Option<u64>,
    /// `Connection: close` (1.1) or no `Connection: keep-alive` (1.0).
    pub close: bool,
    pub expect_continue: bool,
    pub upgrade: bool,
    pub underscore: bool,
    /// A `Connection` header names other headers as hop-by-hop.
    pub nominates: bool,
    /// Index of the `x-request-id` header.
    pub request_id: Option<usize>,
    /// The target has a fragment (`#`): the connection manager refuses it.
    pub fragment: bool,
    /// Some header is named `x-envoy-*` (the router's own request headers may be there).
    pub envoy: bool,
}

impl RequestHead {
    /// Removes every header named `name` (case-insensitive), keeping the indices of
    /// `host` and `x-request-id` right.
    pub fn remove(&mut self, buf: &[u8], name: &[u8]) {
        let mut i = 0;
        while i < self.headers.len() {
            let (n, _) = &self.headers[i];
            if !buf[n.clone()].eq_ignore_ascii_case(name) {
                i += 1;
                continue;
            }
            self.headers.remove(i);
            for at in [&mut self.host, &mut self.request_id] {
                *at = match *at {
                    Some(j) if j == i => None,
                    Some(j) if j > i => Some(j - 1),
                    other => other,
                };
            }
        }
    }

    /// Forgets the last parsed head (keeping the header list's capacity): what answers a
    /// head that never parsed must not read the previous request's ranges, which point
    /// into bytes that are gone.
    pub fn forget(&mut self) {
        let mut headers = std::mem::take(&mut self.headers);
        headers.clear();
        *self = RequestHead {
            minor: 1,
            headers,
            ..RequestHead::default()
        };
    }
}

/// A parsed response head.
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Range<usize>,
    pub minor: u8,
    pub headers: Vec<(Range<usize>, Range<usize>)>,
    pub len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
    /// A `Connection` header names other headers as hop-by-hop.
    pub nominates: bool,
}

const STACK_HEADERS: usize = 128;

fn offset(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// `max` header slots for httparse: on the stack up to [`STACK_HEADERS`], else in `heap`.
/// Uninitialised: httparse writes only those it fills, so a parse does not first clear
/// 4 KB of slots (callgrind: ~400 instructions per head).
#[inline(always)]
fn header_slots<'s, 'b>(
    stack: &'s mut [MaybeUninit<httparse::Header<'b>>; STACK_HEADERS],
    heap: &'s mut Vec<httparse::Header<'b>>,
    max: usize,
) -> &'s mut [MaybeUninit<httparse::Header<'b>>] {
    if max <= STACK_HEADERS {
        &mut stack[..max]
    } else {
        *heap = Vec::with_capacity(max);
        &mut heap.spare_capacity_mut()[..max]
    }
}

/// Parses a request head from the start of `buf`.
pub fn parse_request(
    buf: &[u8],
    max_headers: usize,
    max_bytes: usize,
    head: &mut RequestHead,
) -> Result<Option<()>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, max_headers);
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, slots);
    if parsed.is_err() && other_version(buf) {
        return Err(HeadError::UnsupportedVersion);
    }
    let Some(len) = head_len(parsed, buf.len(), max_bytes)? else {
        return Ok(None);
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default().as_bytes();
    let target = req.path.unwrap_or_default().as_bytes();
    if !known_method(method) {
        return Err(HeadError::BadMethod);
    }
    let Some(fragment) = valid_target(target) else {
        return Err(HeadError::BadTarget);
    };
    head.fragment = fragment;
    head.method = offset(buf, method);
    head.target = offset(buf, target);
    head.minor = req.version.unwrap_or(1);
    head.len = len;
    head.headers.clear();
    head.host = None;
    head.close = head.minor == 0;
    head.expect_continue = false;
    head.upgrade = false;
    head.underscore = false;
    head.nominates = false;
    head.request_id = None;
    head.envoy = false;
    let mut content_length_seen: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut te_bad = false;
    let mut nominated = 0usize;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        head.headers.push((offset(buf, name), offset(buf, value)));
        if name.contains(&b'_') {
            head.underscore = true;
        }
        head.envoy |= name.len() > 8 && name[..8].eq_ignore_ascii_case(b"x-envoy-");
        if name.eq_ignore_ascii_case(b"host") {
            if head.host.is_some() {
                return Err(HeadError::Malformed);
            }
            if !valid_authority(value) {
                return Err(HeadError::BadHost);
            }
            head.host = Some(head.headers.len() - 1);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length(value, &mut content_length_seen)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only `chunked`, and it must be the last (and here the only) coding. Judged
            // after the whole head: with a Content-Length too it is a 400 whatever it says.
            te_bad |= te_seen || !value.eq_ignore_ascii_case(b"chunked");
            te_seen = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && head.minor == 0 {
                    head.close = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    head.upgrade = true;
                } else if is_nomination(token) {
                    if UNNOMINABLE.iter().any(|u| u.eq_ignore_ascii_case(token)) {
                        return Err(HeadError::BadConnection);
                    }
                    nominated += 1;
                    head.nominates = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            head.request_id = Some(head.headers.len() - 1);
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    if te_seen && head.minor == 0 {
        return Err(HeadError::TransferEncodingHttp10);
    }
    if te_seen && content_length_seen.is_some() {
        return Err(HeadError::LengthAndChunked);
    }
    if te_bad {
        return Err(HeadError::BadTransferEncoding);
    }
    if nominated > MAX_NOMINATED {
        return Err(HeadError::BadConnection);
    }
    head.content_length = content_length_seen;
    head.body = match (content_length_seen, chunked) {
        (_, true) => BodyKind::Chunked,
        (Some(0), false) | (None, false) => BodyKind::None,
        (Some(n), false) => BodyKind::Length(n),
    };
    Ok(Some(()))
}

/// Parses a response head from the start of `buf`.
/// More than `max_headers` header lines is an error, as in Envoy's codec
/// (`max_headers_count`).
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
    max_headers: usize,
    head: &mut ResponseHead,
) -> Result<Option<()>, HeadError> {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, max_headers);
    let mut resp = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, slots);
    let Some(len) = head_len(parsed, buf.len(), max_bytes)? else {
        return Ok(None);
    };
    head.status = resp.code.unwrap_or(0);
    head.reason = offset(buf, resp.reason.unwrap_or_default().as_bytes());
    head.minor = resp.version.unwrap_or(1);
    head.len = len;
    head.headers.clear();
    head.content_length = None;
    head.chunked = false;
    head.close = head.minor == 0;
    head.nominates = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim(h.value);
        head.headers.push((offset(buf, name), offset(buf, value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length(value, &mut head.content_length)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| trim(last).eq_ignore_ascii_case(b"chunked"))
            {
                head.chunked = true;
            } else {
                return Err(HeadError::BadTransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    head.close = false;
                } else if !token.is_empty() {
                    head.nominates = true;
                }
            }
        }
    }
    if head.chunked {
        // RFC 9112 §6.3: transfer-encoding wins over content-length.
        head.content_length = None;
    }
    Ok(Some(()))
}

impl ResponseHead {
    /// How the body of this response is framed, given the request method.
    pub fn body(&self, head_request: bool) -> BodyKind {
        if head_request || self.status < 200 || self.status == 204 || self.status == 304 {
            BodyKind::None
        } else if self.chunked {
            BodyKind::Chunked
        } else {
            match self.content_length {
                Some(0) => BodyKind::None,
                Some(n) => BodyKind::Length(n),
                None => BodyKind::UntilClose,
            }
        }
    }
}

/// The head's length from an httparse result; `None` while more bytes are needed.
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    max_bytes: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered > max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// Reads a Content-Length value into `current`. As Envoy 1.40's codec: digits only, one
/// value, one header; a list (`5, 5`), a repeated header (even with the same value), a
/// sign, inner spaces or an overflow is an error, so no two readers can disagree on it.
fn content_length(value: &[u8], current: &mut Option<u64>) -> Result<(), HeadError> {
    if current.is_some() {
        return Err(HeadError::BadContentLength);
    }
    *current = Some(parse_u64(value).ok_or(HeadError::BadContentLength)?);
    Ok(())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A request head seen together with its buffer, for routing.
pub struct RequestRef<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    /// The authority used for routing (Host, or the HTTP/1.0 default).
    pub authority: &'a [u8],
    pub path: &'a [u8],
}

impl RequestView for RequestRef<'_> {
    fn method(&self) -> &[u8] {
        &self.buf[self.head.method.clone()]
    }
    fn path(&self) -> &[u8] {
        self.path
    }
    fn authority(&self) -> &[u8] {
        self.authority
    }
    fn scheme(&self) -> &[u8] {
        b"http"
    }
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        header_value(self.buf, &self.head.headers, name.as_bytes())
    }
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        crate::router::any_header_value(self.buf, &self.head.headers, name.as_bytes(), f)
    }
}

/// All values of header `name`, joined by `,` when there are several.
pub fn header_value<'a>(
    buf: &'a [u8],
    headers: &[(Range<usize>, Range<usize>)],
    name: &[u8],
) -> Option<Cow<'a, [u8]>> {
    let mut found: Option<Cow<'a, [u8]>> = None;
    for (n, v) in headers {
        if buf[n.clone()].eq_ignore_ascii_case(name) {
            let v = &buf[v.clone()];
            found = Some(match found {
                None => Cow::Borrowed(v),
                Some(prev) => {
                    let mut joined = prev.into_owned();
                    joined.push(b',');
                    joined.extend_from_slice(v);
                    Cow::Owned(joined)
                }
            });
        }
    }
    found
}

#[cfg(test)]
mod tests;
