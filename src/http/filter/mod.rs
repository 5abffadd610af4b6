//! Envoy's HTTP filter chain: the connection manager's `http_filters` run in order on the
//! request once it is routed, before the router acts on it (forward, redirect, direct
//! response or no route), and in reverse order on the response head, whoever made it
//! (the upstream or the proxy). A filter continues, stops the request for a while (a
//! fault delay), or answers it locally — and a local answer goes through the encode
//! phase too, as in Envoy.
//!
//! Filters are an enum (`model::filter::FilterKind`), one file each; what one decides for
//! the encode phase and the access log is kept in the request's [`State`]. A connection
//! manager without filters pays one branch.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::http::error::HttpError;
use crate::http::exchange::{Entry, Exchange};
use crate::model::filter::{FilterKind, PerRoute};
use crate::model::route::{RouteTable, WeightedTarget};
use crate::router::Matched;

pub(crate) mod compress;
mod cors;
pub(crate) mod encode;
mod ext_authz;
mod fault;
pub(crate) mod grpc_stats;
pub(crate) mod istio;
pub(crate) mod jwt;
mod ratelimit;
mod rbac;

/// What an exchange lends its filters: the request, its log entry and filter state.
pub(crate) trait FilterHost: Exchange {
    /// What the request's HTTP filters decided (read by the encode phase).
    fn filter_state(&self) -> &State;
    fn filter_state_mut(&mut self) -> &mut State;
    fn log_mut(&mut self) -> &mut Entry;
    fn core(&self) -> usize;
    /// The core's own state (caches filters keep per core).
    fn core_ctx(&self) -> &crate::ctx::CoreCtx;
    fn hcm_arc(&self) -> Arc<crate::model::HttpConnectionManager>;
    fn snapshot(&self) -> &crate::model::Snapshot;
    /// Replaces the request's path (normalisation): the range of the new bytes.
    fn replace_path(&mut self, path: &[u8]) -> std::ops::Range<usize>;
    /// Removes every request header named `name` (filters that consume a header).
    fn remove_request_header(&mut self, name: &[u8]);
    /// Decides the request's `x-request-id` now (Envoy's connection manager sets it
    /// before the filters): a filter that shows it to someone (ext_authz) calls this.
    fn decide_request_id(&mut self);
    /// A unary gRPC call from this core (its HTTP/2 pool): the answer's message bytes.
    fn grpc_unary(&self, call: GrpcCall) -> Pin<Box<dyn Future<Output = GrpcAnswer>>>;
    /// An HTTP call from this core (its pools): the whole answer.
    fn http_call(&self, call: HttpCall) -> Pin<Box<dyn Future<Output = HttpAnswer>>>;
    /// Reads the request's body until it ends or `max + 1` bytes are in hand, without
    /// consuming it (the forwarding still sends all of it), into
    /// [`State::request_body`]. `Err`: the client went away or stalled.
    fn buffer_request_body(
        &mut self,
        max: usize,
    ) -> Pin<Box<dyn Future<Output = Result<(), HttpError>> + '_>>;
    /// Resolves when the client gives up on the request (an HTTP/2 stream reset) while a
    /// filter waits; never, where that cannot be seen.
    fn reset_while_waiting(&mut self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(std::future::pending())
    }
}

/// The start of a request body a filter asked for.
pub(crate) struct BufferedBody {
    /// The body's bytes (decoded from chunked framing), at most the limit asked plus one.
    pub data: Vec<u8>,
    /// Whether `data` is the whole body.
    pub complete: bool,
}

/// A unary gRPC call a filter makes (ext_authz's `Check`).
pub(crate) struct GrpcCall {
    pub cluster: Arc<str>,
    pub authority: Box<str>,
    pub path: &'static str,
    /// Headers of the call.
    pub metadata: Vec<(Box<str>, Box<str>)>,
    /// Sent as `grpc-timeout`.
    pub timeout: Option<std::time::Duration>,
    pub message: Vec<u8>,
}

/// The answer's message, or why there is none.
pub(crate) type GrpcAnswer = Result<Vec<u8>, String>;

