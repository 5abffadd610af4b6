//! A request's span context: what the caller's headers carry (B3 multi or single, W3C
//! `traceparent`), and the new span's identity, as Envoy 1.40's Zipkin and OpenTelemetry
//! tracers make it.

use crate::model::tracing::{Propagation, SpanCtx, Zipkin};

/// The trace headers a request came with (first value of each).
#[derive(Default, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub b3: Option<&'a [u8]>,
    pub trace_id: Option<&'a [u8]>,
    pub span_id: Option<&'a [u8]>,
    pub parent_id: Option<&'a [u8]>,
    pub sampled: Option<&'a [u8]>,
    pub traceparent: Option<&'a [u8]>,
}

/// A caller's context: trace id (high, low), its span id and parent, and its sampling
/// word where it gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caller {
    hi: u64,
    lo: u64,
    span: u64,
    parent: Option<u64>,
}

impl Caller {
    fn new((hi, lo): (u64, u64), span: u64, parent: Option<u64>) -> Caller {
        Caller {
            hi,
            lo,
            span,
            parent,
        }
    }
}

/// Hex as Envoy's B3 extractor reads it: any length whose value fits 64 bits (leading
/// zeros allowed), upper or lower case.
fn hex64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let s = std::str::from_utf8(s).ok()?;
    let digits = s.trim_start_matches('0');
    if digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(if digits.is_empty() { "0" } else { digits }, 16).ok()
}

/// A B3 trace id: 32 digits are two halves, anything else one 64-bit number.
fn trace_id(s: &[u8]) -> Option<(u64, u64)> {
    if s.len() == 32 {
        Some((hex64(&s[..16])?, hex64(&s[16..])?))
    } else {
        Some((0, hex64(s)?))
    }
}

/// Exactly `n` hex digits.
fn fixed_hex(s: &[u8], n: usize) -> Option<u64> {
    (s.len() == n).then(|| hex64(s)).flatten()
}

/// What the B3 headers say: `Ok((caller, sampled))`, or `Err(())` where Envoy makes a
/// null span (an id or a sampling word it cannot read).
type B3 = Result<(Option<Caller>, Option<bool>), ()>;

/// The single `b3` header: `{trace}-{span}[-{sampled}[-{parent}]]`, or the sampling word
/// alone (`0`, `1`, `d`).
fn b3_single(v: &[u8]) -> B3 {
    let sampling = |w: &[u8]| match w {
        b"1" | b"d" => Ok(true),
        b"0" => Ok(false),
        _ => Err(()),
    };
    if v.len() == 1 {
        return Ok((None, Some(sampling(v)?)));
    }
    let mut parts = v.split(|&b| b == b'-');
    let t = parts.next().ok_or(())?;
    let s = parts.next().ok_or(())?;
    if t.len() != 16 && t.len() != 32 {
        return Err(());
    }
    let (hi, lo) = trace_id(t).ok_or(())?;
    let span = fixed_hex(s, 16).ok_or(())?;
    let sampled = match parts.next() {
        Some(w) => Some(sampling(w)?),
        None => None,
    };
    // The caller's parent is read (it must be valid) but the new span does not use it.
    let parent = match parts.next() {
        Some(p) => Some(fixed_hex(p, 16).ok_or(())?),
        None => None,
    };
    if parts.next().is_some() {
        return Err(());
    }
    Ok((Some(Caller::new((hi, lo), span, parent)), sampled))
}

/// The `x-b3-*` headers: a context needs both ids; `x-b3-sampled` is `1` or `true` for
/// sampled, anything else for not sampled.
fn b3_multi(h: &Incoming<'_>) -> B3 {
    let sampled = h
        .sampled
        .map(|v| v == b"1" || v.eq_ignore_ascii_case(b"true"));
    let (Some(t), Some(s)) = (h.trace_id, h.span_id) else {
        return Ok((None, sampled));
    };
    let (hi, lo) = trace_id(t).ok_or(())?;
    let span = hex64(s).ok_or(())?;
    let parent = match h.parent_id {
        Some(p) => Some(hex64(p).ok_or(())?),
        None => None,
    };
    Ok((Some(Caller::new((hi, lo), span, parent)), sampled))
}

