//! When something warming stops being waited for: a listener for its routes, a cluster
//! for its endpoints (their config sources' `initial_fetch_timeout`).

use std::sync::Arc;
use std::time::Instant;

use super::Resources;

impl Resources {
    /// The earliest instant at which something warming times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(known) = self.deadline.get() {
            return known;
        }
        let at = self.scan_deadlines();
        self.deadline.set(Some(at));
        at
    }

    /// Forgets [`Resources::next_deadline`]'s answer: something may have changed.
    pub(super) fn changing(&mut self) {
        self.deadline.set(None);
    }

    fn scan_deadlines(&self) -> Option<Instant> {
        let listeners = self.listeners.iter().filter_map(|(n, h)| {
            let active = self
                .active
                .get(n)
                .is_some_and(|a| Arc::ptr_eq(&a.model, &h.model));
            (!active)
                .then_some(h)
                .and_then(|h| h.fetch_timeout.map(|t| h.since + t))
        });
        // The timeout first: istiod's clusters have none (`0s`), so no lookup is made.
        let clusters = self.clusters.values().filter_map(|h| {
            let t = h.fetch_timeout?;
            let waiting = h
                .model
                .eds_service
                .as_ref()
                .is_some_and(|s| !self.endpoints.contains_key(s));
            waiting.then(|| h.since + t)
        });
        listeners.chain(clusters).min()
    }
}
