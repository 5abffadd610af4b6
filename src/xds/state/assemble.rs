//! Building the snapshot the caches describe: warmed resources only, endpoints that DNS
//! resolved kept, the config dump beside it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::*;

impl Resources {
    /// Builds the snapshot the caches describe. `current` supplies endpoints that DNS
    /// resolved since (static and dynamic DNS clusters).
    pub fn assemble(&mut self, statics: &Static, current: &Snapshot) -> Snapshot {
        let touched = self.eds_touched.take();
        self.changing();
        let now = Instant::now();
        self.promote(now);
        let mut dump = DynamicDump::default();
        let key = (
            Arc::as_ptr(&self.clusters) as *const () as usize,
            Arc::as_ptr(&self.endpoints) as *const () as usize,
            Arc::as_ptr(&self.boot) as *const () as usize,
        );
        let waiting = self.clusters.values().any(|h| {
            h.fetch_timeout.is_some()
                && h.model
                    .eds_service
                    .as_ref()
                    .is_some_and(|s| !self.endpoints.contains_key(s))
        });
        let reuse = self.assembled_from == Some(key) && !waiting;
        // Only load assignments changed since the last assembly (the same clusters): the
        // current snapshot's clusters are taken and those few given their endpoints.
        let patch = match touched {
            Some(names) if !reuse && !waiting && names.len() <= 8 => {
                let same_clusters = self
                    .assembled_from
                    .is_some_and(|(c, _, b)| c == key.0 && b == key.2);
                same_clusters
                    .then(|| self.patch_endpoints(current, &names))
                    .flatten()
            }
            _ => None,
        };
        self.assembled_from = Some(key);
        let endpoints_of = |c: &Arc<Cluster>| -> Option<Arc<Cluster>> {
            match c.discovery {
                Discovery::Eds => {
                    let service = c.eds_service.as_deref().unwrap_or(&c.name);
                    self.endpoints.get(service).map(|e| {
                        if Arc::ptr_eq(&c.endpoints, &e.model) {
                            c.clone()
                        } else {
                            Arc::new(c.with_endpoints(e.model.clone()))
                        }
                    })
                }
                Discovery::StrictDns | Discovery::LogicalDns => {
                    // Keep what DNS resolved for the same hosts.
                    Some(match current.cluster(&c.name) {
                        Some(cur) if cur.dns_hosts == c.dns_hosts && !Arc::ptr_eq(cur, c) => {
                            Arc::new(c.with_endpoints(cur.endpoints.clone()))
                        }
                        _ => c.clone(),
                    })
                }
                Discovery::Static | Discovery::OriginalDst => Some(c.clone()),
            }
        };
        let (clusters, cluster_index) = if let Some((clusters, endpoints)) = patch {
            #[cfg(test)]
            {
                self.patched += 1;
            }
            dump.clusters.clone_from(&current.dynamic.clusters);
            dump.warming_clusters
                .clone_from(&current.dynamic.warming_clusters);
            dump.endpoints = endpoints;
            self.assembled_from = Some((
                Arc::as_ptr(&self.clusters) as *const () as usize,
                key.1,
                key.2,
            ));
            (clusters, current.cluster_index.clone())
        } else if reuse {
            dump.clusters.clone_from(&current.dynamic.clusters);
            dump.warming_clusters
                .clone_from(&current.dynamic.warming_clusters);
            dump.endpoints.clone_from(&current.dynamic.endpoints);
            (current.clusters.clone(), current.cluster_index.clone())
        } else {
            let mut clusters = Vec::with_capacity(statics.clusters.len() + self.clusters.len());
            for c in &statics.clusters {
                clusters.push(endpoints_of(c).unwrap_or_else(|| c.clone()));
            }
            // The bootstrap's SDS-fed clusters, once their secrets are here (the static
            // part of the config dump shows them from the bootstrap).
            for h in self.boot.values().filter(|h| !h.waiting_secret) {
                clusters.push(endpoints_of(&h.model).unwrap_or_else(|| h.model.clone()));
            }
            // An EDS cluster given its endpoints here is held so, in place of the CDS model
            // it was made from: the snapshot and the cache then share one `Cluster` (528
            // bytes, 10,000 of them at 10,000 services), and a later assembly with the same
            // endpoints takes it as it is instead of copying it again.
            let mut assembled = Vec::new();
            for (name, h) in self.clusters.iter() {
                if h.waiting_secret {
                    dump.warming_clusters.push(h.entry.clone());
                    continue;
                }
                match endpoints_of(&h.model) {
                    Some(c) => {
                        if h.model.discovery == Discovery::Eds && !Arc::ptr_eq(&c, &h.model) {
                            assembled.push((name.clone(), c.clone()));
                        }
                        clusters.push(c);
                        dump.clusters.push(h.entry.clone());
                    }
                    None if h.timed_out(now) => {
                        // Its load assignment is gone (or never came): no endpoints, not
                        // those it was last held with.
                        clusters.push(match h.model.endpoints.is_empty() {
                            true => h.model.clone(),
                            false => Arc::new(h.model.with_endpoints(Arc::new([]))),
                        });
                        dump.clusters.push(h.entry.clone());
                    }
                    None => dump.warming_clusters.push(h.entry.clone()),
                }
            }
            if !assembled.is_empty() {
                let held = Arc::make_mut(&mut self.clusters);
                for (name, c) in assembled {
                    if let Some(h) = held.get_mut(&name) {
                        h.model = c;
                    }
                }
                self.assembled_from = Some((
                    Arc::as_ptr(&self.clusters) as *const () as usize,
                    key.1,
                    key.2,
                ));
            }
            let index = clusters
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect();
            dump.endpoints = self.endpoints.values().map(|h| h.entry.clone()).collect();
            (clusters, index)
        };
        let mut listeners = if self.serving {
            statics.listeners.clone()
        } else {
            Vec::new()
        };
        for h in self.active.values() {
            if self.serving {
                listeners.push(h.model.clone());
            }
            dump.listeners.push(h.entry.clone());
        }
        for (n, h) in self.listeners.iter() {
            if !self
                .active
                .get(n)
                .is_some_and(|a| Arc::ptr_eq(&a.model, &h.model))
            {
                dump.warming_listeners.push(h.entry.clone());
            }
        }
        let mut route_configs = rustc_hash::FxHashMap::default();
        for (n, h) in self.routes.iter() {
            route_configs.insert(n.clone(), h.model.clone());
            dump.route_configs.push(h.entry.clone());
        }
        dump.secrets = self.secrets.values().map(|h| h.entry.clone()).collect();
        dump.warming_secrets = self
            .all_secret_refs()
            .into_iter()
            .filter(|n| !self.secrets.contains_key(n))
            .collect();
        dump.versions = self
            .shown
            .iter()
            .map(|(k, (v, t))| (k.type_url(), v.clone(), *t))
            .collect();
        Snapshot {
            version: current.version + 1,
            built_at: SystemTime::now(),
            virtual_listeners: crate::model::virtual_index(&listeners),
            listeners,
            clusters,
            cluster_index,
            route_configs,
            admin: statics.admin,
            bootstrap: statics.bootstrap.clone(),
            dynamic: Arc::new(dump),
            runtime: current.runtime.clone(),
            global_cx: current.global_cx.clone(),
        }
    }

