//! DNS resolution for STRICT_DNS and LOGICAL_DNS clusters, off the cores. A change in the
//! answer publishes a new snapshot with only that cluster's endpoints replaced.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::model::{Cluster, Discovery, DnsFamily, Endpoint, SharedSnapshot, Snapshot};
use crate::stats::ClusterStat;

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
                    c.stats.core(core).inc(ClusterStat::UpdateFailure as usize);
                    continue;
                }
                Err(_) => {
                    tracing::warn!(cluster = %c.name, host = %h.host, "DNS resolution timed out");
                    c.stats.core(core).inc(ClusterStat::UpdateFailure as usize);
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
        if c.discovery == Discovery::Static {
            continue;
        }
        let eps = resolve(c, core).await;
        c.stats
            .core(core)
            .add(ClusterStat::MembershipTotal as usize, eps.len() as u64);
        c.stats.core(core).inc(ClusterStat::UpdateSuccess as usize);
        snapshot.clusters[i] = Arc::new(c.with_endpoints(eps.into()));
    }
}

/// Re-resolves DNS clusters at their refresh rates for as long as the process runs.
pub async fn refresh_loop(shared: SharedSnapshot, core: usize) {
    loop {
        let current = shared.load_full();
        let period = current
            .clusters
            .iter()
            .filter(|c| c.discovery != Discovery::Static)
            .map(|c| c.dns_refresh)
            .min();
        let Some(period) = period else {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            continue;
        };
        tokio::time::sleep(period).await;
        let current = shared.load_full();
        let mut changed = Vec::new();
        for (i, c) in current.clusters.iter().enumerate() {
            if c.discovery == Discovery::Static {
                continue;
            }
            let eps = resolve(c, core).await;
            if eps.is_empty() && !c.endpoints.is_empty() {
                continue; // keep the last good answer through a failed lookup
            }
            if eps.as_slice() != &*c.endpoints {
                let stats = c.stats.core(core);
                stats.inc(ClusterStat::UpdateSuccess as usize);
                stats.add(
                    ClusterStat::MembershipTotal as usize,
                    (eps.len() as u64).wrapping_sub(c.endpoints.len() as u64),
                );
                changed.push((i, Arc::new(c.with_endpoints(eps.into()))));
            }
        }
        if changed.is_empty() {
            continue;
        }
        let mut clusters = current.clusters.clone();
        for (i, c) in changed {
            clusters[i] = c;
        }
        shared.store(Arc::new(Snapshot {
            version: current.version + 1,
            built_at: SystemTime::now(),
            listeners: current.listeners.clone(),
            clusters,
            cluster_index: current.cluster_index.clone(),
            admin: current.admin,
            bootstrap: current.bootstrap.clone(),
        }));
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
