//! Active health checking (`health_checks`), off the request path: the control thread
//! checks every host of every cluster that has a health check, keeps Envoy's state machine
//! per host (a first success makes a host healthy at once; then `healthy_threshold`
//! successes in a row make it healthy; an answer that is not the expected one makes it
//! unhealthy at once, `unhealthy_threshold` network failures or timeouts in a row too),
//! times the checks as Envoy does (interval, the
//! edge intervals while a change is pending, the unhealthy interval, the no-traffic
//! intervals, jitter), counts `cluster.<name>.health_check.*`, and tells every core which
//! hosts are out, as outlier detection does ([`crate::outlier::ToCore::Unhealthy`]). Until
//! its first check a host counts as failing (Envoy's FAILED_ACTIVE_HC).

pub mod probe;

use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::model::health::HealthCheck;
use crate::model::Snapshot;
use crate::outlier::ToCore;
use crate::stats::{ClusterStat, HealthStat};
use probe::{Conn, Verdict};

/// What `/clusters` shows of a cluster's checks: hosts failing and hosts not checked yet.
#[derive(Default, Debug)]
pub struct View {
    pub failed: std::collections::HashSet<SocketAddr>,
    pub pending: std::collections::HashSet<SocketAddr>,
    /// The last check timed out (Envoy's ACTIVE_HC_TIMEOUT).
    pub timed_out: std::collections::HashSet<SocketAddr>,
    /// Out by `x-envoy-immediate-health-check-fail` (EXCLUDED_VIA_IMMEDIATE_HC_FAIL).
    pub immediate: std::collections::HashSet<SocketAddr>,
}

pub type Views = ArcSwap<HashMap<Arc<str>, Arc<View>>>;

type Key = (Arc<str>, SocketAddr);

struct Host {
    cfg: Arc<HealthCheck>,
    /// Bumped when the host's check is restarted (a new configuration): results of an
    /// older one are dropped.
    generation: u64,
    healthy: bool,
    pending: bool,
    successes: u32,
    failures: u32,
    /// A check is under way.
    running: bool,
    timed_out: bool,
    immediate: bool,
    conn: Option<Conn>,
}

/// Sends a check's result when the check's task ends, however it ends.
struct Report {
    tx: mpsc::UnboundedSender<Done>,
    done: Option<Done>,
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = self.tx.send(d);
        }
    }
}

/// A check result, from its task.
struct Done {
    key: Key,
    generation: u64,
    verdict: Verdict,
    conn: Option<Conn>,
}

pub struct Checker {
    control: usize,
    send: Box<dyn Fn(usize, ToCore)>,
    cores: usize,
    hosts: HashMap<Key, Host>,
    /// Due checks, earliest first.
    due: BinaryHeap<std::cmp::Reverse<(Instant, u64, Key)>>,
    generation: u64,
    seen: usize,
    pub views: Arc<Views>,
}

impl Checker {
    pub fn new(control: usize, cores: usize, send: Box<dyn Fn(usize, ToCore)>) -> Checker {
        Checker {
            control,
            send,
            cores,
            hosts: HashMap::new(),
            due: BinaryHeap::new(),
            generation: 0,
            seen: 0,
            views: Arc::new(ArcSwap::from_pointee(HashMap::new())),
        }
    }

