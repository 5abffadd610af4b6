//! Header mutations (`*_headers_to_add` / `*_headers_to_remove`), validated.

use std::sync::Arc;

use super::format::Format;

/// How an added header combines with existing ones (Envoy's `HeaderAppendAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// One header to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderAdd {
    /// Lower-cased.
    pub name: Arc<str>,
    pub value: Format,
    pub action: AppendAction,
    pub keep_empty: bool,
}

/// Additions and removals at one level (route config, virtual host, route, weighted cluster).
///
/// One pointer, null when there are none (most levels: a big mesh's route table has four
/// per service, 48 bytes each as two vectors).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMods(Option<Box<Mods>>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mods {
    add: Box<[HeaderAdd]>,
    /// Lower-cased.
    remove: Box<[Arc<str>]>,
}

impl HeaderMods {
    /// No additions or removals.
    pub const NONE: HeaderMods = HeaderMods(None);

    pub fn new(add: Vec<HeaderAdd>, remove: Vec<Arc<str>>) -> HeaderMods {
        if add.is_empty() && remove.is_empty() {
            return HeaderMods(None);
        }
        HeaderMods(Some(Box::new(Mods {
            add: add.into(),
            remove: remove.into(),
        })))
    }

    /// The headers added, in order.
    pub fn add(&self) -> &[HeaderAdd] {
        self.0.as_ref().map_or(&[], |m| &m.add)
    }

    /// The headers removed (lower-cased).
    pub fn remove(&self) -> &[Arc<str>] {
        self.0.as_ref().map_or(&[], |m| &m.remove)
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// True when this level removes `name`, or overwrites it.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove()
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self.add().iter().any(|a| {
                matches!(
                    a.action,
                    AppendAction::OverwriteIfExistsOrAdd | AppendAction::OverwriteIfExists
                ) && a.name.as_bytes().eq_ignore_ascii_case(name)
            })
    }
}

/// Headers that never cross a proxy hop (the set Envoy strips; `te: trailers` is re-added by the codec when needed).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 6] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}
