//! The control thread's xDS resource caches and how they become a [`Snapshot`].
//!
//! An update is converted into a copy of the caches resource by resource, as Envoy applies
//! LDS and CDS: what converts replaces the caches (the caller publishes, then ACKs, or NACKs
//! naming each resource refused; a refused resource keeps its previous version). Two
//! resources of one name, or a failing secret, refuse the response whole. Warming follows Envoy: a CDS cluster of type
//! EDS is not used until its ClusterLoadAssignment arrives, and an LDS listener that names
//! RDS route configurations is not served until they arrived (the previous version of the
//! listener keeps serving meanwhile), each until its config source's
//! `initial_fetch_timeout`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::model::convert::{Ctx, SdsSource};
use crate::model::route::RouteTable;
use crate::model::{
    Cluster, Discovery, DumpEntry, DynamicDump, Endpoint, Listener, RouteSource, Snapshot,
};
use crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret as PbSecret;
use crate::stats::Store;

/// The four resource types, in the order Envoy subscribes to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Cluster,
    Endpoint,
    Listener,
    Route,
    /// SDS: certificates and trust bundles (over ADS, or a stream of their own).
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Endpoint,
        Kind::Listener,
        Kind::Route,
        Kind::Secret,
    ];

    /// The message's full name.
    pub fn message(self) -> &'static str {
        match self {
            Kind::Cluster => "envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "envoy.config.listener.v3.Listener",
            Kind::Route => "envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// `lds`, `cds`, `rds`, `eds`, `sds`.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Cluster => "cds",
            Kind::Endpoint => "eds",
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Secret => "sds",
        }
    }

    /// What one resource is called in errors: `listener 'x'`.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Endpoint => "cluster load assignment",
            Kind::Listener => "listener",
            Kind::Route => "route configuration",
            Kind::Secret => "secret",
        }
    }

    /// LDS and CDS are wildcard subscriptions; EDS and RDS name their resources.
    pub fn wildcard(self) -> bool {
        matches!(self, Kind::Cluster | Kind::Listener)
    }
}

/// One resource of a response.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The name given by the envelope (delta), or empty (state of the world).
    pub name: String,
    pub version: String,
    /// Shared with the cache's dump entry once converted: the encoded resource is held
    /// once, not copied for `/config_dump` while the response is still held.
    pub resource: std::sync::Arc<prost_types::Any>,
}

/// A response, reduced to what the caches need.
#[derive(Debug, Clone)]
pub struct Update {
    pub kind: Kind,
    /// `version_info` (state of the world) or `system_version_info` (delta).
    pub version_info: String,
    pub resources: Vec<Incoming>,
    /// Names removed (delta).
    pub removed: Vec<String>,
    /// State of the world for LDS/CDS: resources not listed are removed.
    pub full_state: bool,
}

impl Update {
    /// A state-of-the-world response carrying `resources` at `version` (names are read
    /// from the resources).
    pub fn sotw(kind: Kind, version: &str, resources: Vec<prost_types::Any>) -> Update {
        Update {
            kind,
            version_info: version.into(),
            resources: resources
                .into_iter()
                .map(|resource| Incoming {
                    name: String::new(),
                    version: version.into(),
                    resource: resource.into(),
                })
                .collect(),
            removed: vec![],
            full_state: kind.wildcard(),
        }
    }
}

/// A cached resource: as received, converted, and since when (for warming).
#[derive(Clone)]
struct Held<M> {
    entry: DumpEntry,
    model: M,
    since: Instant,
    /// How long it may warm before it is used anyway (`None`: for ever).
    fetch_timeout: Option<Duration>,
    /// The SDS secrets its TLS contexts name, and where each comes from.
    secret_refs: Arc<[SecretRef]>,
    /// One of them has not arrived: it warms until it does (no timeout: serving a TLS
    /// context without its certificate would refuse every handshake).
    waiting_secret: bool,
}

