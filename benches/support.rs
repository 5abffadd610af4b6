//! Shared bench fixtures: bootstraps with N routes and N clusters.
#![allow(dead_code)]

use ringside::config::{parse_bootstrap, Source};
use ringside::model::convert::bootstrap_snapshot;
use ringside::model::Snapshot;
use ringside::proto::envoy::config::bootstrap::v3::Bootstrap;
use ringside::stats::Store;

/// A bootstrap with one listener whose virtual host has `routes` prefix routes
/// (`/svc/<i>/`), spread over `clusters` STATIC clusters.
pub fn bootstrap(routes: usize, clusters: usize) -> Bootstrap {
    let mut r = String::new();
    for i in 0..routes {
        r.push_str(&format!(
            "{{match: {{prefix: /svc/{i}/}}, route: {{cluster: c{}}}}},",
            i % clusters
        ));
    }
    let mut c = String::new();
    for i in 0..clusters {
        c.push_str(&format!(
            "{{name: c{i}, load_assignment: {{cluster_name: c{i}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}}},",
            10000 + i % 50000
        ));
    }
    let yaml = format!(
        r#"static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: b
          route_config: {{virtual_hosts: [{{name: v, domains: ["*"], routes: [{r}]}}]}}
          http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  clusters: [{c}]
"#
    );
    parse_bootstrap(&yaml, &Source::Inline).expect("bench config parses")
}

pub fn snapshot(routes: usize, clusters: usize) -> Snapshot {
    bootstrap_snapshot(&bootstrap(routes, clusters), &Store::new(1), 1)
        .unwrap()
        .0
}
