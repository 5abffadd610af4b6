//! `envoy.filters.http.jwt_authn`: picks the requirement for a request (a CORS preflight
//! bypass, the route's `PerRouteConfig`, else the first matching rule), checks it
//! (`verify`), and then, as Envoy 1.40 does:
//! - on success, removes the tokens unless `forward`, writes `forward_payload_header` and
//!   `claim_to_headers`, and the payload (and header) into dynamic metadata
//!   (`envoy.filters.http.jwt_authn`), where RBAC reads them;
//! - on failure, answers 401 (403 for a disallowed audience) with jwt_verify_lib's words
//!   and `www-authenticate: Bearer realm="<url>", error="invalid_token"` (no `error` when
//!   the token is missing), details `jwt_authn_access_denied{<words>}`.
//!
//! A remote key set the request needs and the proxy lacks is fetched (on the control
//! thread) while the request waits; then the requirement is checked again from the start.

mod verify;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

use super::FilterHost;
use crate::http::error::HttpError;
use crate::http::h1::header_value;
use crate::jwt::Status;
use crate::model::filter::PerRoute;
use crate::model::jwt::{JwtAuthn, JwtPerRoute, Location, Requirement};
use crate::router::RequestView;
use crate::stats::JwtAuthnStat;
use verify::{bit, Eval, Found, Need, Tokens};

/// The dynamic metadata namespace the filter writes.
pub(crate) const NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// What the filter decided for a request, for the upstream request and the reply.
#[derive(Default)]
pub(crate) struct JwtState {
    /// `www-authenticate` on the filter's own answer.
    pub challenge: Option<Vec<u8>>,
    /// Providers whose remote key set was fetched for this request.
    fetched: u64,
}

/// A wait the decode phase must make before it goes on.
pub(crate) type Wait = Pin<Box<dyn Future<Output = ()>>>;

// Out of line: `decode_headers`, inlined on every request, stays small.
#[inline(never)]
pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    f: &Arc<JwtAuthn>,
    per: Option<&PerRoute>,
) -> Result<Option<Wait>, HttpError> {
    let core = x.core();
    let stat = |s: JwtAuthnStat| f.stats.core(core).inc(s as usize);
    let view = super::rbac::Request(&*x);
    if f.bypass_cors_preflight
        && view.method() == b"OPTIONS"
        && view.header("origin").is_some_and(|v| !v.is_empty())
        && view
            .header("access-control-request-method")
            .is_some_and(|v| !v.is_empty())
    {
        stat(JwtAuthnStat::CorsPreflightBypassed);
        stat(JwtAuthnStat::Allowed);
        return Ok(None);
    }
    let requirement: Arc<Requirement> = match per {
        Some(PerRoute::Jwt(p)) => match &**p {
            JwtPerRoute::Disabled => {
                stat(JwtAuthnStat::Allowed);
                return Ok(None);
            }
            JwtPerRoute::RequirementName(n) => match f.requirement_map.get(n) {
                Some(r) => r.clone(),
                None => {
                    stat(JwtAuthnStat::Denied);
                    let why = format!(
                        "Wrong requirement_name: {n}. It should be one of [{}]",
                        f.requirement_names
                    );
                    return Err(HttpError::JwtDenied {
                        status: 403,
                        details: details(&why),
                        body: format!("Failed JWT authentication: {why}").into(),
                    });
                }
            },
        },
        _ => {
            let path = view.path();
            let (path_only, query) = match path.iter().position(|&b| b == b'?') {
                Some(i) => (&path[..i], Some(&path[i + 1..])),
                None => (path, None),
            };
            let rule = f.rules.iter().find(|r| {
                crate::router::conditions_match(
                    (&r.path, r.case_sensitive, &r.headers, &r.query),
                    &view,
                    path_only,
                    query,
                )
            });
            match rule.and_then(|r| r.requires.clone()) {
                Some(r) => r,
                None => {
                    stat(JwtAuthnStat::Allowed);
                    return Ok(None);
                }
            }
        }
    };
    // The names the filter writes are never taken from the client: removed for every
    // provider the requirement names, whatever the verdict.
    let named = verify::providers_of(&requirement, f.providers.len());
    for (i, p) in f.providers.iter().enumerate() {
        if named & bit(i) == 0 {
            continue;
        }
        if let Some(h) = &p.forward_payload_header {
            x.remove_request_header(h.as_bytes());
        }
        for (h, _) in &p.claim_to_headers {
            x.remove_request_header(h.as_bytes());
        }
    }
    let fetched = x.filter_state().jwt.as_ref().map_or(0, |j| j.fetched);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tokens = Request(x);
    let mut eval = Eval {
        f,
        tokens: &tokens,
        now,
        fetched,
        touched: 0,
        lookups: 0,
        metadata: serde_json::Map::new(),
    };
    let verdict = match eval.requirement(&requirement) {
        Ok(v) => v,
        Err(Need(remote, i)) => {
            x.filter_state_mut()
                .jwt
                .get_or_insert_with(Default::default)
                .fetched |= bit(i);
            return Ok(Some(Box::pin(remote.fetch())));
        }
    };
    if eval.lookups > 0 {
        f.stats
            .core(core)
            .add(JwtAuthnStat::JwtCacheMiss as usize, eval.lookups);
    }
    let meta = std::mem::take(&mut eval.metadata);
    finish(x, f, verdict, meta)
}