/// An SDS secret a listener or cluster names.
pub type SecretRef = (Arc<str>, SdsSource);

thread_local! {
    static NO_SECRETS: Arc<[SecretRef]> = Arc::new([]);
}

impl<M> Held<M> {
    /// A resource as converted now; the SDS secrets the conversion found named (taken
    /// from `ctx`) go with it.
    fn new(
        entry: DumpEntry,
        model: M,
        since: Instant,
        fetch_timeout: Option<Duration>,
        ctx: &mut Ctx<'_>,
    ) -> Held<M> {
        let refs: Arc<[SecretRef]> = match ctx.secret_refs.is_empty() {
            // One shared empty list (an empty `Arc<[_]>` is an allocation of its own).
            true => NO_SECRETS.with(Arc::clone),
            false => std::mem::take(&mut ctx.secret_refs).into_iter().collect(),
        };
        Held {
            entry,
            model,
            since,
            fetch_timeout,
            waiting_secret: refs.iter().any(|(n, _)| !ctx.secrets.contains_key(n)),
            secret_refs: refs,
        }
    }

    fn timed_out(&self, now: Instant) -> bool {
        self.fetch_timeout
            .is_some_and(|t| now.duration_since(self.since) >= t)
    }
}

/// What the bootstrap contributes to every snapshot.
pub struct Static {
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: Vec<Arc<Cluster>>,
    pub admin: Option<std::net::SocketAddr>,
    pub bootstrap: Arc<crate::proto::envoy::config::bootstrap::v3::Bootstrap>,
    /// SDS files the static listeners and clusters read (watched for rotation).
    pub sds_files: BTreeSet<std::path::PathBuf>,
}

impl Static {
    pub fn from_snapshot(s: &Snapshot) -> Static {
        Static {
            listeners: s.listeners.clone(),
            clusters: s.clusters.clone(),
            admin: s.admin,
            bootstrap: s.bootstrap.clone(),
            sds_files: BTreeSet::new(),
        }
    }
}

type Map<M> = Arc<BTreeMap<Arc<str>, Held<M>>>;

/// The xDS caches. Each map sits behind an `Arc`, so the copy an update is staged in
/// costs five reference counts, and only the map the update touches is cloned.
#[derive(Clone, Default)]
pub struct Resources {
    clusters: Map<Arc<Cluster>>,
    /// The latest version of every listener.
    listeners: Map<Arc<Listener>>,
    /// The version of every listener that is serving (warm).
    active: Map<Arc<Listener>>,
    routes: Map<Arc<RouteTable>>,
    endpoints: Map<Arc<[Endpoint]>>,
    /// SDS secrets, validated, by name.
    secrets: Map<Arc<PbSecret>>,
    /// The bootstrap's static clusters whose certificates come from an SDS server: held
    /// like CDS clusters until their secrets arrive, never replaced or removed by CDS.
    boot: Map<Arc<Cluster>>,
    versions: BTreeMap<Kind, (Arc<str>, SystemTime)>,
    /// The version `/config_dump` shows per type: that of the last response any of whose
    /// resources was applied (Envoy's `system_version_info`), which a partly refused
    /// response sets while the ACKed version above stays.
    shown: BTreeMap<Kind, (Arc<str>, SystemTime)>,
    /// Identity of the cluster and endpoint maps the last snapshot was assembled from:
    /// while both are unchanged (and nothing is warming against a deadline), the clusters
    /// of the current snapshot are reused instead of rebuilt.
    assembled_from: Option<(usize, usize, usize)>,
    /// Whether listeners serve: false until the first CDS and LDS responses are applied
    /// (Envoy's init manager), so that no listener, the bootstrap's included, accepts
    /// before the proxy has its configuration.
    pub serving: bool,
    /// The bootstrap enables internal listeners (set by each update from the statics).
    internal_listeners: bool,
    /// [`Resources::next_deadline`]'s answer until something changes (it scans every
    /// listener and cluster, and is asked on every xDS message: 10,000 clusters' lookups
    /// per message in a big mesh). Every method taking `&mut self` clears it.
    deadline: std::cell::Cell<Option<Option<Instant>>>,
    /// The load assignments the last update applied or removed, when it was an EDS update
    /// and nothing else changed since: the next assembly patches those into the current
    /// snapshot instead of assembling every cluster again (`None`: it assembles all).
    eds_touched: Option<Vec<Arc<str>>>,
    /// The dictionaries each type's encodings are compressed against, once there is one.
    dicts: BTreeMap<Kind, Arc<crate::model::Dictionary>>,
    /// Assemblies that patched the current snapshot (tests tell the two paths apart).
    #[cfg(test)]
    patched: usize,
}

