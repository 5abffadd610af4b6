//! One core's view of its upstreams: load-balancer state and keep-alive connection pools.
//! Owned by the core (`Rc<RefCell<..>>` inside `CoreCtx`); nothing here is shared.

use std::net::SocketAddr;
use std::sync::Arc;

use rustc_hash::FxHashMap;

pub use error::{transport_failure, ConnectError};

mod connect;
mod error;
pub mod h2pool;
pub mod hash;
pub mod internal;
pub mod outlier;
mod pick;
mod pool;

pub use connect::{connect_h2, connect_stream, open_io, open_io_sharing};
pub use pool::{connect, Conn};

use pick::LbState;

/// Upstream state of one core.
pub struct Upstreams {
    core: usize,
    pools: FxHashMap<(SocketAddr, u64), Vec<Conn>>,
    lb: FxHashMap<Arc<str>, LbState>,
    /// HTTP/2 connections, shared by concurrent streams.
    pub h2: h2pool::H2Pool,
    /// Idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// Outlier detection's counts and the ejected hosts, as this core knows them.
    pub outlier: outlier::CoreOutlier,
    /// Scratch for a pick over several priorities (no allocation per pick).
    runs: Vec<pick::Run>,
    /// Scratch for locality weighting: the chosen priority's localities.
    groups: Vec<pick::Group>,
    /// The core's sweep of idle connections, parked while it holds none.
    pub sweeper: crate::wake::Parked,
}

impl Upstreams {
    pub fn new(core: usize) -> Self {
        Upstreams {
            core,
            pools: FxHashMap::default(),
            lb: FxHashMap::default(),
            h2: h2pool::H2Pool::default(),
            max_idle_per_endpoint: 1024,
            outlier: outlier::CoreOutlier::default(),
            runs: Vec::new(),
            groups: Vec::new(),
            sweeper: Default::default(),
        }
    }

    /// Marks a request to `addr` of `cluster` as started (least-request bookkeeping).
    pub fn request_started(&mut self, cluster: &Arc<str>, addr: SocketAddr) {
        if let Some(s) = self.lb.get_mut(cluster) {
            *s.active.entry(addr).or_default() += 1;
        }
    }

    /// Marks a request as finished.
    pub fn request_finished(&mut self, cluster: &Arc<str>, addr: SocketAddr) {
        if let Some(n) = self
            .lb
            .get_mut(cluster)
            .and_then(|s| s.active.get_mut(&addr))
        {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::model::{Cluster, Discovery, DnsFamily, Endpoint, LbPolicy};
    use crate::stats::ClusterStat;
    use crate::stats::Store;

    fn cluster(lb: LbPolicy, weights: &[u32]) -> Cluster {
        let store = Store::new(1);
        Cluster {
            name: "c".into(),
            stats: store.scope::<ClusterStat>("cluster.c."),
            update_stats: store.scope::<crate::stats::ClusterUpdateStat>("cluster.c."),
            discovery: Discovery::Static,
            eds_service: None,
            http2: None,
            http2_follows_downstream: false,
            unix_endpoints: Arc::new([]),
            bind_source: None,
            lb,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: None,
            max_requests_per_connection: None,
            max_connection_duration: None,
            max_headers_count: 100,
            tcp_keepalive: None,
            pool_id: 0,
            breakers: Arc::new(crate::model::breakers::Breakers {
                default: Default::default(),
                high: Default::default(),
                counts: None,
                stats_prefix: "cluster.c.circuit_breakers.".into(),
                per_host: None,
            }),
            dns_family: DnsFamily::Auto,
            dns_refresh: Duration::from_secs(5),
            dns_jitter: Duration::ZERO,
            dns_hosts: Arc::from(vec![]),
            tls: None,
            passthrough: None,
            original_dst: Default::default(),
            tls_matches: Arc::new([]),
            istio_service: None,
            tcp_exchange: None,
            outlier: None,
            panic_threshold: 50.0,
            metadata: None,
            lb_tuning: Default::default(),
            health: None,
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    hostname: "h".into(),
                    weight: w,
                    healthy: true,
                    labels: Arc::new([]),
                    workload: None,
                    priority: 0,
                    locality: None,
                    overprovisioning: crate::model::DEFAULT_OVERPROVISIONING,
                    group: 0,
                    locality_weight: 0,
                    internal: None,
                    metadata: None,
                })
                .collect(),
        }
    }

    fn counts(u: &mut Upstreams, c: &Cluster, n: usize) -> Vec<usize> {
        let mut out = vec![0; c.endpoints.len()];
        for _ in 0..n {
            let e = u.pick(c).unwrap();
            out[(e.address.port() - 1000) as usize] += 1;
        }
        out
    }

    #[test]
    fn round_robin_is_even_and_weighted_is_proportional() {
        let mut u = Upstreams::new(0);
        assert_eq!(
            counts(&mut u, &cluster(LbPolicy::RoundRobin, &[1, 1, 1]), 300),
            vec![100; 3]
        );
        assert_eq!(
            counts(&mut u, &cluster(LbPolicy::RoundRobin, &[1, 3]), 400),
            vec![100, 300]
        );
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let mut u = Upstreams::new(0);
        let c = cluster(LbPolicy::LeastRequest { choice_count: 2 }, &[1, 1]);
        u.pick(&c);
        for _ in 0..10 {
            u.request_started(&c.name, c.endpoints[0].address);
        }
        // Two choices drawn with replacement (Envoy's): the busy one wins only when both
        // draws are it, a quarter of the picks. 2,000 picks: 500 expected, bounds 5 standard
        // deviations (19.4) away, so the test does not flake.
        let n = counts(&mut u, &c, 2000);
        assert!((400..=600).contains(&n[0]), "{n:?}");
    }

    #[test]
    fn unhealthy_endpoints_are_skipped() {
        let mut u = Upstreams::new(0);
        let mut c = cluster(LbPolicy::Random, &[1, 1]);
        let mut eps: Vec<Endpoint> = c.endpoints.to_vec();
        eps[0].healthy = false;
        c.endpoints = eps.into();
        assert_eq!(counts(&mut u, &c, 50), vec![0, 50]);
        eps = c.endpoints.to_vec();
        eps[1].healthy = false;
        c.endpoints = eps.into();
        // None healthy: Envoy's panic mode (below 50%) uses them all.
        assert_eq!(counts(&mut u, &c, 50).iter().sum::<usize>(), 50);
        // Without panic mode, nothing can be picked.
        c.panic_threshold = 0.0;
        assert!(u.pick(&c).is_none());
    }
}
