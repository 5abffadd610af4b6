//! The control plane's state machine, apart from its transports: what the control thread
//! owns (resource caches, the publisher, stats), how a response is applied (each resource converted
//! and validated, then ACKed, or NACKed naming each resource refused and its field), and warming
//! deadlines. The ADS streams (`ads`) and SDS streams (`sds`) carry responses in and
//! ACKs/NACKs out; `transport` reaches the servers.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::{ClusterUpdateStat, ControlPlaneStat, Scope, Store, XdsStat};

use super::publish::Publisher;
use super::state::{Kind, Resources, Static, Update};

/// gRPC status code INVALID_ARGUMENT, carried by NACKs.
pub(super) const INVALID_ARGUMENT: i32 = 3;

/// Everything the control thread's xDS side owns.
pub struct Control {
    pub publisher: Publisher,
    pub resources: Resources,
    pub statics: Static,
    pub stats: Arc<Store>,
    /// The stats block the control thread writes.
    pub core: usize,
    /// Set once the first CDS and LDS responses were applied (`/ready`).
    pub initialized: Arc<AtomicBool>,
    cp: Arc<Scope>,
    seen: BTreeSet<Kind>,
    /// When the first CDS and LDS responses stop being waited for (their config sources'
    /// `initial_fetch_timeout`, 15 s by default; none for `0s`), as Envoy's init manager.
    init_deadlines: Vec<(Kind, Instant)>,
    /// Bumped after every applied update: SDS streams re-read what they should
    /// subscribe to.
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl Control {
    pub fn new(
        publisher: Publisher,
        statics: Static,
        stats: Arc<Store>,
        initialized: Arc<AtomicBool>,
    ) -> Control {
        let cp = stats.scope::<ControlPlaneStat>("control_plane.");
        let mut resources = Resources::default();
        resources.serving = initialized.load(Ordering::Acquire);
        // The bootstrap was checked whole before this; a failure here is not expected.
        if let Err(e) = resources.hold_bootstrap_clusters(&statics, &stats) {
            tracing::error!("static clusters fed by SDS: {e}");
        }
        let now = Instant::now();
        let dr = statics.bootstrap.dynamic_resources.as_ref();
        // A type ADS does not subscribe to is not waited for; the others until their first
        // response or their initial fetch timeout.
        let mut seen = BTreeSet::new();
        let mut init_deadlines = Vec::new();
        for (k, cs) in [
            (Kind::Cluster, dr.and_then(|d| d.cds_config.as_ref())),
            (Kind::Listener, dr.and_then(|d| d.lds_config.as_ref())),
        ] {
            match cs {
                None => {
                    seen.insert(k);
                }
                Some(cs) if !resources.serving => {
                    if let Some(t) = crate::xds::state::fetch_timeout(cs) {
                        init_deadlines.push((k, now + t));
                    }
                }
                Some(_) => {}
            }
        }
        Control {
            publisher,
            resources,
            statics,
            core: stats.control_core(),
            stats,
            initialized,
            cp,
            seen,
            init_deadlines,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The names a type's subscription should hold now (see [`Resources::wanted`]).
    pub fn wanted(&self, kind: Kind) -> BTreeSet<String> {
        self.resources.wanted(kind, &self.statics)
    }

    fn scopes(&self, update: &Update) -> Vec<Arc<Scope>> {
        match update.kind {
            Kind::Cluster => vec![self.stats.scope::<XdsStat>("cluster_manager.cds.")],
            Kind::Listener => vec![self.stats.scope::<XdsStat>("listener_manager.lds.")],
            Kind::Route => {
                let mut prefixes = BTreeSet::new();
                for inc in &update.resources {
                    let name = if inc.name.is_empty() {
                        route_name(&inc.resource)
                    } else {
                        inc.name.clone()
                    };
                    for p in self.resources.rds_stat_prefixes(&name, &self.statics) {
                        prefixes.insert(format!("http.{p}.rds.{name}."));
                    }
                }
                prefixes
                    .iter()
                    .map(|p| self.stats.scope::<XdsStat>(p))
                    .collect()
            }
            Kind::Endpoint => Vec::new(),
            Kind::Secret => update
                .resources
                .iter()
                .map(|i| {
                    let name = if i.name.is_empty() {
                        secret_name(&i.resource)
                    } else {
                        i.name.clone()
                    };
                    self.stats.scope::<XdsStat>(&format!("sds.{name}."))
                })
                .collect(),
        }
    }

    /// Applies one response: convert, assemble, bind, publish. `Err` is the NACK text.
    pub fn apply(&mut self, update: &Update) -> Result<u64, String> {
        let started = Instant::now();
        let scopes = self.scopes(update);
        // The load assignments an EDS response brings, by name.
        let eds_names: BTreeSet<String> = match update.kind {
            Kind::Endpoint => update
                .resources
                .iter()
                .map(|i| {
                    if i.name.is_empty() {
                        cla_name(&i.resource)
                    } else {
                        i.name.clone()
                    }
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        let eds: Vec<Arc<Scope>> = eds_names
            .iter()
            .map(|n| {
                self.stats
                    .scope::<ClusterUpdateStat>(&format!("cluster.{n}."))
            })
            .collect();
        let bump = |x: XdsStat, c: ClusterUpdateStat| {
            for s in &scopes {
                s.core(self.core).inc(x as usize);
            }
            for s in &eds {
                s.core(self.core).inc(c as usize);
            }
        };
        bump(XdsStat::UpdateAttempt, ClusterUpdateStat::UpdateAttempt);
        // Applied to a copy (cheap: shared maps) so that a bind failure also changes nothing.
        let mut staged = self.resources.clone();
        let mut phases = [Duration::ZERO; 3];
        let mut refused = Vec::new();
        let result = staged
            .apply(update, &self.statics, &self.stats)
            .and_then(|applied| {
                refused = applied.refused;
                for path in applied.ignored {
                    tracing::info!(
                        "ignoring tuning knob {path} (see docs/configuration.md: ignored fields)"
                    );
                }
                phases[0] = started.elapsed();
                staged.serving = self.initialized.load(Ordering::Acquire)
                    || [Kind::Cluster, Kind::Listener]
                        .iter()
                        .all(|k| *k == update.kind || self.seen.contains(k));
                staged.prune(&self.statics, update.kind, &eds_names);
                // As Envoy, whose listeners bind as they are added: a listener of this
                // response that cannot bind is refused on its own (its previous version,
                // if any, stays); the others are published.
                let mut bind_failures = 0;
                loop {
                    let current = self.publisher.shared.load_full();
                    let snap = staged.assemble(&self.statics, &current);
                    phases[1] = started.elapsed();
                    match self.publisher.publish(snap, started) {
                        Ok(v) => {
                            phases[2] = started.elapsed();
                            break Ok(v);
                        }
                        Err(e)
                            if update.kind == Kind::Listener
                                && bind_failures < update.resources.len()
                                && update.resources.iter().any(|i| {
                                    super::state::resource_name(i).as_deref() == Some(&*e.listener)
                                }) =>
                        {
                            bind_failures += 1;
                            staged.revert_listener(&e.listener, &self.resources);
                            refused.push(e.message);
                        }
                        Err(e) => break Err(e.message),
                    }
                }
            });
        match result {
            Ok(v) => {
                self.resources = staged;
                if refused.is_empty() {
                    bump(XdsStat::UpdateSuccess, ClusterUpdateStat::UpdateSuccess);
                } else {
                    bump(XdsStat::UpdateRejected, ClusterUpdateStat::UpdateRejected);
                }
                if update.resources.is_empty() && update.removed.is_empty() {
                    bump(XdsStat::UpdateEmpty, ClusterUpdateStat::UpdateEmpty);
                }
                // As Envoy's init manager: a response counts as received even when some
                // of its resources were refused.
                self.seen.insert(update.kind);
                self.changed.send_modify(|v| *v += 1);
                if self.seen.contains(&Kind::Cluster) && self.seen.contains(&Kind::Listener) {
                    self.initialized.store(true, Ordering::Release);
                }
                tracing::info!(
                    kind = update.kind.short(),
                    version = %update.version_info,
                    resources = update.resources.len(),
                    removed = update.removed.len(),
                    snapshot = v,
                    converted_us = phases[0].as_micros() as u64,
                    assembled_us = phases[1].as_micros() as u64,
                    published_us = phases[2].as_micros() as u64,
                    "xDS update applied"
                );
                if refused.is_empty() {
                    return Ok(v);
                }
                // The others were applied; the NACK names each one refused.
                let e = truncate(refused.join("\n"));
                tracing::warn!(kind = update.kind.short(), version = %update.version_info, refused = refused.len(), "xDS update partly rejected: {e}");
                Err(e)
            }
            Err(e) => {
                bump(XdsStat::UpdateRejected, ClusterUpdateStat::UpdateRejected);
                tracing::warn!(kind = update.kind.short(), version = %update.version_info, "xDS update rejected: {e}");
                // As Envoy's init manager: a first CDS or LDS response refused whole still
                // counts as received (else, with Istio's `initial_fetch_timeout: 0s`,
                // nothing would ever serve).
                if matches!(update.kind, Kind::Cluster | Kind::Listener)
                    && self.seen.insert(update.kind)
                {
                    self.serve_if_initialized();
                }
                Err(truncate(e))
            }
        }
    }

    /// Once the first CDS and LDS responses were received, the listeners serve.
    fn serve_if_initialized(&mut self) {
        let both = self.seen.contains(&Kind::Cluster) && self.seen.contains(&Kind::Listener);
        if !both || self.initialized.load(Ordering::Acquire) {
            return;
        }
        self.resources.serving = true;
        self.initialized.store(true, Ordering::Release);
        let current = self.publisher.shared.load_full();
        let snap = self.resources.assemble(&self.statics, &current);
        if let Err(e) = self.publisher.publish(snap, Instant::now()) {
            tracing::warn!("publishing once initialized failed: {e}");
        }
    }

    /// SDS files changed: the static resources that read them are converted again from
    /// the bootstrap, the dynamic ones from what was received, and the result is published.
    /// If any of it fails (a half-written file, a key that does not match), nothing
    /// changes and the old certificates keep serving until the next change.
    pub fn reload_sds_files(&mut self, changed: &BTreeSet<std::path::PathBuf>) {
        let started = Instant::now();
        let mut statics = None;
        if self.statics.sds_files.iter().any(|f| changed.contains(f)) {
            let read = Some(crate::config::read_sds_file as crate::model::convert::SdsFileReader);
            match crate::model::convert::bootstrap_snapshot_with(
                &self.statics.bootstrap,
                &self.stats,
                0,
                read,
            ) {
                Ok((snap, _, files)) => {
                    let mut s = Static::from_snapshot(&snap);
                    s.sds_files = files;
                    statics = Some(s);
                }
                Err(e) => {
                    tracing::warn!(
                        "SDS file change rejected, the old certificates keep serving: {e}"
                    );
                    return;
                }
            }
        }
        let mut staged = self.resources.clone();
        let reread = |(_, s): &(Arc<str>, crate::model::convert::SdsSource)| matches!(s, crate::model::convert::SdsSource::File(f) if changed.contains(std::path::Path::new(&**f)));
        if let Err(e) = staged.reconvert(reread, &self.stats) {
            tracing::warn!("SDS file change rejected, the old certificates keep serving: {e}");
            return;
        }
        let current = self.publisher.shared.load_full();
        let snap = staged.assemble(statics.as_ref().unwrap_or(&self.statics), &current);
        match self.publisher.publish(snap, started) {
            Ok(v) => {
                tracing::info!(files = ?changed, snapshot = v, "SDS files reloaded");
                if let Some(s) = statics {
                    self.statics = s;
                }
                self.resources = staged;
                self.changed.send_modify(|v| *v += 1);
            }
            Err(e) => tracing::warn!("publishing after an SDS file change failed: {e}"),
        }
    }

    /// When the next first CDS or LDS response stops being waited for.
    pub fn init_deadline(&self) -> Option<Instant> {
        self.init_deadlines
            .iter()
            .filter(|(k, _)| !self.seen.contains(k))
            .map(|(_, t)| *t)
            .min()
    }

    /// The next instant something stops being waited for: a warming resource, or the
    /// first CDS or LDS response.
    pub fn next_deadline(&self) -> Option<Instant> {
        let init = self.init_deadline();
        match (init, self.resources.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Re-assembles after a deadline passed (initial fetch timeout). A first CDS or LDS
    /// response that did not come in time is waited for no more: as Envoy's init manager,
    /// the listeners serve once neither is awaited.
    pub(super) fn on_deadline(&mut self) {
        let now = Instant::now();
        let warming_passed = self.resources.next_deadline().is_some_and(|t| t <= now);
        let mut init_passed = false;
        for (kind, at) in &self.init_deadlines {
            if *at <= now && self.seen.insert(*kind) {
                init_passed = true;
                let prefix = match kind {
                    Kind::Cluster => "cluster_manager.cds.",
                    _ => "listener_manager.lds.",
                };
                self.stats
                    .scope::<XdsStat>(prefix)
                    .core(self.core)
                    .inc(XdsStat::InitFetchTimeout as usize);
                tracing::warn!(
                    "no first {} response in time: no longer waited for",
                    kind.short()
                );
            }
        }
        if self.seen.contains(&Kind::Cluster) && self.seen.contains(&Kind::Listener) {
            self.resources.serving = true;
            self.initialized.store(true, Ordering::Release);
        }
        if !warming_passed && !init_passed {
            return;
        }
        let current = self.publisher.shared.load_full();
        let snap = self.resources.assemble(&self.statics, &current);
        if warming_passed {
            let s = self.stats.scope::<XdsStat>("listener_manager.lds.");
            s.core(self.core).inc(XdsStat::InitFetchTimeout as usize);
        }
        if let Err(e) = self.publisher.publish(snap, Instant::now()) {
            tracing::warn!("publishing after an initial fetch timeout failed: {e}");
        }
    }
}

/// A NACK's message, at most 4 KiB as Envoy sends it (`truncateGrpcStatusMessage`).
fn truncate(mut e: String) -> String {
    const MAX: usize = 4096;
    if e.len() > MAX {
        let mut at = MAX;
        while !e.is_char_boundary(at) {
            at -= 1;
        }
        e.truncate(at);
        e.push_str("...(truncated)");
    }
    e
}

fn route_name(any: &prost_types::Any) -> String {
    use prost::Message;
    crate::proto::envoy::config::route::v3::RouteConfiguration::decode(any.value.as_slice())
        .map(|r| r.name)
        .unwrap_or_default()
}

fn secret_name(any: &prost_types::Any) -> String {
    use prost::Message;
    crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
        any.value.as_slice(),
    )
    .map(|s| s.name)
    .unwrap_or_default()
}

fn cla_name(any: &prost_types::Any) -> String {
    use prost::Message;
    crate::proto::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(any.value.as_slice())
        .map(|r| r.cluster_name)
        .unwrap_or_default()
}

impl Control {
    /// Counts a stream event (ADS or SDS) in the control-plane stats.
    pub(super) fn count(&self, stat: ControlPlaneStat) {
        self.cp.core(self.core).inc(stat as usize);
    }
}

pub(super) fn set_connected(control: &Control, up: bool) {
    let c = control.cp.core(control.core);
    let now = control
        .cp
        .on_core(control.core, ControlPlaneStat::ConnectedState as usize);
    match (now, up) {
        (0, true) => c.inc(ControlPlaneStat::ConnectedState as usize),
        (1, false) => c.dec(ControlPlaneStat::ConnectedState as usize),
        _ => {}
    }
}

/// Ends the wait for the first CDS and LDS responses at their `initial_fetch_timeout`,
/// whether or not the control plane can be reached meanwhile.
pub async fn init_timer(ctl: std::rc::Rc<std::cell::RefCell<Control>>) {
    loop {
        let Some(at) = ctl.borrow().init_deadline() else {
            return;
        };
        tokio::time::sleep_until(at.into()).await;
        ctl.borrow_mut().on_deadline();
    }
}
