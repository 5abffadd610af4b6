//! Ringside programmed over ADS by a scripted control plane (tonic): the protocol on the
//! wire (versions, nonces, resource names, NACK details, node, delta subscriptions,
//! reconnects) and the data plane it produces (warming, route changes under live traffic
//! without a failed request, endpoint churn, cluster and listener removal).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::ads::*;
use support::*;

const NODE_ID: &str = "sidecar~10.1.2.3~app-7d9f.default~default.svc.cluster.local";

async fn body_of(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_get(addr, path, &[]).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until GET `path` answers `want` (status and body prefix), within 10 s.
async fn wait_body(addr: std::net::SocketAddr, path: &str, status: u16, prefix: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = body_of(addr, path).await;
        if got.0 == status && got.1.starts_with(prefix) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wanted {status} {prefix}, got {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Brings a SotW proxy to: cluster `svc` (EDS → `backend`), listener `l1` (RDS `r1` →
/// `svc`). Returns the listener's address.
async fn sotw_initial(
    ads: &mut AdsServer,
    proxy: &Proxy,
    backend: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let first = ads.next_sotw(CLUSTER).await;
    let node = first.node.clone().expect("node on the first request");
    assert_eq!(node.id, NODE_ID);
    assert_eq!(node.cluster, "app.default");
    assert_eq!(node.locality.as_ref().unwrap().zone, "z1");
    assert_eq!(
        (first.version_info.as_str(), first.response_nonce.as_str()),
        ("", "")
    );
    assert!(
        first.resource_names.is_empty(),
        "CDS is a wildcard subscription"
    );
    let lds = ads.next_sotw(LISTENER).await;
    assert!(lds.node.is_none(), "set_node_on_first_message_only");

    let nonce = ads.push(CLUSTER, "c1", vec![eds_cluster("svc")]);
    let ack = ads.next_sotw(CLUSTER).await;
    assert_eq!(ack.version_info, "c1");
    assert_eq!(ack.response_nonce, nonce);
    assert!(ack.error_detail.is_none());
    let eds = ads.next_sotw(ENDPOINT).await;
    assert_eq!(eds.resource_names, ["svc"]);
    // Warming: the cluster waits for its endpoints.
    proxy
        .wait_config("svc warming", |v| {
            v["configs"][1]["dynamic_warming_clusters"][0]["cluster"]["name"] == "svc"
        })
        .await;

    let nonce = ads.push(ENDPOINT, "e1", vec![cla("svc", &[backend])]);
    let ack = ads.next_sotw(ENDPOINT).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("e1", nonce.as_str())
    );
    assert_eq!(ack.resource_names, ["svc"]);

    let nonce = ads.push(LISTENER, "l1", vec![rds_listener("l1", 0, "r1")]);
    let ack = ads.next_sotw(LISTENER).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("l1", nonce.as_str())
    );
    let rds = ads.next_sotw(ROUTE).await;
    assert_eq!(rds.resource_names, ["r1"]);
    // Warming: the listener is not bound before its routes arrive.
    proxy
        .wait_config("l1 warming", |v| {
            v["configs"][3]["dynamic_listeners"][0]["warming_state"]["listener"]["name"] == "l1"
        })
        .await;
    let (_, listeners) = proxy.admin_get("/listeners").await;
    assert!(!listeners.contains("l1"), "{listeners}");

    let nonce = ads.push(ROUTE, "r1v1", vec![route_to("r1", "svc")]);
    let ack = ads.next_sotw(ROUTE).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("r1v1", nonce.as_str())
    );
    assert!(ack.error_detail.is_none());
    proxy.wait_listener("l1").await
}

#[tokio::test]
async fn sotw_initial_config_then_a_route_change_under_load_fails_nothing() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let mut ads = AdsServer::tcp(0).await;
    let proxy = Proxy::start(&bootstrap(&ads.addr, false), &["--concurrency", "2"]).await;
    assert_eq!(
        proxy.admin_get("/ready").await.0,
        503,
        "not ready before xDS"
    );
    let addr = sotw_initial(&mut ads, &proxy, one.addr).await;
    wait_body(addr, "/x", 200, "upstream one /x").await;
    assert_eq!(proxy.admin_get("/ready").await.0, 200);

    // Live traffic on kept-alive and new connections while routes and clusters change.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = body_of(addr, "/load").await;
                if s == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    ads.push(CLUSTER, "c2", vec![eds_cluster("svc"), eds_cluster("svc2")]);
    assert_eq!(ads.next_sotw(CLUSTER).await.version_info, "c2");
    let eds = ads.next_sotw(ENDPOINT).await;
    assert_eq!(eds.resource_names, ["svc", "svc2"]);
    assert_eq!(eds.version_info, "e1", "the EDS version so far");
    ads.push(
        ENDPOINT,
        "e2",
        vec![cla("svc", &[one.addr]), cla("svc2", &[two.addr])],
    );
    assert_eq!(ads.next_sotw(ENDPOINT).await.version_info, "e2");
    ads.push(ROUTE, "r1v2", vec![route_to("r1", "svc2")]);
    assert_eq!(ads.next_sotw(ROUTE).await.version_info, "r1v2");
    wait_body(addr, "/x", 200, "upstream two /x").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) > 20);

    // Visibility: versions, every core on the current snapshot, Envoy's stat names.
    proxy
        .wait_json("/snapshot", "cores serve the last snapshot", |v| {
            let want = &v["snapshot_version"];
            v["served_by_core"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c == want)
        })
        .await;
    let (_, dump) = proxy.admin_get("/config_dump?include_eds").await;
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(v["configs"][1]["version_info"], "c2");
    assert_eq!(
        v["configs"][1]["dynamic_active_clusters"][1]["cluster"]["name"],
        "svc2"
    );
    assert_eq!(
        v["configs"][4]["dynamic_route_configs"][0]["version_info"],
        "r1v2"
    );
    assert!(v["configs"][4]["dynamic_route_configs"][0]["last_updated"].is_string());
    assert_eq!(
        v["configs"][3]["dynamic_listeners"][0]["active_state"]["version_info"],
        "l1"
    );
    assert!(
        v.get("ringside").is_none(),
        "only Envoy's ConfigDump fields"
    );
    let (_, snap) = proxy.admin_get("/snapshot").await;
    let snap: serde_json::Value = serde_json::from_str(&snap).unwrap();
    assert!(snap["last_publish"]["received_to_all_cores_us"].is_u64());
    assert_eq!(proxy.stat("cluster_manager.cds.update_success").await, 2);
    assert_eq!(proxy.stat("listener_manager.lds.update_success").await, 1);
    assert_eq!(proxy.stat("http.l1.rds.r1.update_success").await, 2);
    assert_eq!(proxy.stat("cluster.svc2.update_success").await, 1);
    assert_eq!(proxy.stat("control_plane.connected_state").await, 1);

    // Cluster removal: the route now names a cluster that is gone → 503, as Envoy.
    ads.push(CLUSTER, "c3", vec![eds_cluster("svc")]);
    assert_eq!(ads.next_sotw(CLUSTER).await.version_info, "c3");
    let eds = ads.next_sotw(ENDPOINT).await;
    assert_eq!(eds.resource_names, ["svc"], "EDS follows CDS");
    wait_body(addr, "/x", 503, "").await;
}

