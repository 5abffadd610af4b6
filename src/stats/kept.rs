//! What configurations keep in the store beyond stats: values shared across
//! reconversions, and what the bootstrap leaves for the conversions after it.

use std::sync::Arc;

use super::Store;

impl Store {
    /// The value every configuration naming `key` shares while any of them holds it: a
    /// cluster's circuit-breaker counts survive its reconversion by a CDS push, as Envoy's
    /// resource manager survives an update that does not change it. Configuration time only.
    pub fn shared<T: Default + Send + Sync + 'static>(&self, key: &str) -> Arc<T> {
        let mut m = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m
            .get(key)
            .and_then(std::sync::Weak::upgrade)
            .and_then(|a| a.downcast::<T>().ok())
        {
            return v;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let v = Arc::new(T::default());
        let any: Arc<dyn std::any::Any + Send + Sync> = v.clone();
        m.insert(key.to_string(), Arc::downgrade(&any));
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
