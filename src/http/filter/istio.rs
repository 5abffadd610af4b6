//! Istio's telemetry filters on the request path: the HTTP peer metadata exchange
//! (`x-envoy-peer-metadata` and `-id`, read and removed where the peer's are discovered,
//! this workload's written where they are propagated) and `istio.stats`, which reports
//! each request once it is done into the series of its labels (`stats::istio`).
//!
//! A core decodes a peer's header once and keeps the answer (up to [`PEER_CACHE`]
//! values); the labels of a request are written into one reused buffer and its series
//! found in the core's own map, so a request that repeats a known series allocates
//! nothing.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use super::grpc_stats::Seen;
use super::FilterHost;
use crate::model::istio::{IstioStats, Peer, PeerMetadata, Reporter};
use crate::stats::istio::HttpMetric;
use crate::stats::labeled::KeyBuilder;

pub(crate) use crate::model::istio::IstioCore;

const HEADER: &[u8] = b"x-envoy-peer-metadata";
const HEADER_ID: &[u8] = b"x-envoy-peer-metadata-id";

/// What a request's Istio filters keep until it is done.
#[derive(Default)]
pub(crate) struct Telemetry {
    pub stats: Option<Arc<IstioStats>>,
    /// The client's workload, from its request headers.
    pub downstream_peer: Option<Arc<Peer>>,
    /// The upstream's workload, from its response headers.
    pub upstream_peer: RefCell<Option<Arc<Peer>>>,
    /// The upstream response's peer headers are read and removed.
    pub upstream_discovery: bool,
    /// This workload's headers were added to the response: the upstream's copies go.
    pub propagated_down: bool,
    /// The cluster the request was routed to.
    pub cluster: Option<Arc<crate::model::Cluster>>,
    /// This workload's headers go on the upstream request (written with the head).
    pub propagate_up: Option<Arc<crate::model::istio::LocalNode>>,
    /// Which of this workload's headers go on the response (`node`'s).
    pub propagate_down: (bool, bool),
    pub node: Option<Arc<crate::model::istio::LocalNode>>,
    /// The request is gRPC: what its call showed.
    pub grpc: Option<Rc<Seen>>,
    /// Set once the request has been reported (a request is counted once).
    reported: Cell<bool>,
}

fn telemetry<E: FilterHost>(x: &mut E) -> &mut Telemetry {
    x.filter_state_mut()
        .istio
        .get_or_insert_with(Default::default)
}

/// The request is routed (before the decode phase): `istio.stats` keeps its cluster.
pub(super) fn routed<E: FilterHost>(x: &mut E, cluster: Option<&str>) {
    let c = cluster.and_then(|n| x.snapshot().cluster(n)).cloned();
    telemetry(x).cluster = c;
}

