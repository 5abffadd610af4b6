//! One core's share of outlier detection (see [`crate::outlier`]): what its attempts to
//! each host came to, and the hosts the control thread ejected.

use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::model::outlier::{Kind, Outcome, OutlierConfig};
use crate::outlier::{Event, ToCore};

/// One host's counts on this core.
#[derive(Default)]
struct Track {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// Since the last sweep: external successes and total, local-origin successes and total.
    volume: [u64; 4],
}

/// The ejected hosts of one cluster, as the control thread last said.
pub struct Ejected {
    pub hosts: Arc<[SocketAddr]>,
    /// Bumped on every change (consistent-hash tables are rebuilt when it moves).
    pub epoch: u64,
}

#[derive(Default)]
pub struct CoreOutlier {
    hosts: FxHashMap<Arc<str>, FxHashMap<SocketAddr, Track>>,
    ejected: FxHashMap<Arc<str>, Ejected>,
    /// The hosts failing (or not yet past) their active health check, per cluster.
    unhealthy: FxHashMap<Arc<str>, Arc<[SocketAddr]>>,
    /// Both sets, merged: the hosts the load balancer leaves out.
    out: FxHashMap<Arc<str>, Ejected>,
    epoch: u64,
}

impl CoreOutlier {
    /// The hosts of `cluster` that take no traffic (ejected by outlier detection, or
    /// failing their active health check), if any.
    pub fn ejected(&self, cluster: &str) -> Option<&Ejected> {
        self.out.get(cluster)
    }

    /// Rebuilds `cluster`'s merged set after either part changed.
    fn merge(&mut self, cluster: Arc<str>) {
        self.epoch += 1;
        let a = self
            .ejected
            .get(&cluster)
            .map(|e| &e.hosts[..])
            .unwrap_or(&[]);
        let b = self.unhealthy.get(&cluster).map(|h| &h[..]).unwrap_or(&[]);
        if a.is_empty() && b.is_empty() {
            self.out.remove(&cluster);
            return;
        }
        let mut all: Vec<SocketAddr> = a.iter().chain(b).copied().collect();
        all.sort_unstable();
        all.dedup();
        let epoch = self.epoch;
        self.out.insert(
            cluster,
            Ejected {
                hosts: all.into(),
                epoch,
            },
        );
    }

    /// Records what an attempt to `addr` came to, as Envoy's detector counts it, and tells
    /// the control thread when a run of failures reaches its threshold.
    pub fn put(&mut self, cluster: &Arc<str>, cfg: &OutlierConfig, addr: SocketAddr, o: Outcome) {
        let hosts = match self.hosts.get_mut(&**cluster) {
            Some(h) => h,
            None => self.hosts.entry(cluster.clone()).or_default(),
        };
        let t = hosts.entry(addr).or_default();
        let mut fired = Vec::new();
        if cfg.split_local {
            match o {
                Outcome::Status(code) => {
                    // The connection was made (Envoy's LocalOriginConnectSuccess), then
                    // the host answered.
                    local(t, cfg, true, &mut fired);
                    status(t, cfg, code, &mut fired);
                }
                Outcome::Connected => local(t, cfg, true, &mut fired),
                Outcome::ConnectFailed | Outcome::ConnectTimeout => {
                    local(t, cfg, false, &mut fired)
                }
                // Made, then lost: a success and a failure, as Envoy's router reports them
                // (so such failures never run past one).
                Outcome::Reset | Outcome::Timeout => {
                    local(t, cfg, true, &mut fired);
                    local(t, cfg, false, &mut fired);
                }
            }
        } else {
            let code = match o {
                Outcome::Status(code) => code,
                Outcome::Connected => 200,
                Outcome::ConnectFailed | Outcome::Reset => 503,
                Outcome::ConnectTimeout | Outcome::Timeout => 504,
            };
            status(t, cfg, code, &mut fired);
        }
        // A host this core knows to be out (panic mode still sends it traffic) is not
        // reported again, as Envoy does not detect an ejected host.
        let out = self
            .ejected
            .get(&**cluster)
            .is_some_and(|e| e.hosts.binary_search(&addr).is_ok());
        if out {
            return;
        }
        for kind in fired {
            crate::outlier::send(Event::Consecutive {
                cluster: cluster.clone(),
                addr,
                kind,
            });
        }
    }

