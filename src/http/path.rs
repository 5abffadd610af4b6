//! The connection manager's path normalisation, as Envoy applies it before any filter or
//! route sees the request: `path_with_escaped_slashes_action` (unescape `%2F` and `%5C`,
//! then reject, redirect or forward), `normalize_path` (RFC 3986 dot segments and
//! percent-encoding, with the rules of the Chromium URL canonicaliser Envoy uses) and
//! `merge_slashes`. Each works on the path before the query, which is kept as it came.
//! Routes, RBAC and the upstream all see the result, so a request cannot reach a route its
//! normalised form does not match (`/public/../admin`).

pub use crate::model::path::{EscapedSlashes, Normalization};

/// What normalisation decided for one path.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// Forward with this path instead.
    Changed(Vec<u8>),
    /// Answer 307 with this path as `Location` (`UNESCAPE_AND_REDIRECT`).
    Redirect(Vec<u8>),
    /// Answer 400 (`path_normalization_failed`).
    Reject,
}

/// Normalises an origin-form `path` (query included) as Envoy's connection manager does.
pub fn normalize(cfg: &Normalization, path: &[u8]) -> Outcome {
    let mut current: Option<Vec<u8>> = None;
    let mut redirect = false;
    if cfg.escaped_slashes != EscapedSlashes::Keep {
        if let Some(p) = unescape_slashes(path) {
            match cfg.escaped_slashes {
                EscapedSlashes::Reject => return Outcome::Reject,
                EscapedSlashes::UnescapeAndRedirect => redirect = true,
                _ => {}
            }
            current = Some(p);
        }
    }
    if cfg.normalize {
        let p = current.as_deref().unwrap_or(path);
        let (path_part, query) = split_query(p);
        if needs_canonicalizing(path_part) {
            let mut out = Vec::with_capacity(p.len() + 8);
            if !canonicalize(path_part, &mut out) {
                return Outcome::Reject;
            }
            out.extend_from_slice(query);
            current = Some(out);
        }
    }
    if cfg.merge_slashes {
        if let Some(p) = merge_slashes(current.as_deref().unwrap_or(path)) {
            current = Some(p);
        }
    }
    match current {
        Some(p) if redirect => Outcome::Redirect(p),
        Some(p) if p != path => Outcome::Changed(p),
        _ => Outcome::Unchanged,
    }
}

fn split_query(p: &[u8]) -> (&[u8], &[u8]) {
    let q = p.iter().position(|&b| b == b'?').unwrap_or(p.len());
    p.split_at(q)
}

/// `%2F`/`%2f` become `/` and `%5C`/`%5c` become `\` in the path part; `None` if there
/// were none.
fn unescape_slashes(path: &[u8]) -> Option<Vec<u8>> {
    let (p, query) = split_query(path);
    let is_escaped_slash = |w: &[u8]| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F') | (b'5', b'C')
            )
    };
    if !p.windows(3).any(is_escaped_slash) {
        return None;
    }
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < p.len() {
        if i + 3 <= p.len() && is_escaped_slash(&p[i..i + 3]) {
            out.push(if p[i + 1] == b'2' { b'/' } else { b'\\' });
            i += 3;
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    out.extend_from_slice(query);
    Some(out)
}

/// Collapses runs of `/` in the path part, keeping a leading and a trailing slash.
fn merge_slashes(path: &[u8]) -> Option<Vec<u8>> {
    let (p, query) = split_query(path);
    if !p.windows(2).any(|w| w == b"//") {
        return None;
    }
    let mut out = Vec::with_capacity(path.len());
    if p.first() == Some(&b'/') {
        out.push(b'/');
    }
    for (n, seg) in p
        .split(|&b| b == b'/')
        .filter(|s| !s.is_empty())
        .enumerate()
    {
        if n > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(seg);
    }
    if p.last() == Some(&b'/') {
        out.push(b'/');
    }
    out.extend_from_slice(query);
    Some(out)
}

// How the canonicaliser treats each byte (Chromium's path table, which Envoy uses).
/// Copied as it is, whether escaped or not.
const PASS: u8 = 0;
/// Needs a look (dots, `%`, `\`, and everything escaped or invalid).
const SPECIAL: u8 = 1;
const ESCAPE_BIT: u8 = 2;
/// Written percent-encoded.
const ESCAPE: u8 = ESCAPE_BIT | SPECIAL;
/// Written plain when it arrives percent-encoded (unreserved characters).
const UNESCAPE: u8 = 4;
const INVALID_BIT: u8 = 8;
/// Fails the canonicalisation (NUL).
const INVALID: u8 = INVALID_BIT | SPECIAL;

const fn class(b: u8) -> u8 {
    match b {
        0 => INVALID,
        0x01..=0x20 | 0x7f..=0xff => ESCAPE,
        b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'`' | b'{' | b'|' | b'}' => ESCAPE,
        b'.' => SPECIAL,
        b'-' | b'_' | b'~' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => UNESCAPE,
        _ => PASS,
    }
}

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = class(i as u8);
        i += 1;
    }
    t
};