/// An HTTP call a filter makes (ext_authz's HTTP service).
pub(crate) struct HttpCall {
    pub cluster: Arc<str>,
    /// The request head in HTTP/1.1 form (`Host` for the authority), ending with its
    /// empty line; its `content-length` is the body's.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    /// A HEAD request: its answer has no body, whatever its head says.
    pub head_request: bool,
}

/// What an HTTP call got back.
pub(crate) struct HttpReply {
    pub status: u16,
    /// Lower-cased names, in the answer's order.
    pub headers: Vec<(Box<str>, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The answer, or why there is none.
pub(crate) type HttpAnswer = Result<HttpReply, String>;

/// Where the decode phase stopped.
pub(crate) enum Step {
    /// Every filter continued.
    Done,
    /// A filter stopped the request for a while: wait, then resume with this.
    Delay(std::time::Duration, Resume),
    /// A filter waits for something (a key set being fetched), then resumes with this.
    Wait(jwt::Wait, Resume),
    /// A filter cleared the route cache (jwt_authn's `clear_route_cache`): route the
    /// request again, then go on with the next filter.
    Reroute(Resume),
    /// A filter needs the request's body (up to this many bytes, one more to tell a
    /// longer one): read it into [`State::request_body`], then run that filter again.
    BufferBody(usize, Resume),
}

/// The filter to resume the decode phase at (after its delay).
#[derive(Clone, Copy)]
pub(crate) struct Resume(usize, bool);

/// What the filters decided for one request, read by the encode phase and the log.
#[derive(Default)]
pub(crate) struct State {
    /// A CORS policy matched the request's origin: the response gets its headers.
    pub cors: Option<cors::Answer>,
    /// The local rate limit's response headers.
    pub ratelimit: Option<ratelimit::Answer>,
    /// A gRPC call grpc_stats counts when its status is known.
    pub grpc: Option<grpc_stats::Call>,
    /// A fault in progress (counted in `active_faults` until the request ends).
    pub fault: Option<fault::Active>,
    /// The compressor filters' Accept-Encoding, decision and response stream.
    pub compression: Option<Box<compress::Compression>>,
    /// What jwt_authn needs across a wait, or its challenge.
    pub jwt: Option<Box<jwt::JwtState>>,
    /// Headers filters add to the upstream request (their names were removed from the
    /// client's): jwt_authn's claims and payload, ext_authz's.
    pub added: Vec<(Box<str>, Vec<u8>)>,
    /// Headers filters add to the response, whoever makes it (ext_authz's).
    pub response_added: Vec<(Box<str>, Vec<u8>)>,
    /// `response_added` replaces the local reply's own headers of the same names (an
    /// ext_authz denial's headers), rather than adding to them.
    pub replaces_reply: bool,
    /// An ext_authz check in flight, or its answer.
    pub ext_authz: Option<ext_authz::Pending>,
    /// Dynamic metadata, by namespace (what jwt_authn writes and RBAC reads).
    pub metadata: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// A path a filter rewrote (jwt_authn removing its token parameter).
    pub path: Option<std::ops::Range<usize>>,
    /// A filter cleared the route cache: the request is routed again after the decode
    /// phase (jwt_authn's `clear_route_cache`, with the headers it added).
    pub reroute: bool,
    /// A header a filter set with a value no header may carry: the request is answered
    /// 503 once the filters are done (Envoy refuses to send it).
    pub invalid_header: Option<Box<str>>,
    /// The start of the request's body, read before forwarding (ext_authz's
    /// `with_request_body`); the forwarding still sends all of it.
    pub request_body: Option<Box<BufferedBody>>,
    /// Istio's metadata exchange and `istio.stats`.
    pub istio: Option<Box<istio::Telemetry>>,
    /// Filter state objects (`set_filter_state`'s).
    pub objects: Vec<crate::model::filter_state::Object>,
}

impl State {
    /// Whether a filter may act on the response body (the encode-data phase).
    #[inline]
    pub fn encodes_body(&self) -> bool {
        self.compression.is_some()
    }

    /// Whether the encode phase has anything to do.
    #[inline]
    pub fn encodes(&self) -> bool {
        self.cors.is_some()
            || self.ratelimit.is_some()
            || self.compression.is_some()
            || self.jwt.as_ref().is_some_and(|j| j.challenge.is_some())
            || !self.response_added.is_empty()
            || self.istio.as_ref().is_some_and(|t| t.propagated_down)
    }

    /// The headers filters add to the upstream request.
    #[inline]
    pub fn added_headers(&self) -> &[(Box<str>, Vec<u8>)] {
        &self.added
    }

    /// Whether the response body is compressed (its length is then unknown).
    #[inline]
    pub fn compressing(&self) -> bool {
        self.compression
            .as_ref()
            .is_some_and(|c| c.head.compressing)
    }

    /// Ends the request's filter state (the next request on the connection starts empty).
    #[inline]
    pub fn clear(&mut self) {
        if self.cors.is_some()
            || self.ratelimit.is_some()
            || self.grpc.is_some()
            || self.fault.is_some()
            || self.compression.is_some()
            || self.jwt.is_some()
            || !self.added.is_empty()
            || !self.response_added.is_empty()
            || self.replaces_reply
            || self.ext_authz.is_some()
            || self.metadata.is_some()
            || self.path.is_some()
            || self.reroute
            || self.invalid_header.is_some()
            || self.request_body.is_some()
            || self.istio.is_some()
            || !self.objects.is_empty()
        {
            *self = State::default();
        }
    }
}

/// Where the request was routed: per-route filter configuration is looked up here, most
/// specific first (weighted cluster, route, virtual host, route configuration).
pub(crate) struct Routed<'r> {
    pub table: &'r RouteTable,
    pub m: Option<&'r Matched<'r>>,
    pub weighted: Option<&'r WeightedTarget>,
}

impl<'r> Routed<'r> {
    pub fn per_route(&self, name: &str) -> Option<&'r PerRoute> {
        if !self.table.any_per_filter {
            return None;
        }
        if let Some(c) = self.weighted.and_then(|w| w.per_filter.get(name)) {
            return Some(c);
        }
        if let Some(m) = self.m {
            if let Some(c) = m.route.per_filter.get(name) {
                return Some(c);
            }
            if let Some(c) = m.vhost.per_filter.get(name) {
                return Some(c);
            }
        }
        self.table.per_filter.get(name)
    }