/// `istio.metadata_exchange` on the request.
pub(super) fn exchange<E: FilterHost>(x: &mut E, f: &PeerMetadata, cluster: Option<&str>) {
    let buf = x.buf();
    let head = x.head();
    let find = |name: &[u8]| {
        head.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let (value, id) = (find(HEADER), find(HEADER_ID));
    let peer = match (&value, f.downstream_discovery) {
        (Some(v), true) => x.core_ctx().istio.peer(&buf[v.clone()]),
        _ => None,
    };
    if f.downstream_discovery {
        if value.is_some() {
            x.remove_request_header(HEADER);
        }
        if id.is_some() {
            x.remove_request_header(HEADER_ID);
        }
        if let Some(p) = peer {
            telemetry(x).downstream_peer.get_or_insert(p);
        }
    }
    let node = &f.node;
    // istio-proxy's `skipMXHeaders`: never to a cluster that disables the exchange, and
    // with `skip_external_clusters` not to external ones.
    let service = cluster
        .and_then(|c| x.snapshot().cluster(c))
        .and_then(|c| c.istio_service.clone());
    let external =
        cluster == Some("PassthroughCluster") || service.as_ref().is_some_and(|s| s.external);
    let skip = service.as_ref().is_some_and(|s| s.disable_mx) || (f.skip_external && external);
    if f.downstream_propagation && !skip && (value.is_some() || id.is_some()) {
        // Answered in kind: each header only if the client sent it (written with the
        // response head, whoever makes it).
        let t = telemetry(x);
        t.propagated_down = true;
        t.propagate_down = (value.is_some(), id.is_some());
        t.node = Some(node.clone());
    }
    if f.upstream_propagation && !skip {
        if value.is_some() && !f.downstream_discovery {
            x.remove_request_header(HEADER);
        }
        if id.is_some() && !f.downstream_discovery {
            x.remove_request_header(HEADER_ID);
        }
        telemetry(x).propagate_up = Some(node.clone());
    }
    if f.upstream_discovery {
        telemetry(x).upstream_discovery = true;
    }
}

/// `istio.stats` on the request: remembered until it is done.
pub(super) fn stats<E: FilterHost>(x: &mut E, f: &Arc<IstioStats>) {
    let grpc = is_grpc(x);
    let t = telemetry(x);
    t.stats.get_or_insert_with(|| f.clone());
    if grpc && t.grpc.is_none() {
        let seen = super::grpc_stats::observe(x);
        telemetry(x).grpc = Some(seen);
    }
}

/// Whether the request is gRPC as Envoy tells it: `application/grpc`, or
/// `application/grpc+<codec>` (not grpc-web).
pub(crate) fn is_grpc<E: FilterHost>(x: &E) -> bool {
    let buf = x.buf();
    x.head().headers.iter().any(|(n, v)| {
        buf[n.clone()].eq_ignore_ascii_case(b"content-type") && {
            let v = &buf[v.clone()];
            // Envoy compares exactly (case-sensitive), as its gRPC codec does.
            v == b"application/grpc" || v.starts_with(b"application/grpc+")
        }
    })
}

/// An upstream response header the exchange consumes (discovered, or replaced by this
/// workload's): `true` when it is dropped.
pub(crate) fn upstream_header(t: &Telemetry, core: &IstioCore, name: &[u8], value: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(HEADER) {
        if t.upstream_discovery {
            let mut p = t.upstream_peer.borrow_mut();
            if p.is_none() {
                *p = core.peer(value);
            }
        }
        return true;
    }
    name.eq_ignore_ascii_case(HEADER_ID)
}

/// Envoy's mapping of an HTTP status to a gRPC one (when the call gave none).
fn http_to_grpc(status: u16) -> i32 {
    crate::http::local_reply::grpc_status_for(status) as i32
}

/// Reports a finished request into its series (once).
///
/// A request answered before `istio.stats` ran (an RBAC denial, a JWT challenge, a fault
/// abort) is reported too, by the connection manager's first enabled `istio.stats`:
/// istio-proxy reports every stream from its access-log hook.
pub(crate) fn report<E: FilterHost + ?Sized>(ctx: &crate::ctx::CoreCtx, x: &E) {
    let none = Telemetry::default();
    let t = x.filter_state().istio.as_deref().unwrap_or(&none);
    let hcm = x.hcm();
    let Some(f) = t.stats.as_deref().or_else(|| {
        hcm.filters.list.iter().find_map(|f| match &f.kind {
            crate::model::filter::FilterKind::IstioStats(s) if !f.disabled => Some(&**s),
            _ => None,
        })
    }) else {
        return;
    };
    if t.reported.replace(true) {
        return;
    }
    let log = x.log();
    let node = &*f.node;
    // Principals: istio_authn's filter state, else the certificates' first URI SANs.
    // The client's side: the upstream TLS connection's certificates.
    // On an internal connection (HBONE's `main_internal`) the principals and the client's
    // baggage are what the tunnel's server side shared with it.
    let shared = |k: &str| {
        let o = x.down().objects.as_deref()?;
        crate::model::filter_state::find(o, k).map(|f| f.value)
    };
    let (peer_san, local_san) = match (f.reporter, x.authn(), &log.upstream_principals) {
        (Reporter::Source, _, Some(p)) => (&*p.peer, &*p.local),
        (Reporter::Source, _, None) => ("", ""),
        (_, Some(a), _) => a.istio_principals(x.hcm().istio_authn),
        (_, None, _) => (
            shared("io.istio.peer_principal").unwrap_or(""),
            shared("io.istio.local_principal").unwrap_or(""),
        ),
    };
    let up = t.upstream_peer.borrow();
    let baggage_peer = match (f.reporter, &t.downstream_peer) {
        (Reporter::Source, _) | (_, Some(_)) => None,
        _ => shared(super::DOWNSTREAM_PEER).map(Peer::from_baggage),
    };
    let peer: Option<&Peer> = match f.reporter {
        // Without the upstream's headers, its endpoint's `istio.workload` metadata.
        Reporter::Source => up.as_deref().or(log.upstream_workload.as_deref()),
        _ => t.downstream_peer.as_deref().or(baggage_peer.as_ref()),
    };
    let empty = Peer::default();
    let peer = peer.unwrap_or(&empty);
    // The destination service: the Host header (unless disabled), Istio's passthrough
    // routes and clusters by name, else the cluster's `istio.services[0]`.
    let authority = x.bytes(&log.authority);
    let authority = std::str::from_utf8(authority).unwrap_or("");
    let (mut service_host, mut service_name, mut service_namespace) = ("", "", "");
    if f.host_header_fallback {
        (service_host, service_name) = (authority, authority);
    }
    let snapshot = x.snapshot();
    let route = log.route.as_deref().unwrap_or("");
    // The cluster the route chose, also when a filter answered before forwarding (Envoy
    // knows the upstream cluster once the route is resolved).
    let routed = t
        .cluster
        .as_ref()
        .or_else(|| snapshot.cluster(log.cluster.as_deref()?));
    let cluster = routed.map_or("", |c| &*c.name);
    if route == "block_all" {
        service_name = "BlackHoleCluster";
    } else if route == "allow_any" {
        service_name = "PassthroughCluster";
    } else if let Some(p) = crate::model::istio::PASSTHROUGH
        .iter()
        .find(|p| **p == cluster)
    {
        service_name = p;
    } else if let Some(s) = routed.and_then(|c| c.istio_service.as_deref()) {
        service_host = &s.host;
        service_namespace = &s.namespace;
        service_name = &s.name;
    }
    const UNKNOWN: &str = "unknown";
    let mut key = ctx.istio.series.scratch.borrow_mut();
    key.clear();
    let mut k = KeyBuilder(&mut key);
    let up_peer = match f.reporter {
        Reporter::Waypoint => up.as_deref().unwrap_or(&empty),
        _ => peer,
    };
    crate::model::istio::push_peer_labels(
        &mut k,
        &crate::model::istio::PeerLabels {
            reporter: f.reporter,
            node,
            peer,
            up_peer,
            peer_san,
            local_san,
            service: (service_host, service_name, service_namespace),
        },
    );
    // Constants, numbers and flag names: safe as they are.
    let mut push = |v: &str| k.push_clean(v);
    push(if t.grpc.is_some() { "grpc" } else { "http" });
    push(itoa::Buffer::new().format(log.status));
    let mut code = itoa::Buffer::new();
    push(match &t.grpc {
        None => "",
        Some(g) => match g.status.get() {
            Some(s) => code.format(s),
            None if log.status != 0 => code.format(http_to_grpc(log.status)),
            None => "",
        },
    });
    // The flags' short names go straight into the key.
    log.flags.write(k.0);
    k.0.push(crate::stats::labeled::SEP);
    let mut push = |v: &str| k.push_clean(v);
    push(match f.reporter {
        Reporter::Source => UNKNOWN,
        _ if !peer_san.is_empty() && !local_san.is_empty() => "mutual_tls",
        _ => "none",
    });
    push(itoa::Buffer::new().format(f.shape));
    // The shape's dimension expressions (Telemetry API tag overrides), read as the
    // access log reads the request.
    if !f.exprs.is_empty() {
        let peers = crate::model::cel::Peers {
            downstream: t.downstream_peer.as_deref().or(baggage_peer.as_ref()),
            upstream: up.as_deref().or(log.upstream_workload.as_deref()),
        };
        let mut v = String::new();
        for e in f.exprs.iter() {
            v.clear();
            e.eval(&crate::http::log::LogCtx(x), peers, &mut v);
            k.push_clean(&v);
        }
    }
    let series = f.series.series(x.core(), &ctx.istio.series, &key);
    drop(key);
    let Some(series) = series else { return };
    series.add(HttpMetric::RequestsTotal as usize, 1);
    if let Some(g) = &t.grpc {
        series.add(HttpMetric::RequestMessages as usize, g.messages[0].get());
        series.add(HttpMetric::ResponseMessages as usize, g.messages[1].get());
    }
    let c = HttpMetric::COUNTERS;
    if let Some(start) = log.started {
        let ms = start.elapsed().as_millis() as u64;
        series.record(HttpMetric::Duration as usize - c, ms);
    }
    // Wire bytes: the head as received (in HTTP/1 form for HTTP/2) and the body.
    let head = x.head().len as u64;
    series.record(
        HttpMetric::RequestBytes as usize - c,
        head + log.bytes_received,
    );
    series.record(
        HttpMetric::ResponseBytes as usize - c,
        log.head_bytes_sent + log.bytes_sent,
    );
}

/// The encode phase: this workload's headers on the response (downstream propagation).
pub(super) fn encode(t: &Telemetry, out: &mut Vec<u8>) {
    let Some(node) = &t.node else { return };
    if t.propagate_down.0 {
        crate::http::fields::header(out, HEADER, node.exchange.as_bytes());
    }
    if t.propagate_down.1 {
        crate::http::fields::header(out, HEADER_ID, node.id.as_bytes());
    }
}
