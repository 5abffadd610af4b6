//! Each core's finished spans, batched per tracer and exported from that core, as Envoy's
//! per-worker tracers do: when a batch reaches the runtime's `min_flush_spans` (5), and on
//! a timer every `flush_interval_ms` (5,000). Zipkin batches go as one JSON array in a
//! POST to the collector cluster (only a 202 counts as sent); OpenTelemetry batches as
//! one `TraceService/Export` call. Exports are never retried and never wait on a request.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::done::Done;
use crate::ctx::CoreCtx;
use crate::model::tracing::{Tracer, TracerKind};
use crate::stats::{OtelTraceStat, ZipkinStat};

/// OpenTelemetry's `max_cache_size` default: past it a span is dropped (and the batch
/// exported at once).
const OTEL_MAX_CACHE: usize = 1024;
/// Zipkin's batches are bounded too (its flush threshold may be raised at runtime): a
/// batch that reaches this goes at once.
const ZIPKIN_MAX_SPANS: usize = 1024;
/// Exports in flight per tracer and core: past this (a collector that does not answer),
/// a batch due is dropped and counted, never queued behind the others.
const MAX_IN_FLIGHT: usize = 4;

fn runtime_u64(ctx: &CoreCtx, key: &str, default: u64) -> u64 {
    ctx.snapshot().runtime.get_u64(key).unwrap_or(default)
}

fn min_flush(ctx: &CoreCtx, zipkin: bool) -> usize {
    let key = if zipkin {
        "tracing.zipkin.min_flush_spans"
    } else {
        "tracing.opentelemetry.min_flush_spans"
    };
    runtime_u64(ctx, key, 5).max(1) as usize
}

fn interval(ctx: &CoreCtx, zipkin: bool) -> Duration {
    let key = if zipkin {
        "tracing.zipkin.flush_interval_ms"
    } else {
        "tracing.opentelemetry.flush_interval_ms"
    };
    Duration::from_millis(runtime_u64(ctx, key, 5000).max(1))
}

/// Adds a finished span to its tracer's batch on this core; a full batch goes at once.
pub(crate) fn add(ctx: &Rc<CoreCtx>, tracer: &Arc<Tracer>, span: &Done) {
    let due = {
        let mut all = ctx.traces.borrow_mut();
        let i = tracer.id as usize;
        if all.len() <= i {
            all.resize_with(i + 1, Default::default);
            ctx.tracer_timer.wake();
        }
        let b = &mut all[i];
        b.tracer = Some(tracer.clone());
        match &tracer.kind {
            TracerKind::Zipkin(z) => {
                if b.count > 0 {
                    b.spans.push(b',');
                }
                span.zipkin_json(z.shared_span_context, &mut b.spans);
                b.count += 1;
                b.count >= min_flush(ctx, true) || b.count >= ZIPKIN_MAX_SPANS
            }
            TracerKind::OpenTelemetry(o) => {
                if b.count >= OTEL_MAX_CACHE {
                    o.stats
                        .core(ctx.core)
                        .inc(OtelTraceStat::SpansDropped as usize);
                    true
                } else {
                    prost::encoding::message::encode(2, &span.otlp(), &mut b.spans);
                    b.count += 1;
                    b.count >= min_flush(ctx, false)
                }
            }
        }
    };
    if due {
        flush_one(ctx, tracer.id as usize);
    }
}

/// Sends one tracer's batch on this core, if it has spans (or drops it, counted, when
/// its exports in flight are at their bound).
fn flush_one(ctx: &Rc<CoreCtx>, i: usize) {
    let (tracer, spans, count) = {
        let mut all = ctx.traces.borrow_mut();
        let Some(b) = all.get_mut(i) else { return };
        if b.count == 0 {
            return;
        }
        let Some(t) = b.tracer.clone() else { return };
        let count = std::mem::take(&mut b.count);
        let spans = std::mem::take(&mut b.spans);
        if b.in_flight >= MAX_IN_FLIGHT {
            match &t.kind {
                TracerKind::Zipkin(z) => z
                    .stats
                    .core(ctx.core)
                    .inc(ZipkinStat::ReportsDropped as usize),
                TracerKind::OpenTelemetry(o) => o
                    .stats
                    .core(ctx.core)
                    .add(OtelTraceStat::SpansDropped as usize, count as u64),
            }
            return;
        }
        b.in_flight += 1;
        (t, spans, count)
    };
    let c = ctx.clone();
    ctx.exports.set(ctx.exports.get() + 1);
    monoio::spawn(async move {
        match &tracer.kind {
            TracerKind::Zipkin(_) => zipkin_report(c.clone(), tracer, spans, count).await,
            TracerKind::OpenTelemetry(_) => otel_export(c.clone(), tracer, spans, count).await,
        }
        if let Some(b) = c.traces.borrow_mut().get_mut(i) {
            b.in_flight -= 1;
        }
        c.exports.set(c.exports.get() - 1);
    });
}