    /// Every level's configuration for filter `name`, most specific first.
    pub fn all_per_route(
        &self,
        name: &str,
    ) -> std::iter::Flatten<std::array::IntoIter<Option<&'r PerRoute>, 4>> {
        if !self.table.any_per_filter {
            return [None, None, None, None].into_iter().flatten();
        }
        let w = self.weighted.and_then(|w| w.per_filter.get(name));
        let r = self.m.and_then(|m| m.route.per_filter.get(name));
        let v = self.m.and_then(|m| m.vhost.per_filter.get(name));
        let t = self.table.per_filter.get(name);
        [w, r, v, t].into_iter().flatten()
    }

    /// Whether the route forwards (not a direct response, redirect or no route).
    pub fn forwards(&self) -> bool {
        self.m
            .is_some_and(|m| matches!(m.route.action, crate::model::route::Action::Forward(_)))
    }

    /// The cluster the request goes to, if it is forwarded to a named one.
    pub fn cluster(&self) -> Option<&'r str> {
        use crate::model::route::{Action, Target};
        if let Some(w) = self.weighted {
            return Some(&w.cluster.name);
        }
        match &self.m?.route.action {
            Action::Forward(f) => match &f.target {
                Target::Cluster(c) => Some(&c.name),
                Target::Weighted { .. } => None,
            },
            _ => None,
        }
    }
}

