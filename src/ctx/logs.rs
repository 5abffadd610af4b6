//! What cores hand to others for logging: the access-log thread's bounded queue, and the
//! OpenTelemetry access loggers' per-core batches.

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

impl CoreCtx {
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
