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
    next: u64,
    /// Requests in flight per endpoint (least request).
    pub(super) active: FxHashMap<SocketAddr, u32>,
    /// The ring or Maglev table of a consistent-hash cluster, for its current endpoints,
    /// and the ejection epoch and panic state it was built for.
    table: Option<(hash::HashTable, u64, bool)>,
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
        let up = |e: &Endpoint| e.healthy && !out.contains(&e.address);
        let healthy = eps.iter().filter(|e| up(e)).count();
        // Envoy's panic mode: too few healthy endpoints, and all of them take traffic.
        let panic = (healthy as f64) * 100.0 < cluster.panic_threshold * eps.len() as f64;
        if panic {
            cluster
                .stats
                .core(self.core)
                .inc(ClusterStat::LbHealthyPanic as usize);
        }
        let usable = |e: &Endpoint| panic || up(e);
        let n = if panic { eps.len() } else { healthy };
        if n == 0 {
            return None;
        }
        if !self.lb.contains_key(&*cluster.name) {
            self.lb.insert(cluster.name.clone(), LbState::default());
        }
        let state = self.lb.get_mut(&*cluster.name).expect("inserted above");
        let nth = |i: usize| eps.iter().filter(|e| usable(e)).nth(i);
        match cluster.lb {
            LbPolicy::RoundRobin => {
                let total: u64 = eps
                    .iter()
                    .filter(|e| usable(e))
                    .map(|e| u64::from(e.weight))
                    .sum();
                let all_equal = eps
                    .iter()
                    .filter(|e| usable(e))
                    .all(|e| e.weight == eps[0].weight);
                state.next = state.next.wrapping_add(1);
                if all_equal {
                    return nth((state.next % n as u64) as usize);
                }
                let mut x = state.next % total.max(1);
                for e in eps.iter().filter(|e| usable(e)) {
                    if x < u64::from(e.weight) {
                        return Some(e);
                    }
                    x -= u64::from(e.weight);
                }
                None
            }
            LbPolicy::Random => nth(fastrand::usize(..n)),
            LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
                let stale = state.table.as_ref().is_none_or(|(t, e, p)| {
                    !Arc::ptr_eq(&t.endpoints, &cluster.endpoints) || *e != epoch || *p != panic
                });
                if stale {
                    let t = hash::HashTable::build(cluster.lb, &cluster.endpoints, usable);
                    state.table = Some((t, epoch, panic));
                }
                let (table, _, _) = state.table.as_ref()?;
                // No key: a random one, as Envoy does.
                let i = table.choose(key.unwrap_or_else(|| fastrand::u64(..)))?;
                eps.get(i)
            }
            LbPolicy::LeastRequest { choice_count } => {
                let mut best: Option<(&Endpoint, u32)> = None;
                for _ in 0..choice_count {
                    let e = nth(fastrand::usize(..n))?;
                    let load = state.active.get(&e.address).copied().unwrap_or(0);
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
