//! `envoy.filters.http.local_ratelimit`: a token bucket shared by every core (see
//! `model::ratelimit`), so the configured rate holds for the whole proxy, as in Envoy.

use std::sync::Arc;
use std::time::Instant;

use super::{draw, FilterHost};
use crate::http::error::HttpError;
use crate::http::exchange::Exchange;
use crate::http::fields::{header, write_adds};
use crate::model::filter::{LocalRateLimit, PerRoute};
use crate::stats::LocalRateLimitStat;

/// What the response carries for the rate limit.
pub(crate) struct Answer {
    config: Arc<LocalRateLimit>,
    /// The request was refused: the local reply gets `response_headers_to_add`.
    limited: bool,
}

pub(super) fn decode<E: FilterHost>(
    x: &mut E,
    listener: &Arc<LocalRateLimit>,
    per: Option<&PerRoute>,
) -> Result<(), HttpError> {
    // A route's configuration replaces the listener's whole, bucket and stats included.
    let config = match per {
        Some(PerRoute::LocalRateLimit(c)) => c,
        _ => listener,
    };
    if !config.enabled.sample(draw()) {
        return Ok(());
    }
    let cells = config.stats.core(x.core());
    cells.inc(LocalRateLimitStat::Enabled as usize);
    let Some(bucket) = &config.bucket else {
        cells.inc(LocalRateLimitStat::Ok as usize);
        return Ok(());
    };
    let allowed = bucket.try_take(Instant::now());
    // The x-ratelimit-* headers need a bucket with tokens to speak of.
    let headers = config.x_ratelimit_headers && bucket.max_tokens > 0;
    if allowed {
        cells.inc(LocalRateLimitStat::Ok as usize);
        if headers {
            x.filter_state_mut().ratelimit = Some(Answer {
                config: config.clone(),
                limited: false,
            });
        }
        return Ok(());
    }
    cells.inc(LocalRateLimitStat::RateLimited as usize);
    if !config.enforced.sample(draw()) {
        // Counted only; the request goes on.
        if headers {
            x.filter_state_mut().ratelimit = Some(Answer {
                config: config.clone(),
                limited: false,
            });
        }
        return Ok(());
    }
    cells.inc(LocalRateLimitStat::Enforced as usize);
    x.filter_state_mut().ratelimit = Some(Answer {
        config: config.clone(),
        limited: true,
    });
    Err(HttpError::LocalRateLimited {
        status: config.status,
        resource_exhausted: config.resource_exhausted,
    })
}

/// `response_headers_to_add` on the refusal; the `x-ratelimit-*` headers (read now) on
/// every response when enabled.
pub(super) fn encode<E: Exchange + ?Sized>(a: &Answer, x: &E, out: &mut Vec<u8>) {
    if a.limited {
        write_adds(out, &[&a.config.response_headers], x, &|_| false);
    }
    let Some(bucket) = a
        .config
        .bucket
        .as_ref()
        .filter(|_| a.config.x_ratelimit_headers)
    else {
        return;
    };
    if bucket.max_tokens == 0 {
        return;
    }
    let now = Instant::now();
    let mut b = itoa::Buffer::new();
    header(
        out,
        b"x-ratelimit-limit",
        b.format(bucket.max_tokens).as_bytes(),
    );
    header(
        out,
        b"x-ratelimit-remaining",
        b.format(bucket.remaining(now)).as_bytes(),
    );
    header(
        out,
        b"x-ratelimit-reset",
        b.format(bucket.reset_secs(now)).as_bytes(),
    );
}
