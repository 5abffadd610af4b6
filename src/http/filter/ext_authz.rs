//! `envoy.filters.http.ext_authz` with a gRPC service (Istio's CUSTOM action): the request
//! is described in a `CheckRequest` (peer addresses and principals, method, path, host,
//! headers) and sent to `envoy.service.auth.v3.Authorization/Check` over an HTTP/2
//! connection of the request's own core (its pool, as the router's), while the request
//! waits. Then, as Envoy does:
//! - OK: the service's headers are set on (or appended to) the upstream request, its
//!   `headers_to_remove` removed, its `response_headers_to_add` put on the response;
//! - denied: its status (403 when unset), body and headers answer the request (`UAEX`,
//!   details `ext_authz_denied`);
//! - no answer (connection, timeout, a gRPC error of the call): `status_on_error` (403)
//!   with no body (`ext_authz_error`), unless `failure_mode_allow`.
//!
//! Whether a request is checked at all: `filter_enabled`, `filter_enabled_metadata` (Istio
//! asks only when the `istio-ext-authz` shadow RBAC policy matched) and the route's
//! `ExtAuthzPerRoute`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use prost::Message;

use super::jwt::Wait;
use super::FilterHost;
use crate::http::error::HttpError;
use crate::model::filter::{ExtAuthz, ExtAuthzPerRoute, PerRoute};
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::service::auth::v3 as auth;
use crate::stats::ExtAuthzStat;

/// A check in flight: the call fills the slot, the resumed filter reads it.
pub(crate) struct Pending(Rc<RefCell<Option<Result<auth::CheckResponse, String>>>>);

pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    f: &Arc<ExtAuthz>,
    per: Option<&PerRoute>,
    resumed: bool,
) -> Result<Option<Wait>, HttpError> {
    if resumed {
        let answer = x
            .filter_state_mut()
            .ext_authz
            .take()
            .and_then(|p| p.0.borrow_mut().take())
            .unwrap_or_else(|| Err("no answer".into()));
        return apply(x, f, answer).map(|()| None);
    }
    let extensions = match per {
        Some(PerRoute::ExtAuthz(p)) => match &**p {
            ExtAuthzPerRoute::Disabled => return Ok(None),
            ExtAuthzPerRoute::Check(ext) => &ext[..],
        },
        _ => &[],
    };
    let core = x.core();
    let enabled = f.filter_enabled.is_none_or(|e| e.sample(super::draw()))
        && f.filter_enabled_metadata
            .as_ref()
            .is_none_or(|m| crate::rbac::metadata_matches(m, x.filter_state().metadata.as_deref()));
    if !enabled {
        f.stats.core(core).inc(ExtAuthzStat::Disabled as usize);
        return Ok(None);
    }
    // The id the upstream will get, decided now: the check carries it (Envoy's
    // connection manager sets it before any filter runs).
    x.decide_request_id();
    let check = check_request(x, f, extensions).encode_to_vec();
    let slot = Rc::new(RefCell::new(None));
    x.filter_state_mut().ext_authz = Some(Pending(slot.clone()));
    let call = x.grpc_unary(super::GrpcCall {
        cluster: f.cluster.clone(),
        authority: f.authority.clone(),
        path: "/envoy.service.auth.v3.Authorization/Check",
        metadata: f.initial_metadata.clone(),
        timeout: f.timeout,
        message: check,
    });
    let timeout = f.timeout;
    Ok(Some(Box::pin(async move {
        let answer = match timeout {
            Some(t) => monoio::time::timeout(t, call)
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
            None => call.await,
        };
        let answer =
            answer.and_then(|m| auth::CheckResponse::decode(&m[..]).map_err(|e| e.to_string()));
        *slot.borrow_mut() = Some(answer);
    })))
}

