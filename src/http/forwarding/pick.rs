//! Choosing the upstream of a forwarded request: the cluster, the endpoint and the
//! request's place under the cluster's `max_requests`.

use crate::ctx::{CoreCtx, Downstream};
use crate::http::error::HttpError;
use crate::model::route::{Forward, Target};
use crate::model::{Discovery, Endpoint, Snapshot};
use crate::stats::ClusterStat;

/// The route's cluster (and weighted entry) and the endpoint to send to: this core's load
/// balancer, or the connection's original destination for an ORIGINAL_DST cluster.
/// The permit holds the request's place under the cluster's `max_requests`: the caller
/// keeps it until the exchange ends.
pub(crate) fn pick_upstream<'s>(
    ctx: &CoreCtx,
    snapshot: &'s Snapshot,
    f: &'s Forward,
    weighted: Option<&'s crate::model::route::WeightedTarget>,
    down: &Downstream,
) -> Result<Picked<'s>, HttpError> {
    let cref = match (&f.target, weighted) {
        (_, Some(w)) => &w.cluster,
        (Target::Cluster(c), None) => c,
        (Target::Weighted { .. }, None) => {
            return Err(HttpError::ClusterNotFound(f.cluster_not_found_status))
        }
    };
    let cluster = cref
        .index
        .and_then(|i| snapshot.clusters.get(i))
        .filter(|c| c.name == cref.name)
        .or_else(|| snapshot.cluster(&cref.name))
        .ok_or(HttpError::ClusterNotFound(f.cluster_not_found_status))?;
    // The cluster's max_requests: held until the exchange ends (the caller keeps it).
    let permit = cluster.breakers.acquire_request().map_err(|()| {
        cluster
            .stats
            .core(ctx.core)
            .inc(ClusterStat::UpstreamRqActiveOverflow as usize);
        HttpError::Overflow
    })?;
    let none_healthy = || {
        cluster
            .stats
            .core(ctx.core)
            .inc(ClusterStat::UpstreamCxNoneHealthy as usize);
        HttpError::NoHealthyUpstream
    };
    let ep = if cluster.discovery == Discovery::OriginalDst {
        // Not redirected: the destination is this listener itself (a loop).
        if down.loops_back() {
            return Err(none_healthy());
        }
        // The connection's destination (restored from the capture) is the upstream.
        std::borrow::Cow::Owned(Endpoint::at(down.dst))
    } else {
        let picked = ctx.upstreams.borrow_mut().pick(cluster);
        std::borrow::Cow::Borrowed(picked.ok_or_else(none_healthy)?)
    };
    Ok((weighted, cluster, ep, permit))
}

/// What [`pick_upstream`] chose: the weighted target, the cluster, the endpoint and the
/// request's circuit-breaker permit.
pub(crate) type Picked<'s> = (
    Option<&'s crate::model::route::WeightedTarget>,
    &'s crate::model::Cluster,
    std::borrow::Cow<'s, Endpoint>,
    Option<crate::model::breakers::RequestPermit<'s>>,
);

/// The weighted cluster a forwarding route sends this request to (drawn once, with the
/// route), or `None` for a single-cluster route or another action.
pub(crate) fn forward_target<'a>(
    m: Option<&crate::router::Matched<'a>>,
) -> Option<&'a crate::model::route::WeightedTarget> {
    match &m?.route.action {
        crate::model::route::Action::Forward(f) => f.target.pick(fastrand::u32(..)),
        _ => None,
    }
}