fn details(words: &str) -> Box<str> {
    format!("{{{}}}", words.replace(char::is_whitespace, "_")).into()
}

/// Acts on the verdict: the request's headers, path and metadata, or the answer.
fn finish<E: FilterHost>(
    x: &mut E,
    f: &JwtAuthn,
    verdict: verify::Verdict,
    mut meta: serde_json::Map<String, Value>,
) -> Result<Option<Wait>, HttpError> {
    let core = x.core();
    let status = verdict.status();
    if status != Status::Ok {
        f.stats.core(core).inc(JwtAuthnStat::Denied as usize);
        // What passed is in the metadata all the same (Envoy writes it at the end).
        if !meta.is_empty() {
            super::set_metadata(x, NAMESPACE, meta);
        }
        let words = status.text();
        let (body, challenge) = if f.strip_failure_response {
            (String::new(), None)
        } else {
            let mut c = b"Bearer realm=\"".to_vec();
            realm(x, &mut c);
            c.push(b'"');
            if status != Status::JwtMissed {
                c.extend_from_slice(b", error=\"invalid_token\"");
            }
            (words.to_string(), Some(c))
        };
        x.filter_state_mut()
            .jwt
            .get_or_insert_with(Default::default)
            .challenge = challenge;
        return Err(HttpError::JwtDenied {
            status: status.http_status(),
            body: body.into(),
            details: details(words),
        });
    }
    f.stats.core(core).inc(JwtAuthnStat::Allowed as usize);
    let mut add = Vec::new();
    let mut new_path = None;
    let mut reroute = false;
    let mut invalid = None;
    for g in &verdict.good {
        let p = &f.providers[g.provider];
        if !p.forward {
            match &g.location {
                Location::Header(name, _) => x.remove_request_header(name.as_bytes()),
                Location::Param(name) => {
                    let path = new_path
                        .take()
                        .unwrap_or_else(|| x.bytes(&x.log().path).to_vec());
                    new_path = Some(without_param(&path, name));
                }
                // Envoy leaves cookies as they are.
                Location::Cookie(_) => {}
            }
        }
        if let Some(h) = &p.forward_payload_header {
            let mut v = g.jwt.payload_b64.clone().into_bytes();
            if p.pad_forward_payload_header {
                while v.len() % 4 != 0 {
                    v.push(b'=');
                }
            }
            add.push((h.clone(), v));
        }
        for (h, claim) in &p.claim_to_headers {
            if let Some(v) = verify::claim_header(&g.jwt.payload, claim) {
                if http::HeaderValue::from_bytes(v.as_bytes()).is_err() {
                    // Envoy sends such a request nowhere: 503 once the filters are done.
                    invalid.get_or_insert_with(|| h.clone());
                    continue;
                }
                add.push((h.clone(), v.into_bytes()));
            }
        }
        if p.clear_route_cache
            && (!p.claim_to_headers.is_empty() || p.payload_in_metadata.is_some())
        {
            reroute = true;
        }
    }
    if let Some((i, s)) = verdict.failed {
        if let Some(k) = &f.providers[i].failed_status_in_metadata {
            let mut m = serde_json::Map::new();
            m.insert("code".into(), Value::from(f64::from(s as u8)));
            m.insert("message".into(), Value::from(s.text()));
            meta.insert(k.to_string(), Value::Object(m));
        }
    }
    if let Some(p) = new_path {
        let r = x.replace_path(&p);
        x.filter_state_mut().path = Some(r);
    }
    if !meta.is_empty() {
        super::set_metadata(x, NAMESPACE, meta);
    }
    let state = x.filter_state_mut();
    state.reroute |= reroute;
    if invalid.is_some() {
        state.invalid_header = invalid;
    }
    state.added.extend(add);
    Ok(None)
}