#[tokio::test]
async fn an_invalid_update_is_nacked_with_its_error_and_changes_nothing() {
    let one = Backend::start("one").await;
    let mut ads = AdsServer::tcp(0).await;
    let proxy = Proxy::start(&bootstrap(&ads.addr, false), &[]).await;
    let addr = sotw_initial(&mut ads, &proxy, one.addr).await;
    wait_body(addr, "/a", 200, "upstream one /a").await;

    // Two route configurations of one name: the whole response is refused.
    let bad = route_any(
        "{name: r1, virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {safe_regex: {regex: '('}}, route: {cluster: svc}}]}]}",
    );
    let nonce = ads.push(ROUTE, "r1v2", vec![route_to("r1", "nope"), bad.clone()]);
    let nack = ads.next_sotw(ROUTE).await;
    assert_eq!(nack.response_nonce, nonce);
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(
        detail.contains("route configuration 'r1' appears twice"),
        "{detail}"
    );
    wait_body(addr, "/a", 200, "upstream one /a").await;

    // A bad regex: the route configuration is refused, the previous one keeps serving.
    let nonce = ads.push(ROUTE, "r1v2", vec![bad]);
    let nack = ads.next_sotw(ROUTE).await;
    assert_eq!(
        nack.version_info, "r1v1",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.response_nonce, nonce);
    let detail = nack.error_detail.expect("error_detail");
    assert_eq!(detail.code, 3);
    assert!(
        detail.message.contains("route configuration 'r1'")
            && detail
                .message
                .contains("virtual_hosts[0].routes[0].match.safe_regex"),
        "{}",
        detail.message
    );
    wait_body(addr, "/a", 200, "upstream one /a").await;
    assert_eq!(proxy.stat("http.l1.rds.r1.update_rejected").await, 2);

    // A field our proto subset does not declare (Cluster.lb_subset_config = 22) is named.
    let mut c = eds_cluster("svc");
    c.value.extend_from_slice(&[0xb2, 0x01, 0x00]);
    let nonce = ads.push(CLUSTER, "c2", vec![c]);
    let nack = ads.next_sotw(CLUSTER).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("c1", nonce.as_str())
    );
    let msg = nack.error_detail.unwrap().message;
    assert!(msg.contains("'lb_subset_config' (field 22)"), "{msg}");
    assert_eq!(proxy.stat("cluster_manager.cds.update_rejected").await, 1);

    // A listener that cannot bind is refused on its own, as in Envoy (whose listeners
    // bind as they are added): the others of the response are applied.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let nonce = ads.push(
        LISTENER,
        "l2",
        vec![
            rds_listener("l1", 0, "r1"),
            rds_listener("l2", port, "r1"),
            rds_listener("l3", 0, "r1"),
        ],
    );
    let nack = ads.next_sotw(LISTENER).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("l1", nonce.as_str())
    );
    let msg = nack.error_detail.unwrap().message;
    assert!(msg.contains("listener 'l2': cannot bind"), "{msg}");
    wait_body(addr, "/a", 200, "upstream one /a").await;
    wait_body(
        proxy.wait_listener("l3").await,
        "/a",
        200,
        "upstream one /a",
    )
    .await;
    let (_, listeners) = proxy.admin_get("/listeners").await;
    assert!(!listeners.contains("l2::"), "{listeners}");

    // And a valid update is accepted again.
    ads.push(ROUTE, "r1v3", vec![route_any(
        "{name: r1, virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: fixed}}}]}]}",
    )]);
    let ack = ads.next_sotw(ROUTE).await;
    assert_eq!(ack.version_info, "r1v3");
    assert!(ack.error_detail.is_none());
    wait_body(addr, "/a", 200, "fixed").await;
}

