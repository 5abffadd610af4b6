//! Istio's telemetry extensions, validated: `istio.stats` (the `istio_*` metrics) and the
//! HTTP peer metadata exchange (`istio.metadata_exchange`), with the workload metadata
//! peers exchange, encoded and decoded as istio-proxy does (base64 of a deterministic
//! `google.protobuf.Struct`).

use std::cell::RefCell;
use std::sync::Arc;

use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

pub use crate::stats::istio::{LocalNode, Peer};

/// Which side of a request a proxy reports (`stats.PluginConfig.reporter` and the
/// listener's direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// An outbound listener: the client's sidecar (`reporter="source"`).
    Source,
    /// An inbound listener: the server's sidecar (`reporter="destination"`).
    Destination,
    /// `SERVER_GATEWAY` (a waypoint): `reporter="waypoint"`.
    Waypoint,
}

impl Reporter {
    pub fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// `istio.stats` on a connection manager.
pub struct IstioStats {
    pub reporter: Reporter,
    /// Whether `destination_service` may come from the Host header when the cluster
    /// names no service.
    pub host_header_fallback: bool,
    /// The metric shape's id in [`crate::stats::istio::Istio`].
    pub shape: u8,
    /// The shape's dimension expressions, whose values follow its id in a series key.
    pub exprs: Arc<[super::cel::Expr]>,
    pub node: Arc<LocalNode>,
    pub series: Arc<crate::stats::labeled::Registry<3, 3>>,
    pub tcp_series: Arc<crate::stats::labeled::Registry<4, 0>>,
    /// `tcp_reporting_duration` (5 s by default, as in istio-proxy; `None` for 0): how
    /// often an open TCP connection's bytes are reported.
    pub tcp_report_every: Option<std::time::Duration>,
}

/// `istio.metadata_exchange` over HTTP: which way peers' metadata is discovered and
/// propagated (`io.istio.http.peer_metadata.Config`).
#[derive(Debug, Clone)]
pub struct PeerMetadata {
    /// Read (and remove) the client's `x-envoy-peer-metadata` headers.
    pub downstream_discovery: bool,
    /// Read (and remove) the upstream response's.
    pub upstream_discovery: bool,
    /// Answer a client that sent them with this workload's.
    pub downstream_propagation: bool,
    /// Send this workload's on upstream requests.
    pub upstream_propagation: bool,
    /// `istio_headers.skip_external_clusters`: no propagation to `PassthroughCluster`.
    pub skip_external: bool,
    pub node: Arc<LocalNode>,
}

/// Istio's TCP metadata exchange (`envoy.tcp.metadataexchange.config.MetadataExchange`) on
/// a listener's chain (downstream) or a cluster (upstream): it runs when TLS settled on
/// `protocol` by ALPN.
#[derive(Debug)]
pub struct TcpExchange {
    pub protocol: Box<[u8]>,
    /// This workload's frame, ready to send.
    pub frame: Arc<[u8]>,
}

impl TcpExchange {
    pub fn new(protocol: &str, node: &LocalNode) -> TcpExchange {
        TcpExchange {
            protocol: protocol.as_bytes().into(),
            frame: frame(&tcp_payload(node)).into(),
        }
    }
}

const STRUCT_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// Frames `payload` for the wire: magic, length (both big-endian), payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&crate::io::exchange::MAGIC.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The TCP frame's payload: an `Any` of a Struct holding this workload's metadata (as the
/// HTTP header carries it) and its node id, under the HTTP headers' names.
fn tcp_payload(node: &LocalNode) -> Vec<u8> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(node.exchange.as_bytes())
        .unwrap_or_default();
    let md = Struct::decode(raw.as_slice()).unwrap_or_default();
    let mut s = Struct::default();
    s.fields.insert(
        "x-envoy-peer-metadata".into(),
        Value {
            kind: Some(Kind::StructValue(md)),
        },
    );
    s.fields
        .insert("x-envoy-peer-metadata-id".into(), string(&node.id));
    prost_types::Any {
        type_url: STRUCT_URL.into(),
        value: s.encode_to_vec(),
    }
    .encode_to_vec()
}

