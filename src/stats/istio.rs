//! Istio's standard metrics (`istio.stats`): `istio_requests_total`, the request duration
//! and size histograms and the gRPC message counters, each series named by Istio's labels
//! in Istio's order. They live in the custom stat namespace `istiocustom`, as istio-proxy
//! registers it: `/stats` prints a series as `istiocustom.<metric>.<label>.<value>...`
//! (Envoy's tagged-name join), and `/stats/prometheus` as `<metric>{<label>="<value>",...}`
//! with no `envoy_` prefix.
// The mask list's Mutex is taken at configuration time and on admin reads only.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};

use super::labeled::{CoreMap, Registry};
use super::{HistValue, StatValue, Store};

/// The custom stat namespace.
pub const NAMESPACE: &str = "istiocustom";

/// The labels of an HTTP series, in Istio's order (`reporter`, the peers, then what the
/// request ended with).
pub const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// How many of [`LABELS`] the gRPC message counters carry: istio-proxy reports them
/// before it adds the last five.
const PEER_LABELS: usize = 20;

/// Istio's HTTP metrics, indexed as [`HttpMetric`]: counters, then histograms.
pub const METRICS: [&str; 6] = [
    "istio_requests_total",
    "istio_request_messages_total",
    "istio_response_messages_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
];

/// Istio's TCP metrics (counters), indexed as [`TcpMetric`]; a TCP metric's overrides are
/// at `METRICS.len()` plus its index in [`Shape`].
pub const TCP_METRICS: [&str; 4] = [
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
];

/// A TCP metric; its discriminant indexes [`TCP_METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpMetric {
    /// Bytes sent to the client.
    Sent,
    /// Bytes received from the client.
    Received,
    Opened,
    Closed,
}

/// The labels of a TCP series, as indices into [`LABELS`]: the peers, then
/// `request_protocol` (`tcp`), `response_flags`, `connection_security_policy`.
pub const TCP_LABELS: [usize; 23] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 23, 24,
];

/// An HTTP metric; its discriminant indexes [`METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMetric {
    RequestsTotal,
    RequestMessages,
    ResponseMessages,
    Duration,
    RequestBytes,
    ResponseBytes,
}

impl HttpMetric {
    /// Counters first: a counter's index is its discriminant, a histogram's is its
    /// discriminant less the counters.
    pub const COUNTERS: usize = 3;

    /// The index in [`Shape`] of a metric by its name in `stats.PluginConfig` (without
    /// `istio_`): HTTP metrics first, then TCP ones.
    pub fn by_config_name(name: &str) -> Option<usize> {
        let full = format!("istio_{name}");
        METRICS
            .iter()
            .chain(TCP_METRICS.iter())
            .position(|m| *m == full)
    }
}

/// Which metrics a filter reports, which labels each drops and which each takes from a
/// CEL expression (`stats.PluginConfig`'s metric overrides): per metric, a bit per label of
/// [`LABELS`] that is removed (a dropped metric is `None`), and its dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub removed: [Option<u32>; 10],
    /// Per metric: the labels an expression gives, each with the expression's index in
    /// `exprs`.
    pub dims: [Vec<(Dim, u8)>; 10],
    /// The expressions' sources, in the order their values follow the shape's id in a
    /// series key.
    pub exprs: Vec<Box<str>>,
}

/// A label an expression gives: a standard one (its value replaced in place) or a new one
/// (after the standard labels, in the order configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Standard(u8),
    New(Box<str>),
}

impl Shape {
    /// Every metric with every label.
    pub fn standard() -> Shape {
        Shape {
            removed: [Some(0); 10],
            dims: Default::default(),
            exprs: Vec::new(),
        }
    }

    /// Metric `metric`'s labels: those of `labels` (indices into [`LABELS`], with their
    /// values) it keeps, an expression's value in place of a standard one, then its new
    /// labels; `exprs` are the expressions' values.
    fn tags(
        &self,
        metric: usize,
        removed: u32,
        labels: impl Iterator<Item = (usize, String)>,
        exprs: &[&str],
    ) -> Vec<(String, String)> {
        let dims = &self.dims[metric];
        let value = |e: u8| {
            exprs
                .get(e as usize)
                .copied()
                .unwrap_or("unknown")
                .to_string()
        };
        let mut tags: Vec<(String, String)> = labels
            .filter(|&(l, _)| removed & (1 << l) == 0)
            .map(|(l, v)| {
                let over = dims
                    .iter()
                    .find(|(d, _)| *d == Dim::Standard(l as u8))
                    .map(|(_, e)| value(*e));
                (LABELS[l].to_string(), over.unwrap_or(v))
            })
            .collect();
        for (d, e) in dims {
            if let Dim::New(name) = d {
                tags.push((name.to_string(), value(*e)));
            }
        }
        tags
    }
}