#[tokio::test]
async fn lds_adds_updates_and_removes_listeners() {
    let mut ads = AdsServer::tcp(0).await;
    let proxy = Proxy::start(&bootstrap(&ads.addr, false), &["--concurrency", "2"]).await;
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(LISTENER).await;
    ads.push(CLUSTER, "c1", vec![]);
    ads.next_sotw(CLUSTER).await;
    let direct = |name: &str, body: &str| {
        listener_any(&format!(
            r#"
name: {name}
address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
filter_chains:
- filters:
  - name: hcm
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      route_config: {{virtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: {body}}}}}}}]}}]}}
      http_filters: [{{name: r, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#
        ))
    };
    ads.push(LISTENER, "1", vec![direct("a", "a1"), direct("b", "b1")]);
    assert_eq!(ads.next_sotw(LISTENER).await.version_info, "1");
    let a = proxy.wait_listener("a").await;
    let b = proxy.wait_listener("b").await;
    wait_body(a, "/", 200, "a1").await;
    wait_body(b, "/", 200, "b1").await;

    // Update `a` in place (same address: same port, new configuration); remove `b`.
    ads.push(LISTENER, "2", vec![direct("a", "a2")]);
    assert_eq!(ads.next_sotw(LISTENER).await.version_info, "2");
    wait_body(a, "/", 200, "a2").await;
    assert_eq!(proxy.wait_listener("a").await, a, "port kept");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(b).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "b still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, listeners) = proxy.admin_get("/listeners").await;
    assert!(!listeners.contains("b::"), "{listeners}");

    // As Envoy: of one response, the listeners that convert are applied and each refused
    // one is named in the NACK, which carries the last version accepted whole. A refused
    // update of `a` leaves its previous version serving.
    // `internal_listener` (field 27, empty), which the proto subset does not declare.
    let mut internal = direct("c", "c1");
    internal.value.extend_from_slice(&[0xda, 0x01, 0x00]);
    let nonce = ads.push(LISTENER, "3", vec![direct("d", "d1"), internal]);
    let nack = ads.next_sotw(LISTENER).await;
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("2", nonce.as_str())
    );
    let msg = nack.error_detail.unwrap().message;
    assert!(
        msg.contains("listener 'c'") && msg.contains("internal_listener"),
        "{msg}"
    );
    // `/config_dump` shows the partly applied response's version (Envoy's
    // system_version_info), while the NACK above carries the last one accepted whole.
    proxy
        .wait_config("LDS version 3 shown", |v| {
            v["configs"][3]["version_info"] == "3"
        })
        .await;
    let d = proxy.wait_listener("d").await;
    wait_body(d, "/", 200, "d1").await;
    // `a` was not listed: the state of the world removed it.
    while tokio::net::TcpStream::connect(a).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "a still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bad_d = listener_any(
        "{name: d, address: {socket_address: {address: 127.0.0.1, port_value: 0}}, filter_chains: [{filters: [{name: t, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, cluster: x}}]}]}",
    );
    ads.push(LISTENER, "4", vec![bad_d, direct("e", "e1")]);
    let nack = ads.next_sotw(LISTENER).await;
    let msg = nack.error_detail.unwrap().message;
    assert!(msg.contains("listener 'd'"), "{msg}");
    wait_body(proxy.wait_listener("e").await, "/", 200, "e1").await;
    wait_body(d, "/", 200, "d1").await;
    assert_eq!(proxy.stat("listener_manager.lds.update_rejected").await, 2);
    assert_eq!(proxy.stat("listener_manager.lds.update_success").await, 2);
}

