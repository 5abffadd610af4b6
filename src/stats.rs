//! Per-core counters and gauges, summed only when read.
//!
//! Every scope (a listener, a connection manager, a cluster) has a block of cells per
//! core, which the core allocates on its first write (`cells.rs`). A core is the only
//! writer of its block, so an increment is a relaxed load and store (no locked
//! read-modify-write); readers on the control thread sum the blocks. Scopes are created at configuration time and shared through the store, so
//! counters survive snapshot swaps as Envoy's do.
// The registry's Mutex is taken only on the control thread (configuration, admin reads);
// cores hold `Arc<Scope>` and never touch it.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;

mod cells;
pub use cells::CoreCells;
mod histogram;
pub use histogram::{HistValue, BOUNDS as HISTOGRAM_BOUNDS, QUANTILES};
pub mod istio;
mod kept;
pub mod labeled;
pub mod sink;
mod snapshot;
pub mod tags;
use std::sync::{Arc, Mutex, OnceLock};

/// Names of a family of stats; `N` is the number of stats in it.
pub trait StatNames: 'static + Send + Sync {
    /// Number of stats in the family.
    const N: usize;
    /// The stat names, indexed by the family's enum discriminant.
    const NAMES: &'static [&'static str];
    /// Which of them are gauges (may go down); all others are counters.
    const GAUGES: &'static [usize] = &[];
    /// Gauges Envoy sets as it starts: `usedonly` lists them even at 0 (pilot-agent reads
    /// `server.state: 0` that way).
    const SET: &'static [usize] = &[];
    /// The family's histograms (milliseconds), indexed as the family's histogram enum.
    const HISTOGRAMS: &'static [&'static str] = &[];
    /// Whether a stat is listed only once it moved (Envoy creates such stats on first use).
    const LAZY: bool = false;
    /// The stats listed only once they moved: those Envoy creates on first use (status
    /// classes, TLS and xDS stats of a cluster that has none) and Ringside's own.
    const LAZY_STATS: &'static [usize] = &[];
    /// The histograms listed only once they have samples (`HISTOGRAMS` indices).
    const LAZY_HISTOGRAMS: &'static [usize] = &[];
    /// The name prefix of the family's per-status-code counters (`upstream_rq_` gives
    /// `upstream_rq_200`, as Envoy names them), or empty when it has none.
    const CODES: &'static str = "";
}

/// Status codes 100..=599 have a counter each.
const CODES: usize = 500;

/// A value on a cache line of its own.
#[derive(Default)]
#[repr(align(64))]
pub struct Padded<T>(pub T);

/// A named scope with one block of cells per core. A big mesh has tens of thousands
/// (five a cluster), so a scope holds its family's description by reference and shares
/// its prefix with the registry's key.
pub struct Scope {
    prefix: Arc<str>,
    family: &'static Family,
    cores: Box<[CoreCells]>,
    /// Extra per-core cells named `<prefix>worker_<k>.<name>` (Envoy's per-worker listener stats).
    per_worker: &'static [usize],
}

/// A scope's place in the registry: its prefix and its family's first stat name (two
/// families may share a prefix).
type ScopeKey = (Arc<str>, &'static str);

/// What a [`StatNames`] family declares, once per family.
struct Family {
    names: &'static [&'static str],
    gauges: &'static [usize],
    set: &'static [usize],
    codes: &'static str,
    lazy: bool,
    lazy_stats: &'static [usize],
    lazy_histograms: &'static [usize],
    histograms: &'static [&'static str],
}

impl Family {
    fn of<S: StatNames>() -> &'static Family {
        const {
            &Family {
                names: S::NAMES,
                gauges: S::GAUGES,
                set: S::SET,
                codes: S::CODES,
                lazy: S::LAZY,
                lazy_stats: S::LAZY_STATS,
                lazy_histograms: S::LAZY_HISTOGRAMS,
                histograms: S::HISTOGRAMS,
            }
        }
    }
}

impl Scope {
    /// The cells that core `core` writes.
    #[inline]
    pub fn core(&self, core: usize) -> &CoreCells {
        &self.cores[core]
    }

    /// The sum over cores of stat `idx` (a gauge as a signed value).
    pub fn total(&self, idx: usize) -> i64 {
        self.cores
            .iter()
            .fold(0u64, |a, c| a.wrapping_add(c.get(idx))) as i64
    }

    /// The value of stat `idx` on one core.
    pub fn on_core(&self, core: usize, idx: usize) -> u64 {
        self.cores[core].get(idx)
    }

