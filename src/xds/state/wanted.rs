//! Which EDS, RDS and SDS resources the held listeners and clusters name, and dropping
//! the ones nothing names any more.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;

impl Resources {
    /// The names a type's subscription should hold now: EDS service names of EDS
    /// clusters, RDS names of connection managers (wildcard types: empty).
    pub fn wanted(&self, kind: Kind, statics: &Static) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        match kind {
            Kind::Endpoint => {
                let all = statics
                    .clusters
                    .iter()
                    .chain(self.clusters.values().map(|h| &h.model));
                for c in all {
                    if let Some(s) = &c.eds_service {
                        out.insert(s.to_string());
                    }
                }
            }
            Kind::Route => {
                let all = statics
                    .listeners
                    .iter()
                    .chain(self.listeners.values().map(|h| &h.model))
                    .chain(self.active.values().map(|h| &h.model));
                for hcm in all.flat_map(|l| l.hcms()) {
                    if let RouteSource::Rds(n) = &hcm.routes {
                        out.insert(n.to_string());
                    }
                }
            }
            Kind::Secret => return self.wanted_secrets(&SdsSource::Ads),
            Kind::Cluster | Kind::Listener => {}
        }
        out
    }

    /// Drops EDS/RDS/SDS resources nothing refers to any more (their subscription ended),
    /// after an update of `kind` (`received`: the load assignments an EDS update brought).
    /// Only what the update can have changed is looked at: which assignments are wanted
    /// changes only with the clusters, and an EDS response can only bring unwanted ones;
    /// routes and secrets are named by listeners and clusters. Listing every wanted name
    /// (10,000 strings) for each one-endpoint change took milliseconds at 10,000 services.
    pub fn prune(&mut self, statics: &Static, kind: Kind, received: &BTreeSet<String>) {
        self.changing();
        let eds_services = || {
            statics
                .clusters
                .iter()
                .chain(self.clusters.values().map(|h| &h.model))
                .filter_map(|c| c.eds_service.as_deref())
        };
        match kind {
            Kind::Endpoint => {
                let unwanted: Vec<&String> = if received.len() <= 8 {
                    received
                        .iter()
                        .filter(|n| !eds_services().any(|s| s == n.as_str()))
                        .collect()
                } else {
                    let wanted: rustc_hash::FxHashSet<&str> = eds_services().collect();
                    received
                        .iter()
                        .filter(|n| !wanted.contains(n.as_str()))
                        .collect()
                };
                if !unwanted.is_empty() {
                    let map = Arc::make_mut(&mut self.endpoints);
                    for n in unwanted {
                        map.remove(n.as_str());
                    }
                }
                return;
            }
            Kind::Cluster => {
                let wanted: rustc_hash::FxHashSet<&str> = eds_services().collect();
                retain_in(&mut self.endpoints, |n| wanted.contains(&**n));
            }
            _ => {}
        }
        let rds = self.wanted(Kind::Route, statics);
        retain_in(&mut self.routes, |n| rds.contains(&**n));
        if kind != Kind::Route {
            let sds = self.all_secret_refs();
            retain_in(&mut self.secrets, |n| sds.contains(n));
        }
    }
}