#[tokio::test]
async fn delta_over_a_unix_socket_with_endpoint_churn_and_a_control_plane_restart() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let sock = temp_dir().join("XDS");
    let mut ads = AdsServer::unix(sock.clone()).await;
    let proxy = Proxy::start(&bootstrap(&ads.addr, true), &[]).await;

    let cds = ads.next_delta(CLUSTER).await;
    assert_eq!(cds.node.as_ref().unwrap().id, NODE_ID);
    assert!(cds.resource_names_subscribe.is_empty(), "wildcard");
    assert!(cds.initial_resource_versions.is_empty());
    let lds = ads.next_delta(LISTENER).await;
    assert!(lds.node.is_none());

    let nonce = ads.push_delta(CLUSTER, vec![("svc", "cv1", eds_cluster("svc"))], &[]);
    let ack = ads.next_delta(CLUSTER).await;
    assert_eq!(ack.response_nonce, nonce);
    assert!(ack.error_detail.is_none());
    let eds = ads.next_delta(ENDPOINT).await;
    assert_eq!(eds.resource_names_subscribe, ["svc"]);
    ads.push_delta(ENDPOINT, vec![("svc", "ev1", cla("svc", &[one.addr]))], &[]);
    ads.next_delta(ENDPOINT).await;
    ads.push_delta(
        LISTENER,
        vec![("l1", "lv1", rds_listener("l1", 0, "r1"))],
        &[],
    );
    ads.next_delta(LISTENER).await;
    let rds = ads.next_delta(ROUTE).await;
    assert_eq!(rds.resource_names_subscribe, ["r1"]);
    ads.push_delta(ROUTE, vec![("r1", "rv1", route_to("r1", "svc"))], &[]);
    ads.next_delta(ROUTE).await;
    let addr = proxy.wait_listener("l1").await;
    wait_body(addr, "/d", 200, "upstream one /d").await;

    // Endpoint churn.
    ads.push_delta(ENDPOINT, vec![("svc", "ev2", cla("svc", &[two.addr]))], &[]);
    ads.next_delta(ENDPOINT).await;
    wait_body(addr, "/d", 200, "upstream two /d").await;

    // A resource whose envelope name disagrees with its body is NACKed.
    let nonce = ads.push_delta(CLUSTER, vec![("other", "cv2", eds_cluster("svc"))], &[]);
    let nack = ads.next_delta(CLUSTER).await;
    assert_eq!(nack.response_nonce, nonce);
    assert!(nack.error_detail.unwrap().message.contains("'other'"));

    // The control plane goes away: the last good configuration keeps serving.
    ads.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_body(addr, "/d", 200, "upstream two /d").await;
    assert_eq!(proxy.stat("control_plane.connected_state").await, 0);

    // It comes back: Ringside reconnects and says what it has.
    let mut ads = AdsServer::unix(sock).await;
    let cds = ads.next_delta(CLUSTER).await;
    assert_eq!(
        cds.node.as_ref().unwrap().id,
        NODE_ID,
        "node again on a new stream"
    );
    assert_eq!(
        cds.initial_resource_versions.get("svc").map(String::as_str),
        Some("cv1")
    );
    let eds = ads.next_delta(ENDPOINT).await;
    assert_eq!(eds.resource_names_subscribe, ["svc"]);
    assert_eq!(
        eds.initial_resource_versions.get("svc").map(String::as_str),
        Some("ev2")
    );
    let rds = ads.next_delta(ROUTE).await;
    assert_eq!(
        rds.initial_resource_versions.get("r1").map(String::as_str),
        Some("rv1")
    );

    // Removal: the listener's routes go away with the cluster's last endpoint.
    ads.push_delta(CLUSTER, vec![], &["svc"]);
    ads.next_delta(CLUSTER).await;
    let eds = ads.next_delta(ENDPOINT).await;
    assert_eq!(eds.resource_names_unsubscribe, ["svc"]);
    wait_body(addr, "/d", 503, "").await;
    assert_eq!(ads.streams(), 1, "one stream to the restarted server");
}

