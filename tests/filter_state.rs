//! Filter state: `set_filter_state` (HTTP and network) sets named objects from format
//! strings; a consistent-hash cluster keys on one through a route's or the TCP proxy's
//! `filter_state` hash policy — only when the object is hashable (`envoy.hashable_string`),
//! as in Envoy, where a plain `envoy.string` makes no hash and the pick is random. RBAC
//! and the access log read the same objects. (That the hashed keys reach the backends
//! Envoy 1.40 picks is compared in tests/interop/hash_parity.py.)

mod support;

use std::collections::{BTreeMap, BTreeSet};

use support::*;

const SET_HTTP: &str =
    "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config";
const SET_NET: &str =
    "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config";

/// `set_filter_state` setting `fs.hash` (hashable) and `fs.str` (a plain string) from the
/// request's `x-user`, and `fs.tag` (for the upstream to see) from both.
fn set_filters() -> String {
    format!(
        r#"          - name: envoy.filters.http.set_filter_state
            typed_config:
              "@type": {SET_HTTP}
              on_request_headers:
              - {{object_key: fs.hash, factory_key: envoy.hashable_string, format_string: {{text_format_source: {{inline_string: "%REQ(x-user)%"}}}}}}
              - {{object_key: fs.str, factory_key: envoy.string, format_string: {{text_format: "%REQ(x-user)%"}}}}
              - {{object_key: fs.tag, factory_key: envoy.string, format_string: {{text_format: "%FILTER_STATE(fs.str:PLAIN)%/%REQ(x-none)%"}}}}
              - {{object_key: fs.empty, factory_key: envoy.string, skip_if_empty: true, format_string: {{text_format: "%REQ(x-none)%", omit_empty_values: true}}}}
"#
    )
}

fn who(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_hashes_a_hashable_object_only() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let routes = "[{name: all, domains: ['*'], request_headers_to_add: [{header: {key: x-fs, value: '%FILTER_STATE(fs.tag:PLAIN)%|%FILTER_STATE(fs.empty:PLAIN)%'}}], routes: [\
        {match: {prefix: /hash}, route: {cluster: hashed, hash_policy: [{filter_state: {key: fs.hash}}]}},\
        {match: {prefix: /str}, route: {cluster: hashed, hash_policy: [{filter_state: {key: fs.str}}]}},\
        {match: {prefix: /terminal}, route: {cluster: hashed, hash_policy: [{filter_state: {key: fs.str}, terminal: true}, {filter_state: {key: fs.hash}}]}}]}]";
    let yaml = config_with_filters(
        "",
        &set_filters(),
        routes,
        &format!("[{}]", cluster("hashed", &addrs, "lb_policy: RING_HASH,")),
    );
    for driver in drivers() {
        let p = Proxy::start(&yaml, &one_core(driver)).await;
        let addr = p.wait_listener("main").await;
        for path in ["/hash", "/terminal"] {
            let mut chosen: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
            for round in 0..3 {
                for key in 0..40 {
                    let user = format!("user-{key}");
                    let h2 = (round + key) % 2 == 1;
                    let (status, _, body) =
                        send(addr, h2, "GET", path, &[("x-user", user.as_str())]).await;
                    assert_eq!(status, 200, "{driver} {path}");
                    chosen.entry(key).or_default().insert(who(&body));
                }
            }
            for (key, who) in &chosen {
                assert_eq!(who.len(), 1, "{driver} {path}: key {key} went to {who:?}");
            }
            let used: BTreeSet<_> = chosen.values().flatten().collect();
            assert_eq!(used.len(), 3, "{driver} {path}: keys spread over {used:?}");
        }
        // A plain string makes no hash: one key is spread at random.
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let (status, _, body) = send(addr, false, "GET", "/str", &[("x-user", "u")]).await;
            assert_eq!(status, 200);
            seen.insert(who(&body));
        }
        assert!(
            seen.len() > 1,
            "{driver}: a plain string was hashed: {seen:?}"
        );
        // The objects are readable by later formatters: a missing value is `-`, an empty
        // one with skip_if_empty is not set at all.
        let last = backends
            .iter()
            .find(|b| b.seen.header("x-fs").is_some())
            .and_then(|b| b.seen.header("x-fs"));
        assert_eq!(last.as_deref(), Some("u/-|"), "{driver}");
    }
}

