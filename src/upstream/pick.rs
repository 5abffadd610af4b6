//! Choosing an endpoint: the cluster's load-balancing policy over the endpoints that may
//! take traffic — healthy by EDS and not ejected by outlier detection, or, in Envoy's panic
//! mode (fewer healthy than `healthy_panic_threshold` percent), all of them.

use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::{hash, Upstreams};
use crate::model::{Cluster, Endpoint, LbPolicy};
use crate::stats::ClusterStat;

/// Per-cluster load-balancer state on one core.
#[derive(Default)]
pub(super) struct LbState {
    /// Per priority: the round-robin position and the consistent-hash table.
    levels: Vec<Level>,
    /// Requests in flight per endpoint (least request).
    pub(super) active: FxHashMap<SocketAddr, u32>,
}

#[derive(Default)]
struct Level {
    next: u64,
    /// The ring or Maglev table for the current endpoints, and the ejection epoch and panic
    /// state it was built for.
    table: Option<(hash::HashTable, u64, bool)>,
}

/// One priority's endpoints (a run of the sorted list) and how many may take traffic.
#[derive(Clone, Copy)]
pub(super) struct Run {
    start: usize,
    end: usize,
    healthy: usize,
}

/// Envoy's panic test for one priority: the priority's availability (its healthy share
/// times the overprovisioning factor) is not whole and its healthy share is below the
/// threshold.
fn in_panic(healthy: usize, total: usize, threshold: f64, whole: bool) -> bool {
    let share = match total {
        0 => 0.0,
        t => (healthy as f64) * 100.0 / (t as f64),
    };
    !whole && share < threshold
}

/// Envoy's priority choice (`recalculatePerPriorityState`, `choosePriority`): each
/// priority's health is min(100, overprovisioning × healthy / hosts); the load goes to the
/// priorities in order, each taking its health's share of the total availability; when
/// every priority is in panic, by host count. `draw` (the request's hash, or a random
/// number) picks within the 100 shares. Returns the chosen run and whether it is in panic.
fn choose_priority(runs: &[Run], opf: u32, threshold: f64, draw: u64) -> Option<(Run, bool)> {
    let hosts = |r: &Run| (r.end - r.start) as u64;
    let health = |r: &Run| match hosts(r) {
        0 => 0,
        n => (u64::from(opf) * r.healthy as u64 / n).min(100),
    };
    let nta = runs.iter().map(health).sum::<u64>().min(100);
    let panic = |r: &Run| in_panic(r.healthy, r.end - r.start, threshold, nta == 100);
    let total_panic = runs.iter().all(panic);
    let total = runs.last()?.end as u64;
    if total_panic && total == 0 || !total_panic && nta == 0 {
        // Nothing to pick (no hosts; or none available and panic mode off).
        return None;
    }
    // Each priority's load (Envoy's distributeLoad, or by host count in total panic),
    // taken in order until 100 is spent; the rounding left over goes to the first priority
    // that has any.
    let share = |r: &Run| match total_panic {
        true => 100 * hosts(r) / total,
        false => health(r) * 100 / nta,
    };
    let first = match total_panic {
        true => runs.iter().position(|r| hosts(r) > 0)?,
        false => runs.iter().position(|r| health(r) > 0)?,
    };
    let mut left = 100u64;
    for r in runs {
        left -= share(r).min(left);
    }
    let rest = left;
    let h = draw % 100 + 1;
    let (mut acc, mut left) = (0, 100u64);
    for (i, r) in runs.iter().enumerate() {
        let l = share(r).min(left);
        left -= l;
        acc += l + if i == first { rest } else { 0 };
        if h <= acc {
            return Some((*r, total_panic || panic(r)));
        }
    }
    None
}

