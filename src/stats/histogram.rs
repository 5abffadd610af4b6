//! Per-core histograms, merged on read: Envoy's default buckets (milliseconds), with the
//! count, sum, minimum and maximum. A core records into its own cells (plain loads and
//! stores, as counters do); the cells are made on the core's first record, so a scope no
//! request touched on a core costs nothing there.

use std::sync::atomic::{AtomicU64, Ordering};

/// Envoy's default histogram bucket bounds, in milliseconds (`le` in Prometheus).
pub const BOUNDS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The bounds in half-milliseconds, for integer comparison.
const HALF_MS: [u64; 19] = [
    1, 2, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000, 120000, 600000,
    1200000, 3600000, 7200000,
];

/// The quantiles Envoy's `/stats` prints, in percent.
pub const QUANTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// One core's cells for one histogram: a counter per bucket (the last one is `+Inf`),
/// then count, sum, min and max.
#[repr(align(64))]
pub struct HistCells {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    count: AtomicU64,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl Default for HistCells {
    fn default() -> Self {
        HistCells {
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl HistCells {
    /// Records `v` milliseconds. Only the owning core writes.
    #[inline]
    pub fn record(&self, v: u64) {
        // A linear scan: most samples are small, so it stops within a few comparisons.
        let half = v.saturating_mul(2);
        let i = HALF_MS
            .iter()
            .position(|&b| half <= b)
            .unwrap_or(HALF_MS.len());
        bump(&self.buckets[i], 1);
        bump(&self.count, 1);
        bump(&self.sum, v);
        if v < self.min.load(Ordering::Relaxed) {
            self.min.store(v, Ordering::Relaxed);
        }
        if v > self.max.load(Ordering::Relaxed) {
            self.max.store(v, Ordering::Relaxed);
        }
    }
}

/// A histogram merged over cores, as admin reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistValue {
    pub name: String,
    /// Samples at or below each bound of [`BOUNDS`], then all of them (`+Inf`).
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: u64,
    pub min: u64,
    pub max: u64,
}

impl HistValue {
    pub(super) fn merge<'a>(name: String, cores: impl Iterator<Item = &'a HistCells>) -> Self {
        let mut buckets = [0u64; BOUNDS.len() + 1];
        let (mut count, mut sum, mut min, mut max) = (0u64, 0u64, u64::MAX, 0u64);
        for c in cores {
            for (b, cell) in buckets.iter_mut().zip(&c.buckets) {
                *b += cell.load(Ordering::Relaxed);
            }
            count += c.count.load(Ordering::Relaxed);
            sum += c.sum.load(Ordering::Relaxed);
            min = min.min(c.min.load(Ordering::Relaxed));
            max = max.max(c.max.load(Ordering::Relaxed));
        }
        let mut acc = 0;
        let cumulative = buckets
            .iter()
            .map(|b| {
                acc += b;
                acc
            })
            .collect();
        HistValue {
            name,
            cumulative,
            count,
            sum,
            min: if count == 0 { 0 } else { min },
            max,
        }
    }

    /// What was recorded since `prev`, an earlier reading of the same histogram (the
    /// interval a sink reports). Its minimum and maximum stay those of the whole run.
    pub fn since(&self, prev: &HistValue) -> HistValue {
        HistValue {
            name: self.name.clone(),
            cumulative: self
                .cumulative
                .iter()
                .zip(&prev.cumulative)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(prev.count),
            sum: self.sum.saturating_sub(prev.sum),
            min: self.min,
            max: self.max,
        }
    }

    /// Several merged histograms as one (series of one metric that share their labels).
    pub(super) fn sum(list: Vec<HistValue>) -> HistValue {
        let mut out = HistValue {
            name: String::new(),
            cumulative: vec![0; BOUNDS.len() + 1],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        };
        for h in list.into_iter().filter(|h| h.count > 0) {
            for (a, b) in out.cumulative.iter_mut().zip(&h.cumulative) {
                *a += b;
            }
            out.count += h.count;
            out.sum += h.sum;
            out.min = out.min.min(h.min);
            out.max = out.max.max(h.max);
        }
        if out.count == 0 {
            out.min = 0;
        }
        out
    }

    /// The value at quantile `q` (percent), interpolated within its bucket and kept within
    /// the recorded minimum and maximum. `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let (min, max) = (self.min as f64, self.max as f64);
        if q <= 0.0 {
            return Some(min);
        }
        if q >= 100.0 {
            return Some(max);
        }
        let target = q / 100.0 * self.count as f64;
        let mut below = 0u64;
        for (i, &c) in self.cumulative.iter().enumerate() {
            if (c as f64) >= target && c > below {
                let lo = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
                let hi = BOUNDS.get(i).copied().unwrap_or(max);
                let in_bucket = (c - below) as f64;
                let v = lo + (hi - lo) * ((target - below as f64) / in_bucket);
                return Some(v.clamp(min, max));
            }
            below = c;
        }
        Some(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_envoys_buckets_and_quantiles_stay_in_range() {
        let cells = HistCells::default();
        for v in [0, 1, 2, 5, 6, 1000, 4_000_000] {
            cells.record(v);
        }
        let h = HistValue::merge("x".into(), [&cells].into_iter());
        // le=0.5: 0; le=1: 0,1; le=5: +2,5; le=10: +6; le=1000: +1000; +Inf: all.
        assert_eq!(&h.cumulative[..4], &[1, 2, 4, 5]);
        assert_eq!(h.cumulative[9], 6);
        assert_eq!(h.cumulative[18], 6);
        assert_eq!(h.cumulative[19], 7);
        assert_eq!((h.count, h.sum, h.min, h.max), (7, 4_001_014, 0, 4_000_000));
        assert_eq!(h.quantile(0.0), Some(0.0));
        assert_eq!(h.quantile(100.0), Some(4_000_000.0));
        let p50 = h.quantile(50.0).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
        let empty = HistValue::merge("y".into(), [&HistCells::default()].into_iter());
        assert_eq!(empty.quantile(50.0), None);
    }
}
