//! Choosing an endpoint: the cluster's load-balancing policy over the endpoints that may
//! take traffic — healthy by EDS and not ejected by outlier detection, or, in Envoy's panic
//! mode (fewer healthy than `healthy_panic_threshold` percent), all of them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;

use super::{hash, Upstreams};
use crate::model::{Cluster, Endpoint, LbPolicy, SlowStart};
use crate::stats::ClusterStat;

/// Per-cluster load-balancer state on one core.
#[derive(Default)]
pub(super) struct LbState {
    /// Per priority: the round-robin position and the consistent-hash table.
    levels: Vec<Level>,
    /// Requests in flight per endpoint (least request).
    pub(super) active: FxHashMap<SocketAddr, u32>,
    /// Slow start: when each endpoint was first seen, for the endpoint list `seen_for`
    /// (its address), and the latest of those times.
    seen: FxHashMap<SocketAddr, Instant>,
    seen_for: usize,
    latest: Option<Instant>,
}

#[derive(Default)]
struct Level {
    next: u64,
    /// The ring or Maglev table for the current endpoints, and the ejection epoch and panic
    /// state it was built for.
    table: Option<(hash::HashTable, u64, bool)>,
    /// Locality weighting, per locality (`group`): the smooth weighted round robin's
    /// current weight and the round-robin position among its endpoints.
    localities: Vec<(u32, f64, u64)>,
    /// Slow start's round robin: each endpoint's smooth weighted round-robin current
    /// weight (deterministic, as Envoy's EDF scheduler is).
    current: FxHashMap<SocketAddr, f64>,
}

/// One locality's endpoints within a priority's run, and its effective weight.
pub(super) struct Group {
    start: usize,
    end: usize,
    healthy: usize,
    weight: f64,
}

/// Picks a locality of `slice` by smooth weighted round robin over each locality's
/// weight times its availability (min(1, overprovisioning × healthy / hosts)), as Envoy's
/// locality scheduler weighs them. `None`: no locality has weight (every host is then a
/// candidate, as in Envoy). Returns the locality's range in `slice`, its slot in
/// `level.localities` and its healthy endpoints.
fn choose_locality(
    level: &mut Level,
    slice: &[Endpoint],
    up: impl Fn(&Endpoint) -> bool,
    groups: &mut Vec<Group>,
) -> Option<(usize, usize, usize, usize)> {
    groups.clear();
    let mut i = 0;
    while i < slice.len() {
        let (start, g) = (i, slice[i].group);
        while i < slice.len() && slice[i].group == g {
            i += 1;
        }
        let healthy = slice[start..i].iter().filter(|e| up(e)).count();
        let opf = f64::from(slice[start].overprovisioning) / 100.0;
        let availability = (opf * healthy as f64 / (i - start) as f64).min(1.0);
        let weight = f64::from(slice[start].locality_weight) * availability;
        groups.push(Group {
            start,
            end: i,
            healthy,
            weight,
        });
    }
    let total: f64 = groups.iter().map(|g| g.weight).sum();
    if total <= 0.0 {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for (k, g) in groups.iter().enumerate() {
        if g.weight <= 0.0 {
            continue;
        }
        let id = slice[g.start].group;
        let slot = match level.localities.iter().position(|l| l.0 == id) {
            Some(p) => p,
            None => {
                level.localities.push((id, 0.0, 0));
                level.localities.len() - 1
            }
        };
        level.localities[slot].1 += g.weight;
        let cur = level.localities[slot].1;
        if best.is_none_or(|(_, b)| cur > b) {
            best = Some((k, cur));
        }
    }
    let (k, _) = best?;
    let g = &groups[k];
    let id = slice[g.start].group;
    let slot = level.localities.iter().position(|l| l.0 == id)?;
    level.localities[slot].1 -= total;
    Some((g.start, g.end, slot, g.healthy))
}

/// Smooth weighted round robin among the usable endpoints of `slice` with weights that
/// may change between picks (slow start's growing factors): every endpoint's current
/// weight grows by its weight, the largest is chosen and gives back the total. Equal
/// weights take turns exactly.
fn smooth_weighted<'a>(
    current: &mut FxHashMap<SocketAddr, f64>,
    slice: &'a [Endpoint],
    usable: impl Fn(&Endpoint) -> bool,
    weight: impl Fn(&Endpoint) -> f64,
) -> Option<&'a Endpoint> {
    let mut total = 0.0;
    let mut best: Option<(&Endpoint, f64)> = None;
    for e in slice.iter().filter(|e| usable(e)) {
        let w = weight(e);
        total += w;
        let cur = current.entry(e.address).or_insert(0.0);
        *cur += w;
        if best.is_none_or(|(_, b)| *cur > b) {
            best = Some((e, *cur));
        }
    }
    let (e, _) = best?;
    if let Some(cur) = current.get_mut(&e.address) {
        *cur -= total;
    }
    Some(e)
}