impl Peer {
    /// The workload a TCP exchange frame's payload describes; `None` when it is not one.
    pub fn from_frame(payload: &[u8]) -> Option<Peer> {
        let any = prost_types::Any::decode(payload).ok()?;
        if any.type_url != STRUCT_URL {
            return None;
        }
        let s = Struct::decode(any.value.as_slice()).ok()?;
        match s.fields.get("x-envoy-peer-metadata")?.kind.as_ref()? {
            Kind::StructValue(md) => Some(Peer::of(md)),
            _ => None,
        }
    }
}

/// The service an Istio cluster serves (`metadata.filter_metadata.istio.services[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioService {
    pub host: Box<str>,
    /// `name`, else the host up to its first dot.
    pub name: Box<str>,
    pub namespace: Box<str>,
    /// `istio.external: true` (a MESH_EXTERNAL ServiceEntry).
    pub external: bool,
    /// `istio.disable_mx: true`: no metadata exchange headers to it.
    pub disable_mx: bool,
}

/// A string field, cleaned for use as a label value (peers' values are decoded once per
/// core; the request path then appends them unchecked).
fn text(s: &Struct, key: &str) -> Box<str> {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) => crate::stats::labeled::clean(v),
        _ => "".into(),
    }
}

fn labels(s: &Struct) -> Option<&Struct> {
    match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => Some(l),
        _ => None,
    }
}

/// The first of `keys` that a label set has.
fn label(l: Option<&Struct>, keys: &[&str]) -> Box<str> {
    let Some(l) = l else { return "".into() };
    keys.iter()
        .map(|k| text(l, k))
        .find(|v| !v.is_empty())
        .unwrap_or_default()
}

impl Peer {
    /// Decodes an `x-envoy-peer-metadata` value; `None` when it is not one.
    pub fn decode(value: &[u8]) -> Option<Peer> {
        use base64::Engine;
        let trimmed = value.strip_suffix(b"==").or(value.strip_suffix(b"="));
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed.unwrap_or(value))
            .ok()?;
        let s = Struct::decode(raw.as_slice()).ok()?;
        Some(Peer::of(&s))
    }

    /// The workload a metadata struct describes (unknown keys ignored).
    pub fn of(s: &Struct) -> Peer {
        let l = labels(s);
        Peer {
            workload: text(s, "WORKLOAD_NAME"),
            namespace: text(s, "NAMESPACE"),
            canonical_service: label(l, &["service.istio.io/canonical-name"]),
            canonical_revision: label(l, &["service.istio.io/canonical-revision"]),
            app: label(l, &["app.kubernetes.io/name", "app"]),
            version: label(l, &["app.kubernetes.io/version", "version"]),
            cluster: text(s, "CLUSTER_ID"),
        }
    }
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

/// This workload's node, from the bootstrap's `node`: its labels for the metrics and its
/// `x-envoy-peer-metadata` value (`NAME`, `NAMESPACE`, `WORKLOAD_NAME`, `CLUSTER_ID`, the
/// four `LABELS` Istio exchanges and `OWNER`, each only when set; `LABELS` always).
pub fn local_node(id: &str, metadata: Option<&Struct>) -> LocalNode {
    let empty = Struct::default();
    let md = metadata.unwrap_or(&empty);
    let l = labels(md);
    let app = label(l, &["app.kubernetes.io/name", "app"]);
    let version = label(l, &["app.kubernetes.io/version", "version"]);
    let canonical_service = label(l, &["service.istio.io/canonical-name"]);
    let canonical_revision = label(l, &["service.istio.io/canonical-revision"]);
    let mut out = Struct::default();
    for key in ["NAME", "NAMESPACE", "WORKLOAD_NAME", "CLUSTER_ID", "OWNER"] {
        let v = text(md, key);
        if !v.is_empty() {
            out.fields.insert(key.into(), string(&v));
        }
    }
    let mut ls = Struct::default();
    for (k, v) in [
        ("service.istio.io/canonical-name", &canonical_service),
        ("service.istio.io/canonical-revision", &canonical_revision),
        ("app", &app),
        ("version", &version),
    ] {
        if !v.is_empty() {
            ls.fields.insert(k.into(), string(v));
        }
    }
    out.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(ls)),
        },
    );
    use base64::Engine;
    // prost writes a map's entries in key order: the deterministic form istio-proxy sends.
    let exchange = base64::engine::general_purpose::STANDARD.encode(out.encode_to_vec());
    LocalNode {
        id: id.into(),
        me: Peer {
            workload: text(md, "WORKLOAD_NAME"),
            namespace: text(md, "NAMESPACE"),
            canonical_service,
            canonical_revision,
            app,
            version,
            cluster: text(md, "CLUSTER_ID"),
        },
        exchange: exchange.into(),
        istio_version: text(md, "ISTIO_VERSION"),
        ..LocalNode::default()
    }
}

