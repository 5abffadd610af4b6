//! `envoy.filters.http.fault` → [`Fault`], and Envoy's percentages (`FractionalPercent`,
//! `RuntimeFractionalPercent`) the HTTP filters share.

use crate::model::filter::*;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::filters::common::fault::v3 as fault_common;
use crate::proto::envoy::extensions::filters::http::fault::v3 as fault_pb;
use crate::proto::envoy::r#type::v3 as types;

use super::{duration, err, ConvertError};

/// A `FractionalPercent` (absent: `default`).
pub(super) fn fraction(
    p: Option<&types::FractionalPercent>,
    default: Fraction,
    res: &str,
    path: &str,
) -> Result<Fraction, ConvertError> {
    let Some(p) = p else { return Ok(default) };
    use types::fractional_percent::DenominatorType as D;
    let denominator = match D::try_from(p.denominator) {
        Ok(D::Hundred) => 100,
        Ok(D::TenThousand) => 10_000,
        Ok(D::Million) => 1_000_000,
        Err(_) => {
            return Err(err(
                res,
                format!("{path}.denominator"),
                format!("unknown denominator {}", p.denominator),
            ))
        }
    };
    Ok(Fraction {
        numerator: p.numerator.min(denominator),
        denominator,
    })
}

/// A `RuntimeFractionalPercent`: Ringside has no runtime layer, so the default applies,
/// as it does in Envoy while the runtime key is unset.
pub(super) fn runtime_fraction(
    p: Option<&core::RuntimeFractionalPercent>,
    default: Fraction,
    res: &str,
    path: &str,
) -> Result<Fraction, ConvertError> {
    match p {
        None => Ok(default),
        Some(r) => fraction(
            r.default_value.as_ref(),
            Fraction {
                numerator: 0,
                denominator: 100,
            },
            res,
            &format!("{path}.default_value"),
        ),
    }
}

pub(super) fn fault(m: &fault_pb::HttpFault, res: &str, path: &str) -> Result<Fault, ConvertError> {
    let p = |f: &str| format!("{path}.{f}");
    let delay = match &m.delay {
        None => None,
        Some(d) => {
            use fault_common::fault_delay::FaultDelaySecifier as S;
            let kind = match &d.fault_delay_secifier {
                Some(S::FixedDelay(t)) => {
                    let t = duration(t, res, &p("delay.fixed_delay"))?;
                    if t.is_zero() {
                        return Err(err(res, p("delay.fixed_delay"), "must be greater than 0"));
                    }
                    DelayKind::Fixed(t)
                }
                Some(S::HeaderDelay(_)) => DelayKind::Header,
                None => {
                    return Err(err(
                        res,
                        p("delay"),
                        "fixed_delay or header_delay is required",
                    ))
                }
            };
            Some(FaultDelay {
                kind,
                percentage: fraction(
                    d.percentage.as_ref(),
                    Fraction {
                        numerator: 0,
                        denominator: 100,
                    },
                    res,
                    &p("delay.percentage"),
                )?,
            })
        }
    };
    let abort = match &m.abort {
        None => None,
        Some(a) => {
            use fault_pb::fault_abort::ErrorType as E;
            let kind = match a.error_type {
                Some(E::HttpStatus(s)) if (200..600).contains(&s) => AbortKind::Http(s as u16),
                Some(E::HttpStatus(s)) => {
                    return Err(err(
                        res,
                        p("abort.http_status"),
                        format!("{s} is not in [200, 600)"),
                    ))
                }
                Some(E::GrpcStatus(s)) => AbortKind::Grpc(s),
                Some(E::HeaderAbort(_)) => AbortKind::Header,
                None => {
                    return Err(err(
                        res,
                        p("abort"),
                        "http_status, grpc_status or header_abort is required",
                    ))
                }
            };
            Some(FaultAbort {
                kind,
                percentage: fraction(
                    a.percentage.as_ref(),
                    Fraction {
                        numerator: 0,
                        denominator: 100,
                    },
                    res,
                    &p("abort.percentage"),
                )?,
            })
        }
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(super::matchers::header_match(
            h,
            res,
            &p(&format!("headers[{i}]")),
        )?);
    }
    Ok(Fault {
        delay,
        abort,
        upstream_cluster: (!m.upstream_cluster.is_empty())
            .then(|| m.upstream_cluster.as_str().into()),
        headers,
        downstream_nodes: m
            .downstream_nodes
            .iter()
            .map(|n| n.as_str().into())
            .collect(),
        max_active_faults: m.max_active_faults.map(u64::from),
        disable_downstream_cluster_stats: m.disable_downstream_cluster_stats,
    })
}
