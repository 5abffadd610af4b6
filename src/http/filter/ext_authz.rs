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
        let added = &mut x.filter_state_mut().response_added;
        for h in headers.iter().filter_map(|o| o.header.as_ref()) {
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
    stat(ExtAuthzStat::Ok);
    if let Some(HttpResponse::OkResponse(ok)) = r.http_response {
        for o in &ok.headers {
            let Some(h) = &o.header else { continue };
            let Some(v) = header_value(h) else { continue };
            let name = h.key.to_ascii_lowercase();
            if !settable(&name) {
                continue;
            }
            if o.append.unwrap_or(false) {
                // Appended to the header's value when the request has it; else nothing.
                let existing = x
                    .filter_state()
                    .added
                    .iter()
                    .find(|(n, _)| **n == *name)
                    .map(|(_, v)| v.clone())
                    .or_else(|| {
                        crate::http::h1::header_value(x.buf(), &x.head().headers, name.as_bytes())
                            .map(|v| v.into_owned())
                    });
                let Some(mut joined) = existing else { continue };
                joined.push(b',');
                joined.extend_from_slice(&v);
                x.remove_request_header(name.as_bytes());
                let added = &mut x.filter_state_mut().added;
                added.retain(|(n, _)| **n != *name);
                added.push((name.into(), joined));
                continue;
            }
            x.remove_request_header(name.as_bytes());
            x.filter_state_mut().added.retain(|(n, _)| **n != *name);
            x.filter_state_mut().added.push((name.into(), v));
        }
        for name in &ok.headers_to_remove {
            let name = name.to_ascii_lowercase();
            if settable(&name) {
                x.remove_request_header(name.as_bytes());
                x.filter_state_mut().added.retain(|(n, _)| **n != *name);
            }
        }
        let added = &mut x.filter_state_mut().response_added;
        for h in ok
            .response_headers_to_add
            .iter()
            .filter_map(|o| o.header.as_ref())
        {
            if let Some(v) = header_value(h) {
                added.push((h.key.to_ascii_lowercase().into(), v));
            }
        }
    }
    Ok(())
}

/// A header the service may change: not a pseudo-header nor `host`, with a valid name.
fn settable(name: &str) -> bool {
    !name.starts_with(':')
        && name != "host"
        && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

/// A `HeaderValue`'s value, if it is one a header may carry.
fn header_value(h: &core::HeaderValue) -> Option<Vec<u8>> {
    let v = if h.raw_value.is_empty() {
        h.value.as_bytes().to_vec()
    } else {
        h.raw_value.clone()
    };
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
    let path = String::from_utf8_lossy(x.bytes(&x.log().path)).into_owned();
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
    for (n, v) in &x.head().headers {
        let name = String::from_utf8_lossy(&buf[n.clone()]).to_ascii_lowercase();
        if name == "host" || !keep(&name) {
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
    // What Envoy's connection manager adds before the filters.
    if !headers.contains_key("x-forwarded-proto") && keep("x-forwarded-proto") {
        headers.insert("x-forwarded-proto".into(), scheme.clone());
    }
    if let Some(id) = &x.log().request_id {
        if keep("x-request-id") {
            headers.insert(
                "x-request-id".into(),
                String::from_utf8_lossy(id).into_owned(),
            );
        }
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
