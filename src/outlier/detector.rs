//! The control thread's outlier detector: Envoy 1.40's ejection rules, driven by what the
//! cores report (see [`crate::outlier`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc::UnboundedReceiver;

use super::event_log::event_line;
use super::rates::Host;
use super::{Event, ToCore};
use crate::model::outlier::{Kind, OutlierConfig, OutlierStat};
use crate::model::{SharedSnapshot, Snapshot};

/// What `/clusters` shows of one cluster's detector.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub ejected: Vec<SocketAddr>,
    /// Per host, the success rates of the last interval (external, local origin; -1: not
    /// computed).
    pub success_rate: HashMap<SocketAddr, [f64; 2]>,
    /// The cluster's average success rate and ejection threshold (external, local origin).
    pub average: [f64; 2],
    pub threshold: [f64; 2],
}

/// Every detector's view, by cluster name (clusters with `outlier_detection` only).
pub type Views = ArcSwap<HashMap<Arc<str>, Arc<ClusterView>>>;

/// How long the detector waits for the cores' volumes before evaluating without the
/// missing ones.
const SWEEP_WAIT: Duration = Duration::from_millis(200);

struct State {
    cfg: Arc<OutlierConfig>,
    hosts: HashMap<SocketAddr, Host>,
    active: u32,
    next_tick: Instant,
    average: [f64; 2],
    threshold: [f64; 2],
}

/// A sweep in progress: the clusters whose volumes were asked for, and how many cores
/// answered it.
struct Sweep {
    id: u64,
    clusters: Vec<Arc<str>>,
    answers: usize,
    until: Instant,
}

/// `now + d`, or far ahead when that cannot be represented.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

pub struct Detector {
    clusters: HashMap<Arc<str>, State>,
    /// The stats block the control thread writes.
    core: usize,
    cores: usize,
    to_core: Box<dyn Fn(usize, ToCore)>,
    pub views: Arc<Views>,
    version: Option<u64>,
    sweep: Option<Sweep>,
    next_sweep: u64,
    /// Clusters whose interval came while a sweep was out: the next sweep's.
    queued: Vec<Arc<str>>,
    /// The cores' volumes since each cluster's last evaluation (an answer that comes late
    /// counts in the next one: nothing a core reported is lost).
    volumes: HashMap<Arc<str>, HashMap<SocketAddr, [u64; 4]>>,
    /// `cluster_manager.outlier_detection.event_log_path`, open.
    event_log: Option<std::fs::File>,
}

impl Detector {
    pub fn new(core: usize, cores: usize, to_core: Box<dyn Fn(usize, ToCore)>) -> Detector {
        Detector {
            clusters: HashMap::new(),
            core,
            cores,
            to_core,
            views: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            version: None,
            sweep: None,
            next_sweep: 0,
            queued: Vec::new(),
            volumes: HashMap::new(),
            event_log: None,
        }
    }