/// Acts on the service's answer (or its absence).
fn apply<E: FilterHost>(
    x: &mut E,
    f: &ExtAuthz,
    answer: Result<auth::CheckResponse, String>,
) -> Result<(), HttpError> {
    let core = x.core();
    let stat = |s: ExtAuthzStat| f.stats.core(core).inc(s as usize);
    let r = match answer {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("ext_authz: the check to {} failed: {e}", f.cluster);
            stat(ExtAuthzStat::Error);
            if f.failure_mode_allow {
                stat(ExtAuthzStat::FailureModeAllowed);
                if f.failure_mode_allow_header_add {
                    x.remove_request_header(b"x-envoy-auth-failure-mode-allowed");
                    x.filter_state_mut()
                        .added
                        .push(("x-envoy-auth-failure-mode-allowed".into(), b"true".to_vec()));
                }
                return Ok(());
            }
            return Err(HttpError::ExtAuthzError {
                status: f.status_on_error,
            });
        }
    };
    use auth::check_response::HttpResponse;
    let code = r.status.as_ref().map_or(0, |s| s.code);
    if code != 0 {
        stat(ExtAuthzStat::Denied);
        let (status, body, headers) = match r.http_response {
            Some(HttpResponse::DeniedResponse(d)) => (
                d.status.map_or(403, |s| s.code).clamp(0, 599) as u16,
                d.body,
                d.headers,
            ),
            _ => (403, String::new(), Vec::new()),
        };
        let status = if status < 200 { 403 } else { status };
        // A status whose response has no body carries none (the body would be read as
        // the next response).
        let body = if matches!(status, 204 | 304) {
            String::new()
        } else {
            body
        };
        let added = &mut x.filter_state_mut().response_added;
        for h in headers.iter().filter_map(|o| o.header.as_ref()) {
            if !response_settable(&h.key.to_ascii_lowercase()) {
                continue;
            }
            if let Some(v) = header_value(h) {
                added.retain(|(n, _)| !n.eq_ignore_ascii_case(&h.key));
                added.push((h.key.to_ascii_lowercase().into(), v));
            }
        }
        return Err(HttpError::ExtAuthzDenied {
            status,
            body: body.into(),
        });
    }
    if let Some(HttpResponse::OkResponse(ok)) = r.http_response {
        if let Err(why) = mutate(x, &ok) {
            tracing::debug!(
                "ext_authz: the answer of {} cannot be applied: {why}",
                f.cluster
            );
            stat(ExtAuthzStat::Invalid);
            return Err(HttpError::ExtAuthzInvalid);
        }
    }
    stat(ExtAuthzStat::Ok);
    Ok(())
}

/// The most header and query changes an answer may carry (Envoy's default
/// `max_headers_count`): past it the answer is refused, never applied in part.
const MAX_MUTATIONS: usize = 100;

