//! Rust types generated from `proto/`, our subset of Envoy's v3 API (upstream package
//! names, message names and field numbers), and the descriptor pool that gives them the
//! proto3 JSON mapping.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost_reflect::DescriptorPool;

/// The encoded `FileDescriptorSet` of everything in `proto/`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The decoded pool and when it was last handed out.
static POOL: Mutex<Option<(DescriptorPool, Instant)>> = Mutex::new(None);

/// Notified each time the pool is decoded: the control thread's release of an idle pool
/// sleeps on it while no pool is held.
pub static DECODED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The descriptor pool of `proto/` (a cheap handle: clones share one decoded pool).
///
/// Decoded on first use and kept while it is in use; [`release_idle_pool`] drops it once
/// it has not been asked for a while. Decoded it is about 4.6 MB of heap, needed only
/// while the bootstrap is parsed or configuration dumped (xDS resources are checked
/// against static tables: src/xds/unknown.rs) — never on the request path.
pub fn pool() -> DescriptorPool {
    let mut cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let (pool, used) = cached.get_or_insert_with(|| {
        tracing::debug!("decoding the descriptor pool");
        let pool =
            DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("proto/ descriptors are valid");
        DECODED.notify_one();
        (pool, Instant::now())
    });
    *used = Instant::now();
    pool.clone()
}

/// How long since the cached pool was last handed out; `None` when none is held.
pub fn pool_unused_for() -> Option<Duration> {
    let cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    cached.as_ref().map(|(_, used)| used.elapsed())
}

/// Drops the cached pool if nothing asked for it within `idle` (handles still held keep
/// their copy alive until they go). Returns whether it was dropped.
pub fn release_idle_pool(idle: Duration) -> bool {
    let mut cached = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match &*cached {
        Some((_, used)) if used.elapsed() >= idle => {
            *cached = None;
            tracing::debug!("dropped the descriptor pool");
            true
        }
        _ => false,
    }
}

/// Type URL prefix used by `Any`.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_is_dropped_when_idle_and_decoded_again_on_demand() {
        let name = "envoy.config.bootstrap.v3.Bootstrap";
        assert!(pool().get_message_by_name(name).is_some());
        // Just used: a long idle window keeps it.
        assert!(!release_idle_pool(Duration::from_secs(3600)));
        let held = pool();
        assert!(release_idle_pool(Duration::ZERO));
        // A handle taken before keeps working, and the next use decodes a fresh pool.
        assert!(held.get_message_by_name(name).is_some());
        assert!(pool().get_message_by_name(name).is_some());
    }
}