/// Runs the decode phase of the filters on a routed request, from the start or from
/// where a delay stopped it. `Err`: a filter answers the request itself (the answer then
/// runs the encode phase like any other response). Synchronous, so a request no filter
/// delays awaits nothing here: the caller sleeps for a `Step::Delay` and calls again.
pub(crate) fn decode_headers<E: FilterHost>(
    x: &mut E,
    routed: &Routed<'_>,
    from: Option<Resume>,
) -> Result<Step, HttpError> {
    let hcm = x.hcm_arc();
    let start = from.map_or(0, |r| r.0);
    if hcm.filters.istio_stats {
        istio::routed(x, routed.cluster());
    }
    for (i, f) in hcm.filters.list.iter().enumerate().skip(start) {
        let per = routed.per_route(&f.name);
        match per {
            Some(PerRoute::Disabled) => continue,
            None if f.disabled => continue,
            _ => {}
        }
        let resumed = from.is_some_and(|r| r.1) && i == start;
        match &f.kind {
            FilterKind::Fault(ff) => {
                if let Some(d) = fault::decode(x, ff, per, routed, resumed)? {
                    return Ok(Step::Delay(d, Resume(i, true)));
                }
            }
            FilterKind::Cors(cf) => cors::decode(x, cf, per, routed, &f.name)?,
            FilterKind::GrpcStats(g) => grpc_stats::decode(x, g, routed),
            FilterKind::LocalRateLimit(l) => ratelimit::decode(x, l, per)?,
            FilterKind::Compressor(c) => compress::decode(x, c, per),
            FilterKind::Rbac(r) => rbac::decode(x, r, per)?,
            FilterKind::ExtAuthz(a) => {
                match ext_authz::decode(x, a, per, routed.cluster(), resumed)? {
                    None => {}
                    Some(ext_authz::Pause::Wait(w)) => return Ok(Step::Wait(w, Resume(i, true))),
                    Some(ext_authz::Pause::Body(max)) => {
                        return Ok(Step::BufferBody(max, Resume(i, false)))
                    }
                }
            }
            FilterKind::PeerMetadata(p) => istio::exchange(x, p, routed.cluster()),
            FilterKind::SetFilterState(values) => set_filter_state(x, values),
            FilterKind::ConnectAuthority => connect_authority(x, per),
            FilterKind::ConnectBaggage => connect_baggage(x),
            FilterKind::IstioStats(s) => istio::stats(x, s),
            FilterKind::JwtAuthn(j) => {
                if let Some(w) = jwt::decode(x, j, per)? {
                    return Ok(Step::Wait(w, Resume(i, true)));
                }
                if x.filter_state().reroute {
                    x.filter_state_mut().reroute = false;
                    return Ok(Step::Reroute(Resume(i + 1, false)));
                }
            }
        }
    }
    Ok(Step::Done)
}

/// `set_filter_state`: each value formatted over the request (a missing one is `-`, as in
/// Envoy's formatter), in order, so a later value reads an earlier one.
fn set_filter_state<E: FilterHost>(x: &mut E, values: &[crate::model::filter_state::SetValue]) {
    let mut buf = Vec::new();
    for v in values {
        buf.clear();
        crate::http::fields::format_text(&*x, &v.format, b"-", &mut buf);
        crate::model::filter_state::put(&mut x.filter_state_mut().objects, v, &buf);
    }
}

/// Istio's `connect_authority`: where the route enables it, the request's authority (and
/// the port the route names) becomes `istio.set_internal_dst_address`, for the internal
/// connection this request opens.
fn connect_authority<E: FilterHost>(x: &mut E, per: Option<&PerRoute>) {
    use crate::router::RequestView;
    let Some(PerRoute::ConnectAuthority { port }) = per else {
        return;
    };
    let view = crate::http::exchange::RequestHeaders(&*x);
    let mut value = String::from_utf8_lossy(view.authority()).into_owned();
    if *port > 0 {
        value.push('|');
        value.push_str(itoa::Buffer::new().format(*port));
    }
    put_object(x, crate::model::internal::ISTIO_AUTHORITY, value, true);
}

/// The key under which `connect_baggage` hands the client's `baggage` to the internal
/// connection (istio-proxy's `wasm.downstream_peer`, there in its own encoding).
pub(crate) const DOWNSTREAM_PEER: &str = "wasm.downstream_peer";

/// Istio's `connect_baggage`: the CONNECT's `baggage` header, for the internal
/// connection's `istio.stats` (its client's workload).
fn connect_baggage<E: FilterHost>(x: &mut E) {
    use crate::router::RequestView;
    let view = crate::http::exchange::RequestHeaders(&*x);
    let Some(value) = view
        .header("baggage")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
    else {
        return;
    };
    put_object(x, DOWNSTREAM_PEER, value, false);
}

/// Sets a filter state object shared once with the upstream connection.
fn put_object<E: FilterHost>(x: &mut E, key: &str, value: String, hashable: bool) {
    use crate::model::filter_state::{Object, Shared};
    let objects = &mut x.filter_state_mut().objects;
    objects.retain(|o| &*o.key != key);
    objects.push(Object {
        key: key.into(),
        value: value.into(),
        hashable,
        read_only: false,
        shared: Shared::Once,
    });
}