    /// `current`'s clusters with the load assignments `names` applied, and the config
    /// dump's endpoint list with their entries: what a full assembly would give when only
    /// those assignments changed. `None` where one of them makes a cluster start or stop
    /// serving (it appeared or went), which a full assembly decides.
    fn patch_endpoints(
        &mut self,
        current: &Snapshot,
        names: &[Arc<str>],
    ) -> Option<(Vec<Arc<Cluster>>, Vec<DumpEntry>)> {
        let mut clusters = current.clusters.clone();
        let mut entries = current.dynamic.endpoints.clone();
        let mut held = Vec::new();
        for name in names {
            let now = self.endpoints.get(name);
            match (now, entries.binary_search_by(|e| (*e.name).cmp(name))) {
                (Some(h), Ok(i)) => entries[i] = h.entry.clone(),
                (Some(h), Err(i)) => entries.insert(i, h.entry.clone()),
                (None, Ok(i)) => {
                    entries.remove(i);
                }
                (None, Err(_)) => {}
            }
            let serves = |c: &Cluster| {
                c.discovery == Discovery::Eds
                    && c.eds_service.as_deref().unwrap_or(&c.name) == &**name
            };
            // Every CDS cluster naming it serves now (none is warming for it), and every
            // cluster naming it keeps serving (it did not go).
            let wanting = self.clusters.values().filter(|h| serves(&h.model)).count();
            let mut dynamic = 0;
            for c in clusters.iter_mut().filter(|c| serves(c)) {
                let e = now?;
                dynamic += usize::from(self.clusters.contains_key(&c.name));
                if !Arc::ptr_eq(&c.endpoints, &e.model) {
                    *c = Arc::new(c.with_endpoints(e.model.clone()));
                    held.push(c.clone());
                }
            }
            if dynamic != wanting {
                return None;
            }
        }
        // Held as assembled, as a full assembly holds them.
        if !held.is_empty() {
            let map = Arc::make_mut(&mut self.clusters);
            for c in held {
                if let Some(h) = map.get_mut(&c.name) {
                    h.model = c;
                }
            }
        }
        Some((clusters, entries))
    }

    /// Names of RDS resources whose connection managers' stat prefixes the `rds` stats
    /// go under.
    pub fn rds_stat_prefixes(&self, route: &str, statics: &Static) -> BTreeSet<String> {
        let all = statics
            .listeners
            .iter()
            .chain(self.listeners.values().map(|h| &h.model));
        let mut out = BTreeSet::new();
        for hcm in all.flat_map(|l| l.hcms()) {
            if matches!(&hcm.routes, RouteSource::Rds(n) if **n == *route) {
                out.insert(hcm.stat_prefix.clone());
            }
        }
        out
    }
}
