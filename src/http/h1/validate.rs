//! What Envoy 1.40's HTTP/1 codec accepts in a request head beyond httparse's grammar:
//! its method list, request-target and Host rules, the headers a `Connection` header may
//! not nominate, other HTTP versions, and the repairs it makes (obs-fold, whitespace
//! after the version).

/// Methods whose requests carry no body (RFC 9110 §9.3): an HTTP/1.1 request of any
/// other method without one is sent with `content-length: 0`, as Envoy's codec does.
pub fn bodyless_method(m: &[u8]) -> bool {
    matches!(m, b"GET" | b"HEAD" | b"DELETE" | b"TRACE" | b"CONNECT")
}

/// Whether a request line that did not parse is a well-formed request of another HTTP
/// version: `HTTP/d.d` other than 1.0 and 1.1, or none at all (HTTP/0.9). Envoy answers
/// those 426, a malformed line 400.
pub(super) fn other_version(buf: &[u8]) -> bool {
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

/// The methods Envoy 1.40's HTTP/1 codec accepts (its parser's list; case-sensitive).
/// `PRI` only starts an HTTP/2 preface and `M-SEARCH` is refused there too.
pub(super) const METHODS: [&[u8]; 33] = [
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

pub(super) fn known_method(m: &[u8]) -> bool {
    METHODS.contains(&m)
}

/// Whether Envoy's codec accepts a request target: nothing outside ASCII (httparse has
/// already refused controls and spaces). `Some(true)`: it has a fragment, which passes the
/// codec and is refused with the path normalisation (`request::route`), as in Envoy.
pub(super) fn valid_target(t: &[u8]) -> Option<bool> {
    let mut fragment = false;
    for &b in t {
        if b >= 0x80 {
            return None;
        }
        fragment |= b == b'#';
    }
    Some(fragment)
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
pub(super) const UNNOMINABLE: [&[u8]; 5] = [
    b"host",
    b":authority",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
];

/// More nominated headers than this is refused, as Envoy does.
pub(super) const MAX_NOMINATED: usize = 9;

/// Whether a `Connection` token nominates a header (rather than being an option).
pub(super) fn is_nomination(token: &[u8]) -> bool {
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