/// Whether canonicalising could change `p`: any byte other than a plain path character
/// (a dot, `%`, `\`, or one that must be escaped), or no leading slash.
fn needs_canonicalizing(p: &[u8]) -> bool {
    p.first() != Some(&b'/') || p.iter().any(|&b| CLASS[b as usize] & SPECIAL != 0)
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// The length of a dot at `i` (`.` or `%2e`), or 0.
fn dot_len(s: &[u8], i: usize) -> usize {
    match s.get(i) {
        Some(b'.') => 1,
        Some(b'%') if s.get(i + 1) == Some(&b'2') && matches!(s.get(i + 2), Some(b'e' | b'E')) => 3,
        _ => 0,
    }
}

/// The byte a `%XX` at `i` encodes.
fn decode_escape(s: &[u8], i: usize) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    if i + 3 > s.len() || s[i] != b'%' {
        return None;
    }
    Some(hex(s[i + 1])? * 16 + hex(s[i + 2])?)
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// What the dot(s) starting at a segment mean: `(up, consumed after the first dot)`, or
/// `None` when they are part of a name.
fn after_dot(s: &[u8], after: usize) -> Option<(bool, usize)> {
    if after == s.len() {
        return Some((false, 0));
    }
    if is_slash(s[after]) {
        return Some((false, 1));
    }
    let second = dot_len(s, after);
    if second > 0 {
        let end = after + second;
        if end == s.len() {
            return Some((true, second));
        }
        if is_slash(s[end]) {
            return Some((true, second + 1));
        }
    }
    None
}

/// Removes the last segment of `out` (which ends with `/`), never above `begin`.
fn back_up(begin: usize, out: &mut Vec<u8>) {
    let mut i = out.len() - 1;
    if i == begin {
        return;
    }
    i -= 1;
    while out[i] != b'/' && i > begin {
        i -= 1;
    }
    out.truncate(i + 1);
}

/// A `%` that began no valid escape, followed within two bytes by an unescaped character,
/// may now read as an escape (`%%30` → `%0`): write it as `%25` so a second decoding
/// cannot change the path again.
fn nested_escape(s: &[u8], next: usize, pct: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let last = out[len - 1];
    let append_next = pct == len - 2;
    if append_next {
        if next == s.len() || s[next] >= 0x80 {
            return;
        }
        out.push(s[next]);
    }
    if decode_escape(out, pct).is_some() {
        if !append_next {
            out.push(out[pct + 1]);
        }
        out[pct + 1] = b'2';
        out[pct + 2] = b'5';
        out.push(last);
    } else if append_next {
        out.truncate(len);
    }
}

/// Canonicalises a path (no query) into `out`; `false` when it cannot be (an encoded or
/// raw NUL), as Envoy's `normalize_path` rejects it.
fn canonicalize(s: &[u8], out: &mut Vec<u8>) -> bool {
    let begin = out.len();
    if s.is_empty() {
        out.push(b'/');
        return true;
    }
    if !is_slash(s[0]) {
        out.push(b'/');
    }
    let mut ok = true;
    let mut bad_percent: Option<usize> = None;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        let class = CLASS[b as usize];
        if class & SPECIAL == 0 {
            out.push(b);
            i += 1;
            continue;
        }
        let dot = dot_len(s, i);
        if dot > 0 {
            if out.len() > begin && out.last() == Some(&b'/') {
                match after_dot(s, i + dot) {
                    None => {
                        out.push(b'.');
                        i += dot;
                    }
                    Some((up, consumed)) => {
                        if up {
                            back_up(begin, out);
                        }
                        i += dot + consumed;
                    }
                }
            } else {
                out.push(b'.');
                i += dot;
            }
        } else if b == b'\\' {
            out.push(b'/');
            i += 1;
        } else if b == b'%' {
            match decode_escape(s, i) {
                Some(v) if CLASS[v as usize] & UNESCAPE != 0 => {
                    out.push(v);
                    i += 3;
                    if let Some(p) = bad_percent {
                        if p + 3 >= out.len() {
                            nested_escape(s, i, p, out);
                        }
                    }
                }
                Some(v) => {
                    // Kept escaped, in the case it came in.
                    out.extend_from_slice(&s[i..i + 3]);
                    ok &= CLASS[v as usize] & INVALID_BIT == 0;
                    i += 3;
                }
                None => {
                    bad_percent = Some(out.len());
                    out.push(b'%');
                    i += 1;
                }
            }
        } else {
            ok &= class & INVALID_BIT == 0;
            push_escaped(out, b);
            i += 1;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> String {
        let cfg = Normalization {
            normalize: true,
            ..Default::default()
        };
        match normalize(&cfg, p.as_bytes()) {
            Outcome::Unchanged => p.to_string(),
            Outcome::Changed(v) => String::from_utf8(v).unwrap(),
            o => format!("{o:?}"),
        }
    }

    #[test]
    fn dot_segments_are_removed_and_never_climb_above_the_root() {
        assert_eq!(canon("/a/b/../c"), "/a/c");
        assert_eq!(canon("/a/./b/."), "/a/b/");
        assert_eq!(canon("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(canon("/a/%2e%2E/b"), "/b");
        assert_eq!(canon("/a/..b/c."), "/a/..b/c.");
        assert_eq!(canon("/a/b/.."), "/a/");
        assert_eq!(canon("/public/..\\admin"), "/admin");
    }

    #[test]
    fn percent_encoding_is_decoded_for_unreserved_and_kept_otherwise() {
        assert_eq!(canon("/%41%7a%2d%5F"), "/Az-_");
        assert_eq!(canon("/a%2fb%2Fc"), "/a%2fb%2Fc");
        assert_eq!(canon("/a b\"<>`{}|"), "/a%20b%22%3C%3E%60%7B%7D%7C");
        assert_eq!(canon("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(canon("/50%"), "/50%");
        assert_eq!(canon("/%zz"), "/%zz");
        assert_eq!(canon("/x?q=/../%41"), "/x?q=/../%41");
    }

    #[test]
    fn an_encoded_nul_is_rejected_and_nested_escapes_cannot_decode_twice() {
        assert_eq!(canon("/a%00b"), "Reject");
        assert_eq!(canon("/%%30%30"), "/%2500");
        assert_eq!(canon("/%%300"), "/%2500");
    }

    #[test]
    fn slashes_merge_and_escaped_slashes_follow_the_action() {
        let merge = Normalization {
            merge_slashes: true,
            ..Default::default()
        };
        assert_eq!(
            normalize(&merge, b"//a///b//?x=//y"),
            Outcome::Changed(b"/a/b/?x=//y".to_vec())
        );
        let action = |a| Normalization {
            escaped_slashes: a,
            normalize: true,
            ..Default::default()
        };
        assert_eq!(
            normalize(&action(EscapedSlashes::Reject), b"/a%2Fb"),
            Outcome::Reject
        );
        assert_eq!(
            normalize(&action(EscapedSlashes::UnescapeAndForward), b"/a%2f..%5Cb"),
            Outcome::Changed(b"/b".to_vec())
        );
        assert_eq!(
            normalize(&action(EscapedSlashes::UnescapeAndRedirect), b"/a%2Fb"),
            Outcome::Redirect(b"/a/b".to_vec())
        );
        assert_eq!(
            normalize(&action(EscapedSlashes::Keep), b"/a%2Fb"),
            Outcome::Unchanged
        );
    }
}
