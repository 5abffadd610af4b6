//! One timer per core for the many waits that seldom end by time: a cold connection's
//! idle timeout and its turn in a gradual drain. Each wait is an entry in the core's
//! ordered set, woken by one task that sleeps until the earliest. A monoio timer is 640
//! bytes, aligned to 128, and held inline by every future that awaits it, so each cold
//! connection would hold one (and the padding its alignment spreads) for as long as it
//! is open.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Parked;

/// A core's pending deadlines.
#[derive(Default)]
pub struct Deadlines {
    /// (when, which) → the waiting task.
    waits: RefCell<BTreeMap<(Instant, u64), Waker>>,
    next: Cell<u64>,
    /// The task that wakes what is due: parked until the earliest deadline changes.
    sweeper: Parked,
    /// The deadline it sleeps until, if it sleeps.
    armed: Cell<Option<Instant>>,
}

impl Deadlines {
    /// A wait that ends `after` from now; never, with `None`.
    pub fn after(&self, after: Option<Duration>) -> Deadline<'_> {
        Deadline {
            set: self,
            at: after.and_then(|d| Instant::now().checked_add(d)),
            key: None,
        }
    }

    fn insert(&self, at: Instant, waker: Waker) -> (Instant, u64) {
        let key = (at, self.next.get());
        self.next.set(key.1 + 1);
        self.waits.borrow_mut().insert(key, waker);
        if self.armed.get().is_none_or(|a| at < a) {
            // Earlier than the sweeper's sleep (or it does not sleep): it looks again.
            self.armed.set(None);
            self.sweeper.wake();
        }
        key
    }

    /// Runs the core's sweeper: sleeps until the earliest deadline (or while there is
    /// none), wakes every wait that is due, and again.
    pub async fn sweep(&self) {
        loop {
            std::future::poll_fn(|cx| self.sweeper.poll_until(cx, !self.waits.borrow().is_empty()))
                .await;
            let first = self.waits.borrow().keys().next().map(|k| k.0);
            let Some(first) = first else { continue };
            let left = first.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                self.armed.set(Some(first));
                // An earlier deadline inserted meanwhile disarms this sleep.
                monoio::select! {
                    _ = monoio::time::sleep(left) => {}
                    _ = std::future::poll_fn(|cx| {
                        let disarmed = self.armed.get().is_none();
                        self.sweeper.poll_until(cx, disarmed)
                    }) => {}
                }
                self.armed.set(None);
            }
            let now = Instant::now();
            loop {
                let due = {
                    let mut waits = self.waits.borrow_mut();
                    match waits.first_key_value() {
                        Some((k, _)) if k.0 <= now => waits.pop_first(),
                        _ => None,
                    }
                };
                let Some((_, waker)) = due else { break };
                waker.wake();
            }
        }
    }
}

/// Ready once its deadline has passed. Holds an entry in the core's set while it is
/// pending, removed when it ends or is dropped.
pub struct Deadline<'a> {
    set: &'a Deadlines,
    at: Option<Instant>,
    key: Option<(Instant, u64)>,
}

impl Future for Deadline<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.at else {
            return Poll::Pending;
        };
        if Instant::now() >= at {
            self.remove();
            return Poll::Ready(());
        }
        match self.key {
            None => self.key = Some(self.set.insert(at, cx.waker().clone())),
            Some(key) => {
                let mut waits = self.set.waits.borrow_mut();
                match waits.get_mut(&key) {
                    Some(w) if !w.will_wake(cx.waker()) => *w = cx.waker().clone(),
                    Some(_) => {}
                    None => {
                        // Woken early (the sweeper took it as due by its clock): again.
                        drop(waits);
                        self.key = Some(self.set.insert(at, cx.waker().clone()));
                    }
                }
            }
        }
        Poll::Pending
    }
}

impl Deadline<'_> {
    fn remove(&mut self) {
        if let Some(key) = self.key.take() {
            self.set.waits.borrow_mut().remove(&key);
        }
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::Deadlines;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    /// Waits end at their deadlines whatever order they were made in (an earlier one
    /// made after a later one wakes the sweeper's sleep); a dropped wait leaves nothing
    /// behind; `None` never ends.
    #[test]
    fn waits_end_at_their_deadlines_in_any_order() {
        runtime().block_on(async {
            let d = Rc::new(Deadlines::default());
            let sweeper = d.clone();
            monoio::spawn(async move { sweeper.sweep().await });
            let start = Instant::now();
            let late = {
                let d = d.clone();
                monoio::spawn(async move {
                    d.after(Some(Duration::from_millis(300))).await;
                    start.elapsed()
                })
            };
            monoio::time::sleep(Duration::from_millis(20)).await;
            let early = {
                let d = d.clone();
                monoio::spawn(async move {
                    d.after(Some(Duration::from_millis(50))).await;
                    start.elapsed()
                })
            };
            {
                let dropped = d.after(Some(Duration::from_millis(100)));
                let never = d.after(None);
                monoio::select! {
                    _ = dropped => panic!("dropped before its deadline"),
                    _ = never => panic!("a wait without a deadline ended"),
                    _ = monoio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
            let early = early.await;
            assert!(early >= Duration::from_millis(70), "{early:?}");
            assert!(
                early < Duration::from_millis(250),
                "{early:?}: woke with the later one"
            );
            let late = late.await;
            assert!(late >= Duration::from_millis(300), "{late:?}");
            assert!(d.waits.borrow().is_empty());
        });
    }
}
