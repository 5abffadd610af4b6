//! The outlier event log (`cluster_manager.outlier_detection.event_log_path`): each
//! ejection and unejection as Envoy's `OutlierDetectionEvent` JSON line.

use std::net::SocketAddr;
use std::time::Instant;

use crate::model::outlier::Kind;

/// One `OutlierDetectionEvent` as Envoy writes it to the event log: proto3 JSON with every
/// field of no presence printed, one line. An unejection has no event type of its own (it
/// prints the default, as Envoy's does) and no detail.
#[allow(clippy::too_many_arguments)]
pub(super) fn event_line(
    cluster: &str,
    addr: SocketAddr,
    kind: Kind,
    eject: bool,
    since: Option<Instant>,
    now: Instant,
    num_ejections: u32,
    enforced: bool,
    detail: &str,
) -> String {
    let kind = match kind {
        Kind::Consecutive5xx => "CONSECUTIVE_5XX",
        Kind::ConsecutiveGateway => "CONSECUTIVE_GATEWAY_FAILURE",
        Kind::SuccessRate => "SUCCESS_RATE",
        Kind::ConsecutiveLocal => "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
        Kind::LocalSuccessRate => "SUCCESS_RATE_LOCAL_ORIGIN",
        Kind::FailurePercentage => "FAILURE_PERCENTAGE",
        Kind::LocalFailurePercentage => "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
    };
    let mut ts = Vec::new();
    crate::model::format::write_rfc3339_nanos(std::time::SystemTime::now(), &mut ts);
    let since = since
        .map(|t| {
            let secs = now.saturating_duration_since(t).as_secs();
            format!("\"secs_since_last_action\":\"{secs}\",")
        })
        .unwrap_or_default();
    let name = serde_json::Value::from(cluster);
    let action = if eject { "EJECT" } else { "UNEJECT" };
    let detail = match detail {
        "" => String::new(),
        d => format!(",{d}"),
    };
    format!(
        "{{\"type\":\"{kind}\",\"timestamp\":\"{}\",{since}\"cluster_name\":{name},\"upstream_url\":\"{addr}\",\"action\":\"{action}\",\"num_ejections\":{num_ejections},\"enforced\":{enforced}{detail}}}\n",
        String::from_utf8_lossy(&ts)
    )
}