/// Removes the entries `keep` refuses, cloning the map only if there are any.
fn retain_in<M: Clone>(map: &mut Map<M>, keep: impl Fn(&Arc<str>) -> bool) {
    if map.keys().all(&keep) {
        return;
    }
    Arc::make_mut(map).retain(|k, _| keep(k));
}

/// Why an update was refused: the text of the NACK's `error_detail`.
pub type Rejection = String;

/// What [`Resources::apply`] did with an update that was not refused whole.
#[derive(Debug, Default)]
pub struct Applied {
    /// Tuning knobs ignored (logged).
    pub ignored: Vec<String>,
    /// One error per resource refused; the others were applied.
    pub refused: Vec<Rejection>,
}

impl Resources {
    /// Converts each resource of `update` and applies those that convert, as Envoy does:
    /// a refused listener or cluster leaves the others, and its own previous version, in
    /// place. `Ok` carries the tuning knobs ignored and the resources refused (then the
    /// update is NACKed with their errors and its version is not taken); `Err` means the
    /// response was refused whole and nothing changed (two resources of one name, or any
    /// secret that fails: a secret's change reconverts what uses it, all or nothing). The
    /// update is staged in a copy, which is cheap: see [`Resources`].
    pub fn apply(
        &mut self,
        update: &Update,
        statics: &Static,
        stats: &Store,
    ) -> Result<Applied, Rejection> {
        self.changing();
        let now = (Instant::now(), SystemTime::now());
        self.internal_listeners =
            crate::model::convert::internal_listeners_enabled(&statics.bootstrap);
        let mut ctx = Ctx::dynamic(stats);
        ctx.internal_listeners = self.internal_listeners;
        ctx.secrets = Arc::new(self.secret_map());
        ctx.sds_files = Some(crate::config::read_sds_file);
        let mut seen: BTreeSet<Arc<str>> = BTreeSet::new();
        let names: Vec<Option<Arc<str>>> = update.resources.iter().map(resource_name).collect();
        // A resource whose name cannot be read cannot keep its previous version: the
        // response is refused whole (as Envoy's mux refuses one it cannot decode).
        if let Some(i) = names.iter().position(Option::is_none) {
            return Err(format!(
                "{} #{i} of the response: its name cannot be read",
                update.kind.noun()
            ));
        }
        for name in names.iter().flatten() {
            if !seen.insert(name.clone()) {
                return Err(format!(
                    "{} '{name}' appears twice in one response",
                    update.kind.noun()
                ));
            }
        }
        let whole = update.kind == Kind::Secret;
        let mut batch = convert_one::Batch {
            now,
            dict: convert_one::dictionary(&mut self.dicts, update),
            version: None,
        };
        let mut staged = self.clone();
        let mut refused = Vec::new();
        for (inc, name) in update.resources.iter().zip(&names) {
            // What a refused resource named must not pass to the next one.
            ctx.secret_refs.clear();
            let previous_route = name
                .as_ref()
                .filter(|_| update.kind == Kind::Route)
                .and_then(|n| self.routes.get(n))
                .map(|h| &*h.model);
            let one = convert_one(
                update.kind,
                inc,
                name.as_deref(),
                previous_route,
                &mut batch,
                &mut ctx,
            )
            .map_err(|e| format!("{e}"))
            .and_then(|(name, held)| {
                if !inc.name.is_empty() && *inc.name != *name {
                    return Err(format!(
                        "resource '{}' carries a {} named '{name}'",
                        inc.name,
                        update.kind.message()
                    ));
                }
                staged.insert(update.kind, name, held, statics)
            });
            match one {
                Ok(()) => {}
                Err(e) if whole => return Err(e),
                Err(e) => refused.push(e),
            }
        }
        if update.full_state {
            staged.retain(update.kind, |n| seen.contains(n));
        }
        for name in &update.removed {
            staged.retain(update.kind, |n| **n != **name);
        }
        if update.resources.len() >= refused.len() + 64 {
            staged.compact(update.kind);
        }
        if update.kind == Kind::Secret {
            // New certificates and trust bundles: the listeners and clusters that use them
            // are converted again (new handshakes get the new rustls configs; established
            // connections keep theirs). If one of them fails, the secret is NACKed.
            let changed: BTreeSet<Arc<str>> = seen
                .iter()
                .cloned()
                .chain(update.removed.iter().map(|n| Arc::from(n.as_str())))
                .collect();
            let ignored = staged.reconvert(|(n, _)| changed.contains(n), stats)?;
            ctx.ignored.extend(ignored);
        }
        let version = (update.version_info.as_str().into(), now.1);
        let applied_any = update.resources.len() > refused.len() || !update.removed.is_empty();
        if refused.is_empty() || applied_any {
            staged.shown.insert(update.kind, version.clone());
        }
        if refused.is_empty() {
            staged.versions.insert(update.kind, version);
        }
        staged.eds_touched = (update.kind == Kind::Endpoint).then(|| {
            seen.iter()
                .cloned()
                .chain(update.removed.iter().map(|n| Arc::from(n.as_str())))
                .collect()
        });
        *self = staged;
        Ok(Applied {
            ignored: ctx.ignored,
            refused,
        })
    }