/// Sends every batch of this core now (the core is stopping).
pub(crate) fn flush_all(ctx: &Rc<CoreCtx>) {
    let n = ctx.traces.borrow().len();
    for i in 0..n {
        flush_one(ctx, i);
    }
}

/// The flush timer of a core's tracers: each kind ticks at its runtime interval, counts
/// the tick (`timer_flushed`) on every tracer of its kind the core has used, and sends
/// their batches.
pub(crate) async fn timer(ctx: Rc<CoreCtx>) {
    let start = std::time::Instant::now();
    let mut next = [start + interval(&ctx, true), start + interval(&ctx, false)];
    loop {
        if ctx.traces.borrow().is_empty() {
            // No tracer used on this core yet: nothing to count or send, so no ticks
            // until one is. The ticks missed meanwhile counted nothing; the phase stays.
            std::future::poll_fn(|cx| {
                ctx.tracer_timer
                    .poll_until(cx, !ctx.traces.borrow().is_empty())
            })
            .await;
            let now = std::time::Instant::now();
            for (k, zipkin) in [(0, true), (1, false)] {
                if next[k] <= now {
                    let every = interval(&ctx, zipkin).as_nanos();
                    let missed = (now - next[k]).as_nanos() / every + 1;
                    next[k] += Duration::from_nanos((missed * every).min(u64::MAX as u128) as u64);
                }
            }
        }
        let now = std::time::Instant::now();
        let at = next[0].min(next[1]);
        if at > now {
            monoio::time::sleep(at - now).await;
            continue;
        }
        for (k, zipkin) in [(0, true), (1, false)] {
            if next[k] > now {
                continue;
            }
            next[k] = now + interval(&ctx, zipkin);
            let ids: Vec<usize> = ctx
                .traces
                .borrow()
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let t = b.tracer.as_ref()?;
                    match (&t.kind, zipkin) {
                        (TracerKind::Zipkin(z), true) => z
                            .stats
                            .core(ctx.core)
                            .inc(ZipkinStat::TimerFlushed as usize),
                        (TracerKind::OpenTelemetry(o), false) => o
                            .stats
                            .core(ctx.core)
                            .inc(OtelTraceStat::TimerFlushed as usize),
                        _ => return None,
                    }
                    Some(i)
                })
                .collect();
            for i in ids {
                flush_one(&ctx, i);
            }
        }
    }
}

/// One Zipkin report: the batch as a JSON array, POSTed to the collector cluster with
/// Envoy's headers, within `tracing.zipkin.request_timeout`.
async fn zipkin_report(ctx: Rc<CoreCtx>, tracer: Arc<Tracer>, spans: Vec<u8>, count: usize) {
    let TracerKind::Zipkin(z) = &tracer.kind else {
        return;
    };
    let stats = z.stats.core(ctx.core);
    stats.add(ZipkinStat::SpansSent as usize, count as u64);
    let snapshot = ctx.snapshot();
    if snapshot.cluster(&z.cluster).is_none() {
        stats.inc(ZipkinStat::ReportsSkippedNoCluster as usize);
        return;
    }
    let timeout = runtime_u64(&ctx, "tracing.zipkin.request_timeout", 5000);
    let mut body = Vec::with_capacity(spans.len() + 2);
    body.push(b'[');
    body.extend_from_slice(&spans);
    body.push(b']');
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\nx-envoy-internal: true\r\nx-forwarded-for: {}\r\nx-envoy-expected-rq-timeout-ms: {timeout}\r\ncontent-length: {}\r\n\r\n",
        z.endpoint,
        z.hostname,
        ctx.local_ip,
        body.len()
    );
    let call = crate::http::filter::HttpCall {
        cluster: z.cluster.clone(),
        head: head.into_bytes(),
        body,
        head_request: false,
    };
    let answer = monoio::time::timeout(
        Duration::from_millis(timeout.max(1)),
        crate::http::http_call::call(ctx.clone(), snapshot, call),
    )
    .await;
    let stats = z.stats.core(ctx.core);
    match answer {
        Ok(Ok(reply)) if reply.status == 202 => stats.inc(ZipkinStat::ReportsSent as usize),
        // Any other answer, no answer in time, or no connection: Envoy's async client
        // answers those itself (503, 504), and the report counts as dropped.
        other => {
            if let Ok(Err(e)) = &other {
                tracing::debug!(cluster = %z.cluster, "Zipkin report failed: {e}");
            }
            stats.inc(ZipkinStat::ReportsDropped as usize);
        }
    }
}

