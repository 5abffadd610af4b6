use super::*;
use crate::config::{parse_bootstrap, Source};

fn build(yaml: &str) -> Result<Snapshot, ConvertError> {
    let b = parse_bootstrap(yaml, &Source::Inline).expect("parses");
    bootstrap_snapshot(&b, &Store::new(1), 1).map(|(s, _)| s)
}

fn with_routes(routes: &str) -> String {
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
    let y = with_routes(r#"[{match: {prefix: "/"}, route: {cluster: backend}}]"#)
        .replace("{name: backend,", "{name: backend, lb_policy: MAGLEV,");
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
