//! The connection manager's path normalisation settings (`normalize_path`,
//! `merge_slashes`, `path_with_escaped_slashes_action`); `http::path` applies them.

/// `HttpConnectionManager.PathWithEscapedSlashesAction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// `KEEP_UNCHANGED`, and `IMPLEMENTATION_SPECIFIC_DEFAULT` (Envoy's default is to keep).
    #[default]
    Keep,
    Reject,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// The connection manager's normalisation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Normalization {
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Normalization {
    /// Whether any step is configured (the common case skips the whole stage).
    pub fn any(&self) -> bool {
        self.normalize || self.merge_slashes || self.escaped_slashes != EscapedSlashes::Keep
    }
}
