//! Tracing as Envoy's connection manager does it on the request path: the sampling
//! decision (packed into `x-request-id`, counted in `http.<prefix>.tracing.*`), and with a
//! provider the request's span context, read from the caller's headers (B3, W3C) and
//! written into the upstream request; the route decorator's operation. The finished span
//! and its export are `http::span`'s.

mod context;
mod decision;
pub(crate) use decision::traced_request_id;

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
/// connection manager traces).
pub(crate) struct Decided {
    /// The stat that counts its reason.
    pub stat: HttpStat,
    /// With a provider, the request's span (`None`: Envoy's null span, or no provider).
    pub span: Option<SpanCtx>,
    /// On ingress, the caller named the operation (`x-envoy-decorator-operation`, where it
    /// survives): the span takes that name and the response does not carry the decorator's.
    pub operation_asked: bool,
}

/// Whether the caller's `x-envoy-decorator-operation` survives to the connection manager's
/// tracing (an external request's is stripped at the edge).
fn decorator_survives<E: Exchange + ?Sized>(x: &E) -> bool {
    x.internal()
        || !crate::http::trust::stripped_from_external(DECORATOR, x.hcm().use_remote_address)
}

/// The caller's operation name, on ingress, where it survives and is not empty.
pub(crate) fn asked_operation<E: Exchange + ?Sized>(x: &E) -> Option<&[u8]> {
    let t = x.hcm().tracing.as_ref()?;
    if t.egress || !decorator_survives(x) {
        return None;
    }
    request_header(x, DECORATOR).filter(|v| !v.is_empty())
}

pub(crate) fn decide<E: Exchange + ?Sized>(x: &E) -> Decided {
    let Some(t) = &x.hcm().tracing else {
        return Decided {
            stat: HttpStat::TracingNotTraceable,
            span: None,
            operation_asked: false,
        };
    };
    // The decision is the reason the id carries (Envoy's UUID extension), or would carry.
    let id = request_id(x);
    let ids = &x.hcm().request_id;
    let reason = if ids.pack_trace_reason && ids.use_for_sampling {
        id.and_then(|id| (id.len() == 36).then(|| id[14]))
    } else {
        decision::unpacked_reason(x, id)
    };
    let (stat, traced) = match reason {
        Some(b'9') => (HttpStat::TracingRandomSampling, true),
        Some(b'a') => (HttpStat::TracingServiceForced, true),
        Some(b'b') => (HttpStat::TracingClientEnabled, true),
        _ => (HttpStat::TracingNotTraceable, false),
    };
    // One pass over the headers: the caller's operation and span context.
    let mut h = context::Incoming::default();
    let mut operation = false;
    let (with_span, ingress) = (t.tracer.is_some(), !t.egress);
    if with_span || ingress {
        let buf = x.buf();
        for (n, v) in &x.head().headers {
            let name = &buf[n.clone()];
            if ingress && name.eq_ignore_ascii_case(DECORATOR) {
                operation |= !v.is_empty();
                continue;
            }
            if !with_span {
                continue;
            }
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
    }
    let span = t.tracer.as_ref().and_then(|tracer| match &tracer.kind {
        TracerKind::Zipkin(z) => context::zipkin(z, t.egress, &h, traced),
        TracerKind::OpenTelemetry(_) => context::otel(&h, traced),
    });
    Decided {
        stat,
        span,
        operation_asked: operation && decorator_survives(x),
    }
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
    write_context(x, s, s.parent.is_some(), out);
}

/// Span context `s` as the request's propagation format writes it upstream; `caller`:
/// the trace came from the caller (its `tracestate` then goes on).
pub(crate) fn write_context<E: Exchange + ?Sized>(
    x: &E,
    s: &SpanCtx,
    caller: bool,
    out: &mut Vec<u8>,
) {
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
            let state = match caller {
                true => tracestate(x),
                false => None,
            };
            header(out, b"tracestate", state.as_deref().unwrap_or_default());
        }
    }
}

/// The caller's `tracestate`, every line joined with commas.
pub(crate) fn tracestate<E: Exchange + ?Sized>(x: &E) -> Option<std::borrow::Cow<'_, [u8]>> {
    crate::http::h1::header_value(x.buf(), &x.head().headers, b"tracestate")
}

/// The `x-envoy-decorator-operation` an ingress response carries: the route decorator's
/// operation (propagated), unless the request named the operation itself.
pub(crate) fn response_decorator<E: Exchange + ?Sized>(x: &E) -> Option<&[u8]> {
    let t = x.hcm().tracing.as_ref()?;
    let log = x.log();
    if t.egress || log.operation_asked {
        return None;
    }
    let d = log.decorator.as_ref().filter(|d| d.propagate)?;
    Some(d.operation.as_bytes())
}

/// Whether the upstream response's `x-envoy-decorator-operation` stays out of the
/// response: on egress tracing consumes it (it names the span), on ingress the route's
/// decorator replaces it.
#[inline]
pub(crate) fn drops_response_header<E: Exchange + ?Sized>(x: &E, name: &[u8]) -> bool {
    let Some(t) = &x.hcm().tracing else {
        return false;
    };
    name.eq_ignore_ascii_case(DECORATOR) && (t.egress || response_decorator(x).is_some())
}

/// On egress, the upstream's `x-envoy-decorator-operation` names the span: noted from the
/// response head before it is written.
pub(crate) fn note_response_operation(
    log: &mut crate::http::exchange::Entry,
    hcm: &crate::model::HttpConnectionManager,
    up: &[u8],
    resp: &crate::http::h1::ResponseHead,
) {
    if log.span.is_none() || !hcm.tracing.as_ref().is_some_and(|t| t.egress) {
        return;
    }
    if let Some((_, v)) = resp
        .headers
        .iter()
        .find(|(n, v)| up[n.clone()].eq_ignore_ascii_case(DECORATOR) && !v.is_empty())
    {
        log.operation = Some(String::from_utf8_lossy(&up[v.clone()]).into());
    }
}
