//! Filter state objects: named values a filter sets on a request (or a connection) for
//! later filters, the router's hash policies, RBAC and the access log to read, as Envoy's
//! `set_filter_state` filters make them. An object's factory decides what it is: a plain
//! string (`envoy.string`), or a string a hash policy can hash (`envoy.hashable_string`,
//! whose hash is the xxHash64 of its bytes).

use std::sync::Arc;

use super::format::Format;

/// One value `set_filter_state` sets.
#[derive(Debug, Clone)]
pub struct SetValue {
    /// The object's name (`object_key`).
    pub key: Box<str>,
    /// A hash policy may hash it (its factory makes a `Hashable` object).
    pub hashable: bool,
    /// The value: a format string over the request (or connection).
    pub format: Arc<Format>,
    /// A later filter may not replace it.
    pub read_only: bool,
    /// An empty value sets nothing.
    pub skip_if_empty: bool,
}

/// A filter state object, as set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: Box<str>,
    pub value: Box<str>,
    pub hashable: bool,
    pub read_only: bool,
}

/// What a lookup finds: the object's string form and whether it hashes.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub value: &'a str,
    pub hashable: bool,
}

impl Found<'_> {
    /// The hash a hash policy makes of it (Envoy's `Hashable::hash`): none unless the
    /// object is hashable.
    pub fn hash(&self) -> Option<u64> {
        self.hashable
            .then(|| xxhash_rust::xxh64::xxh64(self.value.as_bytes(), 0))
    }
}

/// Sets `v` to `value` (its formatted text) in `objects`: a value is replaced unless the
/// object there is read-only, which Envoy reports and keeps.
pub fn put(objects: &mut Vec<Object>, v: &SetValue, value: &[u8]) {
    if v.skip_if_empty && value.is_empty() {
        return;
    }
    let object = Object {
        key: v.key.clone(),
        value: String::from_utf8_lossy(value).into(),
        hashable: v.hashable,
        read_only: v.read_only,
    };
    match objects.iter_mut().find(|o| o.key == v.key) {
        Some(o) if o.read_only => {
            tracing::debug!(key = %v.key, "filter state object is read-only: not replaced");
        }
        Some(o) => *o = object,
        None => objects.push(object),
    }
}

/// The object named `key` among `objects`.
pub fn find<'a>(objects: &'a [Object], key: &str) -> Option<Found<'a>> {
    objects.iter().find(|o| &*o.key == key).map(|o| Found {
        value: &o.value,
        hashable: o.hashable,
    })
}
