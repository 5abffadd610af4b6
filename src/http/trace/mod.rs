//! Tracing as Envoy's connection manager does it on the request path: the sampling
//! decision (packed into `x-request-id`, counted in `http.<prefix>.tracing.*`), and with a
//! provider the request's span context, read from the caller's headers (B3, W3C) and
//! written into the upstream request; the route decorator's operation. The finished span
//! and its export are `http::span`'s.

mod context;

use crate::http::exchange::Exchange;
use crate::http::fields::header;
use crate::model::tracing::{Propagation, SpanCtx, TracerKind};
use crate::stats::HttpStat;

pub(crate) const DECORATOR: &[u8] = b"x-envoy-decorator-operation";

/// The first value of header `name` on the request.
pub(crate) fn request_header<'a, E: Exchange + ?Sized>(x: &'a E, name: &[u8]) -> Option<&'a [u8]> {
    let buf = x.buf();
    x.head()
        .headers
        .iter()
        .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
        .map(|(_, v)| &buf[v.clone()])
}

/// The request id as it goes upstream: the one the proxy set, else the client's.
pub(crate) fn request_id<E: Exchange + ?Sized>(x: &E) -> Option<&[u8]> {
    match &x.log().request_id {
        Some(id) => Some(&id[..]),
        None => request_header(x, b"x-request-id"),
    }
}

/// The connection manager's tracing decision for a request whose id is decided (its
/// connection manager traces): the stat that counts its reason, and with a provider the
/// request's span (`None`: Envoy's null span, or no provider).
pub(crate) fn decide<E: Exchange + ?Sized>(x: &E) -> (HttpStat, Option<SpanCtx>) {
    let Some(t) = &x.hcm().tracing else {
        return (HttpStat::TracingNotTraceable, None);
    };
    // The decision is the reason the id carries (Envoy's UUID extension).
    let (stat, traced) = match request_id(x).and_then(|id| (id.len() == 36).then(|| id[14])) {
        Some(b'9') => (HttpStat::TracingRandomSampling, true),
        Some(b'a') => (HttpStat::TracingServiceForced, true),
        Some(b'b') => (HttpStat::TracingClientEnabled, true),
        _ => (HttpStat::TracingNotTraceable, false),
    };
    let span = t.tracer.as_ref().and_then(|tracer| {
        let mut h = context::Incoming::default();
        let buf = x.buf();
        for (n, v) in &x.head().headers {
            let name = &buf[n.clone()];
            let slot = match name.len() {
                2 if name.eq_ignore_ascii_case(b"b3") => &mut h.b3,
                11 if name.eq_ignore_ascii_case(b"traceparent") => &mut h.traceparent,
                11 if name.eq_ignore_ascii_case(b"x-b3-spanid") => &mut h.span_id,
                12 if name.eq_ignore_ascii_case(b"x-b3-traceid") => &mut h.trace_id,
                12 if name.eq_ignore_ascii_case(b"x-b3-sampled") => &mut h.sampled,
                17 if name.eq_ignore_ascii_case(b"x-b3-parentspanid") => &mut h.parent_id,
                _ => continue,
            };
            slot.get_or_insert(&buf[v.clone()]);
        }
        match &tracer.kind {
            TracerKind::Zipkin(z) => context::zipkin(z, t.egress, &h, traced),
            TracerKind::OpenTelemetry(_) => context::otel(&h, traced),
        }
    });
    (stat, span)
}

/// Whether an incoming request header is replaced on the way upstream by what tracing
/// writes (the span's context, the decorator's operation).
#[inline]
pub(crate) fn replaces<E: Exchange + ?Sized>(x: &E, name: &[u8]) -> bool {
    let Some(t) = &x.hcm().tracing else {
        return false;
    };
    if name.eq_ignore_ascii_case(DECORATOR) {
        // Ingress consumes it (it names the span); egress replaces it with its own.
        return !t.egress || x.log().decorator.as_ref().is_some_and(|d| d.propagate);
    }
    let Some(span) = &x.log().span else {
        return false;
    };
    let b3_multi = || {
        name.len() > 5
            && name[..5].eq_ignore_ascii_case(b"x-b3-")
            && [&b"traceid"[..], b"spanid", b"parentspanid", b"sampled"]
                .iter()
                .any(|s| name[5..].eq_ignore_ascii_case(s))
    };
    let w3c = || name.eq_ignore_ascii_case(b"traceparent");
    match span.propagation {
        Propagation::B3Multi => b3_multi(),
        Propagation::B3Single => name.eq_ignore_ascii_case(b"b3"),
        Propagation::B3MultiW3c => b3_multi() || w3c(),
        Propagation::B3SingleW3c => name.eq_ignore_ascii_case(b"b3") || w3c(),
        Propagation::W3c => w3c() || name.eq_ignore_ascii_case(b"tracestate"),
    }
}

