use super::*;
use crate::config::{parse_bootstrap, Source};

pub(super) fn build(yaml: &str) -> Result<Snapshot, ConvertError> {
    let b = parse_bootstrap(yaml, &Source::Inline).expect("parses");
    bootstrap_snapshot(&b, &Store::new(1), 1).map(|(s, _)| s)
}

pub(super) fn with_routes(routes: &str) -> String {
    crate::test_support::http_bootstrap(
        &format!("[{{name: v, domains: ['*'], routes: {routes}}}]"),
        "[{name: backend, load_assignment: {cluster_name: backend, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]}}]",
    )
}

#[test]
fn converts_a_basic_proxy() {
    let s = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: backend}}]"#,
    ))
    .unwrap();
    assert_eq!(s.listeners.len(), 1);
    assert_eq!(s.clusters[0].endpoints.len(), 1);
    assert_eq!(s.clusters[0].connect_timeout, Duration::from_secs(5));
}

#[test]
fn unknown_cluster_is_rejected_with_path() {
    let e = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: nope}}]"#,
    ))
    .unwrap_err();
    assert_eq!(e.resource, "listener 'l'");
    assert!(
        e.path.ends_with("virtual_hosts[0].routes[0].route.cluster"),
        "{}",
        e.path
    );
    assert!(
        e.path
            .starts_with("static_resources.listeners[0].filter_chains[0]"),
        "{}",
        e.path
    );
    assert!(e.reason.contains("nope"));
}

#[test]
fn bad_regex_and_missing_action_are_rejected() {
    let e = build(&with_routes(
        r#"[{match: {safe_regex: {regex: "("}}, route: {cluster: backend}}]"#,
    ))
    .unwrap_err();
    assert!(e.path.ends_with("match.safe_regex.regex"), "{}", e.path);
    let e = build(&with_routes(r#"[{match: {prefix: "/"}}]"#)).unwrap_err();
    assert!(e.reason.contains("action"), "{}", e.reason);
}

#[test]
fn unsupported_lb_policy_fails_closed() {
    let y = with_routes(r#"[{match: {prefix: "/"}, route: {cluster: backend}}]"#).replace(
        "{name: backend,",
        "{name: backend, lb_policy: LOAD_BALANCING_POLICY_CONFIG,",
    );
    let e = build(&y).unwrap_err();
    assert_eq!(e.path, "static_resources.clusters[0].lb_policy");
}

#[test]
fn envoy_demo_without_tls_converts() {
    let text = include_str!("../../../examples/envoy-demo.yaml");
    let b = parse_bootstrap(text, &Source::Inline).unwrap();
    let (s, _) = bootstrap_snapshot(&b, &Store::new(1), 1).unwrap();
    assert_eq!(s.clusters[0].discovery, crate::model::Discovery::LogicalDns);
    assert_eq!(s.clusters[0].dns_hosts[0].port, 8080);
}

const TCP: &str = r#"[{name: tcp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]"#;

/// A bootstrap with one listener: `listener` is the YAML after `address`.
fn one_listener(listener: &str, clusters: &str) -> String {
    format!(
        "static_resources:\n  clusters: {clusters}\n  listeners:\n  - name: l\n    address: {{socket_address: {{address: 0.0.0.0, port_value: 15006}}}}\n{listener}"
    )
}

/// The error for a listener, its path relative to the listener.
fn err_of(listener: &str) -> ConvertError {
    let mut e = build(&one_listener(listener, "[]")).unwrap_err();
    e.path = e
        .path
        .trim_start_matches("static_resources.listeners[0].")
        .to_string();
    e
}

#[test]
fn filter_chain_mistakes_are_named() {
    let e = err_of(&format!(
        "    filter_chains: [{{filter_chain_match: {{destination_port: 80}}, filters: {TCP}}}, {{filter_chain_match: {{destination_port: 80}}, filters: {TCP}}}]\n"
    ));
    assert_eq!(
        (e.path.as_str(), e.reason.as_str()),
        (
            "filter_chains[1].filter_chain_match",
            "the same match as filter_chains[0]"
        )
    );
    let e = err_of(&format!(
        "    filter_chains: [{{filter_chain_match: {{transport_protocol: quic}}, filters: {TCP}}}]\n"
    ));
    assert_eq!(
        e.path,
        "filter_chains[0].filter_chain_match.transport_protocol"
    );
    let e = err_of(&format!(
        "    filter_chains: [{{filter_chain_match: {{server_names: ['a.*.com']}}, filters: {TCP}}}]\n"
    ));
    assert_eq!(
        e.path,
        "filter_chains[0].filter_chain_match.server_names[0]"
    );
    let e = err_of(&format!(
        "    filter_chains: [{{filter_chain_match: {{prefix_ranges: [{{address_prefix: 10.0.0.0, prefix_len: 33}}]}}, filters: {TCP}}}]\n"
    ));
    assert_eq!(
        e.path,
        "filter_chains[0].filter_chain_match.prefix_ranges[0].prefix_len"
    );
    let e = err_of("    filter_chains: []\n");
    assert_eq!(e.reason, "at least one filter chain is required");
}

#[test]
fn listener_filters_and_their_predicates() {
    let s = build(&one_listener(
        &format!(
            r#"    listener_filters:
    - {{name: od, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}}}
    - {{name: tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}, filter_disabled: {{destination_port_range: {{start: 15006, end: 15007}}}}}}
    - {{name: http, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}, filter_disabled: {{or_match: {{rules: [{{destination_port_range: {{start: 80, end: 81}}}}, {{not_match: {{destination_port_range: {{start: 1, end: 60000}}}}}}]}}}}}}
    listener_filters_timeout: 0s
    filter_chains: [{{filters: {TCP}}}]
"#
        ),
        "[]",
    ))
    .unwrap();
    let l = &s.listeners[0];
    assert!(
        l.restore_dst && !l.use_original_dst,
        "the filter restores, never hands over"
    );
    assert_eq!(l.inspectors.timeout, None, "0s disables the timeout");
    assert!(!l.inspectors.tls_for(15006) && l.inspectors.tls_for(80));
    assert!(!l.inspectors.http_for(80) && !l.inspectors.http_for(60001));
    assert!(l.inspectors.http_for(8080) && l.inspectors.tls_for(8080));
    // A listener filter Ringside does not have: refused by type when parsed.
    let yaml = one_listener(
        &format!(
            r#"    listener_filters: [{{name: proxy_protocol, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol}}}}]
    filter_chains: [{{filters: {TCP}}}]
"#
        ),
        "[]",
    );
    let e = parse_bootstrap(&yaml, &Source::Inline)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("listener_filters[0].typed_config") && e.contains("is not implemented"),
        "{e}"
    );
    let e = err_of(&format!(
        r#"    listener_filters: [{{name: http, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}, filter_disabled: {{destination_port_range: {{start: 90, end: 80}}}}}}]
    filter_chains: [{{filters: {TCP}}}]
"#
    ));
    assert_eq!(
        e.path,
        "listener_filters[0].filter_disabled.destination_port_range"
    );
    let e = err_of(&format!("    bind_to_port: false\n    use_original_dst: true\n    filter_chains: [{{filters: {TCP}}}]\n"));
    assert_eq!(e.path, "bind_to_port");
}