    /// Follows the published configuration: new hosts (or a changed check) start pending
    /// and are checked at once (after `initial_jitter`); hosts gone are forgotten.
    fn sync(&mut self, snap: &Arc<Snapshot>, now: Instant) {
        let id = Arc::as_ptr(snap) as usize;
        if id == self.seen {
            return;
        }
        self.seen = id;
        let mut live: HashMap<Key, Arc<HealthCheck>> = HashMap::new();
        for c in snap.clusters.iter() {
            if let Some(hc) = &c.health {
                for e in c.endpoints.iter() {
                    live.insert((c.name.clone(), e.address), hc.clone());
                }
            }
        }
        let mut changed: std::collections::HashSet<Arc<str>> = self
            .hosts
            .keys()
            .filter(|k| !live.contains_key(*k))
            .map(|k| k.0.clone())
            .collect();
        // A cluster sent again unchanged (every CDS push converts it anew) keeps its hosts'
        // state, as Envoy ignores an unchanged cluster.
        let control = self.control;
        self.hosts.retain(|k, h| match live.get(k) {
            Some(c) if c.same(&h.cfg) => {
                h.cfg = c.clone();
                true
            }
            _ => {
                if h.healthy {
                    h.cfg.stats.core(control).dec(HealthStat::Healthy as usize);
                }
                false
            }
        });
        for (key, cfg) in live {
            if self.hosts.contains_key(&key) {
                continue;
            }
            self.generation += 1;
            let jitter = cfg.initial_jitter.as_millis() as u64;
            let first = now
                + Duration::from_millis(if jitter > 0 {
                    fastrand::u64(..jitter)
                } else {
                    0
                });
            self.due
                .push(std::cmp::Reverse((first, self.generation, key.clone())));
            changed.insert(key.0.clone());
            self.hosts.insert(
                key,
                Host {
                    cfg,
                    generation: self.generation,
                    healthy: false,
                    pending: true,
                    successes: 0,
                    failures: 0,
                    running: false,
                    timed_out: false,
                    immediate: false,
                    conn: None,
                },
            );
        }
        for c in changed {
            self.publish(&c, true);
        }
    }

    /// Starts the checks that are due; when the next one is.
    fn start_due(&mut self, now: Instant, tx: &mpsc::UnboundedSender<Done>) -> Instant {
        while let Some(std::cmp::Reverse((at, generation, key))) = self.due.peek().cloned() {
            if at > now {
                return at;
            }
            self.due.pop();
            let Some(h) = self
                .hosts
                .get_mut(&key)
                .filter(|h| h.generation == generation)
            else {
                continue;
            };
            if h.running {
                continue;
            }
            h.running = true;
            h.cfg
                .stats
                .core(self.control)
                .inc(HealthStat::Attempt as usize);
            let (cfg, conn, tx) = (h.cfg.clone(), h.conn.take(), tx.clone());
            tokio::task::spawn_local(async move {
                // Should the check panic, its host is still rescheduled (as a network
                // failure): the guard reports when dropped without a result.
                let addr = key.1;
                let mut guard = Report {
                    tx,
                    done: Some(Done {
                        key,
                        generation,
                        verdict: Verdict::Network,
                        conn: None,
                    }),
                };
                let (verdict, conn) = probe::check(&cfg, addr, conn).await;
                if let Some(d) = guard.done.as_mut() {
                    d.verdict = verdict;
                    d.conn = conn;
                }
            });
        }
        now + Duration::from_secs(3600)
    }