/// Istio's passthrough clusters: `destination_service_name` is the cluster's name.
pub const PASSTHROUGH: [&str; 5] = [
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];

/// Where the peer labels of a series come from.
pub struct PeerLabels<'a> {
    pub reporter: Reporter,
    pub node: &'a LocalNode,
    /// The peer: the client (a server's sidecar, a waypoint) or the upstream (a client's).
    pub peer: &'a Peer,
    /// A waypoint's upstream (else the same as `peer`).
    pub up_peer: &'a Peer,
    pub peer_san: &'a str,
    pub local_san: &'a str,
    /// The destination service's host, name and namespace (empty where unknown).
    pub service: (&'a str, &'a str, &'a str),
}

/// `v`, or `fallback` when it is empty.
pub fn or<'a>(v: &'a str, fallback: &'a str) -> &'a str {
    if v.is_empty() {
        fallback
    } else {
        v
    }
}

/// The namespace in a SPIFFE identity (`.../ns/<namespace>/...`).
fn spiffe_namespace(id: &str) -> &str {
    id.split_once("/ns/")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""))
}

/// Pushes `reporter` and the 19 peer labels of a series (HTTP and TCP alike), filled as
/// istio-proxy fills them.
pub fn push_peer_labels(k: &mut crate::stats::labeled::KeyBuilder<'_>, l: &PeerLabels<'_>) {
    const UNKNOWN: &str = "unknown";
    let (node, peer, up_peer) = (l.node, l.peer, l.up_peer);
    // Node, peer and endpoint values were cleaned when kept; the principals and the
    // service (it may be the Host header) are checked here.
    let safe = crate::stats::labeled::safe;
    let (peer_san, local_san) = (safe(l.peer_san), safe(l.local_san));
    let (peer_san, local_san) = (&*peer_san, &*local_san);
    let (host, name, namespace) = l.service;
    let (host, name, namespace) = (safe(host), safe(name), safe(namespace));
    let (service_host, service_name, service_namespace) = (&*host, &*name, &*namespace);
    let peer_namespace = or(spiffe_namespace(peer_san), &peer.namespace);
    let mut push = |v: &str| k.push_clean(v);
    push(l.reporter.label());
    let client_side = l.reporter == Reporter::Source;
    if client_side {
        push(&node.workload);
        push(&node.canonical_service);
        push(&node.canonical_revision);
        push(&node.namespace);
        push(or(local_san, UNKNOWN));
        push(&node.app);
        push(&node.version);
        push(&node.cluster);
    } else {
        push(or(&peer.workload, UNKNOWN));
        push(or(&peer.canonical_service, UNKNOWN));
        push(or(&peer.canonical_revision, "latest"));
        push(or(peer_namespace, UNKNOWN));
        push(or(peer_san, UNKNOWN));
        push(or(&peer.app, UNKNOWN));
        push(or(&peer.version, UNKNOWN));
        push(or(&peer.cluster, UNKNOWN));
    }
    if l.reporter == Reporter::Destination {
        push(&node.workload);
        push(&node.namespace);
        push(or(local_san, UNKNOWN));
        push(&node.app);
        push(&node.version);
        push(or(service_host, &node.canonical_service));
        push(&node.canonical_service);
        push(&node.canonical_revision);
        push(or(service_name, &node.canonical_service));
        push(&node.namespace);
        push(&node.cluster);
    } else {
        // The client's sidecar and a waypoint: the upstream peer's workload.
        let up_namespace = if client_side {
            peer_namespace
        } else {
            &up_peer.namespace
        };
        push(or(&up_peer.workload, UNKNOWN));
        push(or(up_namespace, UNKNOWN));
        push(if client_side {
            or(peer_san, UNKNOWN)
        } else {
            UNKNOWN
        });
        push(or(&up_peer.app, UNKNOWN));
        push(or(&up_peer.version, UNKNOWN));
        push(or(service_host, UNKNOWN));
        push(or(&up_peer.canonical_service, UNKNOWN));
        let revision = if client_side { "latest" } else { UNKNOWN };
        push(or(&up_peer.canonical_revision, revision));
        push(or(service_name, UNKNOWN));
        push(or(or(service_namespace, up_namespace), UNKNOWN));
        push(or(&up_peer.cluster, UNKNOWN));
    }
}

