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
    let Some(len) = head_len(
        req.parse_with_uninit_headers(buf, slots),
        buf.len(),
        max_bytes,
    )?
    else {
        return Ok(None);
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    head.method = offset(buf, req.method.unwrap_or_default().as_bytes());
    head.target = offset(buf, req.path.unwrap_or_default().as_bytes());
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
            head.host = Some(head.headers.len() - 1);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length(value, &mut content_length_seen)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_seen = true;
            // Only `chunked`, and it must be the last (and here the only) coding.
            if value.eq_ignore_ascii_case(b"chunked") && !chunked {
                chunked = true;
            } else {
                return Err(HeadError::BadTransferEncoding);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && head.minor == 0 {
                    head.close = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    head.upgrade = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
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
        return Err(HeadError::BadTransferEncoding);
    }
    head.body = match (content_length_seen, chunked) {
        (Some(_), true) => return Err(HeadError::LengthAndChunked),
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

/// Folds a Content-Length value (possibly a comma list) into `current`; differing values
/// are an error (RFC 9112 §6.3).
fn content_length(value: &[u8], current: &mut Option<u64>) -> Result<(), HeadError> {
    for part in value.split(|&b| b == b',') {
        let n = parse_u64(trim(part)).ok_or(HeadError::BadContentLength)?;
        if current.is_some_and(|c| c != n) {
            return Err(HeadError::BadContentLength);
        }
        *current = Some(n);
    }
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
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
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

/// Incremental chunked-body parser. It only finds chunk boundaries and the end; callers
/// forward the consumed bytes unchanged or take just the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
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
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(ChunkError);
                        }
                        self.size =
                            self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Ext,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(ChunkError),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = if self.size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let n = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    on_data(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                }
                ChunkState::TrailerStart => {
                    self.state = if b == b'\r' {
                        ChunkState::EndLf
                    } else {
                        ChunkState::TrailerLine
                    };
                }
                ChunkState::TrailerLine => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError);
                    }
                    self.state = ChunkState::Done;
                }
                ChunkState::Done => unreachable!("loop condition"),
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests;
