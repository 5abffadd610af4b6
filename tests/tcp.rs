//! Opaque TCP proxying, filter chain selection and the listener filters, through the real
//! binary on loopback (the capture tests with iptables are in `sidecar.rs`).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A filter chain item whose only filter is a TCP proxy to `cluster`.
fn tcp_chain(stat_prefix: &str, cluster: &str, chain_extra: &str, proxy_extra: &str) -> String {
    format!(
        r#"{{{chain_extra} filters: [{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {stat_prefix}, cluster: {cluster} {proxy_extra}}}}}]}}"#
    )
}

fn http_chain(chain_extra: &str, cluster: &str) -> String {
    format!(
        r#"{{{chain_extra} filters: [{{name: hcm, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: sniffed_http, route_config: {{virtual_hosts: {vhosts}}}, http_filters: [{{name: router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]}}"#,
        vhosts = all_to(cluster)
    )
}

fn listener(name: &str, address: &str, extra: &str, chains: &[String]) -> String {
    format!(
        "  - name: {name}\n    address: {{socket_address: {{address: {address}, port_value: 0}}}}\n{extra}    filter_chains: [{}]\n",
        chains.join(", ")
    )
}

fn bootstrap(listeners: &[String], clusters: &[String]) -> String {
    format!(
        "static_resources:\n  listeners:\n{}  clusters: [{}]\n",
        listeners.concat(),
        clusters.join(", ")
    )
}