    /// The scope's prefix, ending in a dot (e.g. `cluster.backend.`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Where every scope is registered, so admin can list them.
pub struct Store {
    cores: usize,
    scopes: Mutex<BTreeMap<ScopeKey, Arc<Scope>>>,
    /// The bootstrap's `stats_config`; Envoy's defaults until one is set.
    config: arc_swap::ArcSwapOption<StatsConfig>,
    /// Tag extraction by stat name, computed on the first read of each name.
    tagged: Mutex<tags::TagCache>,
    /// Counter values at admin's last `/reset_counters`, subtracted when read (the cells
    /// belong to the cores: they are never written from here).
    baselines: Mutex<std::collections::HashMap<String, u64>>,
    /// Values configurations share by key while any holds them (see [`Store::shared`]).
    shared: Mutex<kept::Shared>,
    /// Istio's `istio_*` series (`istio.stats`).
    pub istio: istio::Istio,
    /// What the bootstrap's conversion leaves for later ones (xDS), by key.
    held: Mutex<std::collections::HashMap<&'static str, Arc<dyn std::any::Any + Send + Sync>>>,
    /// Stats computed when read rather than counted ([`Store::set_computed`]).
    computed: OnceLock<Computed>,
}

/// Tells its argument of stats computed when read: full name, value, whether a gauge,
/// whether used.
pub type Computed = Box<dyn Fn(&mut dyn FnMut(&str, i64, bool, bool)) + Send + Sync>;

/// The bootstrap's `stats_config`: which stats exist and how they are tagged.
pub struct StatsConfig {
    pub tags: tags::TagProducer,
    pub matcher: StatsMatcher,
}

/// A test on a stat's full name.
pub type NamePattern = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// `stats_matcher`: a rejected stat is in no admin output, as Envoy never creates it.
pub enum StatsMatcher {
    AcceptAll,
    RejectAll,
    /// Only the stats some pattern matches.
    Include(Vec<NamePattern>),
    /// Every stat no pattern matches.
    Exclude(Vec<NamePattern>),
}

impl StatsMatcher {
    /// Whether the stat named `name` exists.
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            StatsMatcher::AcceptAll => true,
            StatsMatcher::RejectAll => false,
            StatsMatcher::Include(p) => p.iter().any(|p| p(name)),
            StatsMatcher::Exclude(p) => !p.iter().any(|p| p(name)),
        }
    }
}

/// One stat as read by admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatValue {
    pub name: String,
    pub value: i64,
    pub gauge: bool,
    /// Whether it moved or was set: what `usedonly` lists.
    pub used: bool,
}

impl Store {
    /// A store for `cores` worker cores (plus one block for the control thread).
    pub fn new(cores: usize) -> Arc<Store> {
        Arc::new(Store {
            cores: cores + 1,
            scopes: Mutex::new(BTreeMap::new()),
            config: Default::default(),
            tagged: Default::default(),
            baselines: Default::default(),
            shared: Default::default(),
            istio: istio::Istio::new(cores + 1),
            held: Default::default(),
            computed: OnceLock::new(),
        })
    }

    /// Admin's `/reset_counters`: every counter reads 0 from now on (gauges and histograms
    /// keep theirs, as in Envoy).
    pub fn reset_counters(&self) {
        let current = self.raw_snapshot(&|_, _| true);
        let mut b = self.baselines.lock().unwrap_or_else(|e| e.into_inner());
        for s in current.into_iter().filter(|s| !s.gauge) {
            b.insert(s.name, s.value as u64);
        }
    }

