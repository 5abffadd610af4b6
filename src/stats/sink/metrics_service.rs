//! The metrics service sink's messages (`envoy.stat_sinks.metrics_service`; the stream
//! is in the `stat_sinks` module at the crate root). As Envoy's: the used stats, each a `MetricFamily` of one `Metric` — counters (cumulative, or the change
//! with `report_counters_as_deltas`), gauges, and histograms over the last interval as a
//! summary (quantiles 0 … 1) and a histogram (Envoy's buckets, no +Inf) — named by their
//! full name, or with `emit_tags_as_labels` by the tag-extracted name and the tags as
//! labels. A stream that fails is opened again at the next flush; that flush's metrics
//! are dropped, as Envoy drops them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::super::histogram::{BOUNDS, QUANTILES};
use super::super::{HistValue, Store};
use crate::proto::io::prometheus::client as prom;

/// The summary's quantiles as Envoy writes them (`QUANTILES` are percents).
const FRACTIONS: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// How histograms are sent (`histogram_emit_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramEmit {
    SummaryAndHistogram,
    Summary,
    Histogram,
}

/// One metrics service sink, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsService {
    /// `grpc_service.envoy_grpc.cluster_name`.
    pub cluster: Arc<str>,
    /// `:authority` (the cluster's name unless `envoy_grpc.authority`).
    pub authority: Box<str>,
    /// `grpc_service.initial_metadata`.
    pub metadata: Vec<(Box<str>, Box<str>)>,
    /// `report_counters_as_deltas`.
    pub deltas: bool,
    /// `emit_tags_as_labels`.
    pub labels: bool,
    pub emit: HistogramEmit,
    /// `batch_size`: families per message (0: all in one).
    pub batch: usize,
}

/// What a metrics service sink's last flush saw, for deltas and histogram intervals.
pub struct Families {
    pub cfg: MetricsService,
    counters: HashMap<String, i64>,
    histograms: HashMap<String, HistValue>,
}

impl Families {
    pub fn new(cfg: MetricsService) -> Families {
        Families {
            cfg,
            counters: HashMap::new(),
            histograms: HashMap::new(),
        }
    }

    /// The used stats as Envoy's flusher writes them: counters, gauges, histograms.
    pub fn build(&mut self, store: &Store) -> Vec<prom::MetricFamily> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut out = Vec::new();
        let stats = store.snapshot();
        let family = |store: &Store, name: &str, kind: prom::MetricType, mut m: prom::Metric| {
            m.timestamp_ms = Some(now);
            let name = if self.cfg.labels {
                let t = store.tagged(name);
                m.label = t
                    .tags
                    .iter()
                    .map(|(n, v)| prom::LabelPair {
                        name: Some(n.clone()),
                        value: Some(v.clone()),
                    })
                    .collect();
                t.name.clone()
            } else {
                name.to_string()
            };
            prom::MetricFamily {
                name: Some(name),
                help: None,
                r#type: Some(kind as i32),
                metric: vec![m],
            }
        };
        for s in stats.iter().filter(|s| s.used && !s.gauge) {
            let prev = self.counters.insert(s.name.clone(), s.value).unwrap_or(0);
            let value = if !self.cfg.deltas {
                s.value
            } else if s.value >= prev {
                s.value - prev
            } else {
                s.value
            };
            let m = prom::Metric {
                counter: Some(prom::Counter {
                    value: Some(value as f64),
                }),
                ..Default::default()
            };
            out.push(family(store, &s.name, prom::MetricType::Counter, m));
        }
        for s in stats.iter().filter(|s| s.used && s.gauge) {
            let m = prom::Metric {
                gauge: Some(prom::Gauge {
                    value: Some(s.value as f64),
                }),
                ..Default::default()
            };
            out.push(family(store, &s.name, prom::MetricType::Gauge, m));
        }
        for h in store.histograms() {
            let interval = match self.histograms.get(&h.name) {
                Some(prev) => h.since(prev),
                None => h.clone(),
            };
            self.histograms.insert(h.name.clone(), h);
            let h = interval;
            if self.cfg.emit != HistogramEmit::Histogram {
                let m = prom::Metric {
                    summary: Some(prom::Summary {
                        sample_count: Some(h.count),
                        sample_sum: Some(h.sum as f64),
                        quantile: QUANTILES
                            .iter()
                            .zip(FRACTIONS)
                            .map(|(&q, f)| prom::Quantile {
                                quantile: Some(f),
                                value: Some(h.quantile(q).unwrap_or(f64::NAN)),
                            })
                            .collect(),
                    }),
                    ..Default::default()
                };
                out.push(family(store, &h.name, prom::MetricType::Summary, m));
            }
            if self.cfg.emit != HistogramEmit::Summary {
                let m = prom::Metric {
                    histogram: Some(prom::Histogram {
                        sample_count: Some(h.count),
                        sample_sum: Some(h.sum as f64),
                        bucket: BOUNDS
                            .iter()
                            .zip(&h.cumulative)
                            .map(|(&b, &c)| prom::Bucket {
                                cumulative_count: Some(c),
                                upper_bound: Some(b),
                            })
                            .collect(),
                    }),
                    ..Default::default()
                };
                out.push(family(store, &h.name, prom::MetricType::Histogram, m));
            }
        }
        out
    }
}
