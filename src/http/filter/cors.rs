//! `envoy.filters.http.cors`: preflight answers and the response headers of cross-origin
//! requests, from `CorsPolicy`s in `typed_per_filter_config`. Policies at several levels
//! merge field by field (the most specific that sets a field wins); whether the filter is
//! enforced or only shadowed comes from the most specific policy alone — as in Envoy.

use std::ops::Range;
use std::sync::Arc;

use super::{draw, FilterHost, Routed};
use crate::http::error::HttpError;
use crate::http::exchange::Exchange;
use crate::http::fields::header;
use crate::model::filter::{CorsFilter, CorsPolicy, PerRoute};
use crate::stats::CorsStat;

/// A cross-origin request's answer, for the encode phase.
pub(crate) struct Answer {
    /// The policies that apply, most specific first.
    policies: Policies,
    /// The request's `Origin` when a policy allows it (echoed, never `*`).
    origin: Option<Range<usize>>,
    /// A preflight answered here: the preflight headers go out too.
    preflight: bool,
}

type Policies = [Option<Arc<CorsPolicy>>; 4];

fn first<'a, T: ?Sized>(
    p: &'a Policies,
    field: impl Fn(&'a CorsPolicy) -> Option<&'a T>,
) -> Option<&'a T> {
    p.iter().flatten().find_map(|c| field(c))
}

fn flag(p: &Policies, field: impl Fn(&CorsPolicy) -> Option<bool>, default: bool) -> bool {
    p.iter().flatten().find_map(|c| field(c)).unwrap_or(default)
}

pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    filter: &CorsFilter,
    _per: Option<&PerRoute>,
    routed: &Routed<'_>,
    name: &str,
) -> Result<(), HttpError> {
    // Policies live in per-route configuration only; and only forwarding routes count
    // (not direct responses, redirects or unrouted requests).
    if !routed.table.any_per_filter || !routed.forwards() {
        return Ok(());
    }
    let mut policies: Policies = Default::default();
    let mut n = 0;
    for c in routed.all_per_route(name) {
        if let PerRoute::Cors(c) = c {
            policies[n] = Some(c.clone());
            n += 1;
        }
    }
    let Some(most_specific) = policies[0].as_ref() else {
        return Ok(());
    };
    let enabled = most_specific.enabled.is_none_or(|f| f.sample(draw()));
    let shadow = most_specific.shadow.is_some_and(|f| f.sample(draw()));
    if !enabled && !shadow {
        return Ok(());
    }
    let Some(origin) = header_range(x, b"origin") else {
        return Ok(());
    };
    let value = &x.buf()[origin.clone()];
    let allowed = first(&policies, |c| {
        (!c.allow_origin.is_empty()).then_some(&c.allow_origin[..])
    })
    .is_some_and(|ms| ms.iter().any(|m| m.matches(b"*") || m.matches(value)));
    let cells = filter.stats.core(x.core());
    cells.inc(if allowed {
        CorsStat::OriginValid
    } else {
        CorsStat::OriginInvalid
    } as usize);
    if !enabled {
        return Ok(());
    }
    let preflight = x.buf()[x.head().method.clone()] == *b"OPTIONS"
        && header_range(x, b"access-control-request-method").is_some();
    let forward_unmatched = flag(&policies, |c| c.forward_not_matching_preflights, true);
    let answer_preflight = preflight && (allowed || !forward_unmatched);
    x.filter_state_mut().cors = Some(Answer {
        policies,
        origin: allowed.then_some(origin),
        preflight: answer_preflight,
    });
    if answer_preflight {
        return Err(HttpError::CorsPreflight);
    }
    Ok(())
}

/// The range of a request header's (first, non-empty) value.
fn header_range<E: Exchange + ?Sized>(x: &E, name: &[u8]) -> Option<Range<usize>> {
    let buf = x.buf();
    x.head()
        .headers
        .iter()
        .find(|(n, v)| buf[n.clone()].eq_ignore_ascii_case(name) && !v.is_empty())
        .map(|(_, v)| v.clone())
}

/// Response headers the filter sets itself when the origin was allowed.
pub(super) fn overrides(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"access-control-allow-origin")
        || name.eq_ignore_ascii_case(b"access-control-allow-credentials")
        || name.eq_ignore_ascii_case(b"access-control-expose-headers")
}

impl Answer {
    pub(super) fn allowed(&self) -> bool {
        self.origin.is_some()
    }
}

pub(super) fn encode<E: Exchange + ?Sized>(a: &Answer, x: &E, out: &mut Vec<u8>) {
    let p = &a.policies;
    let credentials = flag(p, |c| c.allow_credentials, false);
    if let Some(o) = &a.origin {
        header(out, b"access-control-allow-origin", &x.buf()[o.clone()]);
    }
    if credentials && (a.origin.is_some() || a.preflight) {
        header(out, b"access-control-allow-credentials", b"true");
    }
    if a.preflight {
        let echo = |name: &[u8], out: &mut Vec<u8>, header_name: &[u8]| {
            let v = header_range(x, name).map(|r| &x.buf()[r]).unwrap_or(b"");
            header(out, header_name, v);
        };
        match first(p, |c| c.allow_methods.as_deref()) {
            Some("*") => echo(
                b"access-control-request-method",
                out,
                b"access-control-allow-methods",
            ),
            Some(m) => header(out, b"access-control-allow-methods", m.as_bytes()),
            None => {}
        }
        match first(p, |c| c.allow_headers.as_deref()) {
            Some("*") => echo(
                b"access-control-request-headers",
                out,
                b"access-control-allow-headers",
            ),
            Some(h) => header(out, b"access-control-allow-headers", h.as_bytes()),
            None => {}
        }
        if let Some(m) = first(p, |c| c.max_age.as_deref()) {
            header(out, b"access-control-max-age", m.as_bytes());
        }
        let private = flag(p, |c| c.allow_private_network_access, false);
        if private
            && header_range(x, b"access-control-request-private-network")
                .is_some_and(|r| x.buf()[r] == *b"true")
        {
            header(out, b"access-control-allow-private-network", b"true");
        }
    }
    if a.origin.is_some() {
        if let Some(e) = first(p, |c| c.expose_headers.as_deref()) {
            header(out, b"access-control-expose-headers", e.as_bytes());
        }
    }
}
