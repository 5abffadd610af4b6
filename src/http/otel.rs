//! The OpenTelemetry access loggers' exports: each core sends its own batches to their
//! collectors with `LogsService/Export`, over its own HTTP/2 pool.

/// Exports the OpenTelemetry batches of this core that are due (every logger's
/// `buffer_flush_interval`, or `buffer_size_bytes` reached; all with `force`), each as one
/// `LogsService/Export` call from this core, not waited for.
pub fn flush(ctx: &std::rc::Rc<crate::ctx::CoreCtx>, force: bool) {
    let mut due = Vec::new();
    for b in ctx.otel_logs.borrow_mut().iter_mut() {
        let Some(log) = &b.log else { continue };
        let ready = b.since.is_some_and(|s| s.elapsed() >= log.flush_every)
            || b.records.len() >= log.flush_bytes;
        if !b.records.is_empty() && (force || ready) {
            due.push((log.clone(), std::mem::take(&mut b.records)));
            b.since = None;
        }
    }
    for (log, records) in due {
        let call = crate::http::filter::GrpcCall {
            cluster: log.cluster.clone(),
            authority: log.authority.clone(),
            path: "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            metadata: log.metadata.clone(),
            timeout: log.timeout,
            message: log.export(&records),
        };
        let (c, snapshot, c_core) = (ctx.clone(), ctx.snapshot(), ctx.core);
        ctx.exports.set(ctx.exports.get() + 1);
        monoio::spawn(async move {
            if let Err(e) = crate::http::grpc_call::unary(c.clone(), snapshot, call).await {
                let failed = crate::stats::OtelLogStat::GrpcEntriesFlushFailed as usize;
                log.stats.core(c_core).inc(failed);
                tracing::debug!(cluster = %log.cluster, "OpenTelemetry access log export failed: {e}");
            }
            c.exports.set(c.exports.get() - 1);
        });
    }
}
