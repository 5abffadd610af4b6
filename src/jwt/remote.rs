//! `remote_jwks`: a key set fetched over HTTP from a cluster, cached for `cache_duration`.
//!
//! The fetch runs on the control thread, never on a worker: a request that needs keys it
//! does not have asks for a fetch and waits for it (up to the fetch's own time limit),
//! without blocking its core. One fetch serves every core (Envoy fetches once per worker);
//! requests that arrive while it is in flight wait for the same one. `async_fetch` fetches
//! as soon as the configuration is loaded and again before the keys expire (or
//! `failed_refetch_duration` after a failure).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::jwks::Jwks;
use crate::stats::{JwtAuthnStat, Scope};

/// `JwksAsyncFetch`.
#[derive(Debug, Clone, Copy)]
pub struct AsyncFetch {
    pub failed_refetch: Duration,
}

/// One provider's remote key set and its fetch state.
pub struct RemoteJwks {
    pub uri: Box<str>,
    /// `http` or `https` (the cluster decides the transport; this is `:scheme`).
    pub scheme: Box<str>,
    pub authority: Box<str>,
    pub path: Box<str>,
    pub cluster: Box<str>,
    /// Each attempt's limit (`http_uri.timeout`).
    pub timeout: Duration,
    pub cache_duration: Duration,
    pub async_fetch: Option<AsyncFetch>,
    /// `retry_policy`: retries and their back-off (base, max).
    pub retries: u32,
    pub backoff: (Duration, Duration),
    pub stats: Arc<Scope>,
    keys: ArcSwapOption<Fetched>,
    in_flight: AtomicBool,
    done: tokio::sync::Notify,
}

