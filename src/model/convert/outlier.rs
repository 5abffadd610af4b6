//! `outlier_detection` and `common_lb_config.healthy_panic_threshold`, with Envoy 1.40's
//! defaults and limits.

use std::sync::Arc;
use std::time::Duration;

use crate::model::outlier::{Enforcing, OutlierConfig, Volume};
use crate::proto::envoy::config::cluster::v3 as pb;

use super::{duration, err, ConvertError, Ctx};

/// The detector's configuration, or `None` without `outlier_detection`.
pub(super) fn outlier(
    c: &pb::Cluster,
    stat_name: &str,
    ctx: &Ctx<'_>,
    res: &str,
) -> Result<Option<Arc<OutlierConfig>>, ConvertError> {
    let Some(o) = &c.outlier_detection else {
        return Ok(None);
    };
    let path = |f: &str| format!("outlier_detection.{f}");
    let pct = |v: Option<u32>, default: u32, f: &str| -> Result<u32, ConvertError> {
        let v = v.unwrap_or(default);
        if v > 100 {
            return Err(err(res, path(f), "must be at most 100"));
        }
        Ok(v)
    };
    let time = |d: &Option<prost_types::Duration>, default: Duration, f: &str| match d {
        None => Ok(default),
        Some(d) => {
            let t = duration(d, res, &path(f))?;
            if t.is_zero() && f != "max_ejection_time_jitter" {
                return Err(err(res, path(f), "must be greater than 0"));
            }
            Ok(t)
        }
    };
    let base_ejection = time(
        &o.base_ejection_time,
        Duration::from_secs(30),
        "base_ejection_time",
    )?;
    let max_ejection = time(
        &o.max_ejection_time,
        Duration::from_secs(300).max(base_ejection),
        "max_ejection_time",
    )?;
    if max_ejection < base_ejection {
        return Err(err(
            res,
            path("max_ejection_time"),
            "max_ejection_time cannot be smaller than base_ejection_time",
        ));
    }
    Ok(Some(Arc::new(OutlierConfig {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
        consecutive_gateway: o.consecutive_gateway_failure.unwrap_or(5),
        consecutive_local: o.consecutive_local_origin_failure.unwrap_or(5),
        interval: time(&o.interval, Duration::from_secs(10), "interval")?,
        base_ejection,
        max_ejection,
        jitter: time(
            &o.max_ejection_time_jitter,
            Duration::ZERO,
            "max_ejection_time_jitter",
        )?,
        max_ejection_percent: pct(o.max_ejection_percent, 10, "max_ejection_percent")?,
        split_local: o.split_external_local_origin_errors,
        always_eject_one: o.always_eject_one_host.unwrap_or(false),
        uneject_on_health_check: o
            .successful_active_health_check_uneject_host
            .unwrap_or(true),
        enforcing: Enforcing {
            consecutive_5xx: pct(
                o.enforcing_consecutive_5xx,
                100,
                "enforcing_consecutive_5xx",
            )?,
            consecutive_gateway: pct(
                o.enforcing_consecutive_gateway_failure,
                0,
                "enforcing_consecutive_gateway_failure",
            )?,
            consecutive_local: pct(
                o.enforcing_consecutive_local_origin_failure,
                100,
                "enforcing_consecutive_local_origin_failure",
            )?,
            success_rate: pct(o.enforcing_success_rate, 100, "enforcing_success_rate")?,
            local_success_rate: pct(
                o.enforcing_local_origin_success_rate,
                100,
                "enforcing_local_origin_success_rate",
            )?,
            failure_percentage: pct(
                o.enforcing_failure_percentage,
                0,
                "enforcing_failure_percentage",
            )?,
            local_failure_percentage: pct(
                o.enforcing_failure_percentage_local_origin,
                0,
                "enforcing_failure_percentage_local_origin",
            )?,
        },
        success_rate: Volume {
            minimum_hosts: o.success_rate_minimum_hosts.unwrap_or(5),
            request_volume: o.success_rate_request_volume.unwrap_or(100),
        },
        stdev_factor: f64::from(o.success_rate_stdev_factor.unwrap_or(1900)) / 1000.0,
        failure_percentage: Volume {
            minimum_hosts: o.failure_percentage_minimum_hosts.unwrap_or(5),
            request_volume: o.failure_percentage_request_volume.unwrap_or(50),
        },
        failure_threshold: pct(
            o.failure_percentage_threshold,
            85,
            "failure_percentage_threshold",
        )?,
        stats: ctx
            .stats
            .scope::<crate::stats::OutlierStat>(&format!("cluster.{stat_name}.outlier_detection.")),
    })))
}

/// `common_lb_config.healthy_panic_threshold`: 50 when unset, as in Envoy; 0 turns panic
/// mode off. Envoy rounds it to a whole percent.
pub(super) fn panic_threshold(c: &pb::Cluster, res: &str) -> Result<f64, ConvertError> {
    let p = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map_or(50.0, |p| p.value.round());
    if !(0.0..=100.0).contains(&p) || p.is_nan() {
        return Err(err(
            res,
            "common_lb_config.healthy_panic_threshold.value",
            "must be between 0 and 100",
        ));
    }
    Ok(p)
}
