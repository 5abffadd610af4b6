//! Envoy's layered runtime (`layered_runtime`): named layers of string values, later layers
//! overriding earlier ones, the admin layer changed through `/runtime_modify`. `/runtime`
//! shows every key. Ringside acts on the keys it knows (parsed once per snapshot into
//! typed flags); any other key is kept and shown, and logged once as having no effect.

use std::collections::BTreeMap;

/// One layer: its name and values (nested static-layer maps flattened with `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    /// The admin layer (changed by `/runtime_modify`); else a static layer.
    pub admin: bool,
    pub values: BTreeMap<String, String>,
}

/// The runtime of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub layers: Vec<Layer>,
    /// `envoy.reloadable_features.http_reject_path_with_fragment` (default true): refuse a
    /// path with a fragment, or (false, as Istio's bootstrap sets it) drop the fragment.
    pub reject_path_with_fragment: bool,
}

/// The keys Ringside acts on.
pub const KNOWN: &[&str] = &["envoy.reloadable_features.http_reject_path_with_fragment"];

impl Default for Runtime {
    fn default() -> Self {
        Runtime::from_layers(Vec::new())
    }
}

impl Runtime {
    /// The runtime of these layers, with its typed flags.
    pub fn from_layers(layers: Vec<Layer>) -> Runtime {
        let mut rt = Runtime {
            layers,
            reject_path_with_fragment: true,
        };
        if let Some(v) = rt.get("envoy.reloadable_features.http_reject_path_with_fragment") {
            rt.reject_path_with_fragment = v != "false";
        }
        rt
    }

    /// The final value of `key`: the last layer that sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.layers
            .iter()
            .rev()
            .find_map(|l| l.values.get(key))
            .map(String::as_str)
    }

    /// `key`'s value as a whole number (Envoy's `getInteger`), if it has one.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.trim().parse().ok()
    }

    /// Every key of every layer.
    pub fn keys(&self) -> std::collections::BTreeSet<&str> {
        self.layers
            .iter()
            .flat_map(|l| l.values.keys().map(String::as_str))
            .collect()
    }

    /// This runtime with the admin layer's `changes` applied (`/runtime_modify`; an empty
    /// value removes the key). `None` when there is no admin layer, as Envoy refuses then.
    pub fn modified(&self, changes: &[(String, String)]) -> Option<Runtime> {
        let mut layers = self.layers.clone();
        let admin = layers.iter_mut().rev().find(|l| l.admin)?;
        for (k, v) in changes {
            if v.is_empty() {
                admin.values.remove(k);
            } else {
                admin.values.insert(k.clone(), v.clone());
            }
        }
        Some(Runtime::from_layers(layers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, admin: bool, kv: &[(&str, &str)]) -> Layer {
        Layer {
            name: name.into(),
            admin,
            values: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn later_layers_win_and_the_admin_layer_can_be_changed() {
        let key = "envoy.reloadable_features.http_reject_path_with_fragment";
        let rt = Runtime::from_layers(vec![
            layer("global config", false, &[(key, "false"), ("a", "1")]),
            layer("admin", true, &[]),
        ]);
        assert!(!rt.reject_path_with_fragment);
        let rt = rt.modified(&[(key.into(), "true".into())]).unwrap();
        assert!(rt.reject_path_with_fragment);
        assert_eq!(rt.get("a"), Some("1"));
        let rt = rt.modified(&[(key.into(), String::new())]).unwrap();
        assert!(
            !rt.reject_path_with_fragment,
            "removed: the static layer's value again"
        );
        assert!(Runtime::default().modified(&[]).is_none());
        assert!(Runtime::default().reject_path_with_fragment);
    }
}
