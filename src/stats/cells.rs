//! One core's share of a stats scope.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::{histogram, status_class_index, CODES};

/// One core's cells for one scope, made on the core's first write: in a big mesh most
/// clusters never see a request on most cores (10,000 clusters' counters on two idle
/// workers were 24 MB). Until then a core's share of a scope is this one pointer and the
/// family's sizes (24 bytes: a scope with three cores fits a 80-byte allocation, where
/// three inline blocks took 256; 20,000 scopes at 10,000 services). Not padded to a
/// cache line: after the first write a core only reads the pointer, and the block it
/// points to is allocated by the core that writes it, in its own heap.
pub struct CoreCells {
    block: OnceLock<Box<Block>>,
    n: u16,
    n_hists: u16,
}

/// What a core writes for a scope.
struct Block {
    cells: Box<[AtomicU64]>,
    /// Per-status-code counters, made on this core's first response for the scope (most
    /// scopes never see traffic on most cores, so none pays 4 KB for nothing).
    codes: OnceLock<Box<[AtomicU64]>>,
    /// Histogram cells, made on this core's first record for the scope.
    hists: OnceLock<Box<[histogram::HistCells]>>,
}

impl CoreCells {
    pub(super) fn new(n: usize, n_hists: usize) -> Self {
        CoreCells {
            block: OnceLock::new(),
            n: n as u16,
            n_hists: n_hists as u16,
        }
    }

    /// This core's block, made on first use (only the owning core writes, so only it
    /// makes it).
    #[inline]
    fn block(&self) -> &Block {
        self.block.get_or_init(|| {
            Box::new(Block {
                cells: (0..self.n).map(|_| AtomicU64::new(0)).collect(),
                codes: OnceLock::new(),
                hists: OnceLock::new(),
            })
        })
    }

    /// Records `ms` in histogram `idx` of the family.
    #[inline]
    pub fn record(&self, idx: usize, ms: u64) {
        let hists = self
            .block()
            .hists
            .get_or_init(|| (0..self.n_hists).map(|_| Default::default()).collect());
        hists[idx].record(ms);
    }

    /// Counts a response with `status` in its class counter (the family's `…_1xx` is
    /// at `base_1xx`) and in its own code's counter.
    #[inline]
    pub fn count_status(&self, status: u16, base_1xx: usize) {
        self.inc(status_class_index(status, base_1xx));
        if (100..600).contains(&status) {
            let codes = self
                .block()
                .codes
                .get_or_init(|| (0..CODES).map(|_| AtomicU64::new(0)).collect());
            let c = &codes[usize::from(status) - 100];
            c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// Adds one. Only the owning core writes, so this is a plain load and store.
    #[inline]
    pub fn inc(&self, idx: usize) {
        self.add(idx, 1);
    }

    /// Adds `n` (wrapping, so a gauge may be decremented with `sub`).
    #[inline]
    pub fn add(&self, idx: usize, n: u64) {
        let c = &self.cells()[idx];
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Sets a gauge that only this core writes.
    #[inline]
    pub fn set(&self, idx: usize, v: u64) {
        self.cells()[idx].store(v, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge.
    #[inline]
    pub fn dec(&self, idx: usize) {
        let c = &self.cells()[idx];
        c.store(c.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
    }

    pub(super) fn get(&self, idx: usize) -> u64 {
        self.block
            .get()
            .map_or(0, |b| b.cells[idx].load(Ordering::Relaxed))
    }

    #[inline]
    fn cells(&self) -> &[AtomicU64] {
        &self.block().cells
    }

    /// The per-status-code counters, if this core counted any.
    pub(super) fn codes(&self) -> Option<&[AtomicU64]> {
        Some(self.block.get()?.codes.get()?)
    }

    /// The histogram cells, if this core recorded any.
    pub(super) fn hists(&self) -> Option<&[histogram::HistCells]> {
        Some(self.block.get()?.hists.get()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ClusterStat, Store};

    #[test]
    fn an_unwritten_core_costs_a_scope_one_pointer_and_two_sizes() {
        // 20,000 scopes at 10,000 services, three cores each: 24 bytes a core keeps a
        // scope's cores in an 80-byte allocation.
        assert_eq!(std::mem::size_of::<CoreCells>(), 24);
        let store = Store::new(3);
        let s = store.scope::<ClusterStat>("cluster.c.");
        assert!((0..3).all(|c| s.core(c).block.get().is_none()));
        s.core(1)
            .count_status(503, ClusterStat::UpstreamRq1xx as usize);
        assert!(s.core(0).block.get().is_none() && s.core(2).block.get().is_none());
        assert_eq!(s.total(ClusterStat::UpstreamRq5xx as usize), 1);
        assert_eq!(
            s.core(1).codes().map(|c| c[403].load(Ordering::Relaxed)),
            Some(1)
        );
        assert!(s.core(1).hists().is_none());
    }
}
