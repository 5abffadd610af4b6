//! Envoy's success-rate and failure-percentage outliers (`processSuccessRateEjections`)
//! over one interval's volumes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::model::outlier::{Kind, OutlierConfig};

/// What the detector keeps of one host.
#[derive(Debug)]
pub(super) struct Host {
    pub(super) ejected: bool,
    pub(super) ejected_at: Instant,
    /// Envoy's ejection-time multiplier.
    pub(super) backoff: u32,
    pub(super) jitter: Duration,
    pub(super) last_unejected: Option<Instant>,
    /// Ejections so far (the event log's `num_ejections`).
    pub(super) num_ejections: u32,
    pub(super) success_rate: [f64; 2],
}

impl Host {
    pub(super) fn new(now: Instant) -> Host {
        Host {
            ejected: false,
            ejected_at: now,
            backoff: 0,
            jitter: Duration::ZERO,
            last_unejected: None,
            num_ejections: 0,
            success_rate: [-1.0; 2],
        }
    }
}

/// The outliers of monitor `m` (0: external results, 1: local origin) among the hosts not
/// ejected, and the cluster's average success rate and ejection threshold (-1: not
/// computed). Each host's success rate is set where its volume is enough to show it.
pub(super) fn outliers(
    cfg: &OutlierConfig,
    hosts: &mut HashMap<SocketAddr, Host>,
    volumes: &HashMap<SocketAddr, [u64; 4]>,
    m: usize,
) -> (Vec<(SocketAddr, Kind)>, f64, f64) {
    let (sr_kind, fp_kind) = match m {
        0 => (Kind::SuccessRate, Kind::FailurePercentage),
        _ => (Kind::LocalSuccessRate, Kind::LocalFailurePercentage),
    };
    let (sr, fp) = (cfg.success_rate, cfg.failure_percentage);
    let mut out = Vec::new();
    let (mut average, mut threshold) = (-1.0, -1.0);
    let n = hosts.len();
    if n < sr.minimum_hosts as usize && n < fp.minimum_hosts as usize {
        return (out, average, threshold);
    }
    let mut valid_sr = Vec::new();
    let mut valid_fp = Vec::new();
    for (a, h) in hosts.iter_mut().filter(|(_, h)| !h.ejected) {
        let v = volumes.get(a).copied().unwrap_or_default();
        let (ok, total) = (v[2 * m], v[2 * m + 1]);
        if total == 0 {
            continue;
        }
        let rate = ok as f64 * 100.0 / total as f64;
        if total >= u64::from(sr.request_volume.min(fp.request_volume)) {
            h.success_rate[m] = rate;
        }
        if total >= u64::from(sr.request_volume) {
            valid_sr.push((*a, rate));
        }
        if total >= u64::from(fp.request_volume) {
            valid_fp.push((*a, rate));
        }
    }
    if !valid_sr.is_empty() && valid_sr.len() >= sr.minimum_hosts as usize {
        let k = valid_sr.len() as f64;
        let mean = valid_sr.iter().map(|(_, r)| r).sum::<f64>() / k;
        let var = valid_sr
            .iter()
            .map(|(_, r)| (r - mean).powi(2))
            .sum::<f64>()
            / k;
        let t = mean - cfg.stdev_factor * var.sqrt();
        (average, threshold) = (mean, t);
        out.extend(
            valid_sr
                .iter()
                .filter(|(_, r)| *r < t)
                .map(|(a, _)| (*a, sr_kind)),
        );
    }
    if !valid_fp.is_empty() && valid_fp.len() >= fp.minimum_hosts as usize {
        out.extend(
            valid_fp
                .iter()
                .filter(|(_, r)| 100.0 - r >= f64::from(cfg.failure_threshold))
                .map(|(a, _)| (*a, fp_kind)),
        );
    }
    (out, average, threshold)
}

/// `v` as fmt's `{:g}` writes it: six significant digits, trailing zeros dropped (Envoy's
/// `/clusters` prints a detector's averages and thresholds so).
pub fn g(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (6 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

#[cfg(test)]
mod tests {
    use super::g;

    #[test]
    fn g_format() {
        assert_eq!(g(-1.0), "-1");
        assert_eq!(g(100.0), "100");
        assert_eq!(g(93.33333333333333), "93.3333");
        assert_eq!(g(80.0), "80");
        assert_eq!(g(0.5), "0.5");
        assert_eq!(g(40.0), "40");
    }
}
