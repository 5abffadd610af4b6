//! SDS in the caches: which secrets the listeners and clusters name (and where from), and
//! what a new secret changes. A listener or cluster is converted with the secrets known at
//! the time; when one of them arrives or rotates, every resource naming it is converted
//! again from what was received, so the next snapshot carries new rustls configs. The
//! cores pick them up for new handshakes while established connections keep their own.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;

use super::{Held, Rejection, Resources, SdsSource};
use crate::model::convert::{self, Ctx, SecretMap};
use crate::proto::envoy::config::cluster::v3::Cluster as PbCluster;
use crate::proto::envoy::config::listener::v3::Listener as PbListener;
use crate::stats::Store;

impl Resources {
    /// The secrets known now, by name, as conversion reads them.
    pub(super) fn secret_map(&self) -> SecretMap {
        self.secrets
            .iter()
            .map(|(n, h)| (n.clone(), h.model.clone()))
            .collect()
    }

    /// Every secret name a cached listener or cluster refers to, from any source.
    pub(super) fn all_secret_refs(&self) -> BTreeSet<Arc<str>> {
        self.refs().map(|(n, _)| n.clone()).collect()
    }

    fn refs(&self) -> impl Iterator<Item = &(Arc<str>, SdsSource)> {
        let c = self.clusters.values().flat_map(|h| h.secret_refs.iter());
        let l = self.listeners.values().flat_map(|h| h.secret_refs.iter());
        let a = self.active.values().flat_map(|h| h.secret_refs.iter());
        c.chain(l).chain(a)
    }

    /// The secret names to subscribe to from `source`.
    pub fn wanted_secrets(&self, source: &SdsSource) -> BTreeSet<String> {
        self.refs()
            .filter(|(_, s)| s == source)
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// The static clusters SDS streams of their own go to (Istio: `sds-grpc`).
    pub fn sds_clusters(&self) -> BTreeSet<Arc<str>> {
        self.refs()
            .filter_map(|(_, s)| match s {
                SdsSource::Grpc(c) => Some(c.clone()),
                SdsSource::Ads | SdsSource::File(_) => None,
            })
            .collect()
    }

    /// The SDS files the cached listeners and clusters read.
    pub fn sds_files(&self) -> BTreeSet<std::path::PathBuf> {
        self.refs()
            .filter_map(|(_, s)| match s {
                SdsSource::File(f) => Some(std::path::PathBuf::from(&**f)),
                _ => None,
            })
            .collect()
    }

    /// Converts again every cluster and listener with a secret reference `changed`
    /// accepts, with the secrets (and SDS files) as they are now. Any failure rejects the
    /// whole update.
    pub fn reconvert(
        &mut self,
        changed: impl Fn(&(Arc<str>, SdsSource)) -> bool,
        stats: &Store,
    ) -> Result<Vec<String>, Rejection> {
        let mut ctx = Ctx::dynamic(stats);
        ctx.secrets = Arc::new(self.secret_map());
        ctx.sds_files = Some(crate::config::read_sds_file);
        let uses = |h: &[(Arc<str>, SdsSource)]| h.iter().any(&changed);
        let clusters: Vec<Arc<str>> = self
            .clusters
            .iter()
            .filter(|(_, h)| uses(&h.secret_refs))
            .map(|(n, _)| n.clone())
            .collect();
        for name in clusters {
            let old = &self.clusters[&name];
            let pb = PbCluster::decode(old.entry.resource.value.as_slice())
                .map_err(|e| format!("cluster '{name}': {e}"))?;
            let model = convert::cluster_resource(&pb, &mut ctx).map_err(|e| e.to_string())?;
            let new = again(old, Arc::new(model), &mut ctx);
            Arc::make_mut(&mut self.clusters).insert(name, new);
        }
        let listeners: Vec<Arc<str>> = self
            .listeners
            .iter()
            .filter(|(_, h)| uses(&h.secret_refs))
            .map(|(n, _)| n.clone())
            .collect();
        for name in listeners {
            let old = &self.listeners[&name];
            let pb = PbListener::decode(old.entry.resource.value.as_slice())
                .map_err(|e| format!("listener '{name}': {e}"))?;
            let model = convert::listener_resource(&pb, &mut ctx).map_err(|e| e.to_string())?;
            let new = again(old, Arc::new(model), &mut ctx);
            Arc::make_mut(&mut self.listeners).insert(name, new);
        }
        Ok(ctx.ignored)
    }
}

/// `old` with a model converted again and the secret references that conversion found.
fn again<M>(old: &Held<M>, model: M, ctx: &mut Ctx<'_>) -> Held<M> {
    Held::new(old.entry.clone(), model, old.since, old.fetch_timeout, ctx)
}
