use std::time::Duration;

use prost::Message;
use serde_json::json;

use super::*;
use crate::config::{parse_bootstrap, Source};
use crate::model::convert;

fn any(kind: Kind, v: serde_json::Value) -> prost_types::Any {
    let desc = crate::proto::pool()
        .get_message_by_name(kind.message())
        .unwrap();
    let msg = prost_reflect::DynamicMessage::deserialize(desc, v).unwrap();
    prost_types::Any {
        type_url: kind.type_url().into(),
        value: msg.encode_to_vec(),
    }
}

fn eds_cluster(name: &str, fetch_timeout: &str) -> prost_types::Any {
    any(
        Kind::Cluster,
        json!({"name": name, "type": "EDS", "connect_timeout": "1s",
               "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": fetch_timeout}}}),
    )
}

fn cla(name: &str, port: u16) -> prost_types::Any {
    any(
        Kind::Endpoint,
        json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}),
    )
}

fn rds_listener(name: &str, route: &str) -> prost_types::Any {
    any(
        Kind::Listener,
        json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
               "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                   "stat_prefix": name,
                   "rds": {"route_config_name": route, "config_source": {"ads": {}, "initial_fetch_timeout": "0s"}},
                   "http_filters": [{"name": "r", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}),
    )
}

fn route(name: &str, cluster: &str) -> prost_types::Any {
    any(
        Kind::Route,
        json!({"name": name, "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}),
    )
}

struct Fixture {
    statics: Static,
    store: Arc<Store>,
    base: Snapshot,
    res: Resources,
}

impl Fixture {
    fn new() -> Fixture {
        let yaml = "static_resources:\n  clusters: [{name: fixed, connect_timeout: 1s}]\n";
        let b = parse_bootstrap(yaml, &Source::Inline).unwrap();
        let store = Store::new(1);
        let base = convert::bootstrap_snapshot(&b, &store, 1).unwrap().0;
        Fixture {
            statics: Static::from_snapshot(&base),
            store,
            base,
            res: Resources {
                serving: true,
                ..Default::default()
            },
        }
    }

    fn apply(&mut self, u: Update) -> Result<(), String> {
        // Refused resources fail the call here; the others were applied all the same.
        let a = self.res.apply(&u, &self.statics, &self.store)?;
        match a.refused.is_empty() {
            true => Ok(()),
            false => Err(a.refused.join("\n")),
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        let s = self.res.assemble(&self.statics, &self.base);
        self.base = Snapshot {
            version: s.version,
            built_at: s.built_at,
            listeners: s.listeners.clone(),
            clusters: s.clusters.clone(),
            cluster_index: s.cluster_index.clone(),
            route_configs: s.route_configs.clone(),
            admin: s.admin,
            bootstrap: s.bootstrap.clone(),
            dynamic: s.dynamic.clone(),
            virtual_listeners: s.virtual_listeners.clone(),
            runtime: s.runtime.clone(),
            global_cx: s.global_cx.clone(),
        };
        s
    }

    /// EDS clusters `(name, port)` with fetch timeout `timeout`, then each one's
    /// endpoints, both at version 1.
    fn eds(&mut self, timeout: &str, clusters: &[(&str, u16)]) {
        let cds = clusters
            .iter()
            .map(|(n, _)| eds_cluster(n, timeout))
            .collect();
        self.apply(Update::sotw(Kind::Cluster, "1", cds)).unwrap();
        let clas = clusters.iter().map(|(n, p)| cla(n, *p)).collect();
        self.apply(Update::sotw(Kind::Endpoint, "1", clas)).unwrap();
    }
}

fn names(s: &Snapshot) -> Vec<String> {
    s.clusters.iter().map(|c| c.name.to_string()).collect()
}

#[test]
fn an_eds_cluster_warms_until_its_endpoints_arrive() {
    let mut f = Fixture::new();
    f.apply(Update::sotw(
        Kind::Cluster,
        "1",
        vec![eds_cluster("a", "0s")],
    ))
    .unwrap();
    assert_eq!(
        f.res.wanted(Kind::Endpoint, &f.statics),
        BTreeSet::from(["a".to_string()])
    );
    let s = f.snapshot();
    assert_eq!(names(&s), ["fixed"], "a is warming");
    assert_eq!(&*s.dynamic.warming_clusters[0].name, "a");
    f.apply(Update::sotw(Kind::Endpoint, "1", vec![cla("a", 8080)]))
        .unwrap();
    let s = f.snapshot();
    assert_eq!(names(&s), ["fixed", "a"]);
    assert_eq!(s.cluster("a").unwrap().endpoints[0].address.port(), 8080);
    assert!(s.dynamic.warming_clusters.is_empty());
}

#[test]
fn a_warming_cluster_is_used_without_endpoints_after_its_fetch_timeout() {
    let mut f = Fixture::new();
    f.apply(Update::sotw(
        Kind::Cluster,
        "1",
        vec![eds_cluster("a", "0.05s")],
    ))
    .unwrap();
    assert!(f.res.next_deadline().is_some());
    assert_eq!(names(&f.snapshot()), ["fixed"]);
    #[allow(clippy::disallowed_methods)] // a unit test on the test thread, not a core
    std::thread::sleep(Duration::from_millis(60));
    let s = f.snapshot();
    assert_eq!(names(&s), ["fixed", "a"]);
    assert!(s.cluster("a").unwrap().endpoints.is_empty());
}

#[test]
fn a_listener_serves_only_once_its_routes_arrive_and_its_old_version_serves_meanwhile() {
    let mut f = Fixture::new();
    f.apply(Update::sotw(
        Kind::Listener,
        "1",
        vec![rds_listener("l", "r1")],
    ))
    .unwrap();
    assert!(f.snapshot().listeners.is_empty(), "warming");
    f.apply(Update::sotw(Kind::Route, "1", vec![route("r1", "fixed")]))
        .unwrap();
    let s = f.snapshot();
    assert_eq!(s.listeners.len(), 1);
    let first = s.listeners[0].clone();
    // A new version that needs other routes: the old one keeps serving.
    f.apply(Update::sotw(
        Kind::Listener,
        "2",
        vec![rds_listener("l", "r2")],
    ))
    .unwrap();
    assert_eq!(
        f.res.wanted(Kind::Route, &f.statics),
        BTreeSet::from(["r1".to_string(), "r2".to_string()])
    );
    let s = f.snapshot();
    assert!(Arc::ptr_eq(&s.listeners[0], &first));
    assert_eq!(&*s.dynamic.warming_listeners[0].version, "2");
    f.apply(Update::sotw(Kind::Route, "2", vec![route("r2", "fixed")]))
        .unwrap();
    let s = f.snapshot();
    assert!(!Arc::ptr_eq(&s.listeners[0], &first));
    assert!(s.route_configs.contains_key("r2"));
}

#[test]
fn removal_follows_each_protocol() {
    let mut f = Fixture::new();
    f.eds("0s", &[("a", 1), ("b", 2)]);
    // SotW EDS lists only what changed: b stays.
    f.apply(Update::sotw(Kind::Endpoint, "2", vec![cla("a", 3)]))
        .unwrap();
    assert_eq!(names(&f.snapshot()), ["fixed", "a", "b"]);
    // SotW CDS is the full state: b goes, and its endpoints with it.
    f.apply(Update::sotw(
        Kind::Cluster,
        "2",
        vec![eds_cluster("a", "0s")],
    ))
    .unwrap();
    f.res.prune(&f.statics, Kind::Cluster, &BTreeSet::new());
    assert_eq!(names(&f.snapshot()), ["fixed", "a"]);
    assert_eq!(
        f.res.versions_of(Kind::Endpoint).keys().collect::<Vec<_>>(),
        ["a"]
    );
    // Delta removes by name.
    let mut u = Update::sotw(Kind::Cluster, "3", vec![]);
    u.full_state = false;
    u.removed = vec!["a".into()];
    f.apply(u).unwrap();
    assert_eq!(names(&f.snapshot()), ["fixed"]);
    assert_eq!(f.res.version(Kind::Cluster), "3");
}

#[test]
fn a_bad_resource_changes_nothing() {
    let mut f = Fixture::new();
    f.apply(Update::sotw(
        Kind::Cluster,
        "1",
        vec![eds_cluster("a", "0s")],
    ))
    .unwrap();
    let bad = any(
        Kind::Cluster,
        json!({"name": "b", "type": "EDS", "connect_timeout": "-1s"}),
    );
    let err = f
        .apply(Update::sotw(
            Kind::Cluster,
            "2",
            vec![eds_cluster("c", "0s"), bad],
        ))
        .unwrap_err();
    // As Envoy: the refused cluster is named, the good one is applied, and the state of
    // the world removes what the response no longer lists; the version is not taken.
    assert!(err.contains("cluster 'b'"), "{err}");
    assert_eq!(f.res.version(Kind::Cluster), "1");
    assert_eq!(
        f.res.versions_of(Kind::Cluster).keys().collect::<Vec<_>>(),
        ["c"]
    );
    // A refused update of a cluster that exists keeps its previous version serving.
    let bad_c = any(
        Kind::Cluster,
        json!({"name": "c", "type": "EDS", "connect_timeout": "-1s"}),
    );
    let err = f
        .apply(Update::sotw(
            Kind::Cluster,
            "2b",
            vec![bad_c, eds_cluster("d", "0s")],
        ))
        .unwrap_err();
    assert!(err.contains("cluster 'c'"), "{err}");
    let mut names: Vec<_> = f.res.versions_of(Kind::Cluster).into_keys().collect();
    names.sort();
    assert_eq!(names, ["c", "d"]);
    assert_eq!(f.res.versions_of(Kind::Cluster)["c"], "2");
    // Two resources of one name: the response is refused whole.
    let err = f
        .apply(Update::sotw(
            Kind::Cluster,
            "2c",
            vec![eds_cluster("e", "0s"), eds_cluster("e", "0s")],
        ))
        .unwrap_err();
    assert!(err.contains("'e' appears twice"), "{err}");
    assert!(!f.res.versions_of(Kind::Cluster).contains_key("e"));
    // Static resources cannot be replaced, and a type mismatch is refused.
    let err = f
        .apply(Update::sotw(
            Kind::Cluster,
            "3",
            vec![eds_cluster("fixed", "0s")],
        ))
        .unwrap_err();
    assert!(err.contains("static cluster"), "{err}");
    let err = f
        .apply(Update::sotw(Kind::Cluster, "4", vec![cla("x", 1)]))
        .unwrap_err();
    assert!(err.contains("ClusterLoadAssignment in a"), "{err}");
}

/// A listener built with prost (Istio's own types are not in the descriptor pool, so
/// they can only arrive over xDS, as bytes).
fn istio_listener(network: &[(&str, &str)], http: &[(&str, &str)]) -> prost_types::Any {
    use crate::proto::envoy::config::listener::v3 as l;
    use crate::proto::envoy::extensions::filters::network::http_connection_manager::v3 as h;
    let any = |t: &str, value: Vec<u8>| prost_types::Any {
        type_url: format!("type.googleapis.com/{t}"),
        value,
    };
    let mut http_filters: Vec<h::HttpFilter> = http
        .iter()
        .map(|(name, t)| h::HttpFilter {
            name: name.to_string(),
            config_type: Some(h::http_filter::ConfigType::TypedConfig(any(t, vec![]))),
            ..Default::default()
        })
        .collect();
    http_filters.push(h::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(h::http_filter::ConfigType::TypedConfig(any(
            "envoy.extensions.filters.http.router.v3.Router",
            vec![],
        ))),
        ..Default::default()
    });
    let hcm = h::HttpConnectionManager {
        stat_prefix: "in".into(),
        route_specifier: Some(h::http_connection_manager::RouteSpecifier::Rds(h::Rds {
            route_config_name: "r".into(),
            config_source: Some(crate::proto::envoy::config::core::v3::ConfigSource {
                config_source_specifier: Some(
                    crate::proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
        })),
        http_filters,
        ..Default::default()
    };
    let mut filters: Vec<l::Filter> = network
        .iter()
        .map(|(name, t)| {
            // The waypoint form wraps the config in a TypedStruct: field 1 is its type URL.
            let (t, value) = match t.strip_prefix("typed:") {
                Some(inner) => {
                    let url = format!("type.googleapis.com/{inner}");
                    let mut v = vec![0x0a, url.len() as u8];
                    v.extend_from_slice(url.as_bytes());
                    ("udpa.type.v1.TypedStruct", v)
                }
                None => (*t, vec![]),
            };
            l::Filter {
                name: name.to_string(),
                config_type: Some(l::filter::ConfigType::TypedConfig(any(t, value))),
            }
        })
        .collect();
    filters.push(l::Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(l::filter::ConfigType::TypedConfig(any(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            hcm.encode_to_vec(),
        ))),
    });
    let listener = l::Listener {
        name: "virtualInbound".into(),
        address: Some(crate::proto::envoy::config::core::v3::Address {
            address: Some(
                crate::proto::envoy::config::core::v3::address::Address::SocketAddress(
                    crate::proto::envoy::config::core::v3::SocketAddress {
                        address: "127.0.0.1".into(),
                        ..Default::default()
                    },
                ),
            ),
        }),
        filter_chains: vec![l::FilterChain {
            filters,
            ..Default::default()
        }],
        ..Default::default()
    };
    prost_types::Any {
        type_url: Kind::Listener.type_url().into(),
        value: listener.encode_to_vec(),
    }
}

#[test]
fn istio_telemetry_before_a_connection_manager_is_a_documented_no_op_and_policy_filters_are_refused(
) {
    let mut f = Fixture::new();
    let ok = istio_listener(
        &[
            (
                "istio.metadata_exchange",
                "envoy.tcp.metadataexchange.config.MetadataExchange",
            ),
            ("istio.stats", "typed:stats.PluginConfig"),
        ],
        &[
            (
                "istio.metadata_exchange",
                "envoy.extensions.filters.http.wasm.v3.Wasm",
            ),
            (
                "envoy.filters.http.grpc_stats",
                "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            ),
            (
                "istio.alpn",
                "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
            ),
            // istiod's empty fault filter and CORS filter are implemented, not no-ops.
            (
                "envoy.filters.http.fault",
                "envoy.extensions.filters.http.fault.v3.HTTPFault",
            ),
            (
                "envoy.filters.http.cors",
                "envoy.extensions.filters.http.cors.v3.Cors",
            ),
            ("istio.stats", "stats.PluginConfig"),
        ],
    );
    let ignored = f
        .res
        .apply(
            &Update::sotw(Kind::Listener, "1", vec![ok]),
            &f.statics,
            &f.store,
        )
        .unwrap()
        .ignored;
    // The HTTP metadata exchange and istio.stats run (implemented); the network ones
    // before a connection manager (no effect there) and istio.alpn are reported.
    assert_eq!(ignored.len(), 2, "each no-op is reported: {ignored:?}");
    assert!(ignored
        .iter()
        .any(|i| i.contains("before a connection manager")));
    assert!(ignored.iter().any(|i| i.contains("istio.alpn")));
    assert!(
        !ignored
            .iter()
            .any(|i| i.contains("http_filters[0]") || i.contains("http_filters[5]")),
        "{ignored:?}"
    );
    for (name, t) in [
        (
            "envoy.filters.http.lua",
            "envoy.extensions.filters.http.lua.v3.Lua",
        ),
        (
            "envoy.filters.http.ext_proc",
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        ),
        ("my.plugin", "envoy.extensions.filters.http.wasm.v3.Wasm"),
    ] {
        let err = f
            .apply(Update::sotw(
                Kind::Listener,
                "2",
                vec![istio_listener(&[], &[(name, t)])],
            ))
            .unwrap_err();
        assert!(
            err.contains(&format!("of type {t} is not supported")),
            "{err}"
        );
    }
    let err = f
        .apply(Update::sotw(
            Kind::Listener,
            "3",
            vec![istio_listener(
                &[(
                    "envoy.filters.network.rbac",
                    "envoy.extensions.filters.network.rbac.v3.RBAC",
                )],
                &[],
            )],
        ))
        .unwrap_err();
    // Network RBAC is implemented: an empty one lacks its required stat_prefix.
    assert!(err.contains("stat_prefix: is required"), "{err}");
}

#[test]
fn a_refused_resource_leaves_nothing_to_the_next() {
    let mut f = Fixture::new();
    // A cluster that takes an SDS secret over ADS, then fails on a later field: the good
    // cluster after it must not wait for that secret.
    let bad = any(
        Kind::Cluster,
        json!({"name": "bad", "type": "EDS", "connect_timeout": "-1s",
               "eds_cluster_config": {"eds_config": {"ads": {}}},
               "transport_socket": {"name": "tls", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                   "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "only-bad", "sds_config": {"ads": {}}}]}}}}),
    );
    let err = f
        .apply(Update::sotw(
            Kind::Cluster,
            "1",
            vec![bad, eds_cluster("good", "0s")],
        ))
        .unwrap_err();
    assert!(err.contains("cluster 'bad'"), "{err}");
    assert!(
        !f.res.wanted(Kind::Secret, &f.statics).contains("only-bad"),
        "the refused cluster's secret is not asked for"
    );
    // A resource whose name cannot be read refuses the response whole.
    let mut broken = eds_cluster("x", "0s");
    broken.value = vec![0x08, 0x01]; // field 1 as a varint: no name
    let err = f
        .apply(Update::sotw(
            Kind::Cluster,
            "2",
            vec![eds_cluster("y", "0s"), broken],
        ))
        .unwrap_err();
    assert!(err.contains("its name cannot be read"), "{err}");
    assert!(
        f.res.versions_of(Kind::Cluster).contains_key("good"),
        "nothing changed"
    );
}

mod eds;
mod encodings;
