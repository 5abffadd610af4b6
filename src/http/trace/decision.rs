//! Envoy's tracing decision (the UUID request id extension's): traced by random sampling
//! on the id, forced by a trusted `x-envoy-force-trace`, or asked by `x-client-trace-id`,
//! capped by the overall rate; the reason is packed into the id.

/// The request id with Envoy's trace decision in it (the forwarding's request id, with
/// `tracing`).
#[cold]
pub(crate) fn traced_request_id<E: crate::http::exchange::Exchange + ?Sized>(
    x: &E,
    tracing: &crate::model::tracing::Tracing,
    internal: bool,
    generated: Option<[u8; 36]>,
) -> Option<[u8; 36]> {
    let hcm = x.hcm();
    let head = x.head();
    let buf = x.buf();
    let current: &[u8] = match (&generated, head.request_id) {
        (Some(g), _) => g,
        (None, Some(i)) => &buf[head.headers[i].1.clone()],
        (None, None) => return None,
    };
    match trace_decision(tracing, &hcm.request_id, current, asked(x, internal)) {
        Some(stamped) if stamped[..] != *current => Some(stamped),
        _ => generated,
    }
}

/// What the request asks of tracing.
fn asked<E: crate::http::exchange::Exchange + ?Sized>(x: &E, internal: bool) -> Asked {
    let (head, buf) = (x.head(), x.buf());
    let has = |name: &[u8]| {
        head.headers
            .iter()
            .any(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
    };
    // x-envoy-force-trace counts only where it survives: on internal requests.
    Asked {
        client: has(b"x-client-trace-id"),
        forced: internal && has(b"x-envoy-force-trace"),
    }
}

/// The trace reason of a request whose id does not carry it: the UUID extension's
/// `pack_trace_reason: false` (decided on the id all the same), or
/// `use_request_id_for_trace_sampling: false` (the sampling draw is random).
#[cold]
pub(crate) fn unpacked_reason<E: crate::http::exchange::Exchange + ?Sized>(
    x: &E,
    id: Option<&[u8]>,
) -> Option<u8> {
    let hcm = x.hcm();
    let tracing = hcm.tracing.as_ref()?;
    let packing = crate::model::tracing::RequestIdConfig {
        pack_trace_reason: true,
        use_for_sampling: true,
    };
    let mut drawn = *b"00000000-0000-4000-8000-000000000000";
    let id = if hcm.request_id.use_for_sampling {
        id?
    } else {
        let mut hex = Vec::with_capacity(16);
        super::hex16(u64::from(fastrand::u32(..)), &mut hex);
        drawn[..8].copy_from_slice(&hex[8..]);
        &drawn[..]
    };
    trace_decision(tracing, &packing, id, asked(x, x.internal())).map(|o| o[TRACE_BYTE])
}

#[derive(Clone, Copy)]
struct Asked {
    /// `x-client-trace-id` is present.
    client: bool,
    /// `x-envoy-force-trace` is present (and trusted).
    forced: bool,
}

/// The UUID request id's trace reason, at the UUID version's position.
const TRACE_BYTE: usize = 14;
const NO_TRACE: u8 = b'4';
const TRACE_SAMPLED: u8 = b'9';
const TRACE_FORCED: u8 = b'a';
const TRACE_CLIENT: u8 = b'b';

/// Envoy's tracing decision for a request id (`mutateTracingRequestHeader` with the UUID
/// extension): the id with its trace reason set, or `None` where Envoy leaves it alone
/// (shorter than 8 characters, not hex there, or not 36 long).
fn trace_decision(
    t: &crate::model::tracing::Tracing,
    cfg: &crate::model::tracing::RequestIdConfig,
    id: &[u8],
    asked: Asked,
) -> Option<[u8; 36]> {
    let prefix = std::str::from_utf8(id.get(..8)?).ok()?;
    if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let result = u64::from_str_radix(prefix, 16).ok()? % 10_000;
    let mut out: [u8; 36] = id.try_into().ok()?;
    let traced = matches!(out[TRACE_BYTE], TRACE_FORCED | TRACE_SAMPLED | TRACE_CLIENT);
    let mut set = None;
    // A request already traced keeps its reason.
    if !traced {
        if asked.client && fastrand::u32(..10_000) < t.client {
            set = Some(TRACE_CLIENT);
        } else if asked.forced {
            set = Some(TRACE_FORCED);
        } else if result < u64::from(t.random) {
            set = Some(TRACE_SAMPLED);
        }
    }
    if result >= u64::from(t.overall) {
        set = Some(NO_TRACE);
    }
    if let (true, Some(reason)) = (cfg.pack_trace_reason, set) {
        out[TRACE_BYTE] = reason;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_trace_decision_is_packed_into_the_request_id_as_envoy_packs_it() {
        use super::{trace_decision, Asked};
        use crate::model::tracing::{RequestIdConfig, Tracing};
        let half = Tracing::rates(10_000, 5_000, 10_000);
        let cfg = RequestIdConfig::default();
        let none = Asked {
            client: false,
            forced: false,
        };
        let reason = |t: &Tracing, cfg: &RequestIdConfig, id: &str, asked: Asked| {
            trace_decision(t, cfg, id.as_bytes(), asked).map(|o| o[14] as char)
        };
        // Sampled when the id's first 8 hex digits, mod 10,000, fall under the rate.
        let low = "00000001-0000-4000-8000-000000000000";
        let high = "ffffffff-0000-4000-8000-000000000000"; // 7295
        assert_eq!(reason(&half, &cfg, low, none), Some('9'));
        assert_eq!(reason(&half, &cfg, high, none), Some('4'));
        // x-client-trace-id, then a trusted x-envoy-force-trace, come first.
        let client = Asked {
            client: true,
            forced: true,
        };
        assert_eq!(reason(&half, &cfg, high, client), Some('b'));
        let forced = Asked {
            client: false,
            forced: true,
        };
        assert_eq!(reason(&half, &cfg, high, forced), Some('a'));
        // An id already traced keeps its reason; the overall rate can still clear it.
        let traced = "ffffffff-0000-b000-8000-000000000000";
        assert_eq!(reason(&half, &cfg, traced, none), Some('b'));
        let capped = Tracing {
            overall: 5_000,
            ..half.clone()
        };
        assert_eq!(reason(&capped, &cfg, traced, none), Some('4'));
        // Not packed when asked not to; ids that are not UUIDs are left alone.
        let nopack = RequestIdConfig {
            pack_trace_reason: false,
            ..cfg
        };
        assert_eq!(reason(&half, &nopack, low, none), Some('4'));
        assert_eq!(reason(&half, &cfg, "abc", none), None);
        assert_eq!(
            reason(&half, &cfg, "zzzzzzzz-0000-4000-8000-000000000000", none),
            None
        );
    }
}