#[tokio::test]
async fn an_http1_request_routed_to_the_http2_control_plane_cluster_speaks_http2_to_it() {
    // xds-grpc asks for HTTP/2 (the control plane's own cluster, a tonic server here): an
    // HTTP/1.1 request routed to it is translated, and tonic's own answer for an unknown
    // method (grpc-status 12 UNIMPLEMENTED, in headers) comes back.
    let mut ads = AdsServer::tcp(0).await;
    let proxy = Proxy::start(&bootstrap(&ads.addr, false), &[]).await;
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(LISTENER).await;
    // Listeners serve once the first CDS and LDS responses are in, as in Envoy.
    ads.push(CLUSTER, "1", vec![]);
    ads.next_sotw(CLUSTER).await;
    ads.push(LISTENER, "1", vec![rds_listener("l1", 0, "r1")]);
    ads.next_sotw(LISTENER).await;
    ads.next_sotw(ROUTE).await;
    ads.push(ROUTE, "1", vec![route_to("r1", "xds-grpc")]);
    ads.next_sotw(ROUTE).await;
    let addr = proxy.wait_listener("l1").await;
    let (status, headers, _) = request(
        addr,
        "POST",
        "/no.such.Service/Method",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        Bytes::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "grpc-status"), Some("12"), "{headers:?}");
    assert_eq!(
        proxy
            .stat_reaching("cluster.xds-grpc.upstream_rq_completed", 1)
            .await,
        1
    );
}