/// One listener `tcp` on loopback whose only chain proxies to the `echo` cluster at `echo`.
fn one_tcp_listener(stat_prefix: &str, echo: std::net::SocketAddr, proxy_extra: &str) -> String {
    bootstrap(
        &[listener(
            "tcp",
            "127.0.0.1",
            "",
            &[tcp_chain(stat_prefix, "echo", "", proxy_extra)],
        )],
        &[cluster("echo", &[echo], "")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_carries_bytes_both_ways_and_passes_half_close_on() {
    let (echo, accepted) = echo_server(local_socket());
    for driver in drivers() {
        let cfg = one_tcp_listener("echo", echo, "");
        let p = Proxy::start(&cfg, &one_core(driver)).await;
        let mut s = TcpStream::connect(p.listeners["tcp"]).await.unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&payload).await.unwrap();
        // Half-close: the upstream sees EOF, answers "bye" and closes; we still read it.
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
            .await
            .expect("the proxy passes the upstream's close on")
            .unwrap();
        assert_eq!(back.len(), payload.len() + 3, "{driver}");
        assert_eq!(&back[..payload.len()], &payload[..], "{driver}");
        assert!(back.ends_with(b"bye"));
        assert_eq!(p.stat("tcp.echo.downstream_cx_total").await, 1);
        assert_eq!(
            p.stat("tcp.echo.downstream_cx_rx_bytes_total").await,
            payload.len() as i64
        );
        assert_eq!(
            p.stat("tcp.echo.downstream_cx_tx_bytes_total").await,
            payload.len() as i64 + 3
        );
        assert_eq!(p.stat("cluster.echo.upstream_cx_total").await, 1);
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        drivers().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tcp_connections_close_after_the_idle_timeout() {
    let (echo, _) = echo_server(local_socket());
    for driver in drivers() {
        let cfg = one_tcp_listener("idle", echo, ", idle_timeout: 0.3s");
        let p = Proxy::start(&cfg, &one_core(driver)).await;
        let mut s = TcpStream::connect(p.listeners["tcp"]).await.unwrap();
        // Traffic in one direction at a time keeps the connection: 4 x 0.2 s > 0.3 s.
        for _ in 0..4 {
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("closed by the idle timeout")
            .unwrap();
        assert_eq!(p.stat("tcp.idle.idle_timeout").await, 1, "{driver}");
    }
}

fn tls_client_hello(addr: std::net::SocketAddr, sni: &str) {
    // Python's ssl module: a real TLS client's ClientHello with SNI and ALPN.
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         ctx.set_alpn_protocols(['h2', 'http/1.1'])\n\
         s = socket.create_connection(('{}', {}), timeout=5)\n\
         try:\n    ctx.wrap_socket(s, server_hostname='{sni}')\n\
         except Exception:\n    pass\n",
        addr.ip(),
        addr.port()
    );
    let st = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("python3 runs");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_are_chosen_by_destination_sni_and_sniffed_protocol() {
    let b = Backend::start("a").await;
    let (echo, _) = echo_server(local_socket());
    let (capture, captured) = capture_server(local_socket());
    let greeter = greeting_server(local_socket(), b"220 server speaks first\r\n");
    for driver in drivers() {
        let inspectors = r#"    listener_filters:
    - {name: envoy.filters.listener.tls_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    - {name: envoy.filters.listener.http_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
    listener_filters_timeout: 0s
    continue_on_listener_filters_timeout: true
"#;
        let default = format!(
            "    default_filter_chain: {}\n",
            tcp_chain("fallback", "echo", "name: fallback,", "")
        );
        let cfg = bootstrap(
            &[listener(
                "sniff",
                "0.0.0.0",
                &format!("{inspectors}{default}"),
                &[
                    tcp_chain(
                        "greeter",
                        "greeter",
                        "filter_chain_match: {prefix_ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]},",
                        "",
                    ),
                    tcp_chain(
                        "tls_passthrough",
                        "capture",
                        "filter_chain_match: {transport_protocol: tls, server_names: [secure.example]},",
                        "",
                    ),
                    http_chain(
                        "filter_chain_match: {transport_protocol: raw_buffer, application_protocols: [http/1.1, h2c]},",
                        "a",
                    ),
                ],
            )],
            &[
                cluster("a", &[b.addr], ""),
                cluster("echo", &[echo], ""),
                cluster("capture", &[capture], ""),
                cluster("greeter", &[greeter], ""),
            ],
        );
        let p = Proxy::start(&cfg, &one_core(driver)).await;
        let port = p.listeners["sniff"].port();
        let one: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        // Plain HTTP: the HTTP inspector picks the connection manager.
        let out = raw(
            one,
            b"GET /sniffed HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("upstream a /sniffed"), "{driver}: {out}");
        // TLS with the SNI: passed through untouched to the TLS chain's cluster.
        tls_client_hello(one, "secure.example");
        let first = captured
            .lock()
            .unwrap()
            .pop()
            .expect("the TLS chain was used");
        assert_eq!(&first[..2], &[0x16, 0x03], "{driver}: a ClientHello");
        assert!(first.windows(14).any(|w| w == b"secure.example"));
        // Neither TLS nor HTTP: the default chain.
        let out = raw(one, b"\x00\x01binary", Duration::from_millis(500)).await;
        assert_eq!(out, b"\x00\x01binary", "{driver}");
        // TLS for another name: no chain for it, so the default as well.
        tls_client_hello(one, "other.example");
        assert!(captured.lock().unwrap().is_empty());
        assert_eq!(p.stat("tcp.fallback.downstream_cx_total").await, 2);
        // 127.0.0.2 has a chain that needs no inspection: a server-first protocol's
        // greeting arrives although the client has sent nothing (the inspectors, with
        // no timeout, would otherwise wait for ever).
        let two: std::net::SocketAddr = ([127, 0, 0, 2], port).into();
        let mut s = TcpStream::connect(two).await.unwrap();
        let mut greeting = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting))
            .await
            .expect("the greeting is not held back by the listener filters")
            .unwrap();
        assert_eq!(&greeting, b"220 server speaks first\r\n");
        assert_eq!(p.stat("http.sniffed_http.downstream_rq_total").await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_and_unknown_clusters_close_the_connection() {
    let cfg = bootstrap(
        &[
            listener(
                "hole",
                "127.0.0.1",
                "",
                &[tcp_chain("hole", "BlackHoleCluster", "", "")],
            ),
            listener(
                "nowhere",
                "127.0.0.1",
                "",
                &[tcp_chain("nowhere", "missing", "", "")],
            ),
        ],
        &["{name: BlackHoleCluster, type: STATIC, connect_timeout: 10s}".to_string()],
    );
    let p = Proxy::start(&cfg, &one_core("legacy")).await;
    for l in ["hole", "nowhere"] {
        let mut s = TcpStream::connect(p.listeners[l]).await.unwrap();
        let _ = s.write_all(b"anything").await;
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed at once");
        assert!(rest.is_empty(), "{l}: {r:?}");
    }
    assert_eq!(
        p.stat("cluster.BlackHoleCluster.upstream_cx_none_healthy")
            .await,
        1
    );
    assert_eq!(p.stat("tcp.nowhere.downstream_cx_no_route").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chain_matcher_picks_chains_by_ip_and_application_protocol() {
    let b = Backend::start("a").await;
    let (echo, _) = echo_server(local_socket());
    let greeter = greeting_server(local_socket(), b"hi\r\n");
    // The shape istiod emits for waypoints: an IPMatcher on the destination, then a
    // nested matcher; actions are StringValues naming chains.
    let matcher = r#"    listener_filters:
    - {name: envoy.filters.listener.http_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}}
    listener_filters_timeout: 0s
    filter_chain_matcher:
      matcher_tree:
        input: {name: ip, typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput}}
        custom_match:
          name: ip
          typed_config:
            "@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
            range_matchers:
            - ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]
              on_match: {action: {name: greeter, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: greeter}}}
      on_no_match:
        matcher:
          matcher_tree:
            input: {name: alpn, typed_config: {"@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.ApplicationProtocolInput}}
            exact_match_map:
              map:
                "'http/1.1'": {action: {name: http, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: http}}}
          on_no_match: {action: {name: tcp, typed_config: {"@type": type.googleapis.com/google.protobuf.StringValue, value: tcp}}}
"#;
    for driver in drivers() {
        let cfg = bootstrap(
            &[listener(
                "m",
                "0.0.0.0",
                matcher,
                &[
                    tcp_chain("greeter", "greeter", "name: greeter,", ""),
                    http_chain("name: http,", "a"),
                    tcp_chain("other", "echo", "name: tcp,", ""),
                ],
            )],
            &[
                cluster("a", &[b.addr], ""),
                cluster("echo", &[echo], ""),
                cluster("greeter", &[greeter], ""),
            ],
        );
        let p = Proxy::start(&cfg, &one_core(driver)).await;
        let port = p.listeners["m"].port();
        let one: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let out = raw(
            one,
            b"GET /matched HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(3),
        )
        .await;
        assert!(
            String::from_utf8_lossy(&out).contains("upstream a /matched"),
            "{driver}"
        );
        assert_eq!(
            raw(one, b"\x05opaque", Duration::from_millis(500)).await,
            b"\x05opaque"
        );
        // 127.0.0.2 is decided by its address alone: no bytes needed.
        let mut s = TcpStream::connect(("127.0.0.2", port)).await.unwrap();
        let mut hi = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hi))
            .await
            .expect("not held back")
            .unwrap();
        assert_eq!(&hi, b"hi\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_dst_never_loops_back_to_the_accepting_listener() {
    // Connected to directly (not redirected), the destination is the listener itself:
    // both the TCP proxy and an HTTP route to an ORIGINAL_DST cluster refuse it.
    let cfg = bootstrap(
        &[
            listener(
                "tcp",
                "127.0.0.1",
                "    use_original_dst: true\n",
                &[tcp_chain("passthrough", "PassthroughCluster", "", "")],
            ),
            listener(
                "http",
                "127.0.0.1",
                "    use_original_dst: true\n",
                &[http_chain("", "PassthroughCluster")],
            ),
        ],
        &["{name: PassthroughCluster, type: ORIGINAL_DST, lb_policy: CLUSTER_PROVIDED, connect_timeout: 1s}".to_string()],
    );
    let p = Proxy::start(&cfg, &one_core("legacy")).await;
    let out = raw(p.listeners["tcp"], b"x", Duration::from_secs(2)).await;
    assert!(out.is_empty());
    let out = raw(
        p.listeners["http"],
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out} {}", p.stderr());
    assert_eq!(
        p.stat("cluster.PassthroughCluster.upstream_cx_none_healthy")
            .await,
        2
    );
    assert_eq!(
        p.stat("cluster.PassthroughCluster.upstream_cx_total").await,
        0
    );
}