    /// Builds the map of `kind` again with full nodes: inserted one by one in order, as
    /// istiod sends them, a B-tree's nodes stay a little over half full (six of eleven
    /// entries each: 2.8 MB wasted at 10,000 services when measured, with the held entry
    /// larger than now).
    fn compact(&mut self, kind: Kind) {
        fn again<M: Clone>(map: &mut Map<M>) {
            let m = Arc::make_mut(map);
            *m = std::mem::take(m).into_iter().collect();
        }
        match kind {
            Kind::Cluster => again(&mut self.clusters),
            Kind::Listener => again(&mut self.listeners),
            Kind::Route => again(&mut self.routes),
            Kind::Endpoint => again(&mut self.endpoints),
            Kind::Secret => again(&mut self.secrets),
        }
    }

    fn insert(
        &mut self,
        kind: Kind,
        name: Arc<str>,
        held: AnyHeld,
        statics: &Static,
    ) -> Result<(), Rejection> {
        match held {
            AnyHeld::Cluster(h) => {
                if statics.clusters.iter().any(|c| c.name == name) || self.boot.contains_key(&name)
                {
                    return Err(format!(
                        "cluster '{name}': a static cluster of that name exists and cannot be replaced by CDS"
                    ));
                }
                sds_clusters_exist(&format!("cluster '{name}'"), &h.secret_refs, statics)?;
                Arc::make_mut(&mut self.clusters).insert(name, h);
            }
            AnyHeld::Listener(h) => {
                if statics.listeners.iter().any(|l| l.name == name) {
                    return Err(format!(
                        "listener '{name}': a static listener of that name exists and cannot be replaced by LDS"
                    ));
                }
                sds_clusters_exist(&format!("listener '{name}'"), &h.secret_refs, statics)?;
                Arc::make_mut(&mut self.listeners).insert(name, h);
            }
            AnyHeld::Route(h) => {
                Arc::make_mut(&mut self.routes).insert(name, h);
            }
            AnyHeld::Endpoint(h) => {
                Arc::make_mut(&mut self.endpoints).insert(name, h);
            }
            AnyHeld::Secret(h) => {
                Arc::make_mut(&mut self.secrets).insert(name, h);
            }
        }
        let _ = kind;
        Ok(())
    }