/// The HTTP series: three counters, three histograms.
pub type HttpSeries = super::labeled::Series<3, 3>;
/// A core's HTTP series by key.
pub type HttpCoreMap = CoreMap<3, 3>;
/// The TCP series: four counters.
pub type TcpSeries = super::labeled::Series<4, 0>;
/// A core's TCP series by key.
pub type TcpCoreMap = CoreMap<4, 0>;

/// Istio's metrics of one proxy: every core's series and the shapes their keys name.
pub struct Istio {
    pub http: Arc<Registry<3, 3>>,
    pub tcp: Arc<Registry<4, 0>>,
    /// Shapes by id (a series key ends with its shape's id).
    shapes: Mutex<Vec<Shape>>,
    /// This proxy's workload (set from the bootstrap before anything is converted).
    pub node: arc_swap::ArcSwap<LocalNode>,
    /// `istio_build`'s `tag`, once an `istio.stats` filter is configured (istio-proxy
    /// sets the gauge as its filter is created).
    pub build: std::sync::OnceLock<Box<str>>,
}

impl Istio {
    pub fn new(cores: usize) -> Self {
        Istio {
            http: Arc::new(Registry::new(cores)),
            tcp: Arc::new(Registry::new(cores)),
            shapes: Mutex::new(vec![Shape::standard()]),
            node: Default::default(),
            build: Default::default(),
        }
    }

    /// The id of `shape` (configuration time only); `None` past 256 distinct shapes.
    pub fn shape_id(&self, shape: Shape) -> Option<u8> {
        let mut s = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        let i = match s.iter().position(|x| *x == shape) {
            Some(i) => i,
            None => {
                s.push(shape);
                s.len() - 1
            }
        };
        u8::try_from(i).ok()
    }
}

/// The family index of TCP counters while series are merged.
const TCP: usize = 100;

/// The name `/stats` prints for a series: Envoy joins a tagged stat's name and its tags
/// with dots.
fn joined(metric: &str, tags: &[(String, String)]) -> String {
    let mut s = format!("{NAMESPACE}.{metric}");
    for (k, v) in tags {
        s.push('.');
        s.push_str(k);
        s.push('.');
        s.push_str(v);
    }
    s
}

impl Store {
    /// Istio's series as stats and histograms (merged over cores, series of the same
    /// metric and labels summed), with their tags recorded for the Prometheus form.
    pub(super) fn istio_stats(&self) -> (Vec<StatValue>, Vec<HistValue>) {
        let shapes = self
            .istio
            .shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        type Values = (Vec<u64>, Vec<HistValue>);
        let mut by_name = std::collections::BTreeMap::<String, (usize, Values)>::new();
        let mut tagged = Vec::new();
        for (key, m) in self.istio.http.merged() {
            let values: Vec<&str> = super::labeled::key_values(&key).collect();
            let Some(shape) = values
                .get(LABELS.len())
                .and_then(|id| id.parse::<usize>().ok())
                .and_then(|id| shapes.get(id))
            else {
                continue;
            };
            let exprs = &values[LABELS.len() + 1..];
            for (i, metric) in METRICS.iter().enumerate() {
                let Some(removed) = shape.removed[i] else {
                    continue;
                };
                let n = if matches!(i, 1 | 2) {
                    PEER_LABELS
                } else {
                    LABELS.len()
                };
                let labels = (0..n).map(|l| (l, values[l].to_string()));
                let tags = shape.tags(i, removed, labels, exprs);
                let name = joined(metric, &tags);
                let e = by_name.entry(name.clone()).or_insert_with(|| {
                    tagged.push((name, metric, tags));
                    (i, (Vec::new(), Vec::new()))
                });
                if i < HttpMetric::COUNTERS {
                    e.1 .0.push(m.counters[i]);
                } else {
                    e.1 .1.push(m.hists[i - HttpMetric::COUNTERS].clone());
                }
            }
        }
        for (key, m) in self.istio.tcp.merged() {
            let values: Vec<&str> = super::labeled::key_values(&key).collect();
            let Some(shape) = values
                .get(TCP_LABELS.len())
                .and_then(|id| id.parse::<usize>().ok())
                .and_then(|id| shapes.get(id))
            else {
                continue;
            };
            let exprs = &values[TCP_LABELS.len() + 1..];
            for (i, metric) in TCP_METRICS.iter().enumerate() {
                let Some(removed) = shape.removed[METRICS.len() + i] else {
                    continue;
                };
                let labels = TCP_LABELS
                    .iter()
                    .enumerate()
                    .map(|(v, &l)| (l, values[v].to_string()));
                let tags = shape.tags(METRICS.len() + i, removed, labels, exprs);
                let name = joined(metric, &tags);
                let e = by_name.entry(name.clone()).or_insert_with(|| {
                    tagged.push((name, metric, tags));
                    (TCP, (Vec::new(), Vec::new()))
                });
                e.1 .0.push(m.counters[i]);
            }
        }
        {
            let mut cache = self.tagged.lock().unwrap_or_else(|e| e.into_inner());
            for (name, metric, tags) in tagged {
                cache.give(name, || super::tags::Tagged {
                    name: format!("{NAMESPACE}.{metric}"),
                    tags,
                });
            }
        }
        let (mut stats, mut hists) = (Vec::new(), Vec::new());
        if let Some(tag) = self.istio.build.get() {
            let tags = vec![
                ("component".to_string(), "proxy".to_string()),
                ("tag".to_string(), tag.to_string()),
            ];
            let name = joined("istio_build", &tags);
            self.tagged
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .give(name.clone(), || super::tags::Tagged {
                    name: format!("{NAMESPACE}.istio_build"),
                    tags,
                });
            stats.push(StatValue {
                name,
                value: 1,
                gauge: true,
                used: true,
            });
        }
        for (name, (i, (counters, hs))) in by_name {
            if i < HttpMetric::COUNTERS || i == TCP {
                let value = counters.iter().fold(0u64, |a, c| a.wrapping_add(*c));
                // The message counters exist for gRPC requests only.
                if (i == 1 || i == 2) && value == 0 {
                    continue;
                }
                stats.push(StatValue {
                    name,
                    value: value as i64,
                    gauge: false,
                    used: true,
                });
            } else {
                let mut h = HistValue::sum(hs);
                if h.count == 0 {
                    continue;
                }
                h.name = name;
                hists.push(h);
            }
        }
        (stats, hists)
    }
}

