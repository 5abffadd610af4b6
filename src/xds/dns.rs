//! DNS resolution for STRICT_DNS and LOGICAL_DNS clusters, off the cores. A change in the
//! answer publishes a new snapshot with only that cluster's endpoints replaced.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{Cluster, Discovery, DnsFamily, Endpoint, SharedSnapshot, Snapshot};
use crate::stats::ClusterUpdateStat;

/// Resolves every DNS host of `c` into endpoints, as Envoy's cluster types do.
pub async fn resolve(c: &Cluster, core: usize) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for h in c.dns_hosts.iter() {
        let addrs: Vec<SocketAddr> = match h.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, h.port)],
            Err(_) => match tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((h.host.as_str(), h.port)),
            )
            .await
            {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    tracing::warn!(cluster = %c.name, host = %h.host, "DNS resolution failed: {e}");
                    c.update_stats
                        .core(core)
                        .inc(ClusterUpdateStat::UpdateFailure as usize);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(cluster = %c.name, host = %h.host, "DNS resolution timed out");
                    c.update_stats
                        .core(core)
                        .inc(ClusterUpdateStat::UpdateFailure as usize);
                    continue;
                }
            },
        };
        let mut chosen = select_family(&addrs, c.dns_family);
        if c.discovery == Discovery::LogicalDns {
            chosen.truncate(1);
        }
        for address in chosen {
            out.push(Endpoint {
                address,
                hostname: h.host.as_str().into(),
                weight: h.weight,
                healthy: true,
                labels: h.labels.clone(),
                workload: None,
                priority: 0,
                locality: None,
                overprovisioning: crate::model::DEFAULT_OVERPROVISIONING,
                group: 0,
                locality_weight: 0,
                internal: None,
                metadata: h.metadata.clone(),
            });
        }
    }
    out
}

/// Applies Envoy's `dns_lookup_family` to an answer.
pub fn select_family(addrs: &[SocketAddr], family: DnsFamily) -> Vec<SocketAddr> {
    let v4: Vec<_> = addrs.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<_> = addrs.iter().copied().filter(SocketAddr::is_ipv6).collect();
    match family {
        DnsFamily::V4Only => v4,
        DnsFamily::V6Only => v6,
        DnsFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsFamily::All => addrs.to_vec(),
    }
}

/// Resolves all DNS clusters of `snapshot` now (start-up warming).
pub async fn warm(snapshot: &mut Snapshot, core: usize) {
    for i in 0..snapshot.clusters.len() {
        let c = &snapshot.clusters[i];
        if !matches!(c.discovery, Discovery::StrictDns | Discovery::LogicalDns) {
            continue;
        }
        let eps = resolve(c, core).await;
        let stats = c.update_stats.core(core);
        stats.add(
            ClusterUpdateStat::MembershipTotal as usize,
            eps.len() as u64,
        );
        stats.inc(ClusterUpdateStat::UpdateSuccess as usize);
        snapshot.clusters[i] = Arc::new(c.with_endpoints(eps.into()));
    }
}

/// Re-resolves DNS clusters at their refresh rates for as long as the process runs.
pub async fn refresh_loop(shared: SharedSnapshot, core: usize) {
    let mut published = crate::wake::published();
    loop {
        let current = shared.load_full();
        // The shortest refresh, plus up to the largest `dns_jitter` at random (all DNS
        // clusters are resolved together).
        let dns = || {
            current
                .clusters
                .iter()
                .filter(|c| matches!(c.discovery, Discovery::StrictDns | Discovery::LogicalDns))
        };
        let jitter = dns().map(|c| c.dns_jitter).max().unwrap_or_default();
        let period = dns().map(|c| c.dns_refresh).min().map(|p| {
            p + Duration::from_nanos(fastrand::u64(
                ..=jitter.as_nanos().min(u64::MAX as u128) as u64,
            ))
        });
        let Some(period) = period else {
            // CDS may add DNS clusters at any time.
            let _ = published.changed().await;
            continue;
        };
        tokio::time::sleep(period).await;
        let before = shared.load_full();
        let mut changed = Vec::new();
        for c in before.clusters.iter() {
            if !matches!(c.discovery, Discovery::StrictDns | Discovery::LogicalDns) {
                continue;
            }
            let eps = resolve(c, core).await;
            if eps.is_empty() && !c.endpoints.is_empty() {
                continue; // keep the last good answer through a failed lookup
            }
            if eps.as_slice() != &*c.endpoints {
                changed.push((c.clone(), eps));
            }
        }
        if changed.is_empty() {
            continue;
        }
        // xDS may have published while we awaited: apply the answers by name to what is
        // current now, with no await between this load and the store.
        let current = shared.load_full();
        let mut clusters = current.clusters.clone();
        let mut any = false;
        for (old, eps) in changed {
            let Some(&i) = current.cluster_index.get(&old.name) else {
                continue;
            };
            let c = &current.clusters[i];
            if c.dns_hosts != old.dns_hosts || eps.as_slice() == &*c.endpoints {
                continue;
            }
            let stats = c.update_stats.core(core);
            stats.inc(ClusterUpdateStat::UpdateSuccess as usize);
            stats.add(
                ClusterUpdateStat::MembershipTotal as usize,
                (eps.len() as u64).wrapping_sub(c.endpoints.len() as u64),
            );
            clusters[i] = Arc::new(c.with_endpoints(eps.into()));
            any = true;
        }
        if !any {
            continue;
        }
        shared.store(Arc::new(Snapshot {
            version: current.version + 1,
            built_at: SystemTime::now(),
            listeners: current.listeners.clone(),
            virtual_listeners: current.virtual_listeners.clone(),
            clusters,
            cluster_index: current.cluster_index.clone(),
            route_configs: current.route_configs.clone(),
            dynamic: current.dynamic.clone(),
            admin: current.admin,
            bootstrap: current.bootstrap.clone(),
            runtime: current.runtime.clone(),
            global_cx: current.global_cx.clone(),
        }));
        crate::wake::announce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        let a: Vec<SocketAddr> = vec!["1.2.3.4:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        assert_eq!(select_family(&a, DnsFamily::V4Only), vec![a[0]]);
        assert_eq!(select_family(&a, DnsFamily::V6Only), vec![a[1]]);
        assert_eq!(select_family(&a, DnsFamily::Auto), vec![a[1]]);
        assert_eq!(select_family(&a, DnsFamily::V4Preferred), vec![a[0]]);
        assert_eq!(select_family(&a, DnsFamily::All), a);
        assert_eq!(select_family(&a[..1], DnsFamily::Auto), vec![a[0]]);
    }
}