/// One OTLP export: the batch in one `ExportTraceServiceRequest`, sent from this core.
async fn otel_export(ctx: Rc<CoreCtx>, tracer: Arc<Tracer>, spans: Vec<u8>, count: usize) {
    let TracerKind::OpenTelemetry(o) = &tracer.kind else {
        return;
    };
    o.stats
        .core(ctx.core)
        .add(OtelTraceStat::SpansSent as usize, count as u64);
    let call = crate::http::filter::GrpcCall {
        cluster: o.cluster.clone(),
        authority: o.authority.clone(),
        path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        metadata: o.metadata.clone(),
        // Envoy sends no grpc-timeout with its exports; the call is still bounded here.
        timeout: None,
        message: export_request(o, &spans),
    };
    let limit = o.timeout.unwrap_or(Duration::from_secs(5));
    let snapshot = ctx.snapshot();
    match monoio::time::timeout(
        limit,
        crate::http::grpc_call::unary(ctx.clone(), snapshot, call),
    )
    .await
    {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => tracing::debug!(cluster = %o.cluster, "OTLP trace export failed: {e}"),
        Err(_) => tracing::debug!(cluster = %o.cluster, "OTLP trace export timed out"),
    }
    o.stats
        .core(ctx.core)
        .inc(OtelTraceStat::ExportsFailed as usize);
}

/// The `ExportTraceServiceRequest` of a batch: one resource (the service and this
/// proxy), one scope, the spans already encoded.
fn export_request(o: &crate::model::tracing::OtelTracer, spans: &[u8]) -> Vec<u8> {
    use crate::proto::opentelemetry::proto::common::v1 as otlp;
    use prost::encoding::{encode_key, encode_varint, WireType};
    use prost::Message as _;
    let field = |tag: u32, body: &[u8], out: &mut Vec<u8>| {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    };
    let attr = |k: &str, v: &str| otlp::KeyValue {
        key: k.into(),
        value: Some(otlp::AnyValue {
            value: Some(otlp::any_value::Value::StringValue(v.into())),
        }),
    };
    let version = env!("CARGO_PKG_VERSION");
    let resource = crate::proto::opentelemetry::proto::resource::v1::Resource {
        attributes: vec![
            attr("service.name", &o.service_name),
            attr("telemetry.sdk.name", "envoy"),
            attr("telemetry.sdk.language", "rust"),
            attr("telemetry.sdk.version", version),
        ],
        dropped_attributes_count: 0,
    }
    .encode_to_vec();
    let scope = crate::proto::opentelemetry::proto::logs::v1::InstrumentationScope {
        name: "envoy".into(),
        version: version.into(),
    }
    .encode_to_vec();
    let mut scope_spans = Vec::with_capacity(spans.len() + scope.len() + 8);
    field(1, &scope, &mut scope_spans);
    scope_spans.extend_from_slice(spans);
    let mut resource_spans = Vec::with_capacity(scope_spans.len() + resource.len() + 16);
    field(1, &resource, &mut resource_spans);
    field(2, &scope_spans, &mut resource_spans);
    let mut out = Vec::with_capacity(resource_spans.len() + 8);
    field(1, &resource_spans, &mut out);
    out
}