#[test]
fn the_istio_style_example_bootstrap_validates() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["--mode", "validate", "-c"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/istio-sidecar-xds.yaml"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A proxy on ADS `ads` whose bootstrap also has a static listener answering "hi" on a
/// free port: (the proxy, that listener's address).
async fn proxy_with_a_static_listener(ads: &AdsServer) -> (Proxy, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "{}  listeners:
  - name: static
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: static
          route_config: {{virtual_hosts: [{{name: v, domains: ['*'], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200, body: {{inline_string: hi}}}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
",
        bootstrap(&ads.addr, false)
    );
    let proxy = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    (proxy, addr)
}

/// As Envoy's init manager holds its workers: with ADS, no listener accepts — the
/// bootstrap's static ones included — until the first CDS and LDS responses are applied,
/// so nothing is served (and no pod is ready) without configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_listener_accepts_before_the_first_cds_and_lds_responses() {
    let mut ads = AdsServer::tcp(0).await;
    let (proxy, addr) = proxy_with_a_static_listener(&ads).await;
    let refused = || async { tokio::net::TcpStream::connect(addr).await.is_err() };
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(LISTENER).await;
    assert!(
        refused().await,
        "a static listener accepted before any xDS response"
    );
    assert_eq!(
        proxy.admin_get("/ready").await,
        (503, "PRE_INITIALIZING\n".to_string())
    );
    ads.push(CLUSTER, "1", vec![]);
    ads.next_sotw(CLUSTER).await;
    assert!(
        refused().await,
        "a static listener accepted before the first LDS response"
    );
    ads.push(LISTENER, "1", vec![]);
    ads.next_sotw(LISTENER).await;
    let mut served = false;
    for _ in 0..100 {
        if !refused().await {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "{}", proxy.stderr());
    let (status, _, body) = http_get(addr, "/", &[]).await;
    assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
    assert_eq!(proxy.admin_get("/ready").await.0, 200);
    let (_, s) = proxy
        .admin_get("/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)")
        .await;
    assert_eq!(s, "listener_manager.workers_started: 1\nserver.state: 0\n");
}

/// A first CDS or LDS response that does not come within its `initial_fetch_timeout` is
/// waited for no more, as Envoy's init manager: the listeners serve, `/ready` is LIVE and
/// each subscription counts `init_fetch_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_serve_once_the_initial_fetch_timeout_passes() {
    let ads = AdsServer::tcp(0).await;
    let yaml = bootstrap(&ads.addr, false)
        .replace("initial_fetch_timeout: 0s", "initial_fetch_timeout: 0.3s")
        + "  listeners:\n"
        + &http_listener("static", "", "xds-grpc");
    let proxy = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    assert_eq!(proxy.admin_get("/ready").await.0, 503);
    let addr = proxy.wait_listener("static").await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    assert_eq!(proxy.admin_get("/ready").await.0, 200);
    assert_eq!(
        proxy.stat("cluster_manager.cds.init_fetch_timeout").await,
        1
    );
    assert_eq!(
        proxy.stat("listener_manager.lds.init_fetch_timeout").await,
        1
    );
}

#[tokio::test]
async fn a_first_lds_response_refused_whole_still_starts_serving() {
    // As Envoy's init manager: a refused first response counts as received (Istio's
    // bootstrap waits for ever otherwise: initial_fetch_timeout 0s).
    let mut ads = AdsServer::tcp(0).await;
    let (proxy, addr) = proxy_with_a_static_listener(&ads).await;
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(LISTENER).await;
    ads.push(CLUSTER, "1", vec![]);
    ads.next_sotw(CLUSTER).await;
    // Two listeners of one name: refused whole.
    let l = rds_listener("dup", 0, "r");
    ads.push(LISTENER, "1", vec![l.clone(), l]);
    let nack = ads.next_sotw(LISTENER).await;
    let msg = nack.error_detail.expect("a NACK").message;
    assert!(msg.contains("listener 'dup' appears twice"), "{msg}");
    let mut served = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "{}", proxy.stderr());
    assert_eq!(proxy.admin_get("/ready").await.0, 200);
    assert_eq!(proxy.stat("listener_manager.lds.update_rejected").await, 1);
}

/// Many clusters, load assignments and virtual hosts: the proxy holds their encodings
/// compressed (against a dictionary of their type, or alone), so `/config_dump` must
/// give back each one as it was sent, and the routes must work after a change.
#[tokio::test]
async fn a_big_configuration_is_dumped_as_it_was_sent() {
    let backend = Backend::start("big").await;
    let mut ads = AdsServer::tcp(0).await;
    let proxy = Proxy::start(&bootstrap(&ads.addr, false), &[]).await;
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(LISTENER).await;
    let n = 300;
    let name = |i: usize| format!("outbound|80||svc-{i}.ns-{}.svc.cluster.local", i % 7);
    ads.push(
        CLUSTER,
        "c1",
        (0..n).map(|i| eds_cluster(&name(i))).collect(),
    );
    assert!(ads.next_sotw(CLUSTER).await.error_detail.is_none());
    assert_eq!(ads.next_sotw(ENDPOINT).await.resource_names.len(), n);
    let clas = (0..n).map(|i| cla(&name(i), &[backend.addr])).collect();
    ads.push(ENDPOINT, "e1", clas);
    assert!(ads.next_sotw(ENDPOINT).await.error_detail.is_none());
    ads.push(LISTENER, "l1", vec![rds_listener("l1", 0, "r1")]);
    assert!(ads.next_sotw(LISTENER).await.error_detail.is_none());
    ads.next_sotw(ROUTE).await;
    let routes = |changed: usize| {
        let hosts: Vec<String> = (0..n)
            .map(|i| {
                let header = if i == changed { "changed" } else { "same" };
                format!(
                    "{{name: 'svc-{i}:80', domains: ['svc-{i}', 'svc-{i}.ns.svc.cluster.local'], \
                     routes: [{{match: {{prefix: /}}, route: {{cluster: '{}'}}, \
                     response_headers_to_add: [{{header: {{key: x-v, value: {header}}}}}]}}]}}",
                    name(i)
                )
            })
            .collect();
        route_any(&format!(
            "{{name: r1, virtual_hosts: [{}]}}",
            hosts.join(", ")
        ))
    };
    ads.push(ROUTE, "r1", vec![routes(usize::MAX)]);
    assert!(ads.next_sotw(ROUTE).await.error_detail.is_none());
    let addr = proxy.wait_listener("l1").await;
    ads.push(ROUTE, "r2", vec![routes(n - 1)]);
    assert!(ads.next_sotw(ROUTE).await.error_detail.is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, _) =
            http_get(addr, "/", &[("host", &format!("svc-{}", n - 1))]).await;
        let v = headers
            .iter()
            .find(|(k, _)| k == "x-v")
            .map(|(_, v)| v.as_str());
        if status == 200 && v == Some("changed") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, dump) = proxy.admin_get("/config_dump?include_eds").await;
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let clusters = v["configs"][1]["dynamic_active_clusters"]
        .as_array()
        .unwrap();
    assert_eq!(clusters.len(), n);
    for c in clusters {
        let c = &c["cluster"];
        assert!(c["name"].as_str().unwrap().starts_with("outbound|80||svc-"));
        assert_eq!(c["type"], "EDS", "{c}");
        assert_eq!(c["connect_timeout"], "1s", "{c}");
    }
    let endpoints = v["configs"][2]["dynamic_endpoint_configs"]
        .as_array()
        .unwrap();
    assert_eq!(endpoints.len(), n);
    for e in endpoints {
        let lb = &e["endpoint_config"]["endpoints"][0]["lb_endpoints"][0];
        let port = &lb["endpoint"]["address"]["socket_address"]["port_value"];
        assert_eq!(port.as_u64(), Some(u64::from(backend.addr.port())), "{e}");
    }
    let rc = &v["configs"][4]["dynamic_route_configs"][0];
    assert_eq!(rc["version_info"], "r2");
    let hosts = rc["route_config"]["virtual_hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), n);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["domains"][0], format!("svc-{i}"));
        let header = &h["routes"][0]["response_headers_to_add"][0]["header"]["value"];
        assert_eq!(header, if i == n - 1 { "changed" } else { "same" });
    }
}