    /// A check's result: Envoy's transitions, stats, the next check's time.
    fn done(&mut self, d: Done, snap: &Arc<Snapshot>, now: Instant) {
        let Some(h) = self
            .hosts
            .get_mut(&d.key)
            .filter(|h| h.generation == d.generation)
        else {
            return;
        };
        h.running = false;
        h.conn = d.conn;
        let stats = h.cfg.stats.core(self.control);
        let was = (h.healthy, h.pending, h.timed_out, h.immediate);
        // Whether a change of state waits for more results in a row (the edge intervals).
        let pending_change;
        if d.verdict == Verdict::Healthy {
            stats.inc(HealthStat::Success as usize);
            h.failures = 0;
            if !h.healthy {
                h.successes += 1;
                if h.pending || h.successes >= h.cfg.healthy_threshold {
                    h.healthy = true;
                    h.successes = 0;
                    // Envoy clears these flags when the host turns healthy.
                    h.immediate = false;
                    h.timed_out = false;
                }
            }
            pending_change = !h.healthy;
            // Outlier detection lets an ejected host back once it checks healthy.
            if h.healthy {
                crate::outlier::send(crate::outlier::Event::HealthCheckPassed {
                    cluster: d.key.0.clone(),
                    addr: d.key.1,
                });
            }
        } else {
            stats.inc(HealthStat::Failure as usize);
            if matches!(d.verdict, Verdict::Network | Verdict::Timeout) {
                stats.inc(HealthStat::NetworkFailure as usize);
            }
            if matches!(
                d.verdict,
                Verdict::FailedNow | Verdict::Retriable { now: true }
            ) {
                h.immediate = true;
            }
            h.successes = 0;
            // A host that answered wrongly is out at once; `unhealthy_threshold` counts
            // network failures and retriable statuses (Envoy's setUnhealthy).
            let counted = matches!(
                d.verdict,
                Verdict::Network | Verdict::Timeout | Verdict::Retriable { .. }
            );
            if h.healthy {
                h.failures += 1;
                if !counted || h.failures >= h.cfg.unhealthy_threshold {
                    h.healthy = false;
                    h.failures = 0;
                }
            }
            pending_change = h.healthy;
        }
        h.pending = false;
        // Envoy flags a timeout on a host left failing; a failure that is no timeout clears it.
        if d.verdict != Verdict::Healthy {
            h.timed_out = d.verdict == Verdict::Timeout && !h.healthy;
        }
        match (was.0, h.healthy) {
            (false, true) => stats.add(HealthStat::Healthy as usize, 1),
            (true, false) => stats.dec(HealthStat::Healthy as usize),
            _ => {}
        }
        let cfg = h.cfg.clone();
        let traffic = snap
            .cluster(&d.key.0)
            .is_some_and(|c| c.stats.total(ClusterStat::UpstreamCxTotal as usize) > 0);
        let base = match (traffic, d.verdict == Verdict::Healthy, pending_change) {
            (false, true, _) => cfg.no_traffic_healthy_interval,
            (false, false, _) => cfg.no_traffic_interval,
            (true, true, true) => cfg.healthy_edge_interval,
            (true, true, false) => cfg.interval,
            (true, false, true) => cfg.unhealthy_edge_interval,
            (true, false, false) => cfg.unhealthy_interval,
        };
        let next = now + probe::with_jitter(&cfg, base);
        self.due
            .push(std::cmp::Reverse((next, d.generation, d.key.clone())));
        let state = (h.healthy, h.pending, h.timed_out, h.immediate);
        if was != state {
            // The cores hear only when who is out changes; /clusters, of any flag.
            self.publish(&d.key.0, was.0 != state.0 || was.1 != state.1);
        }
    }

    /// Tells `/clusters` (and, with `cores`, every core) which hosts of `cluster` are out.
    fn publish(&self, cluster: &Arc<str>, cores: bool) {
        let mut out: Vec<SocketAddr> = Vec::new();
        let mut view = View::default();
        for ((c, a), h) in self.hosts.iter() {
            if c != cluster {
                continue;
            }
            if !h.healthy {
                out.push(*a);
                view.failed.insert(*a);
            }
            if h.pending {
                view.pending.insert(*a);
            }
            if h.timed_out {
                view.timed_out.insert(*a);
            }
            if h.immediate {
                view.immediate.insert(*a);
            }
        }
        out.sort_unstable();
        let hosts: Arc<[SocketAddr]> = out.into();
        for k in (0..self.cores).filter(|_| cores) {
            (self.send)(
                k,
                ToCore::Unhealthy {
                    cluster: cluster.clone(),
                    hosts: hosts.clone(),
                },
            );
        }
        let mut all = HashMap::clone(&self.views.load());
        if view.failed.is_empty()
            && view.pending.is_empty()
            && view.timed_out.is_empty()
            && view.immediate.is_empty()
        {
            all.remove(cluster);
        } else {
            all.insert(cluster.clone(), Arc::new(view));
        }
        self.views.store(Arc::new(all));
    }
}

/// The checker's loop on the control thread: follows the configuration, starts the checks
/// that are due, takes their results.
pub async fn run(shared: crate::model::SharedSnapshot, mut c: Checker) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // A publish wakes it: new hosts must be marked pending before they take traffic.
    let mut published = crate::wake::published();
    loop {
        let snap = shared.load_full();
        let now = Instant::now();
        c.sync(&snap, now);
        let next = c.start_due(now, &tx);
        tokio::select! {
            Some(d) = rx.recv() => c.done(d, &snap, Instant::now()),
            _ = published.changed() => {}
            _ = tokio::time::sleep_until(next.into()) => {}
        }
    }
}
