use super::*;

#[test]
fn parses_envoy_demo_shape() {
    let yaml = r#"
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address: { protocol: TCP, address: 0.0.0.0, port_value: 10000 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: local
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend, timeout: 0.25s }
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: LOGICAL_DNS
    dns_lookup_family: V4_ONLY
    connectTimeout: 1s
"#;
    let b = parse_bootstrap(yaml, &Source::Inline).unwrap();
    let sr = b.static_resources.unwrap();
    assert_eq!(sr.listeners[0].name, "listener_0");
    let any = sr.listeners[0].filter_chains[0].filters[0]
        .config_type
        .clone();
    assert!(any.is_some());
    assert_eq!(sr.clusters[0].connect_timeout.unwrap().seconds, 1);
}

#[test]
fn unknown_field_is_named_with_path_and_line() {
    let yaml = "static_resources:\n  listeners:\n  - name: a\n    bogus_field: 1\n";
    let err = parse_bootstrap(yaml, &Source::File("x.yaml".into())).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("x.yaml:4"), "{msg}");
    assert!(msg.contains("static_resources.listeners[0]"), "{msg}");
    assert!(msg.contains("bogus_field"), "{msg}");
}

#[test]
fn unknown_field_inside_any_is_refused() {
    let yaml = r#"
static_resources:
  listeners:
  - name: a
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: x
          tracing: {operation: "%REQ(:path)%"}
"#;
    let msg = parse_bootstrap(yaml, &Source::Inline)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tracing") && msg.contains("operation"),
        "{msg}"
    );
    assert!(msg.contains("typed_config"), "{msg}");
}

#[test]
fn unknown_any_type_is_refused() {
    let yaml = r#"
static_resources:
  listeners:
  - name: a
    filter_chains:
    - filters:
      - name: x
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
"#;
    let msg = parse_bootstrap(yaml, &Source::Inline)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("RedisProxy"), "{msg}");
}

#[test]
fn inline_yaml_merges_over_file() {
    let dir = std::env::temp_dir().join(format!("ringside-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("b.yaml");
    std::fs::write(
        &file,
        "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n",
    )
    .unwrap();
    let b = load(
        Some(&file),
        Some("admin: {address: {socket_address: {port_value: 2}}}"),
        false,
    )
    .unwrap()
    .bootstrap;
    let sa = b.admin.unwrap().address.unwrap().address.unwrap();
    let proto::envoy::config::core::v3::address::Address::SocketAddress(sa) = sa else {
        panic!("socket address expected")
    };
    assert_eq!(sa.address, "127.0.0.1");
    assert_eq!(
        sa.port_specifier,
        Some(proto::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(2))
    );
}
