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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMods {
    pub add: Vec<HeaderAdd>,
    /// Lower-cased.
    pub remove: Vec<Arc<str>>,
}

impl HeaderMods {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// True when this level removes `name`, or overwrites it.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
            || self.add.iter().any(|a| {
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
