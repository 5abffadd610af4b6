//! Reading every stat: the store's scopes summed over cores, named as Envoy names them.
//!
//! A big mesh has hundreds of thousands of stats (10,000 clusters: 560,000), and a reader
//! often wants a few: pilot-agent's readiness check asks `/stats?usedonly` with a filter.
//! Each stat's name is built in one reused buffer and owned only when the reader keeps it
//! (every stat named as a `String` first took 120 MB for a probe that kept a handful).

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::{StatValue, Store, CODES};

/// Which stats a read keeps, by full name and whether the stat was used (moved, or set as
/// Envoy sets it at start).
pub type Keep<'a> = &'a dyn Fn(&str, bool) -> bool;

impl Store {
    /// Every stat, sorted by name; counters since the last `/reset_counters`.
    pub fn snapshot(&self) -> Vec<StatValue> {
        self.snapshot_where(&|_, _| true)
    }

    /// As [`Store::snapshot`], only the stats `keep` keeps.
    pub fn snapshot_where(&self, keep: Keep<'_>) -> Vec<StatValue> {
        let mut out = self.raw_snapshot(keep);
        let b = self.baselines.lock().unwrap_or_else(|e| e.into_inner());
        if !b.is_empty() {
            for s in out.iter_mut().filter(|s| !s.gauge) {
                if let Some(&base) = b.get(&s.name) {
                    s.value = (s.value as u64).wrapping_sub(base) as i64;
                }
            }
        }
        out
    }

    /// The stats `keep` keeps, and `stats_matcher` accepts, as their cells hold them,
    /// sorted by name.
    pub(super) fn raw_snapshot(&self, keep: Keep<'_>) -> Vec<StatValue> {
        let config = self.config.load();
        let kept = |name: &str, used: bool| {
            keep(name, used) && config.as_deref().is_none_or(|c| c.matcher.accepts(name))
        };
        let mut out = Vec::new();
        let mut name = String::new();
        let push = |out: &mut Vec<StatValue>, name: &str, value: i64, gauge: bool, used| {
            if kept(name, used) {
                out.push(StatValue {
                    name: name.to_owned(),
                    value,
                    gauge,
                    used,
                });
            }
        };
        let scopes = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        for scope in scopes.values() {
            // A code's counter exists once a response with it was counted, as in Envoy.
            if !scope.family.codes.is_empty() {
                let mut totals = [0u64; CODES];
                for core in scope.cores.iter() {
                    for (t, c) in totals.iter_mut().zip(core.codes().into_iter().flatten()) {
                        *t += c.load(Ordering::Relaxed);
                    }
                }
                for (i, &t) in totals.iter().enumerate().filter(|(_, &t)| t > 0) {
                    name.clear();
                    let _ = write!(name, "{}{}{}", scope.prefix, scope.family.codes, i + 100);
                    push(&mut out, &name, t as i64, false, true);
                }
            }
            for (i, stat) in scope.family.names.iter().enumerate() {
                let gauge = scope.family.gauges.contains(&i);
                if (scope.family.lazy || scope.family.lazy_stats.contains(&i))
                    && scope.cores.iter().all(|c| c.get(i) == 0)
                {
                    continue;
                }
                let value = scope.total(i);
                name.clear();
                let _ = write!(name, "{}{}", scope.prefix, stat);
                let used = value != 0 || scope.family.set.contains(&i);
                push(&mut out, &name, value, gauge, used);
                if scope.per_worker.contains(&i) {
                    for k in 0..self.cores - 1 {
                        let value = scope.on_core(k, i) as i64;
                        name.clear();
                        let _ = write!(name, "{}worker_{k}.{stat}", scope.prefix);
                        push(&mut out, &name, value, gauge, value != 0);
                    }
                }
            }
        }
        drop(scopes);
        if let Some(computed) = self.computed.get() {
            computed(&mut |name, value, gauge, used| push(&mut out, name, value, gauge, used));
        }
        if cfg!(feature = "count-allocs") {
            let value = crate::io::HEAP_ALLOCATIONS.load(Ordering::Relaxed) as i64;
            push(&mut out, "server.heap_allocations", value, false, true);
        }
        out.extend(
            self.istio_stats()
                .0
                .into_iter()
                .filter(|s| kept(&s.name, s.used)),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        // Two clusters may share a stat name (`alt_stat_name`): their computed gauges are
        // listed once, as Envoy's shared scope would.
        out.dedup_by(|a, b| a.name == b.name);
        out
    }
}