/// W3C `traceparent`: 55 characters, `{version:2}-{trace:32}-{parent:16}-{flags:2}`, all
/// hex, ids not all zeros. `None`: not valid.
pub(crate) fn traceparent(v: &[u8]) -> Option<(u64, u64, u64, bool)> {
    if v.len() != 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    fixed_hex(&v[..2], 2)?;
    let hi = fixed_hex(&v[3..19], 16)?;
    let lo = fixed_hex(&v[19..35], 16)?;
    let parent = fixed_hex(&v[36..52], 16)?;
    let flags = fixed_hex(&v[53..55], 2)?;
    if hi == 0 && lo == 0 || parent == 0 {
        return None;
    }
    Some((hi, lo, parent, flags & 1 == 1))
}

fn random_id() -> u64 {
    fastrand::u64(..)
}

/// The Zipkin span for a request, or `None` for Envoy's null span (headers it cannot
/// read: nothing is exported or injected). `traced`: the connection manager's decision.
pub(crate) fn zipkin(z: &Zipkin, egress: bool, h: &Incoming<'_>, traced: bool) -> Option<SpanCtx> {
    let b3_present = h.b3.is_some()
        || h.trace_id.is_some()
        || h.span_id.is_some()
        || h.parent_id.is_some()
        || h.sampled.is_some();
    let (mut caller, mut sampled, mut propagation) = match h.b3 {
        Some(v) => {
            let (c, s) = b3_single(v).ok()?;
            (c, s, Propagation::B3Single)
        }
        None => {
            let (c, s) = b3_multi(h).ok()?;
            (c, s, Propagation::B3Multi)
        }
    };
    if z.w3c {
        // W3C is read only where no B3 header came at all.
        if !b3_present {
            if let Some((hi, lo, span, s)) = h.traceparent.and_then(traceparent) {
                caller = Some(Caller::new((hi, lo), span, None));
                sampled = Some(s);
            }
        }
        propagation = match propagation {
            Propagation::B3Single => Propagation::B3SingleW3c,
            _ => Propagation::B3MultiW3c,
        };
    }
    // A downstream span is a server span, but on an OUTBOUND listener (a client span)
    // unless spans are split; a server span shares its caller's id when asked to.
    let server = z.split_spans || !egress;
    let shared = server && z.shared_span_context;
    let sampled = sampled.unwrap_or(traced);
    Some(match caller {
        None => {
            let lo = random_id();
            SpanCtx {
                trace_hi: if z.trace_id_128bit { random_id() } else { 0 },
                trace_lo: lo,
                id: lo,
                parent: None,
                sampled,
                shared,
                propagation,
            }
        }
        Some(c) if shared => SpanCtx {
            trace_hi: c.hi,
            trace_lo: c.lo,
            id: c.span,
            parent: c.parent.filter(|&p| p != 0),
            sampled,
            shared,
            propagation,
        },
        Some(c) => SpanCtx {
            trace_hi: c.hi,
            trace_lo: c.lo,
            id: random_id(),
            parent: Some(c.span),
            sampled,
            shared,
            propagation,
        },
    })
}

