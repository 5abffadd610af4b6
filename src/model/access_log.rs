//! Access logs: where a line goes ([`LogSink`]) and in what format, and the files by number:
//! configurations name a file as `LogSink::File(id)`, cores buffer its lines under that id,
//! and the logger thread opens the path once.
// Taken only at configuration time (control thread) and by the logger thread on first use
// of a file; never on a core.
#![allow(clippy::disallowed_types)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::format;

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The id of `path`, the same for every configuration that names it.
pub fn intern(path: &str) -> u32 {
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let path = PathBuf::from(path);
    match paths.iter().position(|p| *p == path) {
        Some(i) => i as u32,
        None => {
            paths.push(path);
            (paths.len() - 1) as u32
        }
    }
}

/// The path numbered `id`.
pub fn path(id: u32) -> Option<PathBuf> {
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id as usize)
        .cloned()
}

/// Opens `path` as Envoy opens an access log: created if missing, appended to.
pub fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// Where an access log line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Stdout,
    Stderr,
    /// A file, by its id in this module's registry.
    File(u32),
}

/// One configured access logger.
pub struct AccessLog {
    pub sink: LogSink,
    pub format: Arc<format::Format>,
}