    /// Installs the bootstrap's `stats_config`.
    pub fn configure(&self, config: StatsConfig) {
        self.config.store(Some(Arc::new(config)));
        self.tagged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// `name`'s tag-extracted name and tags, as `/stats/prometheus` prints them.
    pub fn tagged(&self, name: &str) -> Arc<tags::Tagged> {
        static DEFAULTS: OnceLock<tags::TagProducer> = OnceLock::new();
        let mut cache = self.tagged.lock().unwrap_or_else(|e| e.into_inner());
        let config = self.config.load();
        let producer = match config.as_deref() {
            Some(c) => &c.tags,
            None => DEFAULTS.get_or_init(tags::TagProducer::envoy_defaults),
        };
        cache.get(name, producer)
    }

    /// Keeps the stats `stats_matcher` accepts.
    fn accepted<T>(&self, mut list: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
        if let Some(c) = self.config.load().as_deref() {
            list.retain(|v| c.matcher.accepts(name(v)));
        }
        list
    }

    /// Adds stats computed on every read to what the cells hold (each cluster's
    /// circuit-breaker gauges, from its counts). Set once, at start.
    pub fn set_computed(&self, computed: Computed) {
        let _ = self.computed.set(computed);
    }

    /// Index of the block the control thread writes (admin's own listener, DNS, ...).
    pub fn control_core(&self) -> usize {
        self.cores - 1
    }

    /// The scope `prefix` of family `S`, created on first use. Called at configuration
    /// time only, never per request.
    pub fn scope<S: StatNames>(&self, prefix: &str) -> Arc<Scope> {
        self.scope_with_workers::<S>(prefix, &[])
    }

    /// As [`Store::scope`], also reporting the stats in `per_worker` per core.
    pub fn scope_with_workers<S: StatNames>(
        &self,
        prefix: &str,
        per_worker: &'static [usize],
    ) -> Arc<Scope> {
        let mut scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let mut prefix: Arc<str> = prefix.into();
        // Families sharing a prefix (a cluster's stats and its update stats) share it.
        if let Some(((p, _), _)) = scopes.range((prefix.clone(), "")..).next() {
            if *p == prefix {
                prefix = p.clone();
            }
        }
        scopes
            .entry((prefix.clone(), S::NAMES[0]))
            .or_insert_with(|| Arc::new(self.new_scope::<S>(prefix, per_worker)))
            .clone()
    }

    /// Cells as [`Store::scope`]'s that no stats output shows (Envoy keeps no stats for
    /// what they count, e.g. internal listeners).
    pub fn detached_scope<S: StatNames>(&self) -> Arc<Scope> {
        Arc::new(self.new_scope::<S>("".into(), &[]))
    }

    fn new_scope<S: StatNames>(&self, prefix: Arc<str>, per_worker: &'static [usize]) -> Scope {
        Scope {
            prefix,
            family: Family::of::<S>(),
            cores: (0..self.cores)
                .map(|_| CoreCells::new(S::N, S::HISTOGRAMS.len()))
                .collect(),
            per_worker,
        }
    }

    /// Every histogram, merged over cores, sorted by name.
    pub fn histograms(&self) -> Vec<HistValue> {
        let scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for scope in scopes.values() {
            for (i, name) in scope.family.histograms.iter().enumerate() {
                let cells = scope.cores.iter().filter_map(|c| c.hists()).map(|h| &h[i]);
                let h = HistValue::merge(format!("{}{}", scope.prefix, name), cells);
                if h.count > 0 || !scope.family.lazy_histograms.contains(&i) {
                    out.push(h);
                }
            }
        }
        out.extend(self.istio_stats().1);
        out.sort_by(|a, b| a.name.cmp(&b.name));
        self.accepted(out, |h| &h.name)
    }
}

/// Declares a stat family: an enum of indices and its names.
#[macro_export]
macro_rules! stat_family {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($var:ident = $s:literal),+ $(,)? } gauges [$($g:ident),*] $(set [$($set:ident),*])? $(lazy_stats [$($ls:ident),*])? $(codes $c:literal)? $(histograms [$($h:literal),*])? $(lazy_histograms [$($lh:literal),*])? $(lazy $lazy:literal)?) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        $vis enum $name { $($var),+ }
        impl $crate::stats::StatNames for $name {
            const N: usize = [$($s),+].len();
            const NAMES: &'static [&'static str] = &[$($s),+];
            const GAUGES: &'static [usize] = &[$($name::$g as usize),*];
            $(const SET: &'static [usize] = &[$($name::$set as usize),*];)?
            $(const LAZY_STATS: &'static [usize] = &[$($name::$ls as usize),*];)?
            $(const LAZY_HISTOGRAMS: &'static [usize] = &[$($lh),*];)?
            $(const CODES: &'static str = $c;)?
            $(const HISTOGRAMS: &'static [&'static str] = &[$($h),*];)?
            const LAZY: bool = false $(|| $lazy)?;
        }
    };
}

mod families;
pub use families::*;