/// Appends `v` as 16 lower-case hex digits (the format machinery costs ten times more,
/// and this runs on every traced request).
pub(crate) fn hex16(v: u64, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    for (i, d) in b.iter_mut().enumerate() {
        *d = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out.extend_from_slice(&b);
}

/// A trace id as B3 writes it: 32 digits when its high half is set, else 16.
pub(crate) fn trace_hex(s: &SpanCtx, out: &mut Vec<u8>) {
    if s.trace_hi != 0 {
        hex16(s.trace_hi, out);
    }
    hex16(s.trace_lo, out);
}

/// Writes what tracing adds to the upstream request: an egress route's decorator, and the
/// span's context in the caller's format.
pub(crate) fn write_upstream<E: Exchange + ?Sized>(x: &E, out: &mut Vec<u8>) {
    let Some(t) = &x.hcm().tracing else { return };
    if t.egress {
        if let Some(d) = x.log().decorator.as_ref().filter(|d| d.propagate) {
            header(out, DECORATOR, d.operation.as_bytes());
        }
    }
    let Some(s) = &x.log().span else { return };
    let sampled: &[u8] = if s.sampled { b"1" } else { b"0" };
    let multi = |out: &mut Vec<u8>| {
        out.extend_from_slice(b"x-b3-traceid: ");
        trace_hex(s, out);
        out.extend_from_slice(b"\r\nx-b3-spanid: ");
        hex16(s.id, out);
        if let Some(p) = s.parent {
            out.extend_from_slice(b"\r\nx-b3-parentspanid: ");
            hex16(p, out);
        }
        out.extend_from_slice(b"\r\nx-b3-sampled: ");
        out.extend_from_slice(sampled);
        out.extend_from_slice(b"\r\n");
    };
    let single = |out: &mut Vec<u8>| {
        out.extend_from_slice(b"b3: ");
        trace_hex(s, out);
        out.push(b'-');
        hex16(s.id, out);
        out.push(b'-');
        out.extend_from_slice(sampled);
        if let Some(p) = s.parent {
            out.push(b'-');
            hex16(p, out);
        }
        out.extend_from_slice(b"\r\n");
    };
    let w3c = |out: &mut Vec<u8>| {
        out.extend_from_slice(b"traceparent: 00-");
        hex16(s.trace_hi, out);
        hex16(s.trace_lo, out);
        out.push(b'-');
        hex16(s.id, out);
        out.extend_from_slice(if s.sampled { b"-01\r\n" } else { b"-00\r\n" });
    };
    match s.propagation {
        Propagation::B3Multi => multi(out),
        Propagation::B3Single => single(out),
        Propagation::B3MultiW3c => {
            multi(out);
            w3c(out);
        }
        Propagation::B3SingleW3c => {
            single(out);
            w3c(out);
        }
        Propagation::W3c => {
            w3c(out);
            // The caller's state goes on with its context; a new trace starts with none.
            let state = match s.parent {
                Some(_) => request_header(x, b"tracestate").unwrap_or_default(),
                None => b"",
            };
            header(out, b"tracestate", state);
        }
    }
}

/// The `x-envoy-decorator-operation` an ingress response carries: the route decorator's
/// operation (propagated), unless the request named the operation itself.
pub(crate) fn response_decorator<E: Exchange + ?Sized>(x: &E) -> Option<&[u8]> {
    let t = x.hcm().tracing.as_ref()?;
    if t.egress {
        return None;
    }
    let d = x.log().decorator.as_ref().filter(|d| d.propagate)?;
    if request_header(x, DECORATOR).is_some_and(|v| !v.is_empty()) {
        return None;
    }
    Some(d.operation.as_bytes())
}
