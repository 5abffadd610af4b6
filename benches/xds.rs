//! The control thread's cost per xDS update at 10, 1,000 and 10,000 routes and clusters,
//! by phase: the unknown-field check of a RouteConfiguration, its conversion, and a whole
//! RDS update (stage, convert, assemble the snapshot) with that many EDS clusters and
//! endpoint assignments already cached. `tests/interop/xds_interop.py latency` measures
//! the same end to end over a real ADS stream, up to every core serving it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use prost::Message;
use ringside::model::convert::{route_resource, Ctx};
use ringside::proto::envoy::config::route::v3::RouteConfiguration;
use ringside::stats::Store;
use ringside::xds::state::{Kind, Resources, Static, Update};

mod support;

fn any(message: &str, json: serde_json::Value) -> prost_types::Any {
    let desc = ringside::proto::pool()
        .get_message_by_name(message)
        .unwrap();
    let msg = prost_reflect::DynamicMessage::deserialize(desc, json).unwrap();
    prost_types::Any {
        type_url: format!("type.googleapis.com/{message}"),
        value: msg.encode_to_vec(),
    }
}

fn route_config(n: usize, version: usize) -> prost_types::Any {
    let routes: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"match": {"prefix": format!("/r{i}/")}, "route": {"cluster": format!("x{}", (i + version) % n)}}))
        .collect();
    any(
        "envoy.config.route.v3.RouteConfiguration",
        serde_json::json!({"name": "r1", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}),
    )
}

fn xds(c: &mut Criterion) {
    let mut g = c.benchmark_group("xds");
    g.sample_size(10);
    let store = Store::new(1);
    let base = support::snapshot(1, 1);
    for n in [10usize, 1_000, 10_000] {
        let rc = route_config(n, 1);
        g.bench_with_input(BenchmarkId::new("unknown_field_check", n), &rc, |b, rc| {
            b.iter(|| {
                ringside::xds::unknown::check("envoy.config.route.v3.RouteConfiguration", &rc.value)
                    .unwrap()
            })
        });
        let pb = RouteConfiguration::decode(rc.value.as_slice()).unwrap();
        g.bench_with_input(BenchmarkId::new("route_convert", n), &pb, |b, pb| {
            b.iter(|| route_resource(pb, &mut Ctx::dynamic(&store)).unwrap())
        });
        // Caches holding n EDS clusters with endpoints, then an RDS update of n routes.
        let statics = Static::from_snapshot(&base);
        let mut res = Resources::default();
        let clusters = (0..n)
            .map(|i| any("envoy.config.cluster.v3.Cluster", serde_json::json!({"name": format!("x{i}"), "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": {"ads": {}}}})))
            .collect();
        res.apply(
            &Update::sotw(Kind::Cluster, "c", clusters),
            &statics,
            &store,
        )
        .unwrap();
        let clas = (0..n)
            .map(|i| any("envoy.config.endpoint.v3.ClusterLoadAssignment", serde_json::json!({"cluster_name": format!("x{i}"), "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000 + i % 50000}}}}]}]})))
            .collect();
        res.apply(&Update::sotw(Kind::Endpoint, "e", clas), &statics, &store)
            .unwrap();
        let mut current = res.assemble(&statics, &base);
        let rds = Update::sotw(Kind::Route, "r", vec![rc]);
        g.bench_with_input(
            BenchmarkId::new("rds_update_to_snapshot", n),
            &rds,
            |b, rds| {
                b.iter(|| {
                    let mut staged = res.clone();
                    staged.apply(rds, &statics, &store).unwrap();
                    current = staged.assemble(&statics, &current);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, xds);
criterion_main!(benches);
