//! What configurations keep in the store beyond stats: values shared across
//! reconversions, and what the bootstrap leaves for the conversions after it.

use std::sync::Arc;

use super::Store;

/// The values [`Store::shared`] hands out, by key, and how many were alive when dead
/// ones were last swept out.
#[derive(Default)]
pub(super) struct Shared {
    values: std::collections::HashMap<String, std::sync::Weak<dyn std::any::Any + Send + Sync>>,
    swept: usize,
}

impl Shared {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.values.len()
    }
}

impl Store {
    /// The value every configuration naming `key` shares while any of them holds it: a
    /// cluster's circuit-breaker counts survive its reconversion by a CDS push, as Envoy's
    /// resource manager survives an update that does not change it. Configuration time only.
    pub fn shared<T: Default + Send + Sync + 'static>(&self, key: &str) -> Arc<T> {
        let mut guard = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let m = &mut *guard;
        if let Some(v) = m
            .values
            .get(key)
            .and_then(std::sync::Weak::upgrade)
            .and_then(|a| a.downcast::<T>().ok())
        {
            return v;
        }
        // Dead values are swept once they could be half the map, not on every miss: a
        // push of 10,000 clusters with limits made 10,000 misses, each a pass over them.
        if m.values.len() >= 2 * m.swept + 64 {
            m.values.retain(|_, w| w.strong_count() > 0);
            m.swept = m.values.len();
        }
        let v = Arc::new(T::default());
        let any: Arc<dyn std::any::Any + Send + Sync> = v.clone();
        m.values.insert(key.to_string(), Arc::downgrade(&any));
        v
    }

    /// Keeps `v` under `key` for later conversions (`None` forgets it).
    pub fn hold<T: Send + Sync + 'static>(&self, key: &'static str, v: Option<Arc<T>>) {
        let mut m = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match v {
            Some(v) => m.insert(key, v),
            None => m.remove(key),
        };
    }

    /// What [`Store::hold`] keeps under `key`, if it is a `T`.
    pub fn held<T: Send + Sync + 'static>(&self, key: &'static str) -> Option<Arc<T>> {
        let m = self.held.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).cloned()?.downcast::<T>().ok()
    }
}