#[test]
fn filter_chain_matcher_actions_must_name_chains() {
    let matcher = |action: &str| {
        format!(
            r#"    filter_chains: [{{name: a, filters: {TCP}}}]
    filter_chain_matcher:
      matcher_tree:
        input: {{name: port, typed_config: {{"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput}}}}
        exact_match_map: {{map: {{"8000": {{action: {{name: x, typed_config: {{"@type": type.googleapis.com/google.protobuf.StringValue, value: {action}}}}}}}}}}}
"#
        )
    };
    build(&one_listener(&matcher("a"), "[]")).unwrap();
    // A chain name the listener lacks is accepted (Envoy's no-op action: no chain).
    let s = build(&one_listener(&matcher("b"), "[]")).unwrap();
    let info = crate::model::chain::ConnInfo {
        local: "10.0.0.1:8000".parse().unwrap(),
        peer: "10.0.0.2:1234".parse().unwrap(),
        sniffed: None,
    };
    assert_eq!(
        s.listeners[0].chains.choose(&info),
        crate::model::chain::Choice::NoMatch
    );
}

#[test]
fn original_dst_clusters_and_tcp_proxy_fields() {
    let ok = build(&one_listener(
        &format!("    filter_chains: [{{filters: {TCP}}}]\n"),
        "[{name: c, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, upstream_bind_config: {source_address: {address: 127.0.0.6, port_value: 0}}}]",
    ))
    .unwrap();
    assert_eq!(
        ok.clusters[0].discovery,
        crate::model::Discovery::OriginalDst
    );
    assert_eq!(
        ok.clusters[0].bind_source,
        Some("127.0.0.6:0".parse().unwrap())
    );
    let e = build(&one_listener(
        &format!("    filter_chains: [{{filters: {TCP}}}]\n"),
        "[{name: c, type: ORIGINAL_DST}]",
    ))
    .unwrap_err();
    assert_eq!(e.path, "static_resources.clusters[0].lb_policy");
    let e = err_of(
        r#"    filter_chains: [{filters: [{name: tcp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, cluster: c}}]}]
"#,
    );
    assert_eq!(
        e.path,
        "filter_chains[0].filters[0].typed_config.stat_prefix"
    );
}

/// A bootstrap whose connection manager has `hcm` added and whose cluster has `cluster`.
/// The forwarding action of the first route of the first listener's connection manager.
fn first_forward(s: &Snapshot) -> std::sync::Arc<crate::model::route::Forward> {
    let h = s.listeners[0].hcms().next().expect("a connection manager");
    let crate::model::RouteSource::Static(t) = &h.routes else {
        panic!("inline routes")
    };
    match &t.virtual_hosts[0].routes[0].action {
        crate::model::route::Action::Forward(f) => f.clone(),
        _ => panic!("a forwarding route"),
    }
}

#[test]
fn max_stream_duration_replaces_the_route_timeout_and_honours_grpc_timeout() {
    use crate::model::route::parse_grpc_timeout;
    // Istio's shape: both 0.
    let s = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: backend, timeout: 3s, max_stream_duration: {max_stream_duration: 0s, grpc_timeout_header_max: 0s}}}]"#,
    ))
    .unwrap();
    let f = first_forward(&s);
    assert_eq!(
        f.timeout, None,
        "Envoy's new timeouts drop the route timeout"
    );
    let sd = f.more().stream_duration.expect("set");
    assert_eq!(sd.limit(None), None, "0 is no limit");
    assert_eq!(sd.limit(Some(b"250m")), Some(Duration::from_millis(250)));
    assert_eq!(
        sd.limit(Some(b"2H")),
        Some(Duration::from_secs(7200)),
        "uncapped"
    );
    assert_eq!(
        sd.limit(Some(b"bogus")),
        None,
        "an unparsable header is ignored"
    );

    // A cap, an offset and a plain duration.
    let s = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: backend, max_stream_duration: {max_stream_duration: 9s, grpc_timeout_header_max: 1s, grpc_timeout_header_offset: 0.1s}}}]"#,
    ))
    .unwrap();
    let sd = first_forward(&s).more().stream_duration.unwrap();
    assert_eq!(sd.limit(None), Some(Duration::from_secs(9)));
    assert_eq!(sd.limit(Some(b"5S")), Some(Duration::from_millis(900)));
    assert_eq!(sd.limit(Some(b"500m")), Some(Duration::from_millis(400)));

    // Without grpc_timeout_header_max, grpc-timeout is not read.
    let s = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: backend, max_stream_duration: {max_stream_duration: 2s}}}]"#,
    ))
    .unwrap();
    let sd = first_forward(&s).more().stream_duration.unwrap();
    assert_eq!(sd.limit(Some(b"1m")), Some(Duration::from_secs(2)));

    // Without max_stream_duration, the route timeout (15 s by default) stays.
    let s = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: backend}}]"#,
    ))
    .unwrap();
    assert_eq!(first_forward(&s).timeout, Some(Duration::from_secs(15)));

    // The gRPC spec's grammar: at most 8 digits and a known unit.
    assert_eq!(parse_grpc_timeout(b"1n"), Some(Duration::from_nanos(1)));
    assert_eq!(parse_grpc_timeout(b"3u"), Some(Duration::from_micros(3)));
    assert_eq!(
        parse_grpc_timeout(b"99999999M"),
        Some(Duration::from_secs(99999999 * 60))
    );
    for bad in [
        &b""[..],
        b"S",
        b"123456789S",
        b"10",
        b"10x",
        b"-1S",
        b"1.5S",
    ] {
        assert_eq!(
            parse_grpc_timeout(bad),
            None,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn route_upgrade_configs_and_connect() {
    let s = build(&with_routes(
        r#"[{match: {connect_matcher: {}}, route: {cluster: backend, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}, {upgrade_type: websocket, enabled: false}]}}]"#,
    ))
    .unwrap();
    let f = first_forward(&s);
    assert!(f.terminates_connect());
    assert!(
        !f.upgrade_allowed(b"WebSocket", Some(true)),
        "the route disables it"
    );
    assert!(
        f.upgrade_allowed(b"connect", Some(false)),
        "the route enables it"
    );
    assert!(
        !f.upgrade_allowed(b"connect", None),
        "the manager must list it"
    );
    assert!(
        f.upgrade_allowed(b"h2c", Some(true)),
        "no route entry: the manager decides"
    );

    // Forwarding CONNECT to an upstream proxy is refused by name, as is connect_config on
    // another upgrade type.
    let e = build(&with_routes(
        r#"[{match: {connect_matcher: {}}, route: {cluster: backend, upgrade_configs: [{upgrade_type: CONNECT}]}}]"#,
    ))
    .unwrap_err();
    assert!(
        e.path.ends_with("route.upgrade_configs[0].connect_config"),
        "{}",
        e.path
    );
    let e = build(&with_routes(
        r#"[{match: {prefix: "/"}, route: {cluster: backend, upgrade_configs: [{upgrade_type: websocket, connect_config: {}}]}}]"#,
    ))
    .unwrap_err();
    assert!(e.reason.contains("only a CONNECT upgrade"), "{}", e.reason);
    // Fields of ConnectConfig that are not implemented are refused, not ignored.
    let b = parse_bootstrap(
        &with_routes(
            r#"[{match: {connect_matcher: {}}, route: {cluster: backend, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {allow_post: true}}]}}]"#,
        ),
        &Source::Inline,
    );
    assert!(b.is_err(), "allow_post must not be silently dropped");
}

#[test]
fn upstream_tls_and_transport_socket_matches_convert() {
    let tls = |sni: &str| {
        format!(
            r#"{{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: "{sni}"}}}}"#
        )
    };
    let yaml = |extra: &str, metadata: &str| {
        crate::test_support::http_bootstrap(
            "[{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]",
            &format!("[{{name: backend, {extra}, load_assignment: {{cluster_name: backend, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}}}{metadata}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8081}}}}}}}}]}}]}}}}]"),
        )
    };
    let istio =
        r#", metadata: {filter_metadata: {envoy.transport_socket_match: {tlsMode: istio}}}"#;
    let sni = "outbound_.9080_._.reviews.default.svc.cluster.local";
    let matches = format!(
        "transport_socket_matches: [{{name: tlsMode-istio, match: {{tlsMode: istio}}, transport_socket: {}}}, {{name: tlsMode-disabled, match: {{}}, transport_socket: {{name: envoy.transport_sockets.raw_buffer}}}}]",
        tls(sni)
    );
    let snap = build(&yaml(&matches, istio)).unwrap();
    let c = snap.cluster("backend").unwrap();
    let (labelled, plain) = (&c.endpoints[0], &c.endpoints[1]);
    let t = c.tls_for(labelled).expect("tlsMode: istio picks mTLS");
    assert_eq!(
        t.sni.as_ref().map(|s| s.to_str().to_string()),
        Some(sni.to_string())
    );
    assert!(
        c.tls_for(plain).is_none(),
        "unlabelled endpoints stay plaintext"
    );
    assert_eq!(c.tls_key(plain), 0);
    // The pool identity is the configuration's, so a new snapshot keeps warm connections
    // and different settings never share one.
    let again = build(&yaml(&matches, istio)).unwrap();
    let again = again.cluster("backend").unwrap();
    assert_eq!(again.tls_key(&again.endpoints[0]), c.tls_key(labelled));
    let other = build(&yaml(&format!("transport_socket: {}", tls("other")), "")).unwrap();
    let other = other.cluster("backend").unwrap();
    assert_ne!(other.tls_key(&other.endpoints[0]), c.tls_key(labelled));
    assert!(
        other.tls_for(&other.endpoints[1]).is_some(),
        "transport_socket applies to all"
    );
    // Refusals name the field.
    let e = build(&yaml(
        "transport_socket_matches: [{name: tlsMode-istio, match: {tlsMode: istio}}]",
        "",
    ))
    .unwrap_err();
    assert!(
        e.path
            .ends_with("transport_socket_matches[0].transport_socket"),
        "{e:?}"
    );
    let e = build(&yaml(
        r#"transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, allow_renegotiation: true}}"#,
        "",
    ))
    .unwrap_err();
    assert!(e.path.ends_with("allow_renegotiation"), "{e:?}");
    let e = build(&yaml(
        r#"transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {validation_context: {trusted_ca: {inline_string: "not pem"}}}}}"#,
        "",
    ))
    .unwrap_err();
    assert!(e.path.ends_with("validation_context.trusted_ca"), "{e:?}");
    // SDS files are read at conversion: a missing one, or one without the secret, is an
    // error naming the file; an SDS server in a static cluster is refused.
    let sds = |source: &str| {
        format!(
            r#"transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {{tls_certificate_sds_secret_configs: [{{name: default, sds_config: {source}}}]}}}}}}"#
        )
    };
    let dir = std::env::temp_dir().join(format!("ringside-sds-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_files = |text: &str| {
        let b = crate::config::parse_bootstrap(text, &crate::config::Source::Inline).unwrap();
        super::bootstrap_snapshot_with(&b, &Store::new(1), 1, Some(crate::config::read_sds_file))
    };
    let missing = dir.join("missing.yaml");
    let at = format!("{{path_config_source: {{path: '{}'}}}}", missing.display());
    let e = with_files(&yaml(&sds(&at), "")).unwrap_err();
    assert!(
        e.path.ends_with("sds_config") && e.reason.contains("missing.yaml"),
        "{e:?}"
    );
    let other = dir.join("other.yaml");
    std::fs::write(&other, "resources: [{'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret, name: ROOTCA, validation_context: {trusted_ca: {inline_string: x}}}]").unwrap();
    let e = with_files(&yaml(&sds(&format!("{{path: '{}'}}", other.display())), "")).unwrap_err();
    assert!(
        e.reason.contains("holds no secret named 'default'"),
        "{e:?}"
    );
    let grpc = "{api_config_source: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}}";
    // A static cluster an SDS server feeds is left to the control thread, which adds it
    // once its secrets arrive; its name stays known to routes.
    let s = build(&yaml(&sds(grpc), "")).unwrap();
    assert!(s.cluster("backend").is_none(), "{s:?}");
}

#[test]
fn equal_retry_policies_are_converted_once_and_shared() {
    let s = build(&crate::test_support::http_bootstrap(
        r#"[{name: a, domains: [a], retry_policy: {retry_on: "5xx", num_retries: 4},
             routes: [{match: {prefix: "/x"}, route: {cluster: backend, retry_policy: {retry_on: "connect-failure", num_retries: 2, retriable_status_codes: [503]}}},
                      {match: {prefix: "/y"}, route: {cluster: backend, retry_policy: {retry_on: "connect-failure", num_retries: 3}}},
                      {match: {prefix: "/"}, route: {cluster: backend, prefix_rewrite: /p/}}]},
            {name: b, domains: [b],
             routes: [{match: {prefix: "/"}, route: {cluster: backend, retry_policy: {retry_on: "connect-failure", num_retries: 2, retriable_status_codes: [503]}}}]},
            {name: c, domains: [c], retry_policy: {retry_on: "5xx", num_retries: 4},
             routes: [{match: {prefix: "/"}, route: {cluster: backend}}]}]"#,
        "[{name: backend, load_assignment: {cluster_name: backend, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]}}]",
    ))
    .unwrap();
    let h = s.listeners[0].hcms().next().expect("a connection manager");
    let crate::model::RouteSource::Static(t) = &h.routes else {
        panic!("inline routes")
    };
    let forward = |v: usize, r: usize| match &t.virtual_hosts[v].routes[r].action {
        crate::model::route::Action::Forward(f) => f.clone(),
        _ => panic!("a forwarding route"),
    };
    let retry = |v: usize, r: usize| forward(v, r).retry.clone().expect("a retry policy");
    assert!(std::sync::Arc::ptr_eq(&retry(0, 0), &retry(1, 0)));
    assert_eq!(retry(0, 0).num_retries, 2);
    assert_eq!(retry(0, 0).status_codes, [503]);
    assert!(!std::sync::Arc::ptr_eq(&retry(0, 0), &retry(0, 1)));
    assert_eq!(retry(0, 1).num_retries, 3);
    // The virtual hosts' own policies: equal, shared, and given to routes without one.
    assert!(std::sync::Arc::ptr_eq(&retry(0, 2), &retry(2, 0)));
    assert_eq!(retry(2, 0).num_retries, 4);
    // The less common settings are kept where a route has them.
    assert_eq!(forward(0, 2).more().prefix_rewrite.as_deref(), Some("/p/"));
    assert_eq!(forward(0, 0).more().prefix_rewrite, None);
}