/// Envoy's `buildOriginalUri`: scheme, host and path (the original path if a route
/// rewrote it), the path cut to 256 bytes.
fn realm<E: FilterHost>(x: &E, out: &mut Vec<u8>) {
    let path = x.bytes(&x.log().path);
    if path.is_empty() {
        return;
    }
    out.extend_from_slice(crate::http::exchange::forwarded_proto(x));
    out.extend_from_slice(b"://");
    out.extend_from_slice(x.bytes(&x.log().authority));
    out.extend_from_slice(&path[..path.len().min(256)]);
}

/// `path` without query parameter `name` (every occurrence).
fn without_param(path: &[u8], name: &str) -> Vec<u8> {
    let Some(q) = path.iter().position(|&b| b == b'?') else {
        return path.to_vec();
    };
    let mut out = path[..q].to_vec();
    let mut first = true;
    for pair in path[q + 1..].split(|&b| b == b'&') {
        let key = pair.split(|&b| b == b'=').next().unwrap_or(b"");
        if pair.is_empty() || percent_decode(key) == name.as_bytes() {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        first = false;
        out.extend_from_slice(pair);
    }
    out
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            s[i],
            s.get(i + 1).copied().and_then(hex),
            s.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Where the filter finds tokens: the request's headers, query and cookies.
struct Request<'a, E>(&'a E);

impl<E: FilterHost> Tokens for Request<'_, E> {
    fn find(&self, f: &JwtAuthn, mask: u64) -> Vec<Found> {
        // Each location once, with every provider that looks there.
        let mut locations: Vec<(&Location, u64)> = Vec::new();
        for (i, p) in f.providers.iter().enumerate() {
            if mask & bit(i) == 0 {
                continue;
            }
            for l in &p.locations {
                match locations.iter_mut().find(|(x, _)| *x == l) {
                    Some((_, m)) => *m |= bit(i),
                    None => locations.push((l, bit(i))),
                }
            }
        }
        // Envoy lists headers, then parameters, then cookies (each kind sorted by name),
        // and checks the list from its end: the order is built so, then reversed.
        let rank = |l: &Location| match l {
            Location::Header(n, p) => (0, format!("{n}{p}")),
            Location::Param(n) => (1, n.to_string()),
            Location::Cookie(n) => (2, n.to_string()),
        };
        locations.sort_by_key(|a| rank(a.0));
        let x = self.0;
        let buf = x.buf();
        let path = x.bytes(&x.log().path);
        let mut out = Vec::new();
        for (l, providers) in locations {
            let mut push = |token: &[u8]| {
                out.push(Found {
                    location: l.clone(),
                    token: String::from_utf8_lossy(token).into_owned(),
                    providers,
                })
            };
            match l {
                Location::Header(name, prefix) if inline(name) => {
                    // Envoy keeps one value of its inline headers, repeats joined by ','.
                    if let Some(v) = header_value(buf, &x.head().headers, name.as_bytes()) {
                        if let Some(t) = after_prefix(&v, prefix.as_bytes()) {
                            push(t);
                        }
                    }
                }
                // Other headers: each line is a token of its own, as Envoy finds them
                // (compared in jwt_parity.py).
                Location::Header(name, prefix) => {
                    for (n, v) in &x.head().headers {
                        if !buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()) {
                            continue;
                        }
                        if let Some(t) = after_prefix(&buf[v.clone()], prefix.as_bytes()) {
                            push(t);
                        }
                    }
                }
                Location::Param(name) => {
                    if let Some(q) = path.iter().position(|&b| b == b'?') {
                        let hit = path[q + 1..].split(|&b| b == b'&').find_map(|pair| {
                            let mut kv = pair.splitn(2, |&b| b == b'=');
                            let k = kv.next()?;
                            (percent_decode(k) == name.as_bytes())
                                .then(|| percent_decode(kv.next().unwrap_or(b"")))
                        });
                        if let Some(t) = hit {
                            push(&t);
                        }
                    }
                }
                Location::Cookie(name) => {
                    // Each Cookie line on its own (Envoy's `parseCookies`).
                    let mut lines = x
                        .head()
                        .headers
                        .iter()
                        .filter(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(b"cookie"));
                    let hit = lines.find_map(|(_, v)| {
                        let c = &buf[v.clone()];
                        c.split(|&b| b == b';').find_map(|kv| {
                            let kv = kv.trim_ascii();
                            let i = kv.iter().position(|&b| b == b'=')?;
                            (&kv[..i] == name.as_bytes()).then(|| {
                                let v = &kv[i + 1..];
                                v.strip_prefix(b"\"")
                                    .and_then(|v| v.strip_suffix(b"\""))
                                    .unwrap_or(v)
                                    .to_vec()
                            })
                        })
                    });
                    if let Some(t) = hit {
                        push(&t);
                    }
                }
            }
        }
        out.reverse();
        out
    }
}