/// Applies an OK answer's changes to the request, all or none: a change Ringside cannot
/// make as Envoy would (an invalid value, a framing or hop-by-hop header, a pseudo-header
/// other than `:path`) refuses the whole answer (500 `ext_authz_invalid`), so nothing the
/// service meant to remove or replace reaches the upstream unchanged.
fn mutate<E: FilterHost>(x: &mut E, ok: &auth::OkHttpResponse) -> Result<(), String> {
    let count = ok.headers.len()
        + ok.headers_to_remove.len()
        + ok.response_headers_to_add.len()
        + ok.query_parameters_to_set.len()
        + ok.query_parameters_to_remove.len();
    if count > MAX_MUTATIONS {
        return Err(format!("{count} changes, more than {MAX_MUTATIONS}"));
    }
    // Checked first: nothing is applied unless everything can be.
    for o in &ok.headers {
        let h = o
            .header
            .as_ref()
            .ok_or("a header option without a header")?;
        let name = h.key.to_ascii_lowercase();
        if name.starts_with(':') && name != ":path" || name == "host" {
            return Err(format!("header {name} cannot be set"));
        }
        if name == ":path" && !raw_value(h).starts_with(b"/") {
            return Err("a :path that does not start with /".into());
        }
    }
    for h in ok.response_headers_to_add.iter() {
        h.header
            .as_ref()
            .ok_or("a header option without a header")?;
    }
    let mut path = None;
    let mut invalid = None;
    for o in &ok.headers {
        let Some(h) = &o.header else { continue };
        let name = h.key.to_ascii_lowercase();
        let v = raw_value(h);
        if name == ":path" {
            path = Some(v);
            continue;
        }
        // Framing and hop-by-hop headers are the proxy's to write: Envoy's codec drops
        // what the service set for them.
        if !settable(&name) {
            continue;
        }
        if http::HeaderValue::from_bytes(&v).is_err()
            || http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            // Envoy takes it, then refuses to send the request: 503 once the filters are
            // done. The client's value is gone either way.
            set_request_header(x, &name, None);
            invalid.get_or_insert_with(|| name.clone().into_boxed_str());
            continue;
        }
        // `append: true` appends to a header the request has (nothing when it has none);
        // otherwise the header is set, whatever `append_action` says (as Envoy 1.40).
        let value = if o.append == Some(true) {
            match current(x, &name) {
                Some(mut e) => {
                    e.push(b',');
                    e.extend_from_slice(&v);
                    e
                }
                None => continue,
            }
        } else {
            v
        };
        set_request_header(x, &name, Some(value));
    }
    if let Some(name) = invalid {
        x.filter_state_mut().invalid_header = Some(name);
    }
    for name in &ok.headers_to_remove {
        let name = name.to_ascii_lowercase();
        if settable(&name) {
            set_request_header(x, &name, None);
        }
    }
    if path.is_some()
        || !ok.query_parameters_to_set.is_empty()
        || !ok.query_parameters_to_remove.is_empty()
    {
        let mut p = path.unwrap_or_else(|| current_path(x).to_vec());
        if !ok.query_parameters_to_set.is_empty() || !ok.query_parameters_to_remove.is_empty() {
            p = with_query(&p, ok);
        }
        if p.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err("a path with spaces or control characters".into());
        }
        let r = x.replace_path(&p);
        x.filter_state_mut().path = Some(r);
    }
    let added = &mut x.filter_state_mut().response_added;
    for h in ok
        .response_headers_to_add
        .iter()
        .filter_map(|o| o.header.as_ref())
    {
        let name = h.key.to_ascii_lowercase();
        // What the proxy frames the response with stays its own; invalid values are
        // never written.
        if !response_settable(&name) {
            continue;
        }
        if let Some(v) = header_value(h) {
            added.push((name.into(), v));
        }
    }
    Ok(())
}

/// The request's value of header `name` as the upstream would get it now.
fn current<E: FilterHost>(x: &E, name: &str) -> Option<Vec<u8>> {
    if let Some((_, v)) = x.filter_state().added.iter().find(|(n, _)| **n == *name) {
        return Some(v.clone());
    }
    crate::http::h1::header_value(x.buf(), &x.head().headers, name.as_bytes())
        .map(|v| v.into_owned())
}

/// Sets (or with `None` removes) a request header for the upstream.
fn set_request_header<E: FilterHost>(x: &mut E, name: &str, value: Option<Vec<u8>>) {
    x.remove_request_header(name.as_bytes());
    let added = &mut x.filter_state_mut().added;
    added.retain(|(n, _)| **n != *name);
    if let Some(v) = value {
        added.push((name.into(), v));
    }
}

/// The path the upstream would get now (a filter may have rewritten it).
fn current_path<E: FilterHost>(x: &E) -> &[u8] {
    match &x.filter_state().path {
        Some(r) => x.bytes(r),
        None => x.bytes(&x.log().path),
    }
}

