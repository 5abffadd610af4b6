//! A cluster's `health_checks`: HTTP (HTTP/1.1 or h2c), TCP and gRPC checks, with Envoy's
//! required fields and defaults. Envoy runs one health checker per cluster: a second one
//! is refused, as is anything else the checker would need and Ringside does not do.

use std::sync::Arc;
use std::time::Duration;

use crate::model::health::{HealthCheck, Kind};
use crate::proto::envoy::config::cluster::v3 as pb;
use crate::proto::envoy::config::core::v3::health_check::HealthChecker;

use super::{duration, err, ConvertError, Ctx};

pub(super) fn health(
    c: &pb::Cluster,
    (stat_name, h2_cluster): (&str, bool),
    ctx: &Ctx<'_>,
    res: &str,
) -> Result<Option<Arc<HealthCheck>>, ConvertError> {
    let Some(h) = c.health_checks.first() else {
        return Ok(None);
    };
    if c.health_checks.len() > 1 {
        return Err(err(
            res,
            "health_checks",
            "only one health check is supported (as in Envoy)",
        ));
    }
    let at = |f: &str| format!("health_checks[0].{f}");
    if c.transport_socket.is_some() || !c.transport_socket_matches.is_empty() {
        return Err(err(
            res,
            "health_checks",
            "health checks over TLS (the cluster's transport socket) are not implemented",
        ));
    }
    let required = |d: &Option<prost_types::Duration>, f: &str| -> Result<Duration, ConvertError> {
        match d {
            None => Err(err(res, at(f), "is required")),
            Some(d) => {
                let d = duration(d, res, &at(f))?;
                match d < Duration::from_millis(1) {
                    true => Err(err(res, at(f), "must be at least 1ms")),
                    false => Ok(d),
                }
            }
        }
    };
    let optional = |d: &Option<prost_types::Duration>, f: &str, default: Duration| match d {
        None => Ok(default),
        Some(d) => match duration(d, res, &at(f))? {
            d if d < Duration::from_millis(1) => Err(err(res, at(f), "must be at least 1ms")),
            d => Ok(d),
        },
    };
    let threshold = |v: Option<u32>, f: &str| match v {
        None => Err(err(res, at(f), "is required")),
        // Envoy would never move such a host; refused rather than kept as is.
        Some(0) => Err(err(res, at(f), "must be at least 1")),
        Some(n) => Ok(n),
    };
    // The values go into the check's request: refused here, never a failure there.
    let authority = |v: &str, f: &str| match v.parse::<http::uri::Authority>() {
        Ok(_) => Ok(v.into()),
        Err(_) => Err(err(res, at(f), format!("'{v}' is not a valid authority"))),
    };
    let timeout = required(&h.timeout, "timeout")?;
    let interval = required(&h.interval, "interval")?;
    let no_traffic = optional(
        &h.no_traffic_interval,
        "no_traffic_interval",
        Duration::from_secs(60),
    )?;
    let unhealthy_interval = optional(&h.unhealthy_interval, "unhealthy_interval", interval)?;
    let kind = match &h.health_checker {
        None => {
            return Err(err(
                res,
                at("health_checker"),
                "http_health_check, tcp_health_check or grpc_health_check is required",
            ))
        }
        Some(HealthChecker::HttpHealthCheck(x)) => {
            if !x.path.starts_with('/') || x.path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(err(
                    res,
                    at("http_health_check.path"),
                    "must be a path starting with '/'",
                ));
            }
            if x.request_headers_to_remove
                .iter()
                .any(|h| h.eq_ignore_ascii_case("host") || h.starts_with(':'))
            {
                return Err(err(
                    res,
                    at("http_health_check.request_headers_to_remove"),
                    "cannot remove the host or a pseudo-header",
                ));
            }
            let h2 = match x.codec_client_type {
                0 => false,
                1 => true,
                _ => {
                    return Err(err(
                        res,
                        at("http_health_check.codec_client_type"),
                        "only HTTP1 and HTTP2 are supported",
                    ))
                }
            };
            use crate::proto::envoy::config::core::v3::RequestMethod as M;
            let method = match M::try_from(x.method) {
                Ok(M::MethodUnspecified | M::Get) => "GET",
                Ok(M::Head) => "HEAD",
                Ok(M::Post) => "POST",
                Ok(M::Put) => "PUT",
                Ok(M::Delete) => "DELETE",
                Ok(M::Options) => "OPTIONS",
                Ok(M::Trace) => "TRACE",
                Ok(M::Patch) => "PATCH",
                // Envoy refuses CONNECT for health checks.
                _ => {
                    return Err(err(
                        res,
                        at("http_health_check.method"),
                        "CONNECT is not allowed",
                    ))
                }
            };
            let mut headers = Vec::new();
            for (i, o) in x.request_headers_to_add.iter().enumerate() {
                let p = at(&format!("http_health_check.request_headers_to_add[{i}]"));
                let Some(hv) = &o.header else {
                    return Err(err(res, format!("{p}.header"), "is required"));
                };
                if o.append.is_some() || o.append_action != 0 || o.keep_empty_value {
                    return Err(err(res, p.clone(), "append, append_action and keep_empty_value are not implemented for health checks"));
                }
                let value = match (hv.value.as_str(), hv.raw_value.is_empty()) {
                    (v, true) => v.to_string(),
                    ("", false) => String::from_utf8_lossy(&hv.raw_value).into_owned(),
                    _ => {
                        return Err(err(
                            res,
                            format!("{p}.header"),
                            "value and raw_value are exclusive",
                        ))
                    }
                };
                if value.contains('%') {
                    return Err(err(
                        res,
                        format!("{p}.header.value"),
                        "formatters (%...%) in health check headers are not implemented",
                    ));
                }
                if http::HeaderName::from_bytes(hv.key.as_bytes()).is_err()
                    || http::HeaderValue::from_str(&value).is_err()
                {
                    return Err(err(res, format!("{p}.header"), "not a valid header"));
                }
                headers.push((hv.key.to_ascii_lowercase().into(), value.into()));
            }
            let ranges = |list: &[crate::proto::envoy::r#type::v3::Int64Range], field: &str| {
                let mut out = Vec::new();
                for (i, r) in list.iter().enumerate() {
                    if !(100..=599).contains(&r.start)
                        || !(101..=600).contains(&r.end)
                        || r.start >= r.end
                    {
                        return Err(err(
                            res,
                            at(&format!("http_health_check.{field}[{i}]")),
                            "must be a range within [100, 600)",
                        ));
                    }
                    out.push((r.start as u16, r.end as u16));
                }
                Ok(out)
            };
            let mut expected = ranges(&x.expected_statuses, "expected_statuses")?;
            let retriable = ranges(&x.retriable_statuses, "retriable_statuses")?;
            if expected.is_empty() {
                expected.push((200, 201));
            }
            Kind::Http {
                host: match x.host.as_str() {
                    "" => authority(&c.name, "http_health_check.host (the cluster's name)")?,
                    h => authority(h, "http_health_check.host")?,
                },
                path: x.path.as_str().into(),
                method: method.into(),
                headers: headers.into(),
                remove: x
                    .request_headers_to_remove
                    .iter()
                    .map(|r| r.to_ascii_lowercase().into())
                    .collect(),
                expected: expected.into(),
                retriable: retriable.into(),
                h2,
            }
        }
        Some(HealthChecker::TcpHealthCheck(t)) => {
            let payload = |p: &crate::proto::envoy::config::core::v3::health_check::Payload,
                           f: &str| {
                use crate::proto::envoy::config::core::v3::health_check::payload::Payload as P;
                match &p.payload {
                    Some(P::Text(hex)) if hex.is_empty() => {
                        Err(err(res, at(f), "text must not be empty"))
                    }
                    Some(P::Text(hex)) => {
                        decode_hex(hex).ok_or_else(|| err(res, at(f), "text must be hex"))
                    }
                    Some(P::Binary(b)) => Ok(b.clone()),
                    None => Err(err(res, at(f), "text or binary is required")),
                }
            };
            let send = match &t.send {
                Some(p) => payload(p, "tcp_health_check.send")?,
                None => Vec::new(),
            };
            let mut receive = Vec::new();
            for (i, p) in t.receive.iter().enumerate() {
                receive.push(payload(p, &format!("tcp_health_check.receive[{i}]"))?);
            }
            Kind::Tcp { send, receive }
        }
        Some(HealthChecker::GrpcHealthCheck(_)) if !h2_cluster => {
            return Err(err(
                res,
                at("grpc_health_check"),
                "the cluster must speak HTTP/2 for gRPC health checks (as in Envoy)",
            ))
        }
        Some(HealthChecker::GrpcHealthCheck(g)) => Kind::Grpc {
            service: g.service_name.as_str().into(),
            authority: match g.authority.as_str() {
                "" => authority(&c.name, "grpc_health_check.authority (the cluster's name)")?,
                a => authority(a, "grpc_health_check.authority")?,
            },
        },
    };
    Ok(Some(Arc::new(HealthCheck {
        kind,
        timeout,
        interval,
        initial_jitter: h
            .initial_jitter
            .as_ref()
            .map(|d| duration(d, res, &at("initial_jitter")))
            .transpose()?
            .unwrap_or_default(),
        interval_jitter: h
            .interval_jitter
            .as_ref()
            .map(|d| duration(d, res, &at("interval_jitter")))
            .transpose()?
            .unwrap_or_default(),
        interval_jitter_percent: h.interval_jitter_percent,
        unhealthy_threshold: threshold(h.unhealthy_threshold, "unhealthy_threshold")?,
        healthy_threshold: threshold(h.healthy_threshold, "healthy_threshold")?,
        reuse_connection: h.reuse_connection.unwrap_or(true),
        no_traffic_interval: no_traffic,
        no_traffic_healthy_interval: optional(
            &h.no_traffic_healthy_interval,
            "no_traffic_healthy_interval",
            no_traffic,
        )?,
        unhealthy_interval,
        unhealthy_edge_interval: optional(
            &h.unhealthy_edge_interval,
            "unhealthy_edge_interval",
            unhealthy_interval,
        )?,
        healthy_edge_interval: optional(
            &h.healthy_edge_interval,
            "healthy_edge_interval",
            interval,
        )?,
        stats: ctx
            .stats
            .scope::<crate::stats::HealthStat>(&format!("cluster.{stat_name}.health_check.")),
    })))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}