/// Request headers Envoy keeps inline (one value; a repeat is appended to it after a
/// comma), among those a token could be read from.
fn inline(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "accept"
            | "accept-encoding"
            | "access-control-request-headers"
            | "access-control-request-method"
            | "origin"
            | "referer"
            | "user-agent"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-request-id"
    )
}

/// The token in a header value: after `prefix` (found anywhere, case-sensitive), from the
/// first base64url or '.' character to the end; with no prefix, the whole value.
fn after_prefix<'v>(value: &'v [u8], prefix: &[u8]) -> Option<&'v [u8]> {
    if prefix.is_empty() {
        return Some(value);
    }
    let at = value.windows(prefix.len()).position(|w| w == prefix)?;
    let rest = &value[at + prefix.len()..];
    match rest
        .iter()
        .position(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        Some(i) => Some(&rest[i..]),
        None => Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_after_prefix_as_envoy_finds_it() {
        assert_eq!(
            after_prefix(b"Bearer abc.def", b"Bearer "),
            Some(&b"abc.def"[..])
        );
        assert_eq!(
            after_prefix(b"Bearer  \"abc\"", b"Bearer "),
            Some(&b"abc\""[..])
        );
        assert_eq!(after_prefix(b"x Bearer abc", b"Bearer "), Some(&b"abc"[..]));
        assert_eq!(after_prefix(b"bearer abc", b"Bearer "), None);
        assert_eq!(after_prefix(b"raw", b""), Some(&b"raw"[..]));
        assert_eq!(after_prefix(b"Bearer ", b"Bearer "), Some(&b"Bearer "[..]));
    }

    #[test]
    fn params_are_removed_by_their_decoded_name() {
        assert_eq!(
            without_param(b"/p?a=1&access_token=t&b=2", "access_token"),
            b"/p?a=1&b=2"
        );
        assert_eq!(without_param(b"/p?access%5Ftoken=t", "access_token"), b"/p");
        assert_eq!(without_param(b"/p", "access_token"), b"/p");
    }
}
