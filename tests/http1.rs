//! HTTP/1.1 proxying through the real binary, on both io drivers.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn args(driver: &str) -> Vec<&str> {
    vec![
        "--concurrency",
        "1",
        "--io-driver",
        driver,
        "--drain-time-s",
        "5",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_get_and_sets_envoy_headers() {
    for driver in drivers() {
        let (b, p) = proxy_to_one_backend("", &args(driver)).await;
        let (status, headers, body) = http_get(
            p.addr(),
            "/hello?x=1",
            &[
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "x"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{driver}");
        assert_eq!(body, b"upstream a /hello");
        assert_eq!(header(&headers, "server"), Some("envoy"));
        assert!(header(&headers, "x-envoy-upstream-service-time").is_some());
        let seen = &b.seen;
        assert_eq!(seen.header("host").as_deref(), Some("example.com"));
        assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
        assert_eq!(
            seen.header("x-envoy-expected-rq-timeout-ms").as_deref(),
            Some("15000")
        );
        assert_eq!(seen.header("x-request-id").map(|v| v.len()), Some(36));
        assert_eq!(*seen.last_uri.lock().unwrap(), "/hello?x=1");
        for hop in ["keep-alive", "proxy-connection", "connection"] {
            assert_eq!(seen.header(hop), None, "{hop} must not cross the hop");
        }
        // Without use_remote_address, x-forwarded-for is left alone.
        assert_eq!(seen.header("x-forwarded-for"), None);
        assert_eq!(p.stat("http.ingress.downstream_rq_2xx").await, 1);
        assert_eq!(p.stat("cluster.a.upstream_rq_total").await, 1);
        // Per-code and per-class counters, and their Prometheus form, as Envoy's.
        http_get(p.addr(), "/status/404", &[]).await;
        assert_eq!(p.stat("cluster.a.upstream_rq_200").await, 1, "{driver}");
        assert_eq!(p.stat_reaching("cluster.a.upstream_rq_404", 1).await, 1);
        assert_eq!(p.stat("cluster.a.upstream_rq_4xx").await, 1);
        let (_, prom) = p.admin_get("/stats/prometheus").await;
        for line in [
            "envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"a\"} 1",
            "envoy_cluster_upstream_rq{envoy_response_code=\"404\",envoy_cluster_name=\"a\"} 1",
            "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"a\"} 1",
            "envoy_http_downstream_rq_xx{envoy_response_code_class=\"4\",envoy_http_conn_manager_prefix=\"ingress\"} 1",
        ] {
            assert!(prom.contains(line), "{driver}: no {line} in\n{prom}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reuses_upstream_connections() {
    for driver in drivers() {
        let (b, p) = proxy_to_one_backend("", &args(driver)).await;
        for _ in 0..20 {
            let (s, _, _) = http_get(p.addr(), "/x", &[]).await;
            assert_eq!(s, 200);
        }
        assert_eq!(b.seen.requests.load(Ordering::SeqCst), 20);
        assert_eq!(
            b.seen.connections.load(Ordering::SeqCst),
            1,
            "{driver}: 20 requests over one pooled connection"
        );
        assert_eq!(p.stat("cluster.a.upstream_cx_total").await, 1);
        assert_eq!(p.stat("http.ingress.downstream_cx_total").await, 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    for driver in drivers() {
        let (_b, p) = proxy_to_one_backend("", &args(driver)).await;
        let reqs = b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nPOST /count HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let out = String::from_utf8(raw(p.addr(), reqs, Duration::from_secs(5)).await).unwrap();
        let one = out.find("upstream a /one").expect(&out);
        let two = out.find("\r\n\r\n5").expect(&out);
        let three = out.find("upstream a /three").expect(&out);
        assert!(one < two && two < three, "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_is_refused_unless_accepted() {
    for driver in drivers() {
        let b = Backend::start("a").await;
        let c = format!("[{}]", cluster("a", &[b.addr], ""));
        let p = Proxy::start(&config("", &all_to("a"), &c), &args(driver)).await;
        let out = String::from_utf8(
            raw(p.addr(), b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(2)).await,
        )
        .unwrap();
        assert!(out.starts_with("HTTP/1.1 426 Upgrade Required"), "{out}");
        drop(p);
        let extra = "          http_protocol_options: {accept_http_10: true, default_host_for_http_10: legacy.local}";
        let p = Proxy::start(&config(extra, &all_to("a"), &c), &args(driver)).await;
        let out = String::from_utf8(
            raw(
                p.addr(),
                b"GET /old HTTP/1.0\r\n\r\n",
                Duration::from_secs(2),
            )
            .await,
        )
        .unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("upstream a /old"), "{out}");
        assert_eq!(b.seen.header("host").as_deref(), Some("legacy.local"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_head_204_and_304() {
    for driver in drivers() {
        let (b, p) = proxy_to_one_backend("", &args(driver)).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(
            b"POST /count HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let interim = read_all(&mut s, Duration::from_millis(500)).await;
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n", "{driver}");
        s.write_all(b"abcd").await.unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_millis(500)).await).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("\r\n\r\n4"),
            "{out}"
        );
        assert_eq!(b.seen.header("expect"), None);

        let out = String::from_utf8(
            raw(
                p.addr(),
                b"HEAD /bytes/100 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                Duration::from_secs(2),
            )
            .await,
        )
        .unwrap();
        assert!(
            out.contains("content-length: 100\r\n") && out.ends_with("\r\n\r\n"),
            "{out}"
        );
        for code in [204, 304] {
            let req = format!("GET /status/{code} HTTP/1.1\r\nHost: h\r\n\r\nGET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
            let out =
                String::from_utf8(raw(p.addr(), req.as_bytes(), Duration::from_secs(2)).await)
                    .unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {code}")), "{out}");
            assert!(
                out.ends_with("upstream a /after"),
                "a bodiless {code} keeps the connection usable: {out}"
            );
        }
    }
}

/// Heads and bodies that arrive in several reads, on both sides (a slow client, headers
/// across TCP segments, a chunk header split from its data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_and_bodies_split_across_reads() {
    // An upstream that answers in pieces.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                // Request head plus the body, re-framed by the proxy: chunk boundaries are
                // its own, the payload is the client's.
                let body_at = loop {
                    use tokio::io::AsyncReadExt;
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        if seen[end + 4..].ends_with(b"0\r\n\r\n") {
                            break end + 4;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                };
                let body = dechunk(&seen[body_at..]) == b"abcdefg";
                let answer = if body { "yes" } else { "no!" };
                for piece in [
                    "HTTP/1.1 200 OK\r\nContent-",
                    "Length: 3\r\nX-Up: 1\r",
                    &format!("\n\r\n{answer}"),
                ] {
                    s.write_all(piece.as_bytes()).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
            });
        }
    });
    for driver in drivers() {
        let p = proxy_to("", "up", up_addr, &args(driver)).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        for piece in [
            &b"POST /split HTTP/1.1\r\nHo"[..],
            b"st: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n",
            b"\r\n4\r",
            b"\nab",
            b"cd\r\n3\r\nefg\r\n0\r\n",
            b"\r\n",
        ] {
            s.write_all(piece).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        let out = String::from_utf8(read_all(&mut s, Duration::from_secs(3)).await).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{driver}: {out}");
        assert!(out.contains("x-up: 1\r\n"), "{driver}: {out}");
        assert!(out.ends_with("\r\n\r\nyes"), "{driver}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_both_ways() {
    for driver in drivers() {
        let (_b, p) = proxy_to_one_backend("", &args(driver)).await;
        let req = b"POST /count HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET /chunked/70000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let out = raw(p.addr(), req, Duration::from_secs(2)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains("\r\n\r\n5HTTP/1.1 200 OK"),
            "{driver}: {}",
            &text[..text.len().min(700)]
        );
        assert!(
            text.contains("transfer-encoding: chunked"),
            "{}",
            &text[..400]
        );
        assert!(text.ends_with("0\r\n\r\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_remote_address_appends_xff_and_regenerates_an_external_request_id() {
    for driver in drivers() {
        let extra = "          use_remote_address: true\n          via: ringside-test";
        let (b, p) = proxy_to_one_backend(extra, &args(driver)).await;
        let (s, h, _) = http_get(
            p.addr(),
            "/",
            &[
                ("x-forwarded-for", "10.0.0.9"),
                ("x-request-id", "keep-me"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
        assert_eq!(s, 200);
        // A loopback peer is recorded as the host's own address, as Envoy does.
        let host = ringside::io::host_address(false)
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(
            b.seen.header("x-forwarded-for"),
            Some(format!("10.0.0.9,{host}"))
        );
        assert_eq!(
            b.seen.header("x-forwarded-proto").as_deref(),
            Some("http"),
            "the edge overwrites x-forwarded-proto"
        );
        assert_ne!(
            b.seen.header("x-request-id").as_deref(),
            Some("keep-me"),
            "no address is internal by default: an edge request's id is regenerated"
        );
        assert_eq!(b.seen.header("x-envoy-internal"), None);
        assert_eq!(
            b.seen.header("x-envoy-external-address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(b.seen.header("via").as_deref(), Some("ringside-test"));
        assert_eq!(header(&h, "via"), Some("ringside-test"));

        // Listed in internal_address_config, loopback is internal: its id and its
        // x-envoy-* headers are kept, and the upstream is told.
        let extra = "          use_remote_address: true\n          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}";
        let (b, p) = proxy_to_one_backend(extra, &args(driver)).await;
        let (s, _, _) = http_get(
            p.addr(),
            "/",
            &[("x-request-id", "keep-me"), ("x-envoy-max-retries", "2")],
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(b.seen.header("x-request-id").as_deref(), Some("keep-me"));
        assert_eq!(b.seen.header("x-envoy-internal").as_deref(), Some("true"));
        assert_eq!(b.seen.header("x-envoy-max-retries").as_deref(), Some("2"));
        assert_eq!(b.seen.header("x-envoy-external-address"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_actions_and_header_mutations() {
    for driver in drivers() {
        let a = Backend::start("a").await;
        let bb = Backend::start("b").await;
        let vhosts = r#"
            [{name: api, domains: [api.example.com, 'api.example.com:*'],
              request_headers_to_add: [{header: {key: x-vhost, value: v}}],
              routes: [{match: {prefix: /}, route: {cluster: b}}]},
             {name: all, domains: ['*'],
              response_headers_to_add: [{header: {key: x-vhost-resp, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}],
              routes: [
               {match: {prefix: /canary, headers: [{name: x-canary, string_match: {exact: 'yes'}}]}, route: {cluster: b}},
               {match: {prefix: /api/, query_parameters: [{name: v, string_match: {exact: '2'}}]}, route: {cluster: b, prefix_rewrite: /v2/}},
               {match: {prefix: /api/}, route: {cluster: a, prefix_rewrite: /, host_rewrite_literal: rewritten.local},
                request_headers_to_add: [{header: {key: x-added, value: one}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}],
                request_headers_to_remove: [x-secret],
                response_headers_to_add: [{header: {key: x-route, value: api}}],
                response_headers_to_remove: [x-upstream-only]},
               {match: {path: /old}, redirect: {path_redirect: /new, response_code: PERMANENT_REDIRECT}},
               {match: {path: /secure}, redirect: {https_redirect: true}},
               {match: {path: /direct}, direct_response: {status: 418, body: {inline_string: teapot}}},
               {match: {prefix: /split}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 1}]}}},
               {match: {prefix: /}, route: {cluster: a}}]}]"#;
        let clusters = format!(
            "[{}, {}]",
            cluster("a", &[a.addr], ""),
            cluster("b", &[bb.addr], "")
        );
        let p = Proxy::start(&config("", vhosts, &clusters), &args(driver)).await;
        let addr = p.addr();
        let (_, _, body) = request(
            addr,
            "GET",
            "http://api.example.com:8080/z",
            &[],
            Bytes::new(),
        )
        .await;
        assert_eq!(
            body, b"upstream b /z",
            "{driver}: vhost by host, port ignored"
        );
        assert_eq!(bb.seen.header("x-vhost").as_deref(), Some("v"));
        let (_, _, body) = http_get(addr, "/canary", &[("x-canary", "yes")]).await;
        assert_eq!(body, b"upstream b /canary");
        let (_, _, body) = http_get(addr, "/canary", &[("x-canary", "no")]).await;
        assert_eq!(body, b"upstream a /canary");
        let (_, _, body) = http_get(addr, "/api/items?v=2", &[]).await;
        assert_eq!(body, b"upstream b /v2/items");
        let (_, h, body) =
            http_get(addr, "/api/items", &[("x-added", "old"), ("x-secret", "s")]).await;
        assert_eq!(body, b"upstream a /items");
        assert_eq!(a.seen.header("host").as_deref(), Some("rewritten.local"));
        assert_eq!(a.seen.headers_named("x-added"), vec!["one".to_string()]);
        assert_eq!(a.seen.header("x-secret"), None);
        assert_eq!(
            a.seen.header("x-envoy-original-path").as_deref(),
            Some("/api/items")
        );
        assert_eq!(header(&h, "x-route"), Some("api"));
        assert_eq!(header(&h, "x-vhost-resp"), Some("127.0.0.1"));
        let (s, h, _) = http_get(addr, "/old?q=1", &[]).await;
        assert_eq!(
            (s, header(&h, "location")),
            (308, Some("http://example.com/new?q=1"))
        );
        let (s, h, _) = http_get(addr, "/secure", &[]).await;
        assert_eq!(
            (s, header(&h, "location")),
            (301, Some("https://example.com/secure"))
        );
        let (s, _, body) = http_get(addr, "/direct", &[]).await;
        assert_eq!((s, body.as_slice()), (418, &b"teapot"[..]));
        let mut seen_a = 0;
        for _ in 0..40 {
            let (_, _, body) = http_get(addr, "/split", &[]).await;
            if body.starts_with(b"upstream a") {
                seen_a += 1;
            }
        }
        assert!(
            (5..=35).contains(&seen_a),
            "weighted 1:1 split gave {seen_a}/40 to a"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_answered_as_envoy_does() {
    for driver in drivers() {
        let b = Backend::start("a").await;
        let (_refusing, closed) = refusing_addr();
        let vhosts = r#"[{name: v, domains: [known.host], routes: [
              {match: {prefix: /down}, route: {cluster: down}},
              {match: {prefix: /sleep}, route: {cluster: a, timeout: 0.2s}},
              {match: {prefix: /}, route: {cluster: a}}]}]"#;
        let clusters = format!(
            "[{}, {}]",
            cluster("a", &[b.addr], ""),
            cluster("down", &[closed], "")
        );
        let extra = "          max_request_headers_kb: 2";
        let p = Proxy::start(&config(extra, vhosts, &clusters), &args(driver)).await;
        let addr = p.addr();
        let (s, _, body) = http_get(addr, "/", &[]).await;
        assert_eq!(s, 404, "{driver}: no virtual host for example.com");
        assert_eq!(body, b"", "{driver}: Envoy's 404 has no body");
        let (s, _, body) = request(
            addr,
            "GET",
            "/down",
            &[("host", "known.host")],
            Bytes::new(),
        )
        .await;
        assert_eq!(s, 503);
        assert_eq!(String::from_utf8_lossy(&body), "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure");
        let out = String::from_utf8(
            raw(
                addr,
                b"GET /sleep/2000 HTTP/1.1\r\nHost: known.host\r\n\r\n",
                Duration::from_secs(3),
            )
            .await,
        )
        .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 504 Gateway Timeout")
                && out.ends_with("upstream request timeout"),
            "{out}"
        );
        let out = String::from_utf8(
            raw(
                addr,
                b"GET / HTTP/1.1\r\nHost: known.host\r\nContent-Length: x\r\n\r\n",
                Duration::from_secs(2),
            )
            .await,
        )
        .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request") && out.contains("connection: close"),
            "{out}"
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: known.host\r\nx-big: {}\r\n\r\n",
            "a".repeat(4096)
        );
        let out =
            String::from_utf8(raw(addr, big.as_bytes(), Duration::from_secs(2)).await).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
            "{out}"
        );
        let out = String::from_utf8(
            raw(
                addr,
                b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
                Duration::from_secs(2),
            )
            .await,
        )
        .unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert_eq!(p.stat("http.ingress.no_route").await, 1);
        assert_eq!(p.stat("cluster.down.upstream_cx_connect_fail").await, 1);
        assert_eq!(p.stat("cluster.a.upstream_rq_timeout").await, 1);
        assert_eq!(p.stat("http.ingress.downstream_rq_too_large").await, 1);
        assert!(p.stat("http.ingress.downstream_cx_protocol_error").await >= 2);
        assert_eq!(p.stat("http.ingress.downstream_rq_5xx").await, 2);
        assert_eq!(p.stat("http.ingress.downstream_rq_4xx").await, 4);
        // The proxy still serves after all that.
        let (s, _, _) = request(
            addr,
            "GET",
            "/fine",
            &[("host", "known.host")],
            Bytes::new(),
        )
        .await;
        assert_eq!(s, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_core_accepts() {
    for driver in drivers() {
        let b = Backend::start("a").await;
        let a = ["--concurrency", "2", "--io-driver", driver];
        let p = Proxy::start(
            &config(
                "",
                &all_to("a"),
                &format!("[{}]", cluster("a", &[b.addr], "")),
            ),
            &a,
        )
        .await;
        for _ in 0..64 {
            let (s, _, _) = http_get(p.addr(), "/", &[]).await;
            assert_eq!(s, 200);
        }
        let w0 = p
            .stat("listener.127.0.0.1_0.worker_0.downstream_cx_total")
            .await;
        let w1 = p
            .stat("listener.127.0.0.1_0.worker_1.downstream_cx_total")
            .await;
        assert_eq!(w0 + w1, 64, "{driver}");
        assert!(
            w0 > 0 && w1 > 0,
            "SO_REUSEPORT spreads connections over both cores: {w0} / {w1}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let (_b, p) = proxy_to_one_backend("", &["--concurrency", "1"]).await;
    assert_eq!(p.admin_get("/ready").await, (200, "LIVE\n".to_string()));
    let (s, dump) = p.admin_get("/config_dump").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let configs = v["configs"].as_array().unwrap();
    assert_eq!(
        configs[0]["@type"],
        "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump"
    );
    let listeners = configs
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.ListenersConfigDump")
        .unwrap();
    assert_eq!(listeners["static_listeners"][0]["listener"]["name"], "main");
    assert_eq!(listeners["version_info"], "", "no LDS version without xDS");
    let (s, info) = p.admin_get("/server_info").await;
    assert_eq!(s, 200);
    assert!(info.contains("\"state\": \"LIVE\""), "{info}");
    let (_, prom) = p.admin_get("/stats/prometheus").await;
    assert!(
        prom.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 0"),
        "{prom}"
    );
    // Envoy's /memory keys (from mimalloc here) and its /init_dump answer.
    let (s, mem) = p.admin_get("/memory").await;
    assert_eq!(s, 200);
    let mem: serde_json::Value = serde_json::from_str(&mem).unwrap();
    let n = |k: &str| mem[k].as_str().unwrap().parse::<u64>().unwrap();
    assert!(
        n("allocated") > 0 && n("heap_size") >= n("allocated"),
        "{mem}"
    );
    assert!(n("total_physical_bytes") > 1 << 20, "{mem}");
    assert_eq!(p.admin_get("/init_dump").await, (200, "{}".to_string()));
    let (s, _) = p.admin_get("/nope").await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_use_envoys_default_format() {
    let b = Backend::start("a").await;
    let extra = r#"          access_log:
          - name: envoy.access_loggers.stdout
            typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}"#;
    let p = Proxy::start(
        &config(
            extra,
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], "")),
        ),
        &["--concurrency", "1"],
    )
    .await;
    http_get(p.addr(), "/logged", &[("user-agent", "test-agent")]).await;
    let mut line = String::new();
    for _ in 0..50 {
        line = p.stdout();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        line.contains("\"GET /logged HTTP/1.1\" 200 - 0 18 "),
        "{line}"
    );
    assert!(line.contains("\"test-agent\""), "{line}");
    assert!(
        line.trim_end()
            .ends_with(&format!("\"example.com\" \"{}\"", b.addr)),
        "{line}"
    );
    // Response flags as Envoy prints them: a refused head is DPE.
    raw(
        p.addr(),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    let mut log = String::new();
    for _ in 0..50 {
        log = p.stdout();
        if log.lines().count() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = log.lines().nth(1).unwrap_or_default();
    assert!(second.contains("\" 400 DPE "), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_is_a_503_and_counted() {
    // A listener that never accepts, its backlog filled: further SYNs are dropped, so a
    // connect can only time out.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let full: std::net::SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full)).await
        {
            fillers.push(s);
        }
    }
    for driver in drivers() {
        let c =
            cluster("slow", &[full], "").replace("connect_timeout: 1s", "connect_timeout: 0.25s");
        let p = Proxy::start(
            &config("", &all_to("slow"), &format!("[{c}]")),
            &args(driver),
        )
        .await;
        let started = std::time::Instant::now();
        let (s, _, _) = http_get(p.addr(), "/", &[]).await;
        assert_eq!(s, 503, "{driver}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            p.stat("cluster.slow.upstream_cx_connect_timeout").await,
            1,
            "{driver}"
        );
    }
    drop(fillers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_retried_transparently() {
    // An upstream that answers one request per connection and then closes it without
    // saying so: the proxy pools the connection, finds it dead on reuse, and retries.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = read_all_until(&mut s, b"\r\n\r\n").await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(s);
            });
        }
    });
    for driver in drivers() {
        let p = proxy_to("", "a", addr, &args(driver)).await;
        for i in 0..5 {
            let (s, _, body) = http_get(p.addr(), "/", &[]).await;
            assert_eq!(
                (s, body.as_slice()),
                (200, &b"ok"[..]),
                "{driver} request {i}"
            );
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        assert!(p.stat("cluster.a.upstream_rq_retry").await >= 4, "{driver}");
    }
}

async fn read_all_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(end.len()).any(|w| w == end) {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_balance_spreads_a_handful_of_long_lived_connections() {
    for driver in drivers() {
        let b = Backend::start("a").await;
        let yaml = config(
            "",
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], "")),
        )
        .replace(
            "    filter_chains:\n",
            "    connection_balance_config: {exact_balance: {}}\n    filter_chains:\n",
        );
        let p = Proxy::start(&yaml, &["--concurrency", "2", "--io-driver", driver]).await;
        let mut conns = Vec::new();
        for _ in 0..6 {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
            let out = read_all(&mut s, Duration::from_millis(200)).await;
            assert!(out.starts_with(b"HTTP/1.1 200"), "{driver}");
            conns.push(s);
        }
        let w0 = p
            .stat("listener.127.0.0.1_0.worker_0.downstream_cx_active")
            .await;
        let w1 = p
            .stat("listener.127.0.0.1_0.worker_1.downstream_cx_active")
            .await;
        assert_eq!(
            (w0, w1),
            (3, 3),
            "{driver}: six long-lived connections, three per core"
        );
        // Closing some rebalances the next ones onto the emptier core.
        conns.truncate(2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..4 {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
            read_all(&mut s, Duration::from_millis(200)).await;
            conns.push(s);
        }
        let w0 = p
            .stat("listener.127.0.0.1_0.worker_0.downstream_cx_active")
            .await;
        let w1 = p
            .stat("listener.127.0.0.1_0.worker_1.downstream_cx_active")
            .await;
        assert_eq!((w0, w1), (3, 3), "{driver}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthesized_host_and_path_do_not_leak_into_pipelined_requests() {
    for driver in drivers() {
        let extra = "          http_protocol_options: {accept_http_10: true, default_host_for_http_10: legacy.local}";
        let (b, p) = proxy_to_one_backend(extra, &args(driver)).await;
        // An HTTP/1.0 request without Host (the default host is filled in) and an
        // absolute-form request without a path (`/` is implied), pipelined; then, on the same
        // connection, one more request that must arrive intact.
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"POST /count HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabcGET http://abs.host HTTP/1.1\r\nHost: abs.host\r\n\r\n")
            .await
            .unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_millis(500)).await).unwrap();
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{driver}: {out}");
        assert!(
            out.contains("\r\n\r\n3HTTP/1.1 200 OK"),
            "{driver}: the body is exactly 3 bytes: {out}"
        );
        assert!(out.ends_with("upstream a /"), "{driver}: {out}");
        assert_eq!(b.seen.header("host").as_deref(), Some("abs.host"));
        s.write_all(b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_secs(2)).await).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK") && out.ends_with("upstream a /after"),
            "{driver}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_bounds_http1_exchanges() {
    let backend = Backend::start("web").await;
    for driver in drivers() {
        let clusters = format!("[{}]", cluster("web", &[backend.addr], ""));
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {prefix: /}, route: {cluster: web, timeout: 0.05s, max_stream_duration: {max_stream_duration: 0.3s}}}]}]";
        let p = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
        // The 50 ms route timeout no longer applies (Envoy's new timeouts) ...
        let (status, _, body) = http_get(p.addr(), "/sleep/100", &[]).await;
        assert_eq!(status, 200, "{driver}: {}", String::from_utf8_lossy(&body));
        // ... the stream's 300 ms limit does: 504 with Envoy's text, and the stat.
        let (status, _, body) = http_get(p.addr(), "/sleep/2000", &[]).await;
        assert_eq!(status, 504, "{driver}");
        assert_eq!(body, b"downstream duration timeout");
        assert_eq!(
            p.stat("http.ingress.downstream_rq_max_duration_reached")
                .await,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_timeout_runs_from_the_heads_first_byte() {
    for driver in drivers() {
        let extra = "          request_headers_timeout: 0.4s";
        let (_b, p) = proxy_to_one_backend(extra, &args(driver)).await;
        // A connection that stays silent longer than the timeout is not cut by it (Envoy
        // arms it at the first byte of a head), and a request after a keep-alive gap longer
        // than the timeout goes through.
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.write_all(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_millis(300)).await).unwrap();
        assert!(out.ends_with("upstream a /one"), "{driver}: {out}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        // A head that trickles in and never ends: 408 with Envoy's text, then close.
        s.write_all(b"GET /two HTTP/1.1\r\nHo").await.unwrap();
        let started = std::time::Instant::now();
        let out = String::from_utf8(read_all(&mut s, Duration::from_secs(3)).await).unwrap();
        assert!(out.starts_with("HTTP/1.1 408"), "{driver}: {out}");
        assert!(
            out.ends_with("\r\n\r\nrequest header timeout"),
            "{driver}: {out}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_millis(2500),
            "{driver}: 408 after {waited:?}"
        );
        assert_eq!(
            p.stat("http.ingress.downstream_rq_header_timeout").await,
            1,
            "{driver}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_head_after_a_good_request_gets_400_not_the_previous_heads_view() {
    for driver in drivers() {
        let (_b, p) = proxy_to_one_backend("", &args(driver)).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"HEAD /one HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_millis(300)).await).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{driver}: {out}");
        // One byte that cannot start a request: the answer is a 400 with its body (the
        // previous request was a HEAD; this one is not).
        s.write_all(b"\x01").await.unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_secs(2)).await).unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{driver}: {out}");
        assert!(out.contains("connection: close"), "{driver}: {out}");
        assert!(
            !out.ends_with("\r\n\r\n"),
            "{driver}: a body follows: {out}"
        );
        assert_eq!(
            p.stat("http.ingress.downstream_rq_4xx").await,
            1,
            "{driver}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_earlier_of_route_timeout_and_stream_idle_timeout_ends_a_slow_response() {
    let backend = Backend::start("web").await;
    for driver in drivers() {
        let clusters = format!("[{}]", cluster("web", &[backend.addr], ""));
        // Idle limit first: 300 ms of silence from the upstream, long before the 5 s route
        // timeout.
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {prefix: /}, route: {cluster: web, timeout: 5s}}]}]";
        let p = Proxy::start(
            &config("          stream_idle_timeout: 0.3s", vhosts, &clusters),
            &one_core(driver),
        )
        .await;
        let started = std::time::Instant::now();
        let (status, _, body) = http_get(p.addr(), "/sleep/2000", &[]).await;
        assert_eq!(status, 504, "{driver}");
        assert_eq!(body, b"stream timeout", "{driver}");
        assert!(started.elapsed() < Duration::from_millis(1500), "{driver}");
        assert_eq!(p.stat("http.ingress.downstream_rq_idle_timeout").await, 1);
        drop(p);
        // Route timeout first: 200 ms, with a 5 s idle limit.
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {prefix: /}, route: {cluster: web, timeout: 0.2s}}]}]";
        let p = Proxy::start(
            &config("          stream_idle_timeout: 5s", vhosts, &clusters),
            &one_core(driver),
        )
        .await;
        let started = std::time::Instant::now();
        let (status, _, body) = http_get(p.addr(), "/sleep/2000", &[]).await;
        assert_eq!(status, 504, "{driver}");
        assert_eq!(body, b"upstream request timeout", "{driver}");
        assert!(started.elapsed() < Duration::from_millis(1500), "{driver}");
        assert_eq!(p.stat("cluster.web.upstream_rq_timeout").await, 1);
    }
}