struct Fetched {
    jwks: Arc<Jwks>,
    /// `None`: kept until replaced (`async_fetch`).
    expires: Option<Instant>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("uri", &self.uri)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The control thread's fetch queue (set once it runs) and what the configuration asked
/// for before it ran.
static FETCHER: OnceLock<tokio::sync::mpsc::UnboundedSender<Arc<RemoteJwks>>> = OnceLock::new();
// A lock, but never on the request path: only configuration (before the control thread's
// fetcher runs) and that fetcher's start take it.
#[allow(clippy::disallowed_types)]
static EARLY: std::sync::Mutex<Vec<Weak<RemoteJwks>>> = std::sync::Mutex::new(Vec::new());
/// The key sets configured now, by everything that configures them: a listener converted
/// again (every LDS push that touches it) with the same provider keeps its keys and its
/// fetch in flight instead of starting cold. Configuration-time only, like `EARLY`.
#[allow(clippy::disallowed_types)]
static LIVE: std::sync::Mutex<Vec<(String, Weak<RemoteJwks>)>> = std::sync::Mutex::new(Vec::new());

impl RemoteJwks {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uri: &str,
        (scheme, authority, path): (&str, &str, &str),
        cluster: &str,
        timeout: Duration,
        cache_duration: Duration,
        async_fetch: Option<AsyncFetch>,
        retries: u32,
        backoff: (Duration, Duration),
        stats: Arc<Scope>,
    ) -> Arc<RemoteJwks> {
        let key = format!(
            "{uri}\n{cluster}\n{timeout:?}\n{cache_duration:?}\n{:?}\n{retries}\n{backoff:?}\n{:p}",
            async_fetch.map(|a| a.failed_refetch),
            Arc::as_ptr(&stats),
        );
        let mut live = LIVE.lock().expect("not poisoned");
        live.retain(|(_, w)| w.strong_count() > 0);
        if let Some(r) = live
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return r;
        }
        let r = Arc::new(RemoteJwks {
            uri: uri.into(),
            scheme: scheme.into(),
            authority: authority.into(),
            path: path.into(),
            cluster: cluster.into(),
            timeout,
            cache_duration,
            async_fetch,
            retries,
            backoff,
            stats,
            keys: ArcSwapOption::empty(),
            in_flight: AtomicBool::new(false),
            done: tokio::sync::Notify::new(),
        });
        live.push((key, Arc::downgrade(&r)));
        drop(live);
        if r.async_fetch.is_some() {
            match FETCHER.get() {
                Some(_) => {
                    r.request();
                }
                None => EARLY.lock().expect("not poisoned").push(Arc::downgrade(&r)),
            }
        }
        r
    }

    /// The keys, while they are fresh.
    pub fn keys(&self) -> Option<Arc<Jwks>> {
        let f = self.keys.load();
        let f = f.as_ref()?;
        match f.expires {
            Some(t) if Instant::now() >= t => None,
            _ => Some(f.jwks.clone()),
        }
    }

    /// Asks the control thread for a fetch unless one is in flight. False: nothing will
    /// fetch (no control thread: `--mode validate`, unit tests).
    pub fn request(self: &Arc<Self>) -> bool {
        let Some(tx) = FETCHER.get() else {
            return false;
        };
        if self.in_flight.swap(true, Ordering::AcqRel) {
            return true;
        }
        if tx.send(self.clone()).is_err() {
            self.in_flight.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Fetches (or joins the fetch in flight) and waits for it to end, at most as long as
    /// its attempts and back-off may take.
    pub async fn fetch(self: Arc<Self>) {
        let done = self.done.notified();
        if !self.request() {
            return;
        }
        let attempts = self.retries.saturating_add(1);
        let limit = self
            .timeout
            .saturating_mul(attempts)
            .saturating_add(self.backoff.1.saturating_mul(self.retries))
            .saturating_add(Duration::from_secs(1));
        let _ = monoio::time::timeout(limit, done).await;
    }

    /// Records a fetch's end (`None`: it failed) and wakes the requests waiting for it.
    pub fn finish(&self, jwks: Option<Jwks>, core: usize) {
        match jwks {
            Some(jwks) => {
                self.stats
                    .core(core)
                    .inc(JwtAuthnStat::JwksFetchSuccess as usize);
                self.keys.store(Some(Arc::new(Fetched {
                    jwks: Arc::new(jwks),
                    expires: self
                        .async_fetch
                        .is_none()
                        .then(|| Instant::now() + self.cache_duration),
                })));
            }
            None => self
                .stats
                .core(core)
                .inc(JwtAuthnStat::JwksFetchFailed as usize),
        }
        self.in_flight.store(false, Ordering::Release);
        self.done.notify_waiters();
    }
}

/// Makes `tx` the fetch queue (once): the key sets configured so far with `async_fetch`
/// are queued at once.
pub fn register(tx: tokio::sync::mpsc::UnboundedSender<Arc<RemoteJwks>>) {
    if FETCHER.set(tx).is_err() {
        return;
    }
    let early = std::mem::take(&mut *EARLY.lock().expect("not poisoned"));
    for r in early.iter().filter_map(Weak::upgrade) {
        r.request();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(uri: &str, cache: u64, stats: &Arc<Scope>) -> Arc<RemoteJwks> {
        RemoteJwks::new(
            uri,
            ("http", "jwks.example", "/keys"),
            "jwks",
            Duration::from_secs(1),
            Duration::from_secs(cache),
            None,
            0,
            (Duration::ZERO, Duration::ZERO),
            stats.clone(),
        )
    }

    #[test]
    fn the_same_provider_converted_again_keeps_its_key_set() {
        let store = crate::stats::Store::new(1);
        let stats = store.scope::<JwtAuthnStat>("http.t.jwt_authn.");
        let a = make("http://jwks.example/keys", 60, &stats);
        let b = make("http://jwks.example/keys", 60, &stats);
        assert!(Arc::ptr_eq(&a, &b), "one key set, one cache");
        let c = make("http://jwks.example/keys", 61, &stats);
        assert!(
            !Arc::ptr_eq(&a, &c),
            "another cache duration is another key set"
        );
        drop((a, b));
        // Once no configuration holds it, a new one starts afresh.
        let d = make("http://jwks.example/keys", 60, &stats);
        assert_eq!(Arc::strong_count(&d), 1);
    }
}