/// The OpenTelemetry span for a request, or `None` for a `traceparent` that is not valid
/// (Envoy's null span). Exported when the connection manager traces the request and the
/// caller (if any) sampled it.
pub(crate) fn otel(h: &Incoming<'_>, traced: bool) -> Option<SpanCtx> {
    let (hi, lo, parent, caller_sampled) = match h.traceparent {
        Some(v) => {
            let (hi, lo, p, s) = traceparent(v)?;
            (hi, lo, Some(p), s)
        }
        None => (random_id(), random_id(), None, true),
    };
    Some(SpanCtx {
        trace_hi: hi,
        trace_lo: lo,
        id: random_id(),
        parent,
        sampled: traced && caller_sampled,
        shared: false,
        propagation: Propagation::W3c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(shared: bool, w3c: bool) -> Zipkin {
        Zipkin {
            cluster: "zipkin".into(),
            endpoint: "/api/v2/spans".into(),
            hostname: "zipkin".into(),
            trace_id_128bit: true,
            shared_span_context: shared,
            split_spans: false,
            w3c,
            stats: crate::stats::Store::new(1).scope::<crate::stats::ZipkinStat>("t."),
        }
    }

    #[test]
    fn b3_ids_read_as_envoy_reads_them() {
        assert_eq!(hex64(b"abc"), Some(0xabc));
        assert_eq!(hex64(b"0123456789abcdef0"), Some(0x123456789abcdef0));
        assert_eq!(hex64(b"123456789abcdef01"), None);
        assert_eq!(hex64(b"ABCDEF"), Some(0xabcdef));
        assert_eq!(
            trace_id(b"463ac35c9f6413ad48485a3953bb6124"),
            Some((0x463ac35c9f6413ad, 0x48485a3953bb6124))
        );
        assert_eq!(
            trace_id(b"0000000000000000a3ce929d0e0e4736").map(|t| t.0),
            Some(0)
        );
        assert_eq!(trace_id(b"12345678901234567890"), None);
    }

    #[test]
    fn a_child_of_a_b3_caller_keeps_the_trace_and_takes_the_callers_span_as_parent() {
        let h = Incoming {
            trace_id: Some(b"a3ce929d0e0e4736"),
            span_id: Some(b"a2fb4a1d1a96d312"),
            parent_id: Some(b"0020000000000001"),
            sampled: Some(b"0"),
            ..Default::default()
        };
        let s = zipkin(&z(false, false), false, &h, true).unwrap();
        assert_eq!((s.trace_hi, s.trace_lo), (0, 0xa3ce929d0e0e4736));
        assert_eq!(s.parent, Some(0xa2fb4a1d1a96d312));
        assert_ne!(s.id, 0xa2fb4a1d1a96d312);
        assert!(!s.sampled, "x-b3-sampled: 0 overrides the decision");
        // Shared: the caller's own ids.
        let s = zipkin(&z(true, false), false, &h, true).unwrap();
        assert_eq!(
            (s.id, s.parent, s.shared),
            (0xa2fb4a1d1a96d312, Some(0x0020000000000001), true)
        );
        // An OUTBOUND (client) span never shares.
        let s = zipkin(&z(true, false), true, &h, true).unwrap();
        assert_eq!((s.parent, s.shared), (Some(0xa2fb4a1d1a96d312), false));
    }

    #[test]
    fn a_root_span_id_is_the_trace_ids_low_half() {
        let s = zipkin(&z(false, false), false, &Incoming::default(), true).unwrap();
        assert_eq!(s.id, s.trace_lo);
        assert!(s.sampled && s.parent.is_none());
        let h = Incoming {
            sampled: Some(b"1"),
            ..Default::default()
        };
        assert!(zipkin(&z(false, false), false, &h, false).unwrap().sampled);
    }

    #[test]
    fn single_b3_forms() {
        let single = |v: &'static [u8], traced| {
            let h = Incoming {
                b3: Some(v),
                ..Default::default()
            };
            zipkin(&z(false, false), false, &h, traced)
        };
        let s = single(
            b"463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001",
            false,
        )
        .unwrap();
        assert_eq!(
            (s.parent, s.sampled, s.propagation),
            (Some(0xa2fb4a1d1a96d312), true, Propagation::B3Single)
        );
        assert!(
            single(b"a3ce929d0e0e4736-a2fb4a1d1a96d312", true)
                .unwrap()
                .sampled
        );
        assert!(!single(b"0", true).unwrap().sampled);
        assert!(single(b"d", false).unwrap().sampled);
        for bad in [
            &b"x"[..],
            b"a3ce929d0e0e4736-a2fb4a1d1a96d312-",
            b"a3ce929d0e0e4736-a2fb4a1d1a96d312-x",
            b"garbage-value",
        ] {
            assert_eq!(single(bad, true), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn w3c_is_read_by_zipkin_only_when_asked_and_no_b3_came() {
        let tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let h = Incoming {
            traceparent: Some(tp),
            ..Default::default()
        };
        let s = zipkin(&z(false, true), false, &h, true).unwrap();
        assert_eq!(
            (s.trace_lo, s.parent, s.sampled),
            (0x8448eb211c80319c, Some(0xb7ad6b7169203331), false)
        );
        assert_eq!(s.propagation, Propagation::B3MultiW3c);
        let s = zipkin(&z(false, false), false, &h, true).unwrap();
        assert!(s.parent.is_none() && s.sampled);
    }

    #[test]
    fn traceparent_rules() {
        let ok = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";
        assert_eq!(
            traceparent(ok),
            Some((
                0x0af7651916cd43dd,
                0x8448eb211c80319c,
                0xb7ad6b7169203331,
                true
            ))
        );
        assert!(traceparent(b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some());
        for bad in [
            &b"zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        ] {
            assert_eq!(traceparent(bad), None);
        }
        // OpenTelemetry: exported only when both the decision and the caller say so.
        let h = Incoming {
            traceparent: Some(ok),
            ..Default::default()
        };
        assert!(otel(&h, true).unwrap().sampled);
        assert!(!otel(&h, false).unwrap().sampled);
        let bad = Incoming {
            traceparent: Some(b"zz"),
            ..Default::default()
        };
        assert_eq!(otel(&bad, true), None);
    }
}
