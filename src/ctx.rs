//! `CoreCtx`: what every connection task on one core shares (as `Rc`): the snapshot
//! cache, the upstream pools and LB state, the drain signal and the access-log buffer.

use std::cell::{Cell, RefCell};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use arc_swap::Cache;

use crate::model::{LogSink, SharedSnapshot, Snapshot};
use crate::upstream::Upstreams;

/// What cores and the app send to the logger thread.
pub enum LogBatch {
    /// Formatted access-log lines for one sink.
    Lines(LogSink, Vec<u8>),
    /// Answer once everything sent before has been written.
    Sync(Sender<()>),
}

/// Per-core context.
pub struct CoreCtx {
    pub core: usize,
    cache: RefCell<Cache<SharedSnapshot, Arc<Snapshot>>>,
    pub upstreams: RefCell<Upstreams>,
    /// Becomes true when the process starts draining.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// Connections open on this core.
    pub active: Cell<usize>,
    pub stdout_log: RefCell<Vec<u8>>,
    pub stderr_log: RefCell<Vec<u8>>,
    log_tx: Option<Sender<LogBatch>>,
    pub hostname: Arc<str>,
}

/// Flush an access-log buffer once it holds this much.
const LOG_FLUSH_BYTES: usize = 16 * 1024;

impl CoreCtx {
    pub fn new(
        core: usize,
        shared: SharedSnapshot,
        drain: tokio::sync::watch::Receiver<bool>,
        log_tx: Option<Sender<LogBatch>>,
        hostname: Arc<str>,
    ) -> Self {
        CoreCtx {
            core,
            cache: RefCell::new(Cache::new(shared)),
            upstreams: RefCell::new(Upstreams::new(core)),
            drain,
            active: Cell::new(0),
            stdout_log: RefCell::new(Vec::new()),
            stderr_log: RefCell::new(Vec::new()),
            log_tx,
            hostname,
        }
    }

    /// The current snapshot. Cheap when unchanged: no refcount traffic unless it moved.
    pub fn refresh(&self, held: &mut Arc<Snapshot>) {
        let mut cache = self.cache.borrow_mut();
        let current = cache.load();
        if !Arc::ptr_eq(current, held) {
            *held = current.clone();
        }
    }

    /// The current snapshot (a new reference).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cache.borrow_mut().load().clone()
    }

    /// True once draining started.
    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Appends a line to a sink's buffer; hands the buffer to the logger thread when full.
    pub fn log_line(&self, sink: LogSink, write: impl FnOnce(&mut Vec<u8>)) {
        let buf = match sink {
            LogSink::Stdout => &self.stdout_log,
            LogSink::Stderr => &self.stderr_log,
        };
        let mut b = buf.borrow_mut();
        write(&mut b);
        if b.len() >= LOG_FLUSH_BYTES {
            let batch = std::mem::replace(&mut *b, Vec::with_capacity(LOG_FLUSH_BYTES));
            drop(b);
            self.send_log(sink, batch);
        }
    }

    /// Hands whatever is buffered to the logger thread (called by a periodic task).
    pub fn flush_logs(&self) {
        for (sink, buf) in [
            (LogSink::Stdout, &self.stdout_log),
            (LogSink::Stderr, &self.stderr_log),
        ] {
            let batch = std::mem::take(&mut *buf.borrow_mut());
            if !batch.is_empty() {
                self.send_log(sink, batch);
            }
        }
    }

    fn send_log(&self, sink: LogSink, batch: Vec<u8>) {
        if let Some(tx) = &self.log_tx {
            let _ = tx.send(LogBatch::Lines(sink, batch));
        }
    }
}