/// A weighted random choice among the usable endpoints of `slice`.
fn weighted_random(
    slice: &[Endpoint],
    usable: impl Fn(&Endpoint) -> bool,
    weight: impl Fn(&Endpoint) -> f64,
) -> Option<&Endpoint> {
    let total: f64 = slice.iter().filter(|e| usable(e)).map(&weight).sum();
    let mut x = fastrand::f64() * total;
    let mut last = None;
    for e in slice.iter().filter(|e| usable(e)) {
        let w = weight(e);
        if x < w {
            return Some(e);
        }
        x -= w;
        last = Some(e);
    }
    last
}

/// Envoy's slow-start factor for an endpoint seen `age` ago: (age / window)^(1/aggression),
/// at least `min_weight`; 1 once the window has passed.
fn slow_factor(s: &SlowStart, age: std::time::Duration) -> f64 {
    if age >= s.window {
        return 1.0;
    }
    let t = age.as_millis().max(1) as f64 / s.window.as_millis().max(1) as f64;
    let f = if s.aggression == 1.0 {
        t
    } else {
        t.powf(1.0 / s.aggression)
    };
    f.max(s.min_weight)
}

impl LbState {
    /// Slow start: notes the endpoints first seen now; whether any is still in its window.
    fn slow_start(&mut self, eps: &Arc<[Endpoint]>, s: &SlowStart, now: Instant) -> bool {
        let id = Arc::as_ptr(eps) as *const u8 as usize;
        if self.seen_for != id {
            self.seen_for = id;
            self.seen.retain(|a, _| eps.iter().any(|e| e.address == *a));
            for level in &mut self.levels {
                level
                    .current
                    .retain(|a, _| eps.iter().any(|e| e.address == *a));
            }
            for e in eps.iter().filter(|e| e.healthy) {
                let at = *self.seen.entry(e.address).or_insert(now);
                if self.latest.is_none_or(|l| at > l) {
                    self.latest = Some(at);
                }
            }
        }
        self.latest
            .is_some_and(|l| now.saturating_duration_since(l) <= s.window)
    }
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
        let ejected = match cluster.outlier.is_some() || cluster.health.is_some() {
            true => self.outlier.ejected(&cluster.name),
            false => None,
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
        let tuning = &cluster.lb_tuning;
        // Slow start: each endpoint's weight grows over its window (Envoy weighs every
        // pick while any endpoint is in its window).
        let now = tuning.slow_start.map(|_| Instant::now());
        let slow = match (&tuning.slow_start, now) {
            (Some(s), Some(now)) if state.slow_start(&cluster.endpoints, s, now) => Some((s, now)),
            _ => None,
        };
        let seen = &state.seen;
        let factor = |e: &Endpoint| match slow {
            Some((s, now)) => seen
                .get(&e.address)
                .map_or(1.0, |at| slow_factor(s, now.saturating_duration_since(*at))),
            None => 1.0,
        };
        let (level, active) = (&mut state.levels[priority as usize], &state.active);
        // Locality weighting: a locality first (not in panic, as in Envoy), then an
        // endpoint of it.
        let (slice, n, rr) = match tuning.locality_weighted && !panic {
            true => match choose_locality(level, slice, up, &mut self.groups) {
                Some((start, end, slot, healthy)) => {
                    (&slice[start..end], healthy, &mut level.localities[slot].2)
                }
                None => (slice, n, &mut level.next),
            },
            false => (slice, n, &mut level.next),
        };
        if n == 0 {
            return None;
        }
        let nth = |i: usize| slice.iter().filter(|e| usable(e)).nth(i);
        let equal = || {
            slice
                .iter()
                .filter(|e| usable(e))
                .all(|e| e.weight == slice[0].weight)
        };
        match cluster.lb {
            LbPolicy::RoundRobin if slow.is_some() => {
                smooth_weighted(&mut level.current, slice, usable, |e| {
                    f64::from(e.weight) * factor(e)
                })
            }
            LbPolicy::RoundRobin => {
                let total: u64 = slice
                    .iter()
                    .filter(|e| usable(e))
                    .map(|e| u64::from(e.weight))
                    .sum();
                *rr = rr.wrapping_add(1);
                if equal() {
                    return nth((*rr % n as u64) as usize);
                }
                let mut x = *rr % total.max(1);
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
                let load = |e: &Endpoint| active.get(&e.address).copied().unwrap_or(0);
                if slow.is_some() || !equal() {
                    // Envoy's weights for least request: weight / (active + 1)^bias.
                    let bias = tuning.bias;
                    return weighted_random(slice, usable, |e| {
                        let a = f64::from(load(e)) + 1.0;
                        let w = match bias {
                            1.0 => f64::from(e.weight) / a,
                            0.0 => f64::from(e.weight),
                            b => f64::from(e.weight) / a.powf(b),
                        };
                        w * factor(e)
                    });
                }
                // Envoy's N choices, drawn with replacement (also when there are no more
                // hosts than choices); the first drawn keeps a tie.
                let mut best: Option<(&Endpoint, u32)> = None;
                for _ in 0..choice_count {
                    let e = nth(fastrand::usize(..n))?;
                    let l = load(e);
                    if best.is_none_or(|(_, bl)| l < bl) {
                        best = Some((e, l));
                    }
                }
                best.map(|(e, _)| e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn slow_start_factor_is_envoys() {
        let s = |aggression, min_weight| SlowStart {
            window: Duration::from_secs(10),
            aggression,
            min_weight,
        };
        let f = |s: &SlowStart, ms| slow_factor(s, Duration::from_millis(ms));
        // Linear with aggression 1, floored at min_weight, whole after the window.
        assert_eq!(f(&s(1.0, 0.1), 5_000), 0.5);
        assert_eq!(f(&s(1.0, 0.1), 200), 0.1);
        assert_eq!(f(&s(1.0, 0.0), 0), 0.0001);
        assert_eq!(f(&s(1.0, 0.1), 10_000), 1.0);
        // (t / window)^(1 / aggression).
        assert!((f(&s(2.0, 0.0), 2_500) - 0.5).abs() < 1e-9);
        assert!((f(&s(0.5, 0.0), 5_000) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn slow_start_round_robin_is_deterministic() {
        let eps: Vec<Endpoint> = (1..=3)
            .map(|p| Endpoint::at(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let mut current = FxHashMap::default();
        let mut pick = |w: &dyn Fn(u16) -> f64| {
            smooth_weighted(&mut current, &eps, |_| true, |e| w(e.address.port()))
                .map(|e| e.address.port())
        };
        // Equal factors (every host new together): exact turns.
        let turns: Vec<_> = (0..6).map(|_| pick(&|_| 0.3)).collect();
        assert_eq!(turns, [1, 2, 3, 1, 2, 3].map(Some));
        // Factors 1:2:1 share 25:50:25 exactly over a whole cycle.
        let mut n = [0; 3];
        for _ in 0..400 {
            n[pick(&|p| if p == 2 { 0.5 } else { 0.25 }).unwrap() as usize - 1] += 1;
        }
        assert_eq!(n, [100, 200, 100]);
    }
}
