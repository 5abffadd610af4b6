//! A core's access logs: its buffers of lines, what it hands the access-log thread (whose
//! queue is bounded), and the OpenTelemetry access loggers' per-core batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use super::{CoreCtx, LogBatch};
use crate::model::access_log::LogSink;

/// The access-log thread's queue, as every core and the thread see it: how much waits,
/// and what was done and dropped (shown as `access_log_file.*`).
#[derive(Default)]
pub struct LogQueue {
    pub queued_bytes: AtomicU64,
    pub lines: AtomicU64,
    pub written: AtomicU64,
    pub failed: AtomicU64,
    pub dropped_lines: AtomicU64,
}

/// The process's access-log queue.
pub static LOG_QUEUE: LogQueue = LogQueue {
    queued_bytes: AtomicU64::new(0),
    lines: AtomicU64::new(0),
    written: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    dropped_lines: AtomicU64::new(0),
};

/// Past this many bytes waiting for the access-log thread, cores drop new batches (and
/// count their lines) rather than grow without bound behind a slow sink.
pub const LOG_QUEUE_LIMIT: u64 = 64 << 20;

/// One OpenTelemetry access logger's records on a core, waiting for their export.
#[derive(Default)]
pub struct OtelBatch {
    /// Encoded `ScopeLogs.log_records` entries.
    pub records: Vec<u8>,
    /// When the first of them was added.
    pub since: Option<std::time::Instant>,
    /// The logger's configuration when the batch began (its collector).
    pub log: Option<Arc<crate::model::otel_log::OtelLog>>,
}

/// One tracer's finished spans on a core, waiting for their export.
#[derive(Default)]
pub struct TraceBatch {
    /// Zipkin: JSON span objects, comma-separated. OpenTelemetry: encoded
    /// `ScopeSpans.spans` entries.
    pub spans: Vec<u8>,
    pub count: usize,
    pub tracer: Option<Arc<crate::model::tracing::Tracer>>,
    /// Exports of this batch's tracer under way from this core.
    pub in_flight: usize,
}

/// Past this much waiting for its export, a core drops an OpenTelemetry logger's records
/// (a collector that does not answer never grows a core without bound).
pub const OTEL_BATCH_LIMIT: usize = 4 << 20;

/// Flush an access-log buffer once it holds this much.
const LOG_FLUSH_BYTES: usize = 16 * 1024;

impl CoreCtx {
    /// Appends a line to a sink's buffer; hands the buffer to the logger thread when full.
    pub fn log_line(&self, sink: LogSink, write: impl FnOnce(&mut Vec<u8>)) {
        let buf = match sink {
            LogSink::Stdout => &self.stdout_log,
            LogSink::Stderr => &self.stderr_log,
            LogSink::File(id) => return self.file_line(id, write),
        };
        let mut b = buf.borrow_mut();
        if b.is_empty() {
            self.flusher.wake();
        }
        write(&mut b);
        if b.len() >= LOG_FLUSH_BYTES {
            let batch = std::mem::replace(&mut *b, Vec::with_capacity(LOG_FLUSH_BYTES));
            drop(b);
            self.send_log(sink, batch);
        }
    }

    #[cold]
    fn file_line(&self, id: u32, write: impl FnOnce(&mut Vec<u8>)) {
        let mut files = self.file_logs.borrow_mut();
        let i = id as usize;
        if files.len() <= i {
            files.resize_with(i + 1, Vec::new);
        }
        let b = &mut files[i];
        if b.is_empty() {
            self.flusher.wake();
        }
        write(b);
        if b.len() >= LOG_FLUSH_BYTES {
            let batch = std::mem::replace(b, Vec::with_capacity(LOG_FLUSH_BYTES));
            drop(files);
            self.send_log(LogSink::File(id), batch);
        }
    }

    /// True while some access-log buffer of this core holds lines or records.
    pub fn logs_pending(&self) -> bool {
        !self.stdout_log.borrow().is_empty()
            || !self.stderr_log.borrow().is_empty()
            || self.file_logs.borrow().iter().any(|b| !b.is_empty())
            || self
                .otel_logs
                .borrow()
                .iter()
                .any(|b| !b.records.is_empty())
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
        let batches: Vec<(u32, Vec<u8>)> = self
            .file_logs
            .borrow_mut()
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, b)| (i as u32, std::mem::take(b)))
            .collect();
        for (id, batch) in batches {
            self.send_log(LogSink::File(id), batch);
        }
    }

    /// Hands a batch to the access-log thread, or drops it when too much already waits
    /// (per batch, never per line: the atomics are touched once per 16 KiB or flush).
    fn send_log(&self, sink: LogSink, batch: Vec<u8>) {
        if let Some(tx) = &self.log_tx {
            queue_log(tx, sink, batch);
        }
    }

    /// Adds one OpenTelemetry record to its logger's batch on this core (exported by the
    /// periodic flush, off the request path).
    pub fn otel_record(
        &self,
        log: &Arc<crate::model::otel_log::OtelLog>,
        record: &crate::proto::opentelemetry::proto::logs::v1::LogRecord,
    ) {
        let mut all = self.otel_logs.borrow_mut();
        let i = log.id as usize;
        if all.len() <= i {
            all.resize_with(i + 1, OtelBatch::default);
        }
        let b = &mut all[i];
        use crate::stats::OtelLogStat;
        if b.records.len() >= OTEL_BATCH_LIMIT {
            log.stats
                .core(self.core)
                .inc(OtelLogStat::LogsDropped as usize);
            return;
        }
        log.stats
            .core(self.core)
            .inc(OtelLogStat::LogsWritten as usize);
        if b.records.is_empty() {
            self.flusher.wake();
            b.since = Some(std::time::Instant::now());
            b.log = Some(log.clone());
        }
        crate::model::otel_log::append(record, &mut b.records);
    }
}

/// Hands `batch` to the access-log thread through `tx`, unless more than
/// [`LOG_QUEUE_LIMIT`] bytes already wait: its lines are then dropped and counted.
pub fn queue_log(tx: &Sender<LogBatch>, sink: LogSink, batch: Vec<u8>) {
    let q = &LOG_QUEUE;
    let lines = memchr::memchr_iter(b'\n', &batch).count() as u64;
    let len = batch.len() as u64;
    if q.queued_bytes.load(Ordering::Relaxed) + len > LOG_QUEUE_LIMIT {
        q.dropped_lines.fetch_add(lines, Ordering::Relaxed);
        return;
    }
    q.queued_bytes.fetch_add(len, Ordering::Relaxed);
    q.lines.fetch_add(lines, Ordering::Relaxed);
    if tx.send(LogBatch::Lines(sink, batch)).is_err() {
        q.queued_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}