/// How many peer header values a core keeps decoded (istio-proxy keeps 500 per thread).
const PEER_CACHE: usize = 500;

/// Values longer than this are decoded each time, never kept (a real workload's is a few
/// hundred bytes).
const MAX_CACHED: usize = 4096;

/// Decoded peers by header value (`None`: the value describes none).
type PeerCache = rustc_hash::FxHashMap<Box<[u8]>, Option<Arc<Peer>>>;

/// A core's decoded peers and Istio series.
#[derive(Default)]
pub struct IstioCore {
    peers: RefCell<PeerCache>,
    pub series: crate::stats::istio::HttpCoreMap,
    pub tcp: crate::stats::istio::TcpCoreMap,
}

impl IstioCore {
    /// The peer an `x-envoy-peer-metadata` value describes (decoded once per core).
    pub fn peer(&self, value: &[u8]) -> Option<Arc<Peer>> {
        if let Some(p) = self.peers.borrow().get(value) {
            return p.clone();
        }
        let p = Peer::decode(value).map(Arc::new);
        if value.len() > MAX_CACHED {
            return p;
        }
        let mut peers = self.peers.borrow_mut();
        if peers.len() >= PEER_CACHE {
            peers.clear();
        }
        peers.insert(value.into(), p.clone());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_md() -> Struct {
        let mut l = Struct::default();
        for (k, v) in [
            ("app", "reviews"),
            ("version", "v2"),
            ("service.istio.io/canonical-name", "reviews"),
            ("service.istio.io/canonical-revision", "v2"),
            ("pod-template-hash", "abc"),
        ] {
            l.fields.insert(k.into(), string(v));
        }
        let mut md = Struct::default();
        for (k, v) in [
            ("NAME", "reviews-v2-1"),
            ("NAMESPACE", "default"),
            ("WORKLOAD_NAME", "reviews-v2"),
            ("CLUSTER_ID", "Kubernetes"),
            ("ISTIO_VERSION", "1.24.0"),
        ] {
            md.fields.insert(k.into(), string(v));
        }
        md.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(l)),
            },
        );
        md
    }

    #[test]
    fn a_node_round_trips_through_its_exchange_header() {
        let n = local_node(
            "sidecar~10.0.0.1~reviews-v2-1.default~default.svc.cluster.local",
            Some(&node_md()),
        );
        assert_eq!(&*n.workload, "reviews-v2");
        assert_eq!(&*n.app, "reviews");
        let p = Peer::decode(n.exchange.as_bytes()).unwrap();
        assert_eq!(&*p.workload, "reviews-v2");
        assert_eq!(&*p.namespace, "default");
        assert_eq!(&*p.canonical_service, "reviews");
        assert_eq!(&*p.canonical_revision, "v2");
        assert_eq!(
            (&*p.app, &*p.version, &*p.cluster),
            ("reviews", "v2", "Kubernetes")
        );
        // Only the keys Istio exchanges: no ISTIO_VERSION, no other labels.
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(n.exchange.as_bytes())
            .unwrap();
        let s = Struct::decode(raw.as_slice()).unwrap();
        let keys: Vec<&str> = s.fields.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            ["CLUSTER_ID", "LABELS", "NAME", "NAMESPACE", "WORKLOAD_NAME"]
        );
        assert_eq!(labels(&s).unwrap().fields.len(), 4);
        // Deterministic: map entries in key order, so the bytes start with CLUSTER_ID.
        assert_eq!(&raw[..4], b"\x0a\x1a\x0a\x0a");
        // Without padding, as some peers send it; garbage is no peer.
        let unpadded = n.exchange.trim_end_matches('=');
        assert_eq!(Peer::decode(unpadded.as_bytes()), Some(p));
        assert_eq!(Peer::decode(b"not base64!"), None);
    }

    #[test]
    fn a_node_without_metadata_has_empty_labels() {
        let n = local_node("x", None);
        assert_eq!(&*n.workload, "");
        let p = Peer::decode(n.exchange.as_bytes()).unwrap();
        assert_eq!(p, Peer::default());
    }
}
