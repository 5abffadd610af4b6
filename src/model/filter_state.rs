//! Filter state objects: named values a filter sets on a request (or a connection) for
//! later filters, the router's hash policies, RBAC and the access log to read, as Envoy's
//! `set_filter_state` filters make them. An object's factory decides what it is: a plain
//! string (`envoy.string`), or a string a hash policy can hash (`envoy.hashable_string`,
//! whose hash is the xxHash64 of its bytes).

use std::sync::Arc;

use super::format::Format;

/// The address objects an internal listener's `original_dst` restores its connection's
/// destination and peer from.
pub const LOCAL_IP: &str = "envoy.filters.listener.original_dst.local_ip";
pub const REMOTE_IP: &str = "envoy.filters.listener.original_dst.remote_ip";

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
    /// `shared_with_upstream`.
    pub shared: Shared,
}

/// Whether an object goes to the upstream connection its request or connection opens:
/// only internal connections receive objects (Envoy's `internal_upstream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shared {
    #[default]
    None,
    /// To the next connection only (it arrives there unshared).
    Once,
    /// To the next connection, and on from there.
    Transitive,
}

/// The objects of `objects` an upstream connection receives, as it receives them.
pub fn shared(objects: &[Object]) -> impl Iterator<Item = Object> + '_ {
    objects
        .iter()
        .filter(|o| o.shared != Shared::None)
        .map(|o| {
            let mut o = o.clone();
            if o.shared == Shared::Once {
                o.shared = Shared::None;
            }
            o
        })
}

/// A filter state object, as set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: Box<str>,
    pub value: Box<str>,
    pub hashable: bool,
    pub read_only: bool,
    pub shared: Shared,
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
    // Envoy's address objects: a value that is not ip:port makes no object.
    if matches!(&*v.key, LOCAL_IP | REMOTE_IP)
        && std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<std::net::SocketAddr>().ok())
            .is_none()
    {
        return;
    }
    let object = Object {
        key: v.key.clone(),
        value: String::from_utf8_lossy(value).into(),
        hashable: v.hashable,
        read_only: v.read_only,
        shared: v.shared,
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
