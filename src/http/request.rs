//! The part of a request's lifecycle every codec shares once its head is parsed and its
//! authority and path are known: pick the route table, route, run the decode filters, and
//! decide what the router does — answer (direct response, redirect, the `require_tls`
//! redirect) or forward. HTTP/1.1 connections and HTTP/2 streams call the same function
//! and carry out its [`Decision`] with their own codec.

use std::ops::Range;
use std::sync::Arc;

use crate::http::error::HttpError;
use crate::http::filter::{self, FilterHost, Routed, Step};
use crate::http::forwarding::{
    direct_location, forward_target, redirect_location, requires_tls_redirect,
};
use crate::http::h1::RequestRef;
use crate::http::path::Outcome;
use crate::model::headers::HeaderMods;
use crate::model::route::{
    Action, Forward, PathMatch, Redirect, RedirectPath, RouteTable, WeightedTarget,
};
use crate::model::{HttpConnectionManager, RouteSource, Snapshot};
use crate::stats::HttpStat;

/// What the router does with a routed request.
pub(crate) enum Decision<'r> {
    /// The proxy answers: a direct response or a redirect.
    Answer(Answer<'r>),
    Forward(Forwarding<'r>),
}

/// A response the router makes itself.
pub(crate) struct Answer<'r> {
    pub status: u16,
    pub body: &'r [u8],
    pub location: Option<Vec<u8>>,
    /// The route's, virtual host's and route configuration's response header mutations
    /// (none for the `require_tls` redirect, as in Envoy).
    pub mods: [&'r HeaderMods; 3],
    /// The `require_tls` redirect, which answers even a request whose upgrade would be
    /// refused.
    pub require_tls: bool,
}

/// Where a forwarded request goes and what its route asks for.
pub(crate) struct Forwarding<'r> {
    pub f: &'r Arc<Forward>,
    /// The weighted cluster drawn with the route, if the route splits traffic.
    pub weighted: Option<&'r WeightedTarget>,
    /// The length of the matched path prefix (`prefix_rewrite`).
    pub prefix_len: Option<usize>,
    /// Request header mutations: route, virtual host, route configuration.
    pub req_mods: [&'r HeaderMods; 3],
    pub resp_mods: [&'r HeaderMods; 3],
}

use crate::http::forwarding::NO_MODS as NONE;

/// The route table a connection manager uses now: its own, or the RDS one of `snapshot`
/// (absent only after the listener's initial fetch timeout: then every request is a 404,
/// as with Envoy's empty table).
pub(crate) fn route_table(
    hcm: &HttpConnectionManager,
    snapshot: &Snapshot,
) -> Result<Arc<RouteTable>, HttpError> {
    match &hcm.routes {
        RouteSource::Static(t) => Ok(t.clone()),
        RouteSource::Rds(name) => snapshot
            .route_configs
            .get(name)
            .cloned()
            .ok_or(HttpError::NoRoute),
    }
}

/// Routes the request (its `authority` and `path` are ranges the exchange resolves), runs
/// the decode filters and decides what the router does. `Err`: answered with the error's
/// local reply (no route, a filter's own answer, ...).
pub(crate) async fn route<'r, E: FilterHost>(
    x: &mut E,
    routes: &'r RouteTable,
    authority: &Range<usize>,
    path: &mut Range<usize>,
) -> Result<Decision<'r>, HttpError> {
    // Envoy refuses a fragment whatever the normalisation settings, unless the runtime
    // says to drop it (Istio's bootstrap does).
    if x.head().fragment {
        if x.snapshot().runtime.reject_path_with_fragment {
            return Err(HttpError::PathNormalizationFailed);
        }
        if let Some(at) = x.bytes(path).iter().position(|&b| b == b'#') {
            let kept = x.bytes(path)[..at].to_vec();
            *path = x.replace_path(&kept);
        }
    }
    let norm = x.hcm().path_normalization;
    if norm.any() && x.bytes(path).first() == Some(&b'/') {
        match crate::http::path::normalize(&norm, x.bytes(path)) {
            Outcome::Unchanged => {}
            Outcome::Changed(p) => *path = x.replace_path(&p),
            Outcome::Reject => return Err(HttpError::PathNormalizationFailed),
            // A gRPC client cannot follow a redirect: Envoy refuses it (INTERNAL).
            Outcome::Redirect(_) if x.grpc() => return Err(HttpError::PathNormalizationFailed),
            Outcome::Redirect(p) => {
                x.hcm()
                    .stats
                    .core(x.core())
                    .inc(HttpStat::DownstreamRqRedirectedWithNormalizedPath as usize);
                let log = x.log_mut();
                log.authority = authority.clone();
                log.path = path.clone();
                log.details = "path_normalization_failed";
                return Ok(Decision::Answer(Answer {
                    status: 307,
                    body: b"",
                    location: Some(p),
                    mods: [&NONE, &NONE, &NONE],
                    require_tls: false,
                }));
            }
        }
    }
    {
        let log = x.log_mut();
        log.authority = authority.clone();
        log.path = path.clone();
    }
    let req = RequestRef {
        buf: x.buf(),
        head: x.head(),
        authority: x.bytes(authority),
        path: x.bytes(&*path),
    };
    let mut m = routes.find(&req);
    // A weighted cluster is drawn with the route, so the filters see its per-filter
    // configuration.
    let mut weighted = forward_target(m.as_ref());
    if x.hcm().log_needs.grpc && x.grpc() {
        filter::observe_grpc(x);
    }
    if !x.hcm().filters.is_empty() {
        let mut from = None;
        loop {
            let routed = Routed {
                table: routes,
                m: m.as_ref(),
                weighted,
            };
            match filter::decode_headers(x, &routed, from)? {
                Step::Done => break,
                Step::Delay(d, resume) => {
                    monoio::time::sleep(d).await;
                    from = Some(resume);
                }
                Step::Wait(w, resume) => {
                    // A client that resets its stream meanwhile ends the wait (and the
                    // call behind it) at once.
                    let gone = monoio::select! {
                        _ = w => false,
                        _ = x.reset_while_waiting() => true,
                    };
                    if gone {
                        return Err(HttpError::ClientGone);
                    }
                    from = Some(resume);
                }
                Step::BufferBody(max, resume) => {
                    x.buffer_request_body(max).await?;
                    from = Some(resume);
                }
                Step::Reroute(resume) => {
                    // Route again, with the headers filters added, before the next filter
                    // (it reads the new route's per-filter configuration).
                    if let Some(p) = x.filter_state_mut().path.take() {
                        x.log_mut().path = p.clone();
                        *path = p;
                    }
                    let view = Rerouted {
                        req: RequestRef {
                            buf: x.buf(),
                            head: x.head(),
                            authority: x.bytes(authority),
                            path: x.bytes(&*path),
                        },
                        added: x.filter_state().added_headers(),
                    };
                    m = routes.find(&view);
                    weighted = forward_target(m.as_ref());
                    from = Some(resume);
                }
            }
        }
        // A filter rewrote the path (jwt_authn took its token parameter out).
        if let Some(p) = x.filter_state_mut().path.take() {
            x.log_mut().path = p.clone();
            *path = p;
        }
    }
    let path = &*path;
    let Some(m) = m else {
        return Err(HttpError::NoRoute);
    };
    if x.hcm().timed() {
        x.log_mut().route = Some(m.route.name.clone());
    }
    if let Some(t) = &x.hcm().tracing {
        let metadata = m.route.metadata.as_ref().filter(|_| t.route_metadata);
        let metadata = metadata.cloned();
        let decorator = m.route.decorator.clone();
        let log = x.log_mut();
        log.decorator = decorator;
        log.route_metadata = metadata;
    }
    let prefix_len = match &m.route.path {
        PathMatch::Prefix(p) | PathMatch::Separated(p) => Some(p.len()),
        _ => None,
    };
    x.log_mut().route_prefix_len = prefix_len.unwrap_or(0);
    if requires_tls_redirect(x, m.vhost.require_tls) {
        let redirect = Redirect {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: RedirectPath::Keep,
            status: 301,
            strip_query: false,
        };
        let location = redirect_location(&redirect, x.bytes(authority), x.bytes(path), 0);
        return Ok(Decision::Answer(Answer {
            status: 301,
            body: b"",
            location: Some(location),
            mods: [&NONE, &NONE, &NONE],
            require_tls: true,
        }));
    }
    let mods: [&'r HeaderMods; 3] = [
        &m.route.response_headers,
        &m.vhost.response_headers,
        &routes.response_headers,
    ];
    let stat = |x: &E, s: HttpStat| x.hcm().stats.core(x.core()).inc(s as usize);
    if matches!(m.route.action, Action::Direct(_) | Action::Redirect(_)) {
        // Envoy's router answers both from its direct response entry.
        x.log_mut().details = "direct_response";
    }
    match &m.route.action {
        Action::Direct(d) => {
            stat(x, HttpStat::RqDirectResponse);
            let location = direct_location(x, d.status, x.bytes(authority), x.bytes(path));
            Ok(Decision::Answer(Answer {
                status: d.status,
                body: &d.body,
                location,
                mods,
                require_tls: false,
            }))
        }
        Action::Redirect(r) => {
            stat(x, HttpStat::RqRedirect);
            let location = redirect_location(
                r,
                x.bytes(authority),
                x.bytes(path),
                prefix_len.unwrap_or(0),
            );
            Ok(Decision::Answer(Answer {
                status: r.status,
                body: b"",
                location: Some(location),
                mods,
                require_tls: false,
            }))
        }
        Action::Forward(_) if x.filter_state().invalid_header.is_some() => {
            Err(HttpError::InvalidFilterHeader(
                x.filter_state().invalid_header.clone().unwrap_or_default(),
            ))
        }
        Action::Forward(f) => Ok(Decision::Forward(Forwarding {
            f,
            weighted,
            prefix_len,
            req_mods: [&m.route.request_headers, &m.vhost.headers, &routes.headers],
            resp_mods: mods,
        })),
    }
}

/// A request as routed again after a filter cleared the route cache: the headers filters
/// added come first (they replaced the client's of the same name).
struct Rerouted<'a> {
    req: RequestRef<'a>,
    added: &'a [(Box<str>, Vec<u8>)],
}

impl Rerouted<'_> {
    fn added(&self, name: &str) -> Option<&[u8]> {
        self.added
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &v[..])
    }
}

impl crate::router::RequestView for Rerouted<'_> {
    fn method(&self) -> &[u8] {
        self.req.method()
    }
    fn path(&self) -> &[u8] {
        self.req.path()
    }
    fn authority(&self) -> &[u8] {
        self.req.authority()
    }
    fn scheme(&self) -> &[u8] {
        self.req.scheme()
    }
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        match self.added(name) {
            Some(v) => Some(std::borrow::Cow::Borrowed(v)),
            None => self.req.header(name),
        }
    }
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        match self.added(name) {
            Some(v) => Some(f(v)),
            None => self.req.header_any(name, f),
        }
    }
}
