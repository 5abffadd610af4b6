//! The overload manager's one resource monitor Istio configures:
//! `envoy.resource_monitors.global_downstream_max_connections`, a limit on the downstream
//! connections of every listener together (those with `ignore_global_conn_limit`, such as
//! Istio's 15021 readiness and 15090 metrics listeners, excepted).

use std::sync::atomic::{AtomicU64, Ordering};

/// The global downstream connection limit and the connections counted against it. Shared
/// by every core: one atomic add per accepted connection (not per request), and only when
/// a limit is configured.
#[derive(Debug)]
pub struct GlobalConnLimit {
    pub max: u64,
    active: AtomicU64,
}

impl GlobalConnLimit {
    pub fn new(max: u64) -> GlobalConnLimit {
        GlobalConnLimit {
            max,
            active: AtomicU64::new(0),
        }
    }

    /// Counts a new connection; `false` (and nothing counted) when the limit is reached.
    pub fn try_acquire(&self) -> bool {
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// A counted connection closed.
    pub fn release(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_limit_admits_up_to_max_and_frees_on_release() {
        let l = super::GlobalConnLimit::new(2);
        assert!(l.try_acquire() && l.try_acquire());
        assert!(!l.try_acquire());
        assert_eq!(l.active(), 2);
        l.release();
        assert!(l.try_acquire());
    }
}
