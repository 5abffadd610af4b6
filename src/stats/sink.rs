//! Stat sinks (the bootstrap's `stats_sinks`): every `stats_flush_interval` the control
//! thread reads the stats as `/stats` does and sends them on. Only statsd over UDP for
//! now, in Envoy's format: one datagram per metric, `<prefix>.<full name>:<value>|<type>`;
//! counters as the change since the last flush (0 included, once a counter was used),
//! gauges as their value. Nothing here runs on a core.
//!
//! Histograms are where this differs from Envoy, which sends each recorded value as it is
//! recorded, from the recording thread: that would put a send on the request path. Here
//! the flush sends what was recorded since the last one, one line per bucket that grew,
//! at the bucket's upper bound (the maximum for the last), with statsd's sample rate
//! saying how many values the line stands for (`name:25|ms|@0.5` is two values of 25).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use super::histogram::BOUNDS;
use super::{HistValue, Store};

pub mod metrics_service;
pub use metrics_service::{HistogramEmit, MetricsService};

/// The sinks, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// `stats_flush_interval` (5 s).
    pub interval: Duration,
    pub statsd: Vec<Statsd>,
    pub metrics: Vec<MetricsService>,
}

impl SinkConfig {
    pub fn is_empty(&self) -> bool {
        self.statsd.is_empty() && self.metrics.is_empty()
    }
}

/// A statsd sink over UDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statsd {
    pub addr: SocketAddr,
    /// `prefix` ("envoy").
    pub prefix: String,
}

/// What the last flush saw, to send changes.
#[derive(Default)]
pub struct Flusher {
    counters: HashMap<String, i64>,
    histograms: HashMap<String, HistValue>,
}

impl Flusher {
    /// The statsd lines of one flush, without their prefix: counters (the change since the
    /// last flush), gauges, then the histograms' new values.
    pub fn lines(&mut self, store: &Store) -> Vec<String> {
        let mut out = Vec::new();
        let stats = store.snapshot();
        for s in stats.iter().filter(|s| s.used && !s.gauge) {
            let prev = self.counters.insert(s.name.clone(), s.value).unwrap_or(0);
            // A reset (`/reset_counters`) starts the count again.
            let delta = if s.value >= prev {
                s.value - prev
            } else {
                s.value
            };
            out.push(format!("{}:{delta}|c", s.name));
        }
        for s in stats.iter().filter(|s| s.used && s.gauge) {
            out.push(format!("{}:{}|g", s.name, s.value));
        }
        for h in store.histograms() {
            let prev = self.histograms.get(&h.name);
            let mut below_now = 0u64;
            let mut below_then = 0u64;
            for (i, &c) in h.cumulative.iter().enumerate() {
                let then = prev.map_or(0, |p| p.cumulative.get(i).copied().unwrap_or(0));
                let grew = (c - below_now).saturating_sub(then.saturating_sub(below_then));
                below_now = c;
                below_then = then;
                if grew == 0 {
                    continue;
                }
                let value = BOUNDS.get(i).map_or(h.max, |&b| (b as u64).min(h.max));
                let mut line = format!("{}:{value}|ms", h.name);
                if grew > 1 {
                    let _ = write!(line, "|@{}", 1.0 / grew as f64);
                }
                out.push(line);
            }
            self.histograms.insert(h.name.clone(), h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ClusterStat, Store};

    #[test]
    fn counters_as_changes_gauges_as_values_histograms_as_new_samples() {
        let store = Store::new(1);
        let scope = store.scope::<ClusterStat>("cluster.c.");
        let cells = scope.core(0);
        let mut f = Flusher::default();
        cells.add(ClusterStat::UpstreamRqTotal as usize, 3);
        cells.add(ClusterStat::UpstreamCxActive as usize, 2);
        cells.record(crate::stats::ClusterHistogram::UpstreamRqTime as usize, 7);
        cells.record(crate::stats::ClusterHistogram::UpstreamRqTime as usize, 7);
        let first = f.lines(&store);
        assert!(
            first.contains(&"cluster.c.upstream_rq_total:3|c".to_string()),
            "{first:?}"
        );
        assert!(first.contains(&"cluster.c.upstream_cx_active:2|g".to_string()));
        assert!(
            first.contains(&"cluster.c.upstream_rq_time:7|ms|@0.5".to_string()),
            "{first:?}"
        );
        // Unused counters are not sent.
        assert!(!first
            .iter()
            .any(|l| l.starts_with("cluster.c.upstream_rq_retry:")));
        cells.add(ClusterStat::UpstreamRqTotal as usize, 2);
        cells.record(crate::stats::ClusterHistogram::UpstreamRqTime as usize, 40);
        let second = f.lines(&store);
        assert!(
            second.contains(&"cluster.c.upstream_rq_total:2|c".to_string()),
            "{second:?}"
        );
        assert!(
            second.contains(&"cluster.c.upstream_rq_time:40|ms".to_string()),
            "{second:?}"
        );
        assert!(!second
            .iter()
            .any(|l| l.starts_with("cluster.c.upstream_rq_time:7")));
        // A used counter that did not move is sent as 0, as Envoy sends it.
        let third = f.lines(&store);
        assert!(third.contains(&"cluster.c.upstream_rq_total:0|c".to_string()));
    }
}