    /// Writes each ejection and unejection to `path` as Envoy's `OutlierDetectionEvent`
    /// JSON lines (Istio's bootstrap names /dev/stdout).
    pub fn log_events_to(&mut self, path: &str) {
        match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            Ok(f) => self.event_log = Some(f),
            Err(e) => tracing::warn!("outlier detection event log {path}: {e}"),
        }
    }

    fn log_event(&mut self, line: String) {
        if let Some(f) = &mut self.event_log {
            use std::io::Write as _;
            let _ = f.write_all(line.as_bytes());
        }
    }

    fn stat(&self, cfg: &OutlierConfig, s: OutlierStat) {
        cfg.stats.core(self.core).inc(s as usize);
    }

    fn broadcast(&self, cluster: &Arc<str>, hosts: Arc<[SocketAddr]>) {
        for k in 0..self.cores {
            (self.to_core)(
                k,
                ToCore::Ejected {
                    cluster: cluster.clone(),
                    hosts: hosts.clone(),
                },
            );
        }
    }

    /// Follows the configuration: clusters and hosts added keep nothing, removed ones are
    /// forgotten (an ejected host removed no longer counts as active).
    pub fn sync(&mut self, snap: &Snapshot, now: Instant) {
        if self.version == Some(snap.version) {
            return;
        }
        self.version = Some(snap.version);
        let mut seen = std::collections::HashSet::new();
        let mut changed = Vec::new();
        for c in snap.clusters.iter() {
            let Some(cfg) = &c.outlier else { continue };
            seen.insert(c.name.clone());
            let fresh = || State {
                cfg: cfg.clone(),
                hosts: HashMap::new(),
                active: 0,
                next_tick: later(now, cfg.interval),
                average: [-1.0; 2],
                threshold: [-1.0; 2],
            };
            let st = self.clusters.entry(c.name.clone()).or_insert_with(fresh);
            if !Arc::ptr_eq(&st.cfg, cfg) {
                if st.cfg.same_settings(cfg) {
                    // The same cluster converted again (every CDS push): its state stays.
                    st.cfg = cfg.clone();
                } else {
                    // Other settings: a new detector, as Envoy builds for a changed
                    // cluster (its ejections end).
                    for _ in 0..st.active {
                        st.cfg
                            .stats
                            .core(self.core)
                            .dec(OutlierStat::EjectionsActive as usize);
                    }
                    if st.active > 0 {
                        changed.push(c.name.clone());
                    }
                    *st = fresh();
                }
            }
            let live: std::collections::HashSet<SocketAddr> =
                c.endpoints.iter().map(|e| e.address).collect();
            let before = st.active;
            st.hosts.retain(|a, h| {
                let keep = live.contains(a);
                if !keep && h.ejected {
                    st.active -= 1;
                    st.cfg
                        .stats
                        .core(self.core)
                        .dec(OutlierStat::EjectionsActive as usize);
                }
                keep
            });
            for a in live {
                st.hosts.entry(a).or_insert_with(|| Host::new(now));
            }
            if st.active != before && !changed.contains(&c.name) {
                changed.push(c.name.clone());
            }
        }
        let gone: Vec<Arc<str>> = self
            .clusters
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(st) = self.clusters.remove(&name) {
                for _ in 0..st.active {
                    st.cfg
                        .stats
                        .core(self.core)
                        .dec(OutlierStat::EjectionsActive as usize);
                }
                self.broadcast(&name, Arc::new([]));
            }
        }
        for name in changed {
            self.publish(&name);
        }
        self.store_views();
    }

    /// Tells the cores the cluster's ejected hosts.
    fn publish(&self, name: &Arc<str>) {
        if let Some(st) = self.clusters.get(name) {
            let mut hosts: Vec<SocketAddr> = st
                .hosts
                .iter()
                .filter(|(_, h)| h.ejected)
                .map(|(a, _)| *a)
                .collect();
            // Sorted: the cores look hosts up by binary search.
            hosts.sort();
            self.broadcast(name, hosts.into());
        }
    }

    fn store_views(&self) {
        let views = self
            .clusters
            .iter()
            .map(|(n, st)| {
                let mut ejected: Vec<SocketAddr> = st
                    .hosts
                    .iter()
                    .filter(|(_, h)| h.ejected)
                    .map(|(a, _)| *a)
                    .collect();
                ejected.sort();
                let v = ClusterView {
                    ejected,
                    success_rate: st.hosts.iter().map(|(a, h)| (*a, h.success_rate)).collect(),
                    average: st.average,
                    threshold: st.threshold,
                };
                (n.clone(), Arc::new(v))
            })
            .collect();
        self.views.store(Arc::new(views));
    }

    /// A core's report.
    pub fn event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Consecutive {
                cluster,
                addr,
                kind,
            } => {
                let Some(st) = self.clusters.get(&cluster) else {
                    return;
                };
                // A host the configuration no longer has, or one already out: nothing.
                if st.hosts.get(&addr).is_none_or(|h| h.ejected) {
                    return;
                }
                let cfg = st.cfg.clone();
                let (_, detected, _) = cfg.of(kind);
                self.stat(&cfg, detected);
                let ejected = self.eject(&cluster, addr, kind, now);
                if kind == Kind::Consecutive5xx {
                    self.stat(&cfg, OutlierStat::EjectionsConsecutive5xx);
                }
                if ejected {
                    self.publish(&cluster);
                    self.store_views();
                }
            }
            Event::HealthCheckPassed { cluster, addr } => {
                let Some(st) = self.clusters.get_mut(&cluster) else {
                    return;
                };
                let cfg = st.cfg.clone();
                let Some(h) = st.hosts.get_mut(&addr).filter(|h| h.ejected) else {
                    return;
                };
                if !cfg.uneject_on_health_check {
                    return;
                }
                h.ejected = false;
                h.last_unejected = Some(now);
                let (at, n) = (h.ejected_at, h.num_ejections);
                st.active -= 1;
                cfg.stats
                    .core(self.core)
                    .dec(OutlierStat::EjectionsActive as usize);
                let line = event_line(
                    &cluster,
                    addr,
                    Kind::Consecutive5xx,
                    false,
                    Some(at),
                    now,
                    n,
                    false,
                    "",
                );
                self.log_event(line);
                self.publish(&cluster);
                self.store_views();
            }
            Event::Volumes { id, hosts, .. } => {
                for (c, a, v) in hosts {
                    let e = self.volumes.entry(c).or_default().entry(a).or_default();
                    for i in 0..4 {
                        e[i] += v[i];
                    }
                }
                let Some(sw) = self.sweep.as_mut().filter(|s| s.id == id) else {
                    return;
                };
                sw.answers += 1;
                if sw.answers >= self.cores {
                    self.finish_sweep(now);
                }
            }
        }
    }

    /// Envoy's `ejectHost`: the max-ejection-percent rule, then the enforcing roll.
    fn eject(&mut self, cluster: &Arc<str>, addr: SocketAddr, kind: Kind, now: Instant) -> bool {
        let core = self.core;
        let Some(st) = self.clusters.get_mut(cluster) else {
            return false;
        };
        let cfg = st.cfg.clone();
        let stat = |s: OutlierStat| cfg.stats.core(core).inc(s as usize);
        let ejected_percent = 100.0 * f64::from(st.active + 1) / st.hosts.len().max(1) as f64;
        let allowed = ejected_percent <= f64::from(cfg.max_ejection_percent)
            || (cfg.always_eject_one && st.active == 0);
        if !allowed {
            stat(OutlierStat::EjectionsOverflow);
            return false;
        }
        if matches!(kind, Kind::Consecutive5xx | Kind::SuccessRate) {
            stat(OutlierStat::EjectionsTotal);
        }
        let (enforcing, _, enforced) = cfg.of(kind);
        let m = usize::from(matches!(
            kind,
            Kind::LocalSuccessRate | Kind::LocalFailurePercentage
        ));
        let (average, threshold) = (st.average[m], st.threshold[m]);
        let Some(h) = st.hosts.get_mut(&addr) else {
            return false;
        };
        let enforce = fastrand::u32(..100) < enforcing;
        let detail = match kind {
            Kind::SuccessRate | Kind::LocalSuccessRate => format!(
                "\"eject_success_rate_event\":{{\"host_success_rate\":{},\"cluster_average_success_rate\":{},\"cluster_success_rate_ejection_threshold\":{}}}",
                h.success_rate[m].max(0.0) as u32,
                average.max(0.0) as u32,
                threshold.max(0.0) as u32
            ),
            Kind::FailurePercentage | Kind::LocalFailurePercentage => format!(
                "\"eject_failure_percentage_event\":{{\"host_success_rate\":{}}}",
                h.success_rate[m].max(0.0) as u32
            ),
            _ => "\"eject_consecutive_event\":{}".into(),
        };
        let num = h.num_ejections + u32::from(enforce);
        let line = event_line(
            cluster,
            addr,
            kind,
            true,
            h.last_unejected,
            now,
            num,
            enforce,
            &detail,
        );
        if enforce {
            h.num_ejections += 1;
        }
        self.log_event(line);
        if !enforce {
            return false;
        }
        let Some(st) = self.clusters.get_mut(cluster) else {
            return false;
        };
        let Some(h) = st.hosts.get_mut(&addr) else {
            return false;
        };
        h.ejected = true;
        h.ejected_at = now;
        let jitter_ms = cfg.jitter.as_millis().min(u64::MAX as u128) as u64;
        h.jitter = Duration::from_millis(fastrand::u64(..=jitter_ms));
        if cfg.base_ejection.saturating_mul(h.backoff)
            < cfg.max_ejection.saturating_add(cfg.base_ejection)
        {
            h.backoff += 1;
        }
        st.active += 1;
        cfg.stats
            .core(core)
            .inc(OutlierStat::EjectionsActive as usize);
        stat(OutlierStat::EjectionsEnforcedTotal);
        stat(enforced);
        tracing::info!(cluster = %cluster, host = %addr, ?kind, "outlier ejected");
        true
    }

    /// The earliest moment something is due: a cluster's interval, or a sweep's deadline.
    pub fn next_due(&self, now: Instant) -> Instant {
        let ticks = self.clusters.values().map(|s| s.next_tick);
        let sweep = self.sweep.as_ref().map(|s| s.until);
        ticks
            .chain(sweep)
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }

    /// Runs what is due: each cluster's interval (unejections, the multiplier's decay, a
    /// sweep for its volumes), and the evaluation of a sweep whose answers did not all come.
    pub fn due(&mut self, now: Instant) {
        if self.sweep.as_ref().is_some_and(|s| now >= s.until) {
            self.finish_sweep(now);
        }
        let mut changed = Vec::new();
        let mut sweep = Vec::new();
        let mut unejected = Vec::new();
        for (name, st) in self.clusters.iter_mut() {
            if now < st.next_tick {
                continue;
            }
            st.next_tick = later(now, st.cfg.interval);
            let cfg = st.cfg.clone();
            for (a, h) in st.hosts.iter_mut() {
                if h.ejected {
                    let out_for = cfg
                        .base_ejection
                        .saturating_mul(h.backoff)
                        .min(cfg.max_ejection)
                        .saturating_add(h.jitter);
                    if now.saturating_duration_since(h.ejected_at) >= out_for {
                        h.ejected = false;
                        h.last_unejected = Some(now);
                        st.active -= 1;
                        cfg.stats
                            .core(self.core)
                            .dec(OutlierStat::EjectionsActive as usize);
                        if !changed.contains(name) {
                            changed.push(name.clone());
                        }
                        unejected.push(event_line(
                            name,
                            *a,
                            Kind::Consecutive5xx,
                            false,
                            Some(h.ejected_at),
                            now,
                            h.num_ejections,
                            false,
                            "",
                        ));
                        tracing::info!(cluster = %name, "outlier unejected");
                    }
                } else if h.backoff > 0
                    && h.last_unejected
                        .is_some_and(|t| now.saturating_duration_since(t) >= cfg.interval)
                {
                    h.backoff -= 1;
                }
                h.success_rate = [-1.0; 2];
            }
            st.average = [-1.0; 2];
            st.threshold = [-1.0; 2];
            // Every cluster's volumes are collected each interval (only the last
            // interval's count is judged, as in Envoy), whether or not it has enough hosts.
            sweep.push(name.clone());
        }
        for line in unejected {
            self.log_event(line);
        }
        for name in &changed {
            self.publish(name);
        }
        if !sweep.is_empty() {
            if self.sweep.is_some() {
                self.queued.extend(sweep);
            } else {
                self.start_sweep(sweep, now);
            }
        }
        if !changed.is_empty() {
            self.store_views();
        }
    }

    /// Asks every core for the volumes of `clusters`.
    fn start_sweep(&mut self, clusters: Vec<Arc<str>>, now: Instant) {
        self.next_sweep += 1;
        let id = self.next_sweep;
        let list: Arc<[Arc<str>]> = clusters.clone().into();
        for k in 0..self.cores {
            (self.to_core)(
                k,
                ToCore::Sweep {
                    id,
                    clusters: list.clone(),
                },
            );
        }
        self.sweep = Some(Sweep {
            id,
            clusters,
            answers: 0,
            until: now + SWEEP_WAIT,
        });
    }

    /// Every core answered the sweep, or its wait is over: its clusters are judged, then
    /// the clusters that came due meanwhile are swept.
    fn finish_sweep(&mut self, now: Instant) {
        let Some(sw) = self.sweep.take() else { return };
        self.evaluate(&sw.clusters, now);
        if !self.queued.is_empty() {
            let next = std::mem::take(&mut self.queued);
            self.start_sweep(next, now);
        }
    }

    /// Envoy's success-rate and failure-percentage ejections over the volumes since each
    /// cluster's last evaluation: the external results first (their outliers ejected
    /// before the next pass), then the local-origin ones.
    fn evaluate(&mut self, clusters: &[Arc<str>], now: Instant) {
        let mut any = Vec::new();
        for name in clusters {
            let volumes = self.volumes.remove(name).unwrap_or_default();
            for m in 0..2 {
                let Some(st) = self.clusters.get_mut(name) else {
                    break;
                };
                let cfg = st.cfg.clone();
                let (found, average, threshold) =
                    super::rates::outliers(&cfg, &mut st.hosts, &volumes, m);
                st.average[m] = average;
                st.threshold[m] = threshold;
                for (a, kind) in found {
                    // One ejection per host per interval (Envoy would try it twice).
                    if self.clusters[name].hosts.get(&a).is_none_or(|h| h.ejected) {
                        continue;
                    }
                    let (_, detected, _) = cfg.of(kind);
                    self.stat(&cfg, detected);
                    if matches!(kind, Kind::SuccessRate | Kind::LocalSuccessRate) {
                        self.stat(&cfg, OutlierStat::EjectionsSuccessRate);
                    }
                    if self.eject(name, a, kind, now) && !any.contains(name) {
                        any.push(name.clone());
                    }
                }
            }
        }
        for name in &any {
            self.publish(name);
        }
        self.store_views();
    }
}

/// Runs the detector for as long as the process does.
pub async fn run(shared: SharedSnapshot, mut events: UnboundedReceiver<Event>, mut d: Detector) {
    // A publish wakes it (clusters with outlier detection added or changed).
    let mut published = crate::wake::published();
    loop {
        let now = Instant::now();
        d.sync(&shared.load(), now);
        let due = d.next_due(now);
        tokio::select! {
            _ = published.changed() => continue,
            e = events.recv() => match e {
                Some(e) => {
                    // The event may be about a cluster published meanwhile.
                    d.sync(&shared.load(), Instant::now());
                    d.event(e, Instant::now());
                }
                None => return,
            },
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        d.due(Instant::now());
    }
}
