//! Fixtures shared by the unit tests of `model` and `router`.

/// A bootstrap with one HTTP listener whose route configuration has `vhosts` (a YAML flow
/// sequence) and the given `clusters` (a YAML flow sequence, `[]` for none).
pub fn http_bootstrap(vhosts: &str, clusters: &str) -> String {
    format!(
        r#"
static_resources:
  clusters: {clusters}
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          route_config:
            virtual_hosts: {vhosts}
          http_filters:
          - name: router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

/// A network filter for tests that need one but never run it.
pub fn any_network_filter() -> crate::model::NetworkFilter {
    use crate::config::{parse_bootstrap, Source};
    let b = parse_bootstrap(&http_bootstrap("[]", "[]"), &Source::Inline).unwrap();
    let s = crate::model::convert::bootstrap_snapshot(&b, &crate::stats::Store::new(1), 1)
        .unwrap()
        .0;
    s.listeners[0].chains.chains[0].filter.clone()
}