/// Adds one to `HttpStat::DownstreamRqNxx` style families by status class.
pub fn status_class_index(status: u16, base_1xx: usize) -> usize {
    base_1xx + (status / 100).clamp(1, 5) as usize - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn histogram_enums_index_their_names() {
        let c = <ClusterStat as StatNames>::HISTOGRAMS;
        assert_eq!(
            c[ClusterHistogram::UpstreamRqTime as usize],
            "upstream_rq_time"
        );
        assert_eq!(
            c[ClusterHistogram::UpstreamCxConnectMs as usize],
            "upstream_cx_connect_ms"
        );
        let h = <HttpStat as StatNames>::HISTOGRAMS;
        assert_eq!(
            h[HttpHistogram::DownstreamRqTime as usize],
            "downstream_rq_time"
        );
    }

    #[test]
    fn cells_sum_across_cores_and_gauges_go_down() {
        let store = Store::new(2);
        let s = store.scope_with_workers::<ListenerStat>(
            "listener.x.",
            &[ListenerStat::DownstreamCxTotal as usize],
        );
        s.core(0).inc(ListenerStat::DownstreamCxTotal as usize);
        s.core(1).inc(ListenerStat::DownstreamCxTotal as usize);
        s.core(1).inc(ListenerStat::DownstreamCxActive as usize);
        s.core(0).dec(ListenerStat::DownstreamCxActive as usize);
        assert_eq!(s.total(ListenerStat::DownstreamCxTotal as usize), 2);
        assert_eq!(s.total(ListenerStat::DownstreamCxActive as usize), 0);
        let snap = store.snapshot();
        let w1 = snap
            .iter()
            .find(|v| v.name == "listener.x.worker_1.downstream_cx_total")
            .unwrap();
        assert_eq!(w1.value, 1);
        // The same prefix gives the same cells.
        let again = store.scope::<ListenerStat>("listener.x.");
        assert_eq!(again.total(ListenerStat::DownstreamCxTotal as usize), 2);
    }

    #[test]
    fn families_with_one_prefix_share_it_and_keep_their_own_cells() {
        let store = Store::new(2);
        let c = store.scope::<ClusterStat>("cluster.a.");
        let u = store.scope::<ClusterUpdateStat>("cluster.a.");
        assert!(Arc::ptr_eq(&c.prefix, &u.prefix));
        assert!(!Arc::ptr_eq(&c, &u));
        assert!(Arc::ptr_eq(
            &u,
            &store.scope::<ClusterUpdateStat>("cluster.a.")
        ));
        u.core(1).inc(ClusterUpdateStat::UpdateSuccess as usize);
        assert_eq!(u.total(ClusterUpdateStat::UpdateSuccess as usize), 1);
        assert_eq!(c.total(0), 0);
        let other = store.scope::<ClusterStat>("cluster.ab.");
        assert!(!Arc::ptr_eq(&c.prefix, &other.prefix));
    }

    #[test]
    fn shared_values_live_as_long_as_someone_holds_them() {
        let store = Store::new(1);
        let a = store.shared::<AtomicU64>("k");
        a.store(3, Ordering::Relaxed);
        // A reconversion asks again while the old configuration still holds it: the same.
        assert_eq!(store.shared::<AtomicU64>("k").load(Ordering::Relaxed), 3);
        assert_eq!(
            store.shared::<AtomicU64>("other").load(Ordering::Relaxed),
            0
        );
        drop(a);
        // Nobody holds it any more: a new one.
        assert_eq!(store.shared::<AtomicU64>("k").load(Ordering::Relaxed), 0);
    }

    #[test]
    fn dead_shared_values_are_swept_in_passes_not_on_every_miss() {
        let store = Store::new(1);
        let mut held = Vec::new();
        for i in 0..10_000 {
            let v = store.shared::<AtomicU64>(&format!("k{i}"));
            v.store(i, Ordering::Relaxed);
            // Every other one stays held, as clusters still in a configuration do.
            if i % 2 == 0 {
                held.push(v);
            }
        }
        let m = store.shared.lock().unwrap();
        assert!(m.len() <= 2 * held.len() + 64, "{} values kept", m.len());
        drop(m);
        assert_eq!(
            store.shared::<AtomicU64>("k4242").load(Ordering::Relaxed),
            4242
        );
        assert_eq!(
            store.shared::<AtomicU64>("k4243").load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn status_classes() {
        let b = HttpStat::DownstreamRq1xx as usize;
        assert_eq!(
            status_class_index(204, b),
            HttpStat::DownstreamRq2xx as usize
        );
        assert_eq!(
            status_class_index(503, b),
            HttpStat::DownstreamRq5xx as usize
        );
        assert_eq!(
            status_class_index(99, b),
            HttpStat::DownstreamRq1xx as usize
        );
    }
}

stat_family! {
    /// Per xDS subscription: `listener_manager.lds.`, `cluster_manager.cds.`,
    /// `http.<stat_prefix>.rds.<name>.`, `cluster.<name>.` (EDS), as Envoy names them.
    pub enum XdsStat {
        UpdateAttempt = "update_attempt",
        UpdateSuccess = "update_success",
        UpdateRejected = "update_rejected",
        UpdateFailure = "update_failure",
        UpdateEmpty = "update_empty",
        InitFetchTimeout = "init_fetch_timeout",
    } gauges []
}

stat_family! {
    /// `control_plane.`: the ADS stream.
    pub enum ControlPlaneStat {
        ConnectedState = "connected_state",
        StreamsOpened = "streams_opened",
        StreamsClosed = "streams_closed",
    } gauges [ConnectedState]
}
