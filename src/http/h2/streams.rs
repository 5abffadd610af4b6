//! What one downstream HTTP/2 connection knows about its streams: how many are open and
//! when the last one ended (for the connection idle timeout), and how many ended in an
//! early client reset (the rapid-reset guard, CVE-2023-44487).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::ctx::DrainEvent;

/// A stream the client resets within this long of its start counts as premature (Envoy's
/// `overload.premature_reset_min_stream_lifetime_seconds`).
pub const PREMATURE_RESET_LIFETIME: Duration = Duration::from_secs(1);

/// Envoy's `overload.premature_reset_total_stream_count`: once this many streams have
/// closed, a connection where half of them were premature resets is abusive; before that,
/// half of this many premature resets already are.
pub const PREMATURE_RESET_STREAM_COUNT: u32 = 500;

/// A connection's stream bookkeeping, shared by its accept loop and its stream tasks (all
/// on one core).
pub struct Streams {
    open: Cell<u32>,
    /// When the last stream ended, or the connection started.
    last: Cell<Instant>,
    closed: Cell<u32>,
    premature: Cell<u32>,
    /// Raised once the client has reset too many streams early.
    abusive: DrainEvent,
}

impl Streams {
    pub fn new() -> Self {
        Streams {
            open: Cell::new(0),
            last: Cell::new(Instant::now()),
            closed: Cell::new(0),
            premature: Cell::new(0),
            abusive: DrainEvent::default(),
        }
    }

    /// Resolves once the connection has had no stream for `idle` (never without one).
    pub async fn idle_for(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let wait = if self.open.get() > 0 {
                idle
            } else {
                idle.saturating_sub(self.last.get().elapsed())
            };
            if wait.is_zero() && self.open.get() == 0 {
                return;
            }
            monoio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Resolves once the client has reset so many streams within
    /// [`PREMATURE_RESET_LIFETIME`] that serving it costs more than it is worth: at least
    /// half of [`PREMATURE_RESET_STREAM_COUNT`] premature resets, or, past that many
    /// closed streams, premature resets making up half of them (Envoy's rule).
    pub async fn abusive(&self) {
        self.abusive.wait().await
    }

    /// Records that a stream which lived `lifetime` ended, reset by the client or not.
    fn closed(&self, lifetime: Duration, client_reset: bool) {
        let closed = self.closed.get() + 1;
        self.closed.set(closed);
        if client_reset && lifetime < PREMATURE_RESET_LIFETIME {
            self.premature.set(self.premature.get() + 1);
        }
        let premature = self.premature.get();
        let over = if closed < PREMATURE_RESET_STREAM_COUNT {
            premature >= PREMATURE_RESET_STREAM_COUNT / 2
        } else {
            premature * 2 >= closed
        };
        if over && !self.abusive.raised() {
            self.abusive.raise();
        }
    }
}

/// One open stream: counted as open until it ends through [`OpenStream::ended`] or is
/// dropped (a panic), when it counts as closed.
pub struct OpenStream {
    streams: Rc<Streams>,
    started: Instant,
    client_reset: bool,
}

impl OpenStream {
    pub fn new(streams: &Rc<Streams>) -> Self {
        streams.open.set(streams.open.get() + 1);
        OpenStream {
            streams: streams.clone(),
            started: Instant::now(),
            client_reset: false,
        }
    }

    /// The stream ended; `client_reset` when the client reset it.
    pub fn ended(mut self, client_reset: bool) {
        self.client_reset = client_reset;
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let s = &self.streams;
        s.open.set(s.open.get() - 1);
        s.last.set(Instant::now());
        s.closed(self.started.elapsed(), self.client_reset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(s: &Rc<Streams>, client_reset: bool) {
        OpenStream::new(s).ended(client_reset);
    }

    #[test]
    fn half_the_count_of_early_resets_is_abusive_before_the_count() {
        let s = Rc::new(Streams::new());
        for _ in 0..PREMATURE_RESET_STREAM_COUNT / 2 - 1 {
            end(&s, true);
        }
        assert!(!s.abusive.raised());
        end(&s, true);
        assert!(s.abusive.raised());
    }

    #[test]
    fn past_the_count_early_resets_must_make_up_half_of_the_streams() {
        let s = Rc::new(Streams::new());
        // Normal streams with a steady trickle of cancellations stay under the bar.
        for i in 0..2000 {
            end(&s, i % 3 == 0);
        }
        assert!(
            !s.abusive.raised(),
            "a third of the streams reset is allowed"
        );
        for _ in 0..1000 {
            end(&s, true);
        }
        assert!(s.abusive.raised());
    }

    #[test]
    fn streams_ended_normally_or_by_the_proxy_never_count() {
        let s = Rc::new(Streams::new());
        for _ in 0..5000 {
            end(&s, false);
        }
        drop(OpenStream::new(&s)); // a stream task that panicked
        assert!(!s.abusive.raised());
        assert_eq!(s.open.get(), 0);
        assert_eq!(s.closed.get(), 5001);
    }
}
