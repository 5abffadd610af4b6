//! HTTP/1.x heads and body framing: buffer → check → parse → advance.
//!
//! Heads are parsed with `httparse` into ranges over the connection's read buffer, so a
//! parsed head costs no allocation and the bytes are never copied until they are written
//! upstream. "Need more bytes" is `Ok(None)`, not an error.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

use crate::router::RequestView;

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
    /// A fragment or a byte outside ASCII in the request target.
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
}

impl RequestHead {
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

/// Parses a request head from the start of `buf`.
pub fn parse_request(
    buf: &[u8],
    max_headers: usize,
    max_bytes: usize,
    head: &mut RequestHead,
) -> Result<Option<()>, HeadError> {
    // Uninitialised slots: httparse writes only those it fills, so a parse does not
    // first clear 4 KB of slots (callgrind: ~400 instructions per head).
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap: Vec<httparse::Header<'_>>;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap = Vec::with_capacity(max_headers);
        &mut heap.spare_capacity_mut()[..max_headers]
    };
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
    if !valid_target(target) {
        return Err(HeadError::BadTarget);
    }
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
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
    head: &mut ResponseHead,
) -> Result<Option<()>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
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

/// Methods whose requests carry no body (RFC 9110 §9.3): an HTTP/1.1 request of any
/// other method without one is sent with `content-length: 0`, as Envoy's codec does.
pub fn bodyless_method(m: &[u8]) -> bool {
    matches!(m, b"GET" | b"HEAD" | b"DELETE" | b"TRACE" | b"CONNECT")
}

/// Whether a request line that did not parse is a well-formed request of another HTTP
/// version: `HTTP/d.d` other than 1.0 and 1.1, or none at all (HTTP/0.9). Envoy answers
/// those 426, a malformed line 400.
fn other_version(buf: &[u8]) -> bool {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || !p.iter().all(|b| b.is_ascii_graphic()))
    {
        return false;
    }
    match parts[..] {
        [_, _] => true,
        [_, _, v] => {
            v.len() == 8
                && v != b"HTTP/1.1"
                && v != b"HTTP/1.0"
                && v.starts_with(b"HTTP/")
                && v[5].is_ascii_digit()
                && v[6] == b'.'
                && v[7].is_ascii_digit()
        }
        _ => false,
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

/// The methods Envoy 1.40's HTTP/1 codec accepts (its parser's list; case-sensitive).
/// `PRI` only starts an HTTP/2 preface and `M-SEARCH` is refused there too.
const METHODS: [&[u8]; 33] = [
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b"DELETE",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"COPY",
    b"LOCK",
    b"MKCOL",
    b"MOVE",
    b"PROPFIND",
    b"PROPPATCH",
    b"SEARCH",
    b"UNLOCK",
    b"BIND",
    b"REBIND",
    b"UNBIND",
    b"ACL",
    b"REPORT",
    b"MKACTIVITY",
    b"CHECKOUT",
    b"MERGE",
    b"NOTIFY",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"PURGE",
    b"MKCALENDAR",
    b"LINK",
    b"UNLINK",
    b"SOURCE",
];

fn known_method(m: &[u8]) -> bool {
    METHODS.contains(&m)
}

/// A request target Envoy would forward: no fragment, nothing outside ASCII (httparse
/// has already refused controls and spaces).
fn valid_target(t: &[u8]) -> bool {
    !t.iter().any(|&b| b == b'#' || b >= 0x80)
}

/// An authority as Envoy checks Host: unreserved, sub-delims, `:`, `@`, `[`, `]` and `%`
/// only (so no spaces, slashes, quotes or bytes outside ASCII). Empty is allowed.
pub fn valid_authority(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// Headers a `Connection` header may not nominate: the proxy needs them to route and
/// records the client's address and scheme in them. Envoy refuses such a request (400).
const UNNOMINABLE: [&[u8]; 5] = [
    b"host",
    b":authority",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
];

/// More nominated headers than this is refused, as Envoy does.
const MAX_NOMINATED: usize = 9;

/// Whether a `Connection` token nominates a header (rather than being an option).
fn is_nomination(token: &[u8]) -> bool {
    !token.is_empty()
        && ![&b"close"[..], b"keep-alive", b"upgrade", b"http2-settings"]
            .iter()
            .any(|o| o.eq_ignore_ascii_case(token))
}

/// Repairs what Envoy's codec tolerates in a head that httparse refused, in the head at
/// the front of `buf`: whitespace after the request line's version is dropped, and
/// obsolete line folding (a field line continued by one starting with a space or tab) is
/// rewritten to a single space, as Envoy forwards it (RFC 9112 §5.2 allows either that or
/// a 400). False when there is nothing to repair, or the first field line is itself a
/// continuation (nothing to continue: malformed).
pub fn repair(buf: &mut Vec<u8>) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let Some(first) = find(&buf[..end + 2], b"\r\n") else {
        return false;
    };
    if matches!(buf.get(first + 2), Some(b' ' | b'\t')) {
        return false;
    }
    let line_end = buf[..first]
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(first, |i| i + 1);
    let mut out = Vec::with_capacity(buf.len());
    out.extend_from_slice(&buf[..line_end]);
    let mut i = first;
    let mut folded = line_end != first;
    while i < end {
        if buf[i] == b'\r' && buf[i + 1] == b'\n' && matches!(buf[i + 2], b' ' | b'\t') {
            while out.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                out.pop();
            }
            out.push(b' ');
            i += 2;
            while matches!(buf[i], b' ' | b'\t') {
                i += 1;
            }
            folded = true;
        } else {
            out.push(buf[i]);
            i += 1;
        }
    }
    if folded {
        out.extend_from_slice(&buf[end..]);
        *buf = out;
    }
    folded
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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

/// Incremental chunked-body parser. It finds chunk boundaries, the payload and the end,
/// and checks the trailer section as header fields (a line that is not `name: value`, a
/// request line for instance, is malformed). Callers re-frame the payload themselves:
/// extensions and trailers are never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    /// Whitespace after the size (Envoy's codec allows it), before `;` or CR.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The first byte of a trailer line (or the CR of the blank line that ends them).
    TrailerStart,
    /// Like `TrailerStart`, after at least one trailer field: a continuation may follow.
    TrailerNext,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked encoding")]
pub struct ChunkError;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }
}