/// A workload as Istio's labels describe it: this proxy's own, or a peer's as metadata
/// exchange (or an endpoint's metadata) told it. Values are cleaned label values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// `WORKLOAD_NAME`.
    pub workload: Box<str>,
    /// `NAMESPACE`.
    pub namespace: Box<str>,
    /// `LABELS["service.istio.io/canonical-name"]`.
    pub canonical_service: Box<str>,
    /// `LABELS["service.istio.io/canonical-revision"]`.
    pub canonical_revision: Box<str>,
    /// `LABELS["app.kubernetes.io/name"]`, else `LABELS["app"]`.
    pub app: Box<str>,
    /// `LABELS["app.kubernetes.io/version"]`, else `LABELS["version"]`.
    pub version: Box<str>,
    /// `CLUSTER_ID`.
    pub cluster: Box<str>,
}

impl Peer {
    /// The workload a W3C `baggage` header describes, with istio-proxy's keys
    /// (`WorkloadMetadataObject::fromBaggage`): `k8s.namespace.name`, `k8s.cluster.name`,
    /// `k8s.<kind>.name` (the workload), `service.name`/`service.version` (canonical
    /// service and revision), `app.name`/`app.version`.
    pub fn from_baggage(baggage: &str) -> Peer {
        let mut p = Peer::default();
        for member in baggage.split(',') {
            let Some((k, v)) = member.split_once('=') else {
                continue;
            };
            // Properties after ';' are not part of the value.
            let v = v.split(';').next().unwrap_or("").trim();
            let v: Box<str> = v.into();
            match k.trim() {
                "k8s.namespace.name" => p.namespace = v,
                "k8s.cluster.name" => p.cluster = v,
                "service.name" => p.canonical_service = v,
                "service.version" => p.canonical_revision = v,
                "app.name" => p.app = v,
                "app.version" => p.version = v,
                k if k.starts_with("k8s.") && k.ends_with(".name") && k != "k8s.node.name" => {
                    p.workload = v
                }
                _ => {}
            }
        }
        p
    }
}

/// What this proxy's own workload is, from the bootstrap's `node.metadata` (pilot-agent's
/// keys): its side of every series (its [`Peer`] fields, through `Deref`), and what
/// metadata exchange tells peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNode {
    /// `node.id` (`x-envoy-peer-metadata-id`).
    pub id: Box<str>,
    /// This workload's labels.
    pub me: Peer,
    /// `x-envoy-peer-metadata`: this workload's metadata as istio-proxy encodes it.
    pub exchange: Box<str>,
    /// `ISTIO_VERSION` (`istio_build`'s tag).
    pub istio_version: Box<str>,
    /// `node.cluster` and `node.locality.zone` (the OpenTelemetry access log's built-in
    /// labels).
    pub node_cluster: Box<str>,
    pub node_zone: Box<str>,
}

impl std::ops::Deref for LocalNode {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.me
    }
}
