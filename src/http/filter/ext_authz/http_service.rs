//! ext_authz's HTTP service, as Envoy's `RawHttpClientImpl` asks it and reads its answer:
//! - the call is the request's method to `path_prefix` + its path, with its host, the
//!   headers the check carries (`authorization` always; what `allowed_headers` names),
//!   `authorization_request.headers_to_add`, the body's start (`with_request_body`), and
//!   what Envoy's async client adds (`x-envoy-internal`, `x-envoy-expected-rq-timeout-ms`);
//! - a 200 allows: `allowed_upstream_headers` are set on the request,
//!   `allowed_upstream_headers_to_append` added to it, the names listed in
//!   `x-envoy-auth-headers-to-remove` removed, `allowed_client_headers_on_success` added
//!   to the response;
//! - a 5xx (or no answer) is an error; any other status denies, answered with the
//!   service's status, body and `allowed_client_headers` (every header but `host` when
//!   none are configured);
//! - `dynamic_metadata_from_headers` go to the request's dynamic metadata either way.

use std::io::Write as _;

use super::super::{FilterHost, HttpCall, HttpReply};
use super::{response_settable, set_request_header, settable};
use crate::http::error::HttpError;
use crate::model::filter::{ExtAuthz, HttpAuthz};
use crate::model::matcher::StringMatcher;
use crate::proto::envoy::service::auth::v3 as auth;
use crate::stats::ExtAuthzStat;

/// The call describing the request, from its `CheckRequest` and the body's start as it
/// came (`body`, when the check carries one). `Err`: a header value no request may carry
/// (a `%COMMAND%` of `headers_to_add` that wrote a line break): the check fails, as
/// Envoy's codec refuses to send it.
pub(super) fn call<E: FilterHost>(
    x: &E,
    f: &ExtAuthz,
    h: &HttpAuthz,
    check: &auth::CheckRequest,
    body: Option<Vec<u8>>,
) -> Result<HttpCall, String> {
    let http = check
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.clone())
        .unwrap_or_default();
    let headers = &http.headers;
    let pick = |name: &str, or: &str| headers.get(name).map_or(or, |v| v.as_str()).to_string();
    let method = pick(":method", &http.method);
    let path = pick(":path", &http.path);
    let host = pick(":authority", &http.host);
    let body = body.unwrap_or_default();
    // headers_to_add, formatted: a value that comes out empty adds nothing (and leaves the
    // client's header of that name alone). Envoy's async client writes the last two.
    let mut added = Vec::new();
    for (name, value) in &h.headers_to_add {
        if matches!(
            &**name,
            "x-envoy-internal" | "x-envoy-expected-rq-timeout-ms"
        ) {
            continue;
        }
        let mut v = Vec::new();
        crate::http::fields::format_value(x, value, &mut v);
        if !v.is_empty() {
            added.push((name, v));
        }
    }
    let mut head = Vec::with_capacity(512);
    let _ = write!(head, "{method} {}{path} HTTP/1.1\r\n", h.path_prefix);
    let mut field = |n: &str, v: &[u8]| {
        if v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("the value of {n} holds a line break or NUL"));
        }
        crate::http::fields::header(&mut head, n.as_bytes(), v);
        Ok(())
    };
    field("host", host.as_bytes())?;
    field("content-length", body.len().to_string().as_bytes())?;
    let mut names: Vec<&String> = headers.keys().collect();
    names.sort();
    for n in names {
        let envoy_sets = matches!(
            n.as_str(),
            "host" | "content-length" | "x-envoy-internal" | "x-envoy-expected-rq-timeout-ms"
        ) || n.starts_with(':')
            || crate::model::headers::is_hop_by_hop(n.as_bytes())
            || added.iter().any(|(a, _)| ***a == **n);
        if !envoy_sets {
            field(n, headers[n].as_bytes())?;
        }
    }
    for (name, v) in &added {
        field(name, v)?;
    }
    field("x-envoy-internal", b"true")?;
    if let Some(t) = f.timeout {
        let ms = t.as_millis().to_string();
        field("x-envoy-expected-rq-timeout-ms", ms.as_bytes())?;
    }
    head.extend_from_slice(b"\r\n");
    Ok(HttpCall {
        cluster: f.cluster.clone(),
        head,
        body,
        head_request: method == "HEAD",
    })
}

/// What the service's answer means for the request: `Ok(true)` allowed, `Ok(false)` an
/// error (a 5xx), `Err` the denial to answer with.
pub(super) fn apply<E: FilterHost>(
    x: &mut E,
    f: &ExtAuthz,
    h: &HttpAuthz,
    reply: HttpReply,
    metadata: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<bool, HttpError> {
    if (500..600).contains(&reply.status) {
        return Ok(false);
    }
    let any = |l: &[StringMatcher], n: &str| l.iter().any(|m| m.matches(n.as_bytes()));
    const REMOVE: &str = "x-envoy-auth-headers-to-remove";
    let mut remove = Vec::new();
    if reply.status == 200 {
        for (_, v) in reply.headers.iter().filter(|(n, _)| &**n == REMOVE) {
            let v = String::from_utf8_lossy(v);
            let names = v.split(',').map(str::trim).filter(|s| !s.is_empty());
            remove.extend(names.map(str::to_ascii_lowercase));
        }
    }
    let headers: Vec<_> = reply
        .headers
        .iter()
        .filter(|(n, _)| &**n != REMOVE)
        .collect();
    for (n, v) in &headers {
        if any(&h.metadata, n) {
            let v = String::from_utf8_lossy(v).into_owned();
            metadata.insert(n.to_string(), serde_json::Value::String(v));
        }
    }
    let core = x.core();
    if reply.status != 200 {
        f.stats.core(core).inc(ExtAuthzStat::Denied as usize);
        let status = if reply.status < 200 {
            403
        } else {
            reply.status
        };
        let client = |n: &str| match &h.client {
            Some(l) => any(l, n),
            None => n != "host" && n != ":authority",
        };
        let chosen: Vec<_> = headers
            .iter()
            .filter(|(n, _)| client(n) && response_settable(n))
            .collect();
        // The service's headers replace the response's own, repeated ones all kept.
        x.filter_state_mut().replaces_reply = true;
        let added = &mut x.filter_state_mut().response_added;
        added.retain(|(n, _)| !chosen.iter().any(|(c, _)| c == n));
        for (n, v) in chosen {
            added.push((n.clone(), v.clone()));
        }
        let body = if matches!(status, 204 | 304) {
            String::new()
        } else {
            String::from_utf8_lossy(&reply.body).into_owned()
        };
        return Err(HttpError::ExtAuthzDenied {
            status,
            body: body.into(),
        });
    }
    for (n, v) in &headers {
        if !settable(n) {
            continue;
        }
        if any(&h.upstream, n) {
            set_request_header(x, n, Some(v.clone()));
        }
        if any(&h.upstream_append, n) {
            x.filter_state_mut().added.push((n.clone(), v.clone()));
        }
    }
    for n in &remove {
        if settable(n) {
            set_request_header(x, n, None);
        }
    }
    let added = &mut x.filter_state_mut().response_added;
    for (n, v) in &headers {
        if any(&h.client_on_success, n) && response_settable(n) {
            added.push((n.clone(), v.clone()));
        }
    }
    f.stats.core(core).inc(ExtAuthzStat::Ok as usize);
    Ok(true)
}
