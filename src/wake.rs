//! What lets housekeeping sleep while there is nothing to look after, so an idle proxy
//! takes no timer wake-ups (and touches none of its code: the idle resident set stays
//! what start-up left): a core task parked until given work, and the control thread's
//! signal that a new snapshot was published.

use std::cell::Cell;
use std::task::{Context, Poll, Waker};

mod deadlines;
pub use deadlines::{Deadline, Deadlines};

/// Where a parked task leaves its waker; whoever gives it work wakes it.
#[derive(Default)]
pub struct Parked(Cell<Option<Waker>>);

impl Parked {
    /// Wakes the task if it is parked (a `Cell` read when it is not).
    pub fn wake(&self) {
        if let Some(w) = self.0.take() {
            w.wake();
        }
    }

    /// Ready when `work` says there is something to do; otherwise parks the task until
    /// [`Parked::wake`].
    pub fn poll_until(&self, cx: &Context<'_>, work: bool) -> Poll<()> {
        if work {
            return Poll::Ready(());
        }
        self.0.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// A core's memory freed in bulk (connections turning cold let go of their buffers and
/// futures): the allocator keeps freed pages for its purge delay and returns them only
/// when the thread next calls into it, which an idle core does not. A parked task
/// collects once the delay has passed.
#[derive(Default)]
pub struct Freed {
    parked: Parked,
    pending: Cell<bool>,
}

impl Freed {
    /// Notes that memory was freed (a `Cell` write and read once already noted).
    pub fn note(&self) {
        if !self.pending.replace(true) {
            self.parked.wake();
        }
    }

    /// Ready once something was noted since the last collect; clears the note.
    pub fn poll_noted(&self, cx: &Context<'_>) -> Poll<()> {
        let ready = self.parked.poll_until(cx, self.pending.get());
        if ready.is_ready() {
            self.pending.set(false);
        }
        ready
    }
}

/// Counts the snapshots published. The control thread's loops that follow the
/// configuration (health checks, outlier detection, DNS refresh) wait for the next one
/// rather than look again on a timer: an idle proxy takes no wake-ups.
static PUBLISHED: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// Follows publishes: `changed()` resolves after the next one.
pub fn published() -> tokio::sync::watch::Receiver<u64> {
    PUBLISHED.subscribe()
}

/// Tells the loops following the configuration that a new snapshot is current.
pub fn announce() {
    PUBLISHED.send_modify(|n| *n += 1);
}
