//! Circuit breakers (`Cluster.circuit_breakers`): limits on a cluster's connections,
//! pending requests, active requests and retries that hold for the whole proxy, as in
//! Envoy, not per core.
//!
//! Ownership: the counts of a limited resource are atomics shared by the cores (one
//! `fetch_add` and one `fetch_sub` per use: no lock, but a cache line the cores share). A
//! resource whose limit is 2^32−1 or more (istiod's default for every service cluster) is
//! not counted at all, so it costs nothing; its `remaining_*` gauge is derived from the
//! per-core `upstream_*_active` stats when read. A request waiting for a connection at a full
//! `max_connections` is woken through a `tokio::sync::Notify`, whose wait list is locked
//! only while such requests exist.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::stats::Padded;

/// A limit this large is no limit (istiod writes 2^32−1).
pub const UNLIMITED: u64 = u32::MAX as u64;

/// One priority's thresholds; Envoy's defaults when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
    pub track_remaining: bool,
    /// `retry_budget`: retries outstanding may be `percent_milli`/100,000 of the active
    /// and pending requests, at least `min_concurrency`; it replaces `max_retries`.
    pub retry_budget: Option<RetryBudget>,
}

/// `Thresholds.retry_budget` (Envoy's defaults: 20%, at least 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Thousandths of a percent.
    pub percent_milli: u64,
    pub min_concurrency: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
            retry_budget: None,
        }
    }
}

/// A counted resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections = 0,
    Pending = 1,
    Requests = 2,
    /// Retries outstanding (`max_retries`).
    Retries = 3,
}

/// The shared counts of the limited resources, each on a cache line of its own. They live
/// as long as a permit or a configuration holds them, and a reconverted cluster with the
/// same thresholds gets the same counts (see the store's `shared`), as Envoy keeps a
/// cluster's resource manager across updates that do not change it.
#[derive(Default)]
pub struct Counts {
    open: [Padded<AtomicU64>; 4],
    /// Requests waiting for a connection at `max_connections` (whether or not pending
    /// requests are limited).
    waiting: Padded<AtomicU64>,
    /// Woken when a connection closes (pending requests wait for one).
    pub released: tokio::sync::Notify,
}

impl Counts {
    /// How many of `r` are in use.
    pub fn current(&self, r: Resource) -> u64 {
        self.open[r as usize].0.load(Ordering::SeqCst)
    }

    /// Counts a request waiting for a connection until the guard drops.
    pub fn wait(self: &Arc<Self>) -> Waiting {
        self.waiting.0.fetch_add(1, Ordering::SeqCst);
        Waiting(self.clone())
    }
}

/// One request waiting for a connection (see [`Counts::wait`]).
pub struct Waiting(Arc<Counts>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `per_host_thresholds.max_connections`: each host's connections, counted across the
/// cores (a host's count is made the first time a connection to it is opened).
#[derive(Default)]
pub struct HostLimits {
    hosts: arc_swap::ArcSwap<rustc_hash::FxHashMap<std::net::SocketAddr, Arc<HostCount>>>,
}

/// One host's connections, and the requests waiting for one of them to close.
#[derive(Default)]
pub struct HostCount {
    open: Padded<AtomicU64>,
    waiting: AtomicU64,
    pub released: tokio::sync::Notify,
}

impl HostCount {
    /// Counts a request waiting for one of the host's connections to close.
    pub fn wait(self: &Arc<Self>) -> HostWaiting {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        HostWaiting(self.clone())
    }
}

/// See [`HostCount::wait`].
pub struct HostWaiting(Arc<HostCount>);

impl Drop for HostWaiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HostLimits {
    fn count(&self, addr: std::net::SocketAddr) -> Arc<HostCount> {
        if let Some(c) = self.hosts.load().get(&addr) {
            return c.clone();
        }
        self.hosts.rcu(|m| {
            let mut m = (**m).clone();
            m.entry(addr).or_default();
            m
        });
        self.hosts.load()[&addr].clone()
    }

    /// A place for one more connection to `addr`, or (at the limit) the host's count to
    /// wait on.
    pub fn take(
        &self,
        addr: std::net::SocketAddr,
        limit: u64,
    ) -> Result<Arc<HostCount>, Arc<HostCount>> {
        let c = self.count(addr);
        match c
            .open
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(_) => Ok(c),
            Err(_) => Err(c),
        }
    }
}

/// One use of a limited resource, given back on drop: the cluster's, and for a connection
/// to a host under `per_host_thresholds`, the host's.
pub struct Permit {
    counts: Option<Arc<Counts>>,
    resource: Resource,
    host: Option<Arc<HostCount>>,
}

impl Permit {
    /// Whether requests wait for a connection of this cluster (or of this host).
    pub fn has_waiters(&self) -> bool {
        self.counts
            .as_ref()
            .is_some_and(|c| c.waiting.0.load(Ordering::SeqCst) > 0)
            || self
                .host
                .as_ref()
                .is_some_and(|h| h.waiting.load(Ordering::SeqCst) > 0)
    }

