//! `envoy.filters.http.ext_authz` (Istio's CUSTOM action): the request is described in a
//! `CheckRequest` (peer addresses and principals, method, path, host, headers) and sent to
//! `envoy.service.auth.v3.Authorization/Check` over an HTTP/2 connection of the request's
//! own core (its pool, as the router's), or to an HTTP service as a request of its own
//! (`http`), while the request waits. Then, for the gRPC service, as Envoy does:
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

mod check;
mod http_service;

use super::jwt::Wait;
use super::FilterHost;
use crate::http::error::HttpError;
use crate::model::filter::{AuthzService, ExtAuthz, ExtAuthzPerRoute, PerRoute};
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::service::auth::v3 as auth;
use crate::stats::ExtAuthzStat;
use check::check_request;

/// Why the filter stops the decode phase for a while.
pub(super) enum Pause {
    /// The check is in flight.
    Wait(Wait),
    /// The check needs the body's start first (this many bytes).
    Body(usize),
}

/// A check in flight: the call fills the slot, the resumed filter reads it.
pub(crate) struct Pending {
    slot: Rc<RefCell<Option<Result<Answer, String>>>>,
    started: std::time::Instant,
}

/// What the service said.
enum Answer {
    Grpc(auth::CheckResponse),
    Http(super::HttpReply),
}