    /// Puts listener `name` back as `previous` has it (or removes it): a new version of it
    /// that cannot bind is refused on its own.
    pub fn revert_listener(&mut self, name: &str, previous: &Resources) {
        self.changing();
        self.eds_touched = None;
        for (mine, theirs) in [
            (&mut self.listeners, &previous.listeners),
            (&mut self.active, &previous.active),
        ] {
            match theirs.get(name) {
                Some(h) => {
                    Arc::make_mut(mine).insert(name.into(), h.clone());
                }
                None => retain_in(mine, |n| **n != *name),
            }
        }
    }

    fn retain(&mut self, kind: Kind, keep: impl Fn(&Arc<str>) -> bool) {
        match kind {
            Kind::Cluster => retain_in(&mut self.clusters, keep),
            Kind::Listener => {
                retain_in(&mut self.listeners, &keep);
                retain_in(&mut self.active, &keep);
            }
            Kind::Route => retain_in(&mut self.routes, keep),
            Kind::Endpoint => retain_in(&mut self.endpoints, keep),
            Kind::Secret => retain_in(&mut self.secrets, keep),
        }
    }

    /// The version of every cached resource of a type (delta reconnects send them).
    pub fn versions_of(&self, kind: Kind) -> HashMap<String, String> {
        fn v<M>(m: &Map<M>) -> HashMap<String, String> {
            m.iter()
                .map(|(n, h)| (n.to_string(), h.entry.version.to_string()))
                .collect()
        }
        match kind {
            Kind::Cluster => v(&self.clusters),
            Kind::Listener => v(&self.listeners),
            Kind::Route => v(&self.routes),
            Kind::Endpoint => v(&self.endpoints),
            Kind::Secret => v(&self.secrets),
        }
    }

    /// The last accepted version of a type.
    pub fn version(&self, kind: Kind) -> String {
        self.versions
            .get(&kind)
            .map(|(v, _)| v.to_string())
            .unwrap_or_default()
    }

    /// Promotes listeners whose routes arrived (or whose fetch timeout passed). Returns
    /// the listeners and clusters that timed out warming, for stats.
    fn promote(&mut self, now: Instant) {
        let mut warm_now = Vec::new();
        for (name, h) in self.listeners.iter() {
            let warm = !h.waiting_secret
                && h.model.hcms().all(|hcm| match &hcm.routes {
                    RouteSource::Static(_) => true,
                    RouteSource::Rds(r) => self.routes.contains_key(r) || h.timed_out(now),
                });
            let current = self
                .active
                .get(name)
                .is_some_and(|a| Arc::ptr_eq(&a.model, &h.model));
            if warm && !current {
                warm_now.push((name.clone(), h.clone()));
            }
        }
        if !warm_now.is_empty() {
            Arc::make_mut(&mut self.active).extend(warm_now);
        }
    }
}

/// An SDS server is reached through a static cluster (as Envoy requires of gRPC services):
/// naming any other is refused, rather than warming for ever.
fn sds_clusters_exist(res: &str, refs: &[SecretRef], statics: &Static) -> Result<(), Rejection> {
    for (secret, source) in refs {
        if let SdsSource::Grpc(c) = source {
            if !statics.clusters.iter().any(|s| s.name == *c) {
                return Err(format!(
                    "{res}: SDS secret '{secret}': sds_config names cluster '{c}', which is not a static cluster"
                ));
            }
        }
    }
    Ok(())
}

mod assemble;
mod convert_one;
mod deadline;
mod routes;
mod secrets;
mod wanted;

use convert_one::{convert_one, AnyHeld};
pub(crate) use convert_one::{fetch_timeout, resource_name};
#[cfg(test)]
mod tests;