/// Whether the encode phase sets response header `name` itself (an upstream's copy is
/// dropped).
pub(crate) fn overrides<E: FilterHost + ?Sized>(x: &E, name: &[u8]) -> bool {
    let s = x.filter_state();
    s.cors
        .as_ref()
        .is_some_and(|c| c.allowed() && cors::overrides(name))
        || s.compression.as_ref().is_some_and(|c| {
            (c.head.vary.is_some() && name.eq_ignore_ascii_case(b"vary"))
                || (c.head.drop_etag && name.eq_ignore_ascii_case(b"etag"))
                || (c.head.compressing && name.eq_ignore_ascii_case(b"content-encoding"))
        })
}

/// Whether a filter's header replaces the local reply's own header `name`.
pub(crate) fn replaces<E: FilterHost + ?Sized>(x: &E, name: &[u8]) -> bool {
    let s = x.filter_state();
    s.replaces_reply
        && s.response_added
            .iter()
            .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
}

/// The encode phase on a response head in HTTP/1 form (before its final CRLF): the
/// headers filters add.
pub(crate) fn encode_headers<E: FilterHost + ?Sized>(x: &E, out: &mut Vec<u8>) {
    let s = x.filter_state();
    if let Some(r) = &s.ratelimit {
        ratelimit::encode(r, x, out);
    }
    if let Some(c) = &s.cors {
        cors::encode(c, x, out);
    }
    for (n, v) in &s.response_added {
        crate::http::fields::header(out, n.as_bytes(), v);
    }
    if let Some(t) = &s.istio {
        istio::encode(t, out);
    }
    if let Some(c) = s.jwt.as_ref().and_then(|j| j.challenge.as_ref()) {
        crate::http::fields::header(out, b"www-authenticate", c);
    }
    if let Some(c) = &s.compression {
        let h = &c.head;
        if let Some(e) = h.content_encoding {
            crate::http::fields::header(out, b"content-encoding", e.as_bytes());
        }
        if let Some(v) = &h.vary {
            crate::http::fields::header(out, b"vary", v);
        }
        for v in &h.status {
            crate::http::fields::header(out, b"x-envoy-compression-status", v.as_bytes());
        }
    }
}

/// Merges `fields` into the request's dynamic metadata namespace `ns` (Envoy's
/// `setDynamicMetadata`: fields of the same name are replaced).
pub(crate) fn set_metadata<E: FilterHost + ?Sized>(
    x: &mut E,
    ns: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) {
    let md = x
        .filter_state_mut()
        .metadata
        .get_or_insert_with(Default::default);
    match md
        .entry(ns.to_string())
        .or_insert_with(|| serde_json::Value::Object(Default::default()))
    {
        serde_json::Value::Object(o) => o.extend(fields),
        other => *other = serde_json::Value::Object(fields),
    }
}

/// The connection manager's tracing decision for the request, once its id is decided:
/// counted by reason, and with a provider the request's span begins.
pub(crate) fn begin_trace<E: FilterHost + ?Sized>(core: usize, x: &mut E) {
    // A head that could not be read is answered before Envoy's connection manager traces.
    if x.log().trace_begun || x.hcm().tracing.is_none() || x.head().method.is_empty() {
        return;
    }
    let d = crate::http::trace::decide(x);
    x.hcm().stats.core(core).inc(d.stat as usize);
    let log = x.log_mut();
    log.trace_begun = true;
    log.span = d.span;
    log.operation_asked = d.operation_asked;
}

/// A request is done: its access log lines are written and `istio.stats` reports it.
pub(crate) fn done<E: FilterHost + ?Sized>(ctx: &crate::ctx::CoreCtx, x: &E) {
    crate::http::log::write(ctx, x, &x.snapshot().runtime);
    if x.hcm().filters.istio_stats {
        istio::report(ctx, x);
    }
}

/// Watches a gRPC request's status for the access log (`%GRPC_STATUS%`).
pub(crate) fn observe_grpc<E: FilterHost>(x: &mut E) {
    grpc_stats::observe(x);
}

/// A random draw for percentages.
fn draw() -> u64 {
    fastrand::u64(..)
}