/// Where ext_authz writes dynamic metadata.
const NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// `cluster`: where the request is routed (its stats count the decisions too).
pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    f: &Arc<ExtAuthz>,
    per: Option<&PerRoute>,
    cluster: Option<&str>,
    resumed: bool,
) -> Result<Option<Pause>, HttpError> {
    if resumed {
        let pending = x.filter_state_mut().ext_authz.take();
        let started = pending.as_ref().map(|p| p.started);
        let answer = pending
            .and_then(|p| p.slot.borrow_mut().take())
            .unwrap_or_else(|| Err("no answer".into()));
        let result = apply(x, f, answer, started);
        charge(x, cluster, &result);
        return result.map(|_| None);
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
    // with_request_body: the body's start first (Envoy buffers it the same way).
    let mut body = None;
    if let Some(b) = f.with_body {
        if x.head()
            .content_length
            .is_some_and(|n| n > b.max_bytes as u64)
            && !b.allow_partial
        {
            return Err(HttpError::PayloadTooLarge);
        }
        match &x.filter_state().request_body {
            None => return Ok(Some(Pause::Body(b.max_bytes))),
            Some(buffered) => {
                let longer = buffered.data.len() > b.max_bytes;
                if longer && !b.allow_partial {
                    return Err(HttpError::PayloadTooLarge);
                }
                let data = buffered.data[..buffered.data.len().min(b.max_bytes)].to_vec();
                body = Some((data, longer || !buffered.complete, b.pack_as_bytes));
            }
        }
    }
    // The HTTP service gets the body's start as it came (the check's copy is text).
    let raw = match (&f.service, &body) {
        (AuthzService::Http(_), Some((data, _, _))) if !data.is_empty() => Some(data.clone()),
        _ => None,
    };
    let check = check_request(x, f, extensions, body);
    let slot = Rc::new(RefCell::new(None));
    x.filter_state_mut().ext_authz = Some(Pending {
        slot: slot.clone(),
        started: std::time::Instant::now(),
    });
    type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Answer, String>>>>;
    let call: Call = match &f.service {
        AuthzService::Grpc {
            authority,
            initial_metadata,
        } => {
            let call = x.grpc_unary(super::GrpcCall {
                cluster: f.cluster.clone(),
                authority: authority.clone(),
                path: "/envoy.service.auth.v3.Authorization/Check",
                metadata: initial_metadata.clone(),
                timeout: f.timeout,
                message: check.encode_to_vec(),
            });
            Box::pin(async move {
                let m = call.await?;
                auth::CheckResponse::decode(&m[..])
                    .map(Answer::Grpc)
                    .map_err(|e| e.to_string())
            })
        }
        AuthzService::Http(h) => match http_service::call(x, f, h, &check, raw) {
            Ok(call) => {
                let call = x.http_call(call);
                Box::pin(async move { call.await.map(Answer::Http) })
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        },
    };
    let timeout = f.timeout;
    Ok(Some(Pause::Wait(Box::pin(async move {
        let answer = match timeout {
            Some(t) => monoio::time::timeout(t, call)
                .await
                .unwrap_or_else(|_| Err("timed out".into())),
            None => call.await,
        };
        *slot.borrow_mut() = Some(answer);
    }))))
}

/// Acts on the service's answer (or its absence).
fn apply<E: FilterHost>(
    x: &mut E,
    f: &ExtAuthz,
    answer: Result<Answer, String>,
    started: Option<std::time::Instant>,
) -> Result<Verdict, HttpError> {
    let answer = match answer {
        Err(e) => return failed(x, f, &e),
        Ok(a) => a,
    };
    let mut metadata = serde_json::Map::new();
    let (result, allowed) = match (answer, &f.service) {
        (Answer::Grpc(r), _) => {
            if let Some(s) = &r.dynamic_metadata {
                metadata.extend(crate::model::metadata::json_fields(s));
            }
            let allowed = r.status.as_ref().is_none_or(|s| s.code == 0);
            (grpc(x, f, r).map(|()| Verdict::Allowed), allowed)
        }
        (Answer::Http(reply), AuthzService::Http(h)) => {
            let allowed = reply.status == 200;
            match http_service::apply(x, f, h, reply, &mut metadata) {
                Ok(true) => (Ok(Verdict::Allowed), allowed),
                Ok(false) => return failed(x, f, "the service answered with a 5xx"),
                Err(e) => (Err(e), allowed),
            }
        }
        (Answer::Http(_), _) => return failed(x, f, "an HTTP answer to a gRPC check"),
    };
    // Envoy adds how long an allowing check took to the metadata the service gave.
    if !metadata.is_empty() {
        if let Some(t) = started.filter(|_| allowed) {
            let ms = t.elapsed().as_millis() as u64;
            metadata.insert("ext_authz_duration".into(), ms.into());
        }
        super::set_metadata(x, NAMESPACE, metadata);
    }
    result
}

/// Counts the decision on the routed cluster, as Envoy does: `ext_authz.*`, and for a
/// denial the answer's status as if the cluster had answered.
fn charge<E: FilterHost>(x: &E, cluster: Option<&str>, result: &Result<Verdict, HttpError>) {
    use crate::stats::ClusterStat as C;
    let Some(c) = cluster.and_then(|n| x.snapshot().cluster(n)) else {
        return;
    };
    let cs = c.stats.core(x.core());
    match result {
        Ok(Verdict::FailedOpen) => {
            cs.inc(C::ExtAuthzError as usize);
            cs.inc(C::ExtAuthzFailureModeAllowed as usize);
        }
        Ok(Verdict::Allowed) => cs.inc(C::ExtAuthzOk as usize),
        Err(HttpError::ExtAuthzDenied { status, .. }) => {
            cs.inc(C::ExtAuthzDenied as usize);
            cs.count_status(*status, C::UpstreamRq1xx as usize);
            cs.inc(C::UpstreamRqCompleted as usize);
        }
        Err(HttpError::ExtAuthzError { .. }) => cs.inc(C::ExtAuthzError as usize),
        Err(_) => {}
    }
}

/// Why a request goes on.
enum Verdict {
    Allowed,
    /// The service could not be asked and `failure_mode_allow` lets the request through.
    FailedOpen,
}

/// Envoy's answer when the service could not be asked (or answered with an error).
fn failed<E: FilterHost>(x: &mut E, f: &ExtAuthz, why: &str) -> Result<Verdict, HttpError> {
    let core = x.core();
    let stat = |s: ExtAuthzStat| f.stats.core(core).inc(s as usize);
    tracing::debug!("ext_authz: the check to {} failed: {why}", f.cluster);
    stat(ExtAuthzStat::Error);
    if f.failure_mode_allow {
        stat(ExtAuthzStat::FailureModeAllowed);
        if f.failure_mode_allow_header_add {
            x.remove_request_header(b"x-envoy-auth-failure-mode-allowed");
            x.filter_state_mut()
                .added
                .push(("x-envoy-auth-failure-mode-allowed".into(), b"true".to_vec()));
        }
        return Ok(Verdict::FailedOpen);
    }
    Err(HttpError::ExtAuthzError {
        status: f.status_on_error,
    })
}

/// Acts on the gRPC service's answer.
fn grpc<E: FilterHost>(x: &mut E, f: &ExtAuthz, r: auth::CheckResponse) -> Result<(), HttpError> {
    let core = x.core();
    let stat = |s: ExtAuthzStat| f.stats.core(core).inc(s as usize);
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
        x.filter_state_mut().replaces_reply = true;
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
pub(super) fn current_path<E: FilterHost>(x: &E) -> &[u8] {
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