/// `path` with the answer's query changes, the query written again as Envoy writes it:
/// parameters in key order (a set one replaces every one of its key).
fn with_query(path: &[u8], ok: &auth::OkHttpResponse) -> Vec<u8> {
    let q = path.iter().position(|&b| b == b'?').unwrap_or(path.len());
    let mut params: Vec<(Vec<u8>, Vec<u8>)> = path[(q + 1).min(path.len())..]
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (p[..i].to_vec(), p[i + 1..].to_vec()),
            None => (p.to_vec(), Vec::new()),
        })
        .collect();
    for k in &ok.query_parameters_to_remove {
        params.retain(|(key, _)| key != k.as_bytes());
    }
    for s in &ok.query_parameters_to_set {
        params.retain(|(key, _)| key != s.key.as_bytes());
        params.push((s.key.as_bytes().to_vec(), s.value.as_bytes().to_vec()));
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = path[..q].to_vec();
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 { b'?' } else { b'&' });
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
    }
    out
}

/// Whether a `Connection` header names `name` (a hop-by-hop header Envoy removes before
/// the filters).
fn nominated(
    buf: &[u8],
    headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
    name: &[u8],
) -> bool {
    headers.iter().any(|(n, v)| {
        buf[n.clone()].eq_ignore_ascii_case(b"connection")
            && buf[v.clone()]
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// A response header the service may add: not one the proxy frames the response with.
fn response_settable(name: &str) -> bool {
    settable(name) && !matches!(name, "grpc-status" | "grpc-message" | "server" | "date")
}

/// A request header the service may change: a valid name, not a pseudo-header, `host`,
/// framing or hop-by-hop header (the proxy writes those itself).
fn settable(name: &str) -> bool {
    !name.starts_with(':')
        && !matches!(name, "host" | "content-length" | "transfer-encoding")
        && !crate::model::headers::is_hop_by_hop(name.as_bytes())
        && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// A `HeaderValue`'s value as Envoy reads it (`value`; `raw_value` when it is empty).
fn raw_value(h: &core::HeaderValue) -> Vec<u8> {
    if h.value.is_empty() {
        h.raw_value.clone()
    } else {
        h.value.as_bytes().to_vec()
    }
}

/// A `HeaderValue`'s value, if it is one a header may carry.
fn header_value(h: &core::HeaderValue) -> Option<Vec<u8>> {
    let v = raw_value(h);
    (http::HeaderValue::from_bytes(&v).is_ok()
        && http::HeaderName::from_bytes(h.key.as_bytes()).is_ok())
    .then_some(v)
}

/// The `CheckRequest` describing the request, as Envoy's `CheckRequestUtils` fills it.
fn check_request<E: FilterHost>(
    x: &E,
    f: &ExtAuthz,
    extensions: &[(String, String)],
) -> auth::CheckRequest {
    use auth::attribute_context::{HttpRequest, Peer, Request, TlsSession};
    let buf = x.buf();
    let method = String::from_utf8_lossy(x.bytes(&x.head().method)).into_owned();
    let path = String::from_utf8_lossy(current_path(x)).into_owned();
    let host = String::from_utf8_lossy(x.bytes(&x.log().authority)).into_owned();
    let scheme = String::from_utf8_lossy(crate::http::exchange::forwarded_proto(x)).into_owned();
    let keep = |name: &str| {
        (f.allowed_headers.is_empty()
            || f.allowed_headers.iter().any(|m| m.matches(name.as_bytes())))
            && !f
                .disallowed_headers
                .iter()
                .any(|m| m.matches(name.as_bytes()))
    };
    let mut headers = std::collections::HashMap::new();
    for (name, value) in [
        (":authority", &host),
        (":method", &method),
        (":path", &path),
        (":scheme", &scheme),
    ] {
        if keep(name) {
            headers.insert(name.to_string(), value.clone());
        }
    }
    // The request's headers as Envoy's connection manager leaves them for the filters:
    // hop-by-hop headers gone, what it strips from external requests gone, and what it
    // writes itself (x-forwarded-*, x-envoy-internal / -external-address, x-request-id).
    let hcm = x.hcm();
    let internal = x.internal();
    let edge = hcm.use_remote_address;
    let xfcc = crate::http::xfcc::action(hcm.xfcc.0, x.client_cert());
    for (n, v) in &x.head().headers {
        let raw = &buf[n.clone()];
        let name = String::from_utf8_lossy(raw).to_ascii_lowercase();
        let dropped = name == "host"
            || crate::model::headers::is_hop_by_hop(raw)
            || (x.head().nominates && nominated(buf, &x.head().headers, raw))
            || (!internal && crate::http::trust::stripped_from_external(raw, edge))
            || name == "x-envoy-internal"
            || (edge && (name == "x-forwarded-proto" || name == "x-envoy-external-address"))
            || (name == "x-forwarded-client-cert"
                && matches!(
                    xfcc,
                    crate::http::xfcc::Action::Remove | crate::http::xfcc::Action::Set(_)
                ))
            || (name == "x-request-id" && x.log().request_id.is_some());
        if dropped || !keep(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(&buf[v.clone()]);
        headers
            .entry(name)
            .and_modify(|e: &mut String| {
                e.push(',');
                e.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let hcm_sets =
        |headers: &mut std::collections::HashMap<String, String>, name: &str, value: String| {
            if keep(name) {
                headers.insert(name.to_string(), value);
            }
        };
    if edge {
        hcm_sets(&mut headers, "x-forwarded-proto", scheme.clone());
        if !hcm.skip_xff_append {
            let hop = crate::http::trust::forwarded_for_address(x.peer().ip(), x.local_ip());
            let xff = match headers.get("x-forwarded-for") {
                Some(v) => format!("{v},{hop}"),
                None => hop.to_string(),
            };
            hcm_sets(&mut headers, "x-forwarded-for", xff);
        }
        if !internal {
            hcm_sets(
                &mut headers,
                "x-envoy-external-address",
                x.peer().ip().to_string(),
            );
        }
    } else if !headers.contains_key("x-forwarded-proto") {
        hcm_sets(&mut headers, "x-forwarded-proto", scheme.clone());
    }
    if internal {
        hcm_sets(&mut headers, "x-envoy-internal", "true".into());
    }
    match xfcc {
        crate::http::xfcc::Action::Set(e) => {
            hcm_sets(&mut headers, "x-forwarded-client-cert", e.to_string())
        }
        crate::http::xfcc::Action::Append(e) => {
            let v = match headers.get("x-forwarded-client-cert") {
                Some(v) => format!("{v},{e}"),
                None => e.to_string(),
            };
            hcm_sets(&mut headers, "x-forwarded-client-cert", v);
        }
        _ => {}
    }
    if let Some(id) = &x.log().request_id {
        hcm_sets(
            &mut headers,
            "x-request-id",
            String::from_utf8_lossy(id).into_owned(),
        );
    }
    for (n, v) in x.filter_state().added_headers() {
        if keep(n) {
            headers.insert(n.to_string(), String::from_utf8_lossy(v).into_owned());
        }
    }
    let addr = |a: std::net::SocketAddr| core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    };
    let authn = x.authn();
    let principal = authn.and_then(|a| a.peer.as_ref()).map(|p| {
        p.uri_sans
            .first()
            .or(p.dns_sans.first())
            .cloned()
            .unwrap_or_else(|| p.subject.clone())
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let http = HttpRequest {
        // Envoy's stream id (a random number), not the x-request-id.
        id: fastrand::u64(..).to_string(),
        method,
        headers,
        path,
        host,
        scheme,
        size: x.head().content_length.map_or(-1, |n| n as i64),
        protocol: String::from_utf8_lossy(x.protocol()).into_owned(),
        ..Default::default()
    };
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(Peer {
                address: Some(addr(x.peer())),
                principal: principal.unwrap_or_default(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(addr(x.local())),
                principal: authn
                    .and_then(|a| a.local_principal.as_deref())
                    .unwrap_or_default()
                    .to_string(),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(prost_types::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(http),
            }),
            context_extensions: extensions.iter().cloned().collect(),
            tls_session: (f.include_tls_session && x.downstream_tls()).then(|| TlsSession {
                sni: authn.map(|a| a.sni.to_string()).unwrap_or_default(),
            }),
            ..Default::default()
        }),
    }
}