impl Upstreams {
    /// Picks an endpoint of `cluster` by its load-balancing policy (a consistent-hash
    /// policy picks at random, as for a request without a key).
    pub fn pick<'c>(&mut self, cluster: &'c Cluster) -> Option<&'c Endpoint> {
        self.pick_hashed(cluster, None)
    }

    /// As [`Upstreams::pick`], with the request's key for a consistent-hash policy.
    pub fn pick_hashed<'c>(
        &mut self,
        cluster: &'c Cluster,
        key: Option<u64>,
    ) -> Option<&'c Endpoint> {
        let eps = &cluster.endpoints;
        let ejected = match cluster.outlier {
            Some(_) => self.outlier.ejected(&cluster.name),
            None => None,
        };
        let (out, epoch) = match ejected {
            Some(e) => (&*e.hosts, e.epoch),
            None => (&[][..], 0),
        };
        // The ejected hosts come sorted.
        let up = |e: &Endpoint| e.healthy && out.binary_search(&e.address).is_err();
        let opf = eps.first().map_or(0, |e| e.overprovisioning);
        let threshold = cluster.panic_threshold;
        // One priority (the common case): no runs to find.
        let (run, panic) = if eps.last().is_none_or(|e| e.priority == 0) {
            let healthy = eps.iter().filter(|e| up(e)).count();
            let whole =
                !eps.is_empty() && u64::from(opf) * healthy as u64 >= 100 * eps.len() as u64;
            let run = Run {
                start: 0,
                end: eps.len(),
                healthy,
            };
            (run, in_panic(healthy, eps.len(), threshold, whole))
        } else {
            self.runs.clear();
            let mut i = 0;
            for p in 0..=eps[eps.len() - 1].priority {
                let start = i;
                while i < eps.len() && eps[i].priority == p {
                    i += 1;
                }
                let healthy = eps[start..i].iter().filter(|e| up(e)).count();
                self.runs.push(Run {
                    start,
                    end: i,
                    healthy,
                });
            }
            // The request's hash picks the priority for the consistent-hash policies only;
            // the others draw at random, as Envoy's do.
            let hashed = matches!(
                cluster.lb,
                LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
            );
            let draw = key.filter(|_| hashed).unwrap_or_else(|| fastrand::u64(..));
            choose_priority(&self.runs, opf, threshold, draw)?
        };
        if panic {
            cluster
                .stats
                .core(self.core)
                .inc(ClusterStat::LbHealthyPanic as usize);
        }
        let slice = &eps[run.start..run.end];
        let usable = |e: &Endpoint| panic || up(e);
        let n = if panic { slice.len() } else { run.healthy };
        if n == 0 {
            return None;
        }
        let priority = slice[0].priority;
        if !self.lb.contains_key(&*cluster.name) {
            self.lb.insert(cluster.name.clone(), LbState::default());
        }
        let state = self.lb.get_mut(&*cluster.name).expect("inserted above");
        if state.levels.len() <= priority as usize {
            state
                .levels
                .resize_with(priority as usize + 1, Level::default);
        }
        let (level, active) = (&mut state.levels[priority as usize], &state.active);
        let nth = |i: usize| slice.iter().filter(|e| usable(e)).nth(i);
        match cluster.lb {
            LbPolicy::RoundRobin => {
                let total: u64 = slice
                    .iter()
                    .filter(|e| usable(e))
                    .map(|e| u64::from(e.weight))
                    .sum();
                let all_equal = slice
                    .iter()
                    .filter(|e| usable(e))
                    .all(|e| e.weight == slice[0].weight);
                level.next = level.next.wrapping_add(1);
                if all_equal {
                    return nth((level.next % n as u64) as usize);
                }
                let mut x = level.next % total.max(1);
                for e in slice.iter().filter(|e| usable(e)) {
                    if x < u64::from(e.weight) {
                        return Some(e);
                    }
                    x -= u64::from(e.weight);
                }
                None
            }
            LbPolicy::Random => nth(fastrand::usize(..n)),
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                let stale = level.table.as_ref().is_none_or(|(t, e, p)| {
                    !Arc::ptr_eq(&t.endpoints, &cluster.endpoints) || *e != epoch || *p != panic
                });
                if stale {
                    let t = hash::HashTable::build(cluster.lb, &cluster.endpoints, |e| {
                        e.priority == priority && usable(e)
                    });
                    level.table = Some((t, epoch, panic));
                }
                let (table, _, _) = level.table.as_ref()?;
                // No key: a random one, as Envoy does.
                let i = table.choose(key.unwrap_or_else(|| fastrand::u64(..)))?;
                eps.get(i)
            }
            LbPolicy::LeastRequest { choice_count } => {
                let mut best: Option<(&Endpoint, u32)> = None;
                for _ in 0..choice_count {
                    let e = nth(fastrand::usize(..n))?;
                    let load = active.get(&e.address).copied().unwrap_or(0);
                    // Weighted: compare load scaled by the other's weight.
                    if best.is_none_or(|(b, bl)| {
                        u64::from(load) * u64::from(b.weight) < u64::from(bl) * u64::from(e.weight)
                    }) {
                        best = Some((e, load));
                    }
                }
                best.map(|(e, _)| e)
            }
        }
    }
}