/// The network filter sets objects when a connection opens; the TCP proxy hashes a
/// hashable one, and network RBAC matches on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_object_keys_the_tcp_proxy_and_rbac() {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let listener = |name: &str, factory: &str, value: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.set_filter_state
        typed_config: {{"@type": {SET_NET}, on_new_connection: [{{object_key: conn.key, factory_key: {factory}, format_string: {{text_format: "{value}"}}}}]}}
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: {name}.
          rules: {{policies: {{p: {{permissions: [{{any: true}}], principals: [{{filter_state: {{key: conn.key, string_match: {{prefix: "fixed"}}}}}}]}}}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {name}, cluster: hashed, hash_policy: [{{filter_state: {{key: conn.key}}}}]}}
"#
        )
    };
    let yaml = format!(
        "static_resources:\n  listeners:\n{}{}{}  clusters: [{}]\n",
        listener(
            "hashed",
            "envoy.hashable_string",
            "fixed-%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
        ),
        listener("plain", "envoy.string", "fixed-value"),
        listener(
            "denied",
            "envoy.hashable_string",
            "other-%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
        ),
        cluster("hashed", &addrs, "lb_policy: MAGLEV,")
    );
    for driver in drivers() {
        let p = Proxy::start(&yaml, &one_core(driver)).await;
        let get = |addr| async move {
            let out = raw(
                addr,
                b"GET /x HTTP/1.1\r\nHost: t\r\nconnection: close\r\n\r\n",
                std::time::Duration::from_secs(2),
            )
            .await;
            let text = String::from_utf8_lossy(&out).to_string();
            text.split("upstream ").nth(1).map(|s| s[..1].to_string())
        };
        let hashed = p.wait_listener("hashed").await;
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            seen.insert(
                get(hashed)
                    .await
                    .expect("an answer through the hashed listener"),
            );
        }
        assert_eq!(
            seen.len(),
            1,
            "{driver}: a hashable object spread: {seen:?}"
        );
        let plain = p.wait_listener("plain").await;
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            seen.insert(
                get(plain)
                    .await
                    .expect("an answer through the plain listener"),
            );
        }
        assert!(
            seen.len() > 1,
            "{driver}: a plain string was hashed: {seen:?}"
        );
        // RBAC reads the object: `other-...` does not match the policy's prefix.
        let denied = p.wait_listener("denied").await;
        assert_eq!(get(denied).await, None, "{driver}");
        assert_eq!(p.stat("denied.rbac.denied").await, 1, "{driver}");
    }
}

#[test]
fn what_set_filter_state_cannot_do_is_refused_by_name() {
    for (value, want) in [
        ("{object_key: k, factory_key: envoy.tcp_proxy.cluster, format_string: {text_format: x}}", "factory_key"),
        ("{object_key: my.key, format_string: {text_format: x}}", "object_key"),
        ("{factory_key: envoy.string, format_string: {text_format: x}}", "object_key"),
        ("{object_key: k, factory_key: envoy.string}", "format_string"),
        ("{object_key: k, factory_key: envoy.string, format_string: {}}", "format_string"),
        ("{object_key: k, factory_key: envoy.string, format_string: {text_format: '%BOGUS%'}}", "format_string.text_format"),
    ] {
        let filters = format!(
            "          - name: s\n            typed_config: {{\"@type\": {SET_HTTP}, on_request_headers: [{value}]}}\n"
        );
        let yaml = config_with_filters("", &filters, &all_to("c"), "[{name: c, connect_timeout: 1s}]");
        let (ok, out) = validate("fs-bad", &yaml, &[]);
        assert!(!ok, "{value} accepted");
        assert!(
            out.contains(&format!("on_request_headers[0].{want}")),
            "{value}: {out}"
        );
    }
    let filters = format!(
        "          - name: s\n            typed_config: {{\"@type\": {SET_HTTP}, on_request_headers: [{{object_key: io.istio.peer_principal, format_string: {{text_format: '%DOWNSTREAM_PEER_URI_SAN%'}}}}]}}\n"
    );
    let yaml = config_with_filters(
        "",
        &filters,
        &all_to("c"),
        "[{name: c, connect_timeout: 1s}]",
    );
    let (ok, out) = validate("fs-ok", &yaml, &[]);
    assert!(ok, "Istio's principal factory refused: {out}");
}
