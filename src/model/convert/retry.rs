//! `RetryPolicy` (route and virtual host) → `model::retry::RetryPolicy`, with Envoy's
//! validation and defaults.

use std::time::Duration;

use crate::model::retry::{RateLimitedBackOff, ResetFormat, RetryOn, RetryPolicy};
use crate::proto::envoy::config::route::v3 as pb;

use super::matchers::header_match;
use super::{any_type, duration, err, ConvertError};

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
const PREVIOUS_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

pub(crate) fn retry_policy(
    p: &pb::RetryPolicy,
    res: &str,
    path: &str,
) -> Result<RetryPolicy, ConvertError> {
    let (on, unknown) = RetryOn::parse(&p.retry_on, false);
    if !unknown.is_empty() {
        // Envoy accepts the policy and ignores what it does not know; so does Ringside.
        tracing::warn!(
            "{res}: {path}.retry_on: unknown retry_on policy token(s) [{}] in '{}' are ignored",
            unknown.join(", "),
            p.retry_on
        );
    }
    if on.has(RetryOn::HTTP3_POST_CONNECT_FAILURE) {
        return Err(err(
            res,
            format!("{path}.retry_on"),
            "http3-post-connect-failure is not supported (Ringside has no HTTP/3 upstreams)",
        ));
    }
    let mut out = RetryPolicy {
        on,
        ..RetryPolicy::default()
    };
    if let Some(n) = p.num_retries {
        out.num_retries = n;
    }
    let opt = |d: Option<&prost_types::Duration>, field: &str| {
        d.map(|d| duration(d, res, &format!("{path}.{field}")))
            .transpose()
            .map(|d| d.filter(|d| !d.is_zero()))
    };
    out.per_try_timeout = opt(p.per_try_timeout.as_ref(), "per_try_timeout")?;
    out.per_try_idle_timeout = opt(p.per_try_idle_timeout.as_ref(), "per_try_idle_timeout")?;
    for (i, &c) in p.retriable_status_codes.iter().enumerate() {
        let code = u16::try_from(c)
            .ok()
            .filter(|c| (100..=999).contains(c))
            .ok_or_else(|| {
                err(
                    res,
                    format!("{path}.retriable_status_codes[{i}]"),
                    "not an HTTP status code",
                )
            })?;
        out.status_codes.push(code);
    }
    for (i, h) in p.retriable_headers.iter().enumerate() {
        out.headers.push(header_match(
            h,
            res,
            &format!("{path}.retriable_headers[{i}]"),
        )?);
    }
    for (i, h) in p.retriable_request_headers.iter().enumerate() {
        out.request_headers.push(header_match(
            h,
            res,
            &format!("{path}.retriable_request_headers[{i}]"),
        )?);
    }
    for (i, pred) in p.retry_host_predicate.iter().enumerate() {
        let pp = format!("{path}.retry_host_predicate[{i}]");
        use pb::retry_policy::retry_host_predicate::ConfigType;
        let by_type = pred
            .config_type
            .as_ref()
            .map(|ConfigType::TypedConfig(any)| any_type(any).to_string());
        let known = match &by_type {
            Some(t) => t == PREVIOUS_HOSTS_TYPE,
            None => pred.name == PREVIOUS_HOSTS,
        };
        if !known {
            let what = by_type.unwrap_or_else(|| pred.name.clone());
            return Err(err(
                res,
                pp,
                format!("retry host predicate '{what}' is not supported (only {PREVIOUS_HOSTS})"),
            ));
        }
        out.previous_hosts = true;
    }
    if p.host_selection_retry_max_attempts > 0 {
        out.host_selection_attempts =
            u32::try_from(p.host_selection_retry_max_attempts).unwrap_or(u32::MAX);
    }
    if let Some(b) = &p.retry_back_off {
        let bp = format!("{path}.retry_back_off");
        let Some(base) = &b.base_interval else {
            return Err(err(
                res,
                format!("{bp}.base_interval"),
                "base_interval is required",
            ));
        };
        let base = duration(base, res, &format!("{bp}.base_interval"))?;
        if base < Duration::from_millis(1) {
            return Err(err(
                res,
                format!("{bp}.base_interval"),
                "must be at least 1ms",
            ));
        }
        let max = match &b.max_interval {
            Some(m) => duration(m, res, &format!("{bp}.max_interval"))?,
            None => base * 10,
        };
        if max < base {
            return Err(err(
                res,
                format!("{bp}.max_interval"),
                "max_interval must be greater than or equal to the base_interval",
            ));
        }
        out.base_interval = base;
        out.max_interval = max;
    }
    if let Some(r) = &p.rate_limited_retry_back_off {
        let rp = format!("{path}.rate_limited_retry_back_off");
        if r.reset_headers.is_empty() {
            return Err(err(
                res,
                format!("{rp}.reset_headers"),
                "at least one reset header is required",
            ));
        }
        let mut headers = Vec::with_capacity(r.reset_headers.len());
        for (i, h) in r.reset_headers.iter().enumerate() {
            if h.name.is_empty() {
                return Err(err(
                    res,
                    format!("{rp}.reset_headers[{i}].name"),
                    "name is required",
                ));
            }
            let format = match pb::retry_policy::ResetHeaderFormat::try_from(h.format) {
                Ok(pb::retry_policy::ResetHeaderFormat::Seconds) => ResetFormat::Seconds,
                Ok(pb::retry_policy::ResetHeaderFormat::UnixTimestamp) => {
                    ResetFormat::UnixTimestamp
                }
                Err(_) => {
                    return Err(err(
                        res,
                        format!("{rp}.reset_headers[{i}].format"),
                        "unknown value",
                    ))
                }
            };
            headers.push((h.name.to_ascii_lowercase(), format));
        }
        let max = match &r.max_interval {
            Some(m) => duration(m, res, &format!("{rp}.max_interval"))?,
            None => Duration::from_secs(300),
        };
        if max < Duration::from_millis(1) {
            return Err(err(
                res,
                format!("{rp}.max_interval"),
                "must be at least 1ms",
            ));
        }
        out.rate_limited = Some(RateLimitedBackOff { headers, max });
    }
    Ok(out)
}
