//! Writing header fields: one `name: value` line, and the configured additions of header
//! mutations (with `%COMMAND%` values). A leaf: the head writers and the filters use it.

use crate::http::exchange::Exchange;
use crate::model::format::{Command, Context, Val};
use crate::model::headers::{AppendAction, HeaderMods};

/// Appends `name: value\r\n`.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n` with the name lower-cased, as Envoy's HTTP/1 codec writes it.
pub fn header_lower(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Request-side values for `%...%` in header values.
struct ReqCtx<'a, E: ?Sized>(&'a E);

impl<E: Exchange + ?Sized> Context for ReqCtx<'_, E> {
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val {
        crate::http::log::write_command(self.0, cmd, out)
    }
}

/// Writes the additions of `mods` (most specific first); `present` tells whether the
/// message already carried a header.
pub(crate) fn write_adds<E: Exchange + ?Sized>(
    out: &mut Vec<u8>,
    mods: &[&HeaderMods],
    conn: &E,
    present: &dyn Fn(&[u8]) -> bool,
) {
    let ctx = ReqCtx(conn);
    for (level, m) in mods.iter().enumerate() {
        for add in m.add() {
            let name = add.name.as_bytes();
            // A less specific level that overwrites the same header wins (Envoy's default).
            let overwritten_later = mods[level + 1..].iter().any(|l| {
                l.add().iter().any(|a| {
                    a.name == add.name
                        && matches!(
                            a.action,
                            AppendAction::OverwriteIfExistsOrAdd | AppendAction::OverwriteIfExists
                        )
                })
            });
            if overwritten_later {
                continue;
            }
            let write = match add.action {
                AppendAction::AppendIfExistsOrAdd | AppendAction::OverwriteIfExistsOrAdd => true,
                AppendAction::AddIfAbsent => !present(name),
                AppendAction::OverwriteIfExists => present(name),
            };
            if !write {
                continue;
            }
            let mark = out.len();
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            let value_start = out.len();
            add.value.write(&ctx, b"", out);
            if out.len() == value_start && !add.keep_empty {
                out.truncate(mark);
                continue;
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends the value of a header format (`%COMMAND%`s of the request; missing ones
/// empty).
pub(crate) fn format_value<E: Exchange + ?Sized>(
    conn: &E,
    format: &crate::model::format::Format,
    out: &mut Vec<u8>,
) {
    format.write(&ReqCtx(conn), b"", out);
}

/// Appends the text of `format` over the request, missing values written as `missing`.
pub(crate) fn format_text<E: Exchange + ?Sized>(
    conn: &E,
    format: &crate::model::format::Format,
    missing: &[u8],
    out: &mut Vec<u8>,
) {
    format.write(&ReqCtx(conn), missing, out);
}
