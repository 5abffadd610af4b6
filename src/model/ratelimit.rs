//! A token bucket shared by every core without a lock: the configured rate holds for the
//! whole proxy, as Envoy's local rate limit does (its buckets are shared by the workers).
//!
//! Envoy 1.40's bucket (`AtomicTokenBucketImpl`) starts full and refills continuously at
//! `tokens_per_fill / fill_interval`. So does this one, the same way: the bucket is one
//! atomic "virtual time" `t`, and the time banked at `now` is `min(now - t, full)`, where
//! `full` is the time `max_tokens` take to refill; each `per_token` of it is a token.
//! Taking a token moves `t` forward by `per_token` with one compare-and-swap
//! (relaxed-ordering atomics; the cell has its own cache line). A request that is not
//! limited costs one clock read, one load and one CAS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::Padded;

pub struct TokenBucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
    /// Nanoseconds one token takes to refill.
    per_token: u64,
    /// Nanoseconds `max_tokens` take to refill.
    full: u64,
    created: Instant,
    /// The virtual time, in nanoseconds on a clock that reads `full` at `created` (so the
    /// bucket starts full).
    t: Padded<AtomicU64>,
}

impl std::fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("max_tokens", &self.max_tokens)
            .field("tokens_per_fill", &self.tokens_per_fill)
            .field("fill_interval", &self.fill_interval)
            .finish()
    }
}

impl TokenBucket {
    /// A full bucket, as Envoy starts one. `max_tokens` 0 refuses everything.
    pub fn new(max_tokens: u64, tokens_per_fill: u64, fill_interval: Duration) -> Self {
        let per_token = (fill_interval.as_nanos() / u128::from(tokens_per_fill.max(1))).max(1);
        let per_token = u64::try_from(per_token).unwrap_or(u64::MAX);
        TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            per_token,
            full: per_token.saturating_mul(max_tokens),
            created: Instant::now(),
            t: Padded(AtomicU64::new(0)),
        }
    }

    fn clock(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.created).as_nanos();
        u64::try_from(since)
            .unwrap_or(u64::MAX)
            .saturating_add(self.full)
    }

    /// Time banked at `clock`, given virtual time `t`.
    fn banked(&self, clock: u64, t: u64) -> u64 {
        clock.saturating_sub(t).min(self.full)
    }

    /// Takes one token; false when none is available (a refused request takes none).
    pub fn try_take(&self, now: Instant) -> bool {
        let clock = self.clock(now);
        let mut t = self.t.0.load(Ordering::Relaxed);
        loop {
            let banked = self.banked(clock, t);
            if banked < self.per_token || self.max_tokens == 0 {
                return false;
            }
            let next = clock - banked + self.per_token;
            match self
                .t
                .0
                .compare_exchange_weak(t, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => t = seen,
            }
        }
    }

    /// Whole tokens available at `now` (`x-ratelimit-remaining`).
    pub fn remaining(&self, now: Instant) -> u64 {
        if self.max_tokens == 0 {
            return 0;
        }
        self.banked(self.clock(now), self.t.0.load(Ordering::Relaxed)) / self.per_token
    }

    /// Seconds until a token is available, rounded up; 0 when one is (`x-ratelimit-reset`).
    pub fn reset_secs(&self, now: Instant) -> u64 {
        let banked = self.banked(self.clock(now), self.t.0.load(Ordering::Relaxed));
        if banked >= self.per_token {
            return 0;
        }
        (self.per_token - banked).div_ceil(1_000_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_drains_then_refills_continuously() {
        let b = TokenBucket::new(3, 1, Duration::from_secs(2));
        let t0 = b.created;
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert_eq!(b.remaining(t0), 0);
        assert_eq!(b.reset_secs(t0), 2);
        assert_eq!(b.reset_secs(t0 + Duration::from_millis(1500)), 1);
        // One token per two seconds; refused requests took nothing.
        assert!(!b.try_take(t0 + Duration::from_millis(1999)));
        assert!(b.try_take(t0 + Duration::from_millis(2000)));
        assert!(!b.try_take(t0 + Duration::from_millis(2001)));
        // A long pause banks at most max_tokens.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.remaining(later), 3);
        assert_eq!(b.reset_secs(later), 0);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }

    #[test]
    fn zero_tokens_refuses_everything() {
        let b = TokenBucket::new(0, 1, Duration::from_secs(1));
        assert!(!b.try_take(b.created + Duration::from_secs(10)));
        assert_eq!(b.remaining(b.created), 0);
    }

    #[test]
    fn threads_share_one_bucket() {
        let b = std::sync::Arc::new(TokenBucket::new(1000, 1, Duration::from_secs(3600)));
        let now = b.created;
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_take(now)).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 1000);
    }
}
