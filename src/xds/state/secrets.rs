//! SDS in the caches: which secrets the listeners and clusters name (and where from), and
//! what a new secret changes. A listener or cluster is converted with the secrets known at
//! the time; when one of them arrives or rotates, every resource naming it is converted
//! again from what was received, so the next snapshot carries new rustls configs. The
//! cores pick them up for new handshakes while established connections keep their own.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message;

use super::{Held, Map, Rejection, Resources, SdsSource};
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
        let b = self.boot.values().flat_map(|h| h.secret_refs.iter());
        c.chain(l).chain(a).chain(b)
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
        self.changing();
        self.eds_touched = None;
        let mut ctx = Ctx::dynamic(stats);
        ctx.internal_listeners = self.internal_listeners;
        ctx.secrets = Arc::new(self.secret_map());
        ctx.sds_files = Some(crate::config::read_sds_file);
        let uses = |h: &Held<_>| h.secret_refs.iter().any(&changed);
        reconvert_in(&mut self.clusters, &uses, &mut ctx, |bytes, ctx| {
            let pb = PbCluster::decode(bytes).map_err(|e| e.to_string())?;
            convert::cluster_resource(&pb, ctx).map_err(|e| e.to_string())
        })?;
        reconvert_in(&mut self.boot, &uses, &mut ctx, |bytes, ctx| {
            let pb = PbCluster::decode(bytes).map_err(|e| e.to_string())?;
            convert::cluster_resource(&pb, ctx).map_err(|e| e.to_string())
        })?;
        let uses = |h: &Held<_>| h.secret_refs.iter().any(&changed);
        reconvert_in(&mut self.listeners, &uses, &mut ctx, |bytes, ctx| {
            let pb = PbListener::decode(bytes).map_err(|e| e.to_string())?;
            convert::listener_resource(&pb, ctx).map_err(|e| e.to_string())
        })?;
        Ok(ctx.ignored)
    }
}

impl Resources {
    /// Holds the bootstrap's static clusters that take certificates from an SDS server
    /// (the bootstrap's conversion left them out of the static ones): each is converted
    /// again as its secrets arrive and served once it has them.
    pub fn hold_bootstrap_clusters(
        &mut self,
        statics: &super::Static,
        stats: &Store,
    ) -> Result<(), Rejection> {
        self.changing();
        self.eds_touched = None;
        let Some(sr) = statics.bootstrap.static_resources.as_ref() else {
            return Ok(());
        };
        let mut ctx = Ctx::dynamic(stats);
        ctx.sds_files = Some(crate::config::read_sds_file);
        let now = std::time::Instant::now();
        for pb in &sr.clusters {
            let model = convert::cluster_resource(pb, &mut ctx).map_err(|e| e.to_string())?;
            let fed = ctx
                .secret_refs
                .iter()
                .any(|(_, s)| !matches!(s, SdsSource::File(_)));
            if !fed {
                ctx.secret_refs.clear();
                continue;
            }
            let res = format!("cluster '{}'", pb.name);
            let refs: Vec<_> = ctx.secret_refs.iter().cloned().collect();
            super::sds_clusters_exist(&res, &refs, statics)?;
            let entry = crate::model::DumpEntry::new(crate::model::Entry {
                name: pb.name.as_str().into(),
                version: "".into(),
                last_updated: std::time::SystemTime::now(),
                resource: crate::model::Encoded::pack(
                    super::Kind::Cluster.type_url(),
                    &pb.encode_to_vec(),
                    None,
                ),
            });
            let held = Held::new(entry, Arc::new(model), now, None, &mut ctx);
            Arc::make_mut(&mut self.boot).insert(pb.name.as_str().into(), held);
        }
        Ok(())
    }
}

/// Converts again, from what was received, every entry of `map` that `uses` selects.
fn reconvert_in<M>(
    map: &mut Map<Arc<M>>,
    uses: &dyn Fn(&Held<Arc<M>>) -> bool,
    ctx: &mut Ctx<'_>,
    convert: impl Fn(&[u8], &mut Ctx<'_>) -> Result<M, String>,
) -> Result<(), Rejection> {
    let names: Vec<Arc<str>> = map
        .iter()
        .filter(|(_, h)| uses(h))
        .map(|(n, _)| n.clone())
        .collect();
    let mut unpacker = crate::model::Unpacker::new();
    for name in names {
        let old = &map[&name];
        // Conversion errors name the resource; the bytes decoded when they arrived.
        let model = convert(&unpacker.bytes(&old.entry.resource), ctx)?;
        let new = Held::new(
            old.entry.clone(),
            Arc::new(model),
            old.since,
            old.fetch_timeout,
            ctx,
        );
        Arc::make_mut(map).insert(name, new);
    }
    Ok(())
}