    /// Adds a place under `addr`'s own connection limit.
    pub fn with_host(p: Option<Permit>, host: Arc<HostCount>) -> Permit {
        match p {
            Some(mut p) => {
                p.host = Some(host);
                p
            }
            None => Permit {
                counts: None,
                resource: Resource::Connections,
                host: Some(host),
            },
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(counts) = &self.counts {
            counts.open[self.resource as usize]
                .0
                .fetch_sub(1, Ordering::SeqCst);
            // The wakeup's wait list has a lock: touched only while requests wait at a
            // full connection limit, never on the ordinary path.
            if self.resource == Resource::Connections && counts.waiting.0.load(Ordering::SeqCst) > 0
            {
                counts.released.notify_waiters();
            }
        }
        if let Some(h) = &self.host {
            h.open.0.fetch_sub(1, Ordering::SeqCst);
            if h.waiting.load(Ordering::SeqCst) > 0 {
                h.released.notify_waiters();
            }
        }
    }
}

/// A request's place under `max_requests` (see [`Breakers::acquire_request`]).
pub struct RequestPermit<'a>(&'a Counts);

impl Drop for RequestPermit<'_> {
    fn drop(&mut self) {
        self.0.open[Resource::Requests as usize]
            .0
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cluster's circuit breakers: its DEFAULT and HIGH thresholds (requests are DEFAULT
/// priority: routes set no other), the counts and the gauge scopes.
pub struct Breakers {
    pub default: Thresholds,
    pub high: Thresholds,
    /// Counts, when a DEFAULT limit is below [`UNLIMITED`].
    pub counts: Option<Arc<Counts>>,
    /// `cluster.<name>.circuit_breakers.`: its gauges (`<priority>.cx_open`, ... and
    /// `remaining_*` with `track_remaining`) are computed when read, from the counts
    /// (admin's `breaker_stats`), so no cluster holds cells for them.
    pub stats_prefix: Arc<str>,
    /// `per_host_thresholds`: the DEFAULT priority's `max_connections` per host, and the
    /// hosts' counts.
    pub per_host: Option<(u64, Arc<HostLimits>)>,
}

impl Breakers {
    fn limit(&self, r: Resource) -> u64 {
        match r {
            Resource::Connections => self.default.max_connections,
            Resource::Pending => self.default.max_pending_requests,
            Resource::Requests => self.default.max_requests,
            Resource::Retries => self.default.max_retries,
        }
    }

    /// Counts one `r`: `Ok(None)` when `r` is not limited, `Err(())` when at its limit.
    #[inline]
    fn take(&self, r: Resource) -> Result<Option<&Arc<Counts>>, ()> {
        let Some(counts) = &self.counts else {
            return Ok(None);
        };
        let limit = self.limit(r);
        if limit >= UNLIMITED {
            return Ok(None);
        }
        // Never above the limit, even for a moment: a refused taker must not make a
        // concurrent one fail, nor hide a slot from a woken waiter.
        counts.open[r as usize]
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| ())?;
        Ok(Some(counts))
    }

    /// Takes one `r` for as long as the permit lives (a connection's outlives the
    /// snapshot): `Ok(None)` when `r` is not limited, `Err(())` when at its limit.
    #[allow(clippy::result_unit_err)]
    pub fn acquire(&self, r: Resource) -> Result<Option<Permit>, ()> {
        Ok(self.take(r)?.map(|counts| Permit {
            counts: Some(counts.clone()),
            resource: r,
            host: None,
        }))
    }

    /// The most retries that may be outstanding now: `max_retries`, or with a retry budget
    /// its share of the requests active and pending (`active` reads the per-core stats
    /// when requests are not counted), as Envoy's budget computes it.
    pub fn retry_limit(&self, active: impl Fn() -> u64) -> u64 {
        match self.default.retry_budget {
            None => self.default.max_retries,
            Some(b) => {
                let load =
                    self.in_use(Resource::Requests, active()) + self.in_use(Resource::Pending, 0);
                (b.percent_milli * load / 100_000).max(b.min_concurrency)
            }
        }
    }

    /// A retry's place under `max_retries` or the retry budget: `Ok(None)` when retries
    /// are not limited, `Err(())` when at the limit.
    #[allow(clippy::result_unit_err)]
    pub fn acquire_retry(&self, active: impl Fn() -> u64) -> Result<Option<Permit>, ()> {
        let Some(counts) = &self.counts else {
            return Ok(None);
        };
        let limit = self.retry_limit(active);
        if limit >= UNLIMITED {
            return Ok(None);
        }
        let r = Resource::Retries;
        counts.open[r as usize]
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| ())?;
        Ok(Some(Permit {
            counts: Some(counts.clone()),
            resource: r,
            host: None,
        }))
    }

    /// A request's place under `max_requests`, borrowed from the snapshot the request
    /// holds: no reference count to touch per request.
    #[inline]
    #[allow(clippy::result_unit_err)]
    pub fn acquire_request(&self) -> Result<Option<RequestPermit<'_>>, ()> {
        Ok(self.take(Resource::Requests)?.map(|c| RequestPermit(c)))
    }

    /// In use of `r`: the shared count, or `untracked` (the per-core stats' sum) for a
    /// resource that is not counted.
    pub fn in_use(&self, r: Resource, untracked: u64) -> u64 {
        match &self.counts {
            Some(c) if self.limit(r) < UNLIMITED => c.current(r),
            _ => untracked,
        }
    }

    /// Whether `r` is at its DEFAULT limit (its `*_open` gauge).
    pub fn is_open(&self, r: Resource, untracked: u64) -> bool {
        self.in_use(r, untracked) >= self.limit(r)
    }
}