    /// A command from the control thread; `core` answers a sweep.
    pub fn apply(&mut self, cmd: ToCore, core: usize) {
        match cmd {
            ToCore::Ejected { cluster, hosts } => {
                // A host let back starts with clean runs, as in Envoy.
                if let (Some(old), Some(tracks)) =
                    (self.ejected.get(&cluster), self.hosts.get_mut(&cluster))
                {
                    for a in old.hosts.iter().filter(|a| !hosts.contains(a)) {
                        if let Some(t) = tracks.get_mut(a) {
                            t.consecutive_5xx = 0;
                            t.consecutive_gateway = 0;
                            t.consecutive_local = 0;
                        }
                    }
                }
                if hosts.is_empty() {
                    self.ejected.remove(&cluster);
                } else {
                    let epoch = self.epoch;
                    self.ejected
                        .insert(cluster.clone(), Ejected { hosts, epoch });
                }
                self.merge(cluster);
            }
            ToCore::Unhealthy { cluster, hosts } => {
                if hosts.is_empty() {
                    self.unhealthy.remove(&cluster);
                } else {
                    self.unhealthy.insert(cluster.clone(), hosts);
                }
                self.merge(cluster);
            }
            ToCore::Sweep { id, clusters } => {
                let mut out = Vec::new();
                for c in clusters.iter() {
                    if let Some(tracks) = self.hosts.get_mut(c) {
                        for (a, t) in tracks.iter_mut() {
                            if t.volume != [0; 4] {
                                out.push((c.clone(), *a, std::mem::take(&mut t.volume)));
                            }
                        }
                    }
                }
                crate::outlier::send(Event::Volumes {
                    id,
                    core,
                    hosts: out,
                });
            }
        }
    }

    /// Forgets what the configuration no longer has (called when a snapshot loads): clusters
    /// without a detector, and hosts gone from their cluster (EDS churn would otherwise grow
    /// the counts for ever).
    pub fn prune(&mut self, snap: &crate::model::Snapshot) {
        if self.hosts.is_empty() {
            return;
        }
        self.hosts.retain(|name, tracks| {
            let Some(c) = snap.cluster_index.get(name).map(|&i| &snap.clusters[i]) else {
                return false;
            };
            if c.outlier.is_none() {
                return false;
            }
            let live: rustc_hash::FxHashSet<SocketAddr> =
                c.endpoints.iter().map(|e| e.address).collect();
            tracks.retain(|a, _| live.contains(a));
            true
        });
    }
}

/// Envoy's `putHttpResponseCode`: a 5xx extends the 5xx run (502–504 the gateway run too;
/// any other 5xx ends the gateway run); anything else ends both and counts a success.
fn status(t: &mut Track, cfg: &OutlierConfig, code: u16, fired: &mut Vec<Kind>) {
    t.volume[1] += 1;
    if (500..600).contains(&code) {
        if (502..=504).contains(&code) {
            t.consecutive_gateway += 1;
            if t.consecutive_gateway == cfg.consecutive_gateway {
                t.consecutive_gateway = 0;
                fired.push(Kind::ConsecutiveGateway);
            }
        } else {
            t.consecutive_gateway = 0;
        }
        t.consecutive_5xx += 1;
        if t.consecutive_5xx == cfg.consecutive_5xx {
            t.consecutive_5xx = 0;
            fired.push(Kind::Consecutive5xx);
        }
    } else {
        t.volume[0] += 1;
        t.consecutive_5xx = 0;
        t.consecutive_gateway = 0;
    }
}

/// A local-origin result (split mode): a connection made, or one that failed or timed out.
fn local(t: &mut Track, cfg: &OutlierConfig, ok: bool, fired: &mut Vec<Kind>) {
    t.volume[3] += 1;
    if ok {
        t.volume[2] += 1;
        t.consecutive_local = 0;
    } else {
        t.consecutive_local += 1;
        if t.consecutive_local == cfg.consecutive_local {
            t.consecutive_local = 0;
            fired.push(Kind::ConsecutiveLocal);
        }
    }
}