/// RFC 9110 `tchar`: what a header name is made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

impl ChunkedDecoder {
    /// True once the terminating chunk and trailers were seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes from `input` up to the end of the body; `on_data` gets each run of
    /// payload bytes. Returns how many bytes of `input` belong to the body.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        use ChunkState as S;
        let mut i = 0;
        while i < input.len() && self.state != S::Done {
            let b = input[i];
            self.state = match self.state {
                S::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(ChunkError)?;
                        self.digits = self.digits.saturating_add(1);
                        S::Size
                    }
                    b' ' | b'\t' if self.digits > 0 => S::SizeWs,
                    b';' if self.digits > 0 => S::Ext,
                    b'\r' if self.digits > 0 => S::SizeLf,
                    _ => return Err(ChunkError),
                },
                S::SizeWs => match b {
                    b' ' | b'\t' => S::SizeWs,
                    b';' => S::Ext,
                    b'\r' => S::SizeLf,
                    _ => return Err(ChunkError),
                },
                S::Ext => match b {
                    b'\r' => S::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ => S::Ext,
                },
                S::SizeLf if b == b'\n' && self.size == 0 => S::TrailerStart,
                S::SizeLf if b == b'\n' => S::Data,
                S::Data => {
                    let n = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    on_data(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = S::DataCr;
                    }
                    continue;
                }
                S::DataCr if b == b'\r' => S::DataLf,
                S::DataLf if b == b'\n' => {
                    self.digits = 0;
                    S::Size
                }
                S::TrailerStart | S::TrailerNext if b == b'\r' => S::EndLf,
                S::TrailerStart | S::TrailerNext if is_tchar(b) => S::TrailerName,
                // obs-fold: continues the previous trailer field.
                S::TrailerNext if b == b' ' || b == b'\t' => S::TrailerValue,
                S::TrailerName if is_tchar(b) => S::TrailerName,
                S::TrailerName if b == b':' => S::TrailerValue,
                S::TrailerValue => match b {
                    b'\r' => S::TrailerLf,
                    b'\n' | 0 => return Err(ChunkError),
                    _ => S::TrailerValue,
                },
                S::TrailerLf if b == b'\n' => S::TrailerNext,
                S::EndLf if b == b'\n' => S::Done,
                _ => return Err(ChunkError),
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests;
