//! A cluster's `circuit_breakers`.

use super::{err, ConvertError, Ctx};

/// `circuit_breakers`: thresholds per priority (Envoy's defaults where unset); the counts
/// exist only when a DEFAULT limit is below 2^32−1 (or a retry budget is set).
/// Connection-pool limits and per-host thresholds are refused by name.
pub(super) fn breakers(
    c: &crate::proto::envoy::config::cluster::v3::Cluster,
    stat_name: &str,
    ctx: &mut Ctx<'_>,
    res: &str,
) -> Result<crate::model::breakers::Breakers, ConvertError> {
    use crate::model::breakers::{Breakers, Counts, Thresholds, UNLIMITED};
    let mut t = [Thresholds::default(); 2];
    let mut per_host = None;
    if let Some(cb) = &c.circuit_breakers {
        // Envoy applies only `max_connections` per host; anything else set is refused.
        for (i, th) in cb.per_host_thresholds.iter().enumerate() {
            let p = |f: &str| format!("circuit_breakers.per_host_thresholds[{i}].{f}");
            for (set, f) in [
                (th.max_pending_requests.is_some(), "max_pending_requests"),
                (th.max_requests.is_some(), "max_requests"),
                (th.max_retries.is_some(), "max_retries"),
                (th.retry_budget.is_some(), "retry_budget"),
                (th.track_remaining, "track_remaining"),
                (th.max_connection_pools.is_some(), "max_connection_pools"),
            ] {
                if set {
                    return Err(err(
                        res,
                        p(f),
                        "only max_connections applies per host (as in Envoy)",
                    ));
                }
            }
            match (th.priority, th.max_connections) {
                (0, Some(m)) if u64::from(m) < UNLIMITED => per_host = Some(u64::from(m)),
                (0 | 1, _) => {}
                _ => return Err(err(res, p("priority"), "unknown priority")),
            }
        }
        for (i, th) in cb.thresholds.iter().enumerate() {
            let p = |f: &str| format!("circuit_breakers.thresholds[{i}].{f}");
            if th.max_connection_pools.is_some() {
                return Err(err(
                    res,
                    p("max_connection_pools"),
                    "a limit on connection pools is not implemented",
                ));
            }
            let slot = match th.priority {
                0 => 0,
                1 => 1,
                _ => return Err(err(res, p("priority"), "unknown priority")),
            };
            let d = Thresholds::default();
            let v = |w: Option<u32>, dflt: u64| w.map_or(dflt, u64::from);
            t[slot] = Thresholds {
                max_connections: v(th.max_connections, d.max_connections),
                max_pending_requests: v(th.max_pending_requests, d.max_pending_requests),
                max_requests: v(th.max_requests, d.max_requests),
                max_retries: v(th.max_retries, d.max_retries),
                track_remaining: th.track_remaining,
                retry_budget: th.retry_budget.as_ref().map(|b| {
                    crate::model::breakers::RetryBudget {
                        percent_milli: b
                            .budget_percent
                            .as_ref()
                            .map_or(20_000, |p| (p.value * 1000.0) as u64),
                        min_concurrency: b.min_retry_concurrency.map_or(3, u64::from),
                    }
                }),
            };
        }
    }
    let [default, high] = t;
    let limited = default.max_connections < UNLIMITED
        || default.max_pending_requests < UNLIMITED
        || default.max_requests < UNLIMITED
        || default.max_retries < UNLIMITED
        || default.retry_budget.is_some();
    Ok(Breakers {
        default,
        high,
        // The same counts for a reconversion with the same limits (every CDS push converts
        // every cluster again): connections and requests in flight stay counted.
        counts: limited.then(|| {
            ctx.stats.shared::<Counts>(&format!(
                "circuit_breakers/{}/{}/{}/{}/{}/{:?}",
                c.name,
                default.max_connections,
                default.max_pending_requests,
                default.max_requests,
                default.max_retries,
                default.retry_budget
            ))
        }),
        stats_prefix: format!("cluster.{stat_name}.circuit_breakers.").into(),
        // Shared by a reconversion with the same limit, as the cluster's counts are.
        per_host: per_host.map(|m| {
            let key = format!("circuit_breakers/{}/per_host/{m}", c.name);
            (
                m,
                ctx.stats.shared::<crate::model::breakers::HostLimits>(&key),
            )
        }),
    })
}
