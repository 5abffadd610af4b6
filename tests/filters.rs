//! Envoy's HTTP filters through the real binary, over HTTP/1.1 and HTTP/2 downstream:
//! fault (aborts, delays, header-controlled faults, per-route configuration,
//! `max_active_faults`), CORS (preflights, cross-origin responses, policies merged across
//! levels, shadow mode), local rate limits (one bucket for every core) and the chain's
//! own rules (order, disabled filters, per-route `FilterConfig`, unknown filters refused).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const CORS: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
const CORS_POLICY: &str = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
const RATELIMIT: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const FILTER_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

/// An HTTP filter list item with an inline typed_config.
fn filter(name: &str, type_url: &str, body: &str) -> String {
    let sep = if body.is_empty() { "" } else { ", " };
    format!(
        "          - name: {name}\n            typed_config: {{\"@type\": {type_url}{sep}{body}}}"
    )
}

fn hcm_auto() -> &'static str {
    "          codec_type: AUTO"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_aborts_and_delays_as_configured_per_route_and_by_header() {
    let backend = Backend::start("b").await;
    let filters = filter(
        "envoy.filters.http.fault",
        FAULT,
        "abort: {http_status: 503, percentage: {numerator: 100}}, headers: [{name: x-chaos, present_match: true}]",
    );
    let vhosts = format!(
        r#"[{{name: all, domains: ['*'], routes: [
  {{match: {{prefix: /route-abort}}, route: {{cluster: b}},
    typed_per_filter_config: {{envoy.filters.http.fault: {{"@type": {FAULT}, abort: {{http_status: 429, percentage: {{numerator: 100}}}}}}}}}},
  {{match: {{prefix: /delay}}, route: {{cluster: b}},
    typed_per_filter_config: {{envoy.filters.http.fault: {{"@type": {FAULT}, delay: {{fixed_delay: 0.3s, percentage: {{numerator: 100}}}}}}}}}},
  {{match: {{prefix: /by-header}}, route: {{cluster: b}},
    typed_per_filter_config: {{envoy.filters.http.fault: {{"@type": {FAULT}, abort: {{header_abort: {{}}, percentage: {{numerator: 100}}}}, delay: {{header_delay: {{}}, percentage: {{numerator: 100}}}}}}}}}},
  {{match: {{prefix: /off}}, route: {{cluster: b}},
    typed_per_filter_config: {{envoy.filters.http.fault: {{"@type": {FILTER_CONFIG}, disabled: true}}}}}},
  {{match: {{prefix: /}}, route: {{cluster: b}}}}]}}]"#
    );
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    for driver in drivers() {
        let proxy = Proxy::start(
            &config_with_filters(hcm_auto(), &filters, &vhosts, &clusters),
            &one_core(driver),
        )
        .await;
        let addr = proxy.addr();
        for h2 in [false, true] {
            let what = format!("{driver}, h2={h2}");
            let before = backend
                .seen
                .requests
                .load(std::sync::atomic::Ordering::SeqCst);
            // The listener's fault applies only to requests with the header.
            let (s, h, body) = send(addr, h2, "GET", "/x", &[("x-chaos", "1")]).await;
            assert_eq!(s, 503, "{what}");
            assert_eq!(body, b"fault filter abort", "{what}");
            assert_eq!(header(&h, "content-type"), Some("text/plain"), "{what}");
            let (s, _, _) = send(addr, h2, "GET", "/x", &[]).await;
            assert_eq!(s, 200, "{what}");
            // A route's configuration replaces the listener's: no header needed, its status.
            let (s, _, _) = send(addr, h2, "GET", "/route-abort", &[]).await;
            assert_eq!(s, 429, "{what}");
            // Disabled on this route: even the listener's header rule does not apply.
            let (s, _, _) = send(addr, h2, "GET", "/off", &[("x-chaos", "1")]).await;
            assert_eq!(s, 200, "{what}");
            // A fixed delay, then the upstream answers.
            let t = Instant::now();
            let (s, _, _) = send(addr, h2, "GET", "/delay", &[]).await;
            assert_eq!(s, 200, "{what}");
            assert!(t.elapsed() >= Duration::from_millis(300), "{what}");
            // Header-controlled: the delay and the status come from the request.
            let t = Instant::now();
            let (s, _, _) = send(
                addr,
                h2,
                "GET",
                "/by-header",
                &[
                    ("x-envoy-fault-delay-request", "200"),
                    ("x-envoy-fault-abort-request", "418"),
                ],
            )
            .await;
            assert_eq!(s, 418, "{what}");
            assert!(t.elapsed() >= Duration::from_millis(200), "{what}");
            // Without the headers the header-controlled fault injects nothing.
            let (s, _, _) = send(addr, h2, "GET", "/by-header", &[]).await;
            assert_eq!(s, 200, "{what}");
            // A request percentage header lowers the configured 100% to 0%.
            let (s, _, _) = send(
                addr,
                h2,
                "GET",
                "/by-header",
                &[
                    ("x-envoy-fault-abort-request", "418"),
                    ("x-envoy-fault-abort-request-percentage", "0"),
                ],
            )
            .await;
            assert_eq!(s, 200, "{what}");
            // Aborted requests never reached the upstream: 5 of the 8 did.
            let after = backend
                .seen
                .requests
                .load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(after - before, 5, "{what}");
        }
        assert_eq!(
            proxy
                .stat_reaching("http.ingress.fault.aborts_injected", 6)
                .await,
            6
        );
        assert_eq!(proxy.stat("http.ingress.fault.delays_injected").await, 4);
        assert_eq!(proxy.stat("http.ingress.fault.active_faults").await, 0);
        let (_, stats) = proxy.admin_get("/stats").await;
        assert!(
            stats.contains("http.ingress.fault.faults_overflow: 0"),
            "{stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_faults_holds_for_the_whole_proxy() {
    let backend = Backend::start("b").await;
    let filters = filter(
        "envoy.filters.http.fault",
        FAULT,
        "max_active_faults: 1, delay: {fixed_delay: 0.5s, percentage: {numerator: 100}}",
    );
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    // Two cores: the second request may land on either, the limit is the proxy's.
    let proxy = Proxy::start(
        &config_with_filters("", &filters, &all_to("b"), &clusters),
        &["--concurrency", "2", "--drain-time-s", "1"],
    )
    .await;
    let addr = proxy.addr();
    let slow = tokio::spawn(async move { http_get(addr, "/a", &[]).await.0 });
    proxy
        .stat_reaching("http.ingress.fault.active_faults", 1)
        .await;
    let t = Instant::now();
    let (s, _, _) = http_get(addr, "/b", &[]).await;
    assert_eq!(s, 200);
    // Not delayed (a delayed one takes at least 500 ms).
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(proxy.stat("http.ingress.fault.faults_overflow").await, 1);
    assert_eq!(proxy.stat("http.ingress.fault.delays_injected").await, 1);
}

/// An upstream that sets its own CORS headers (the filter overrides allow-origin).
async fn cors_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let resp = hyper::Response::builder()
                            .header("access-control-allow-origin", "upstream-value")
                            .header("x-method", req.method().as_str())
                            .body(http_body_util::Full::new(Bytes::from_static(
                                b"from upstream",
                            )))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_preflights_and_marks_cross_origin_responses() {
    let up = cors_upstream().await;
    let filters = filter("envoy.filters.http.cors", CORS, "");
    // The route's policy sets origins and credentials; the virtual host's adds methods,
    // headers and exposed headers (merged field by field); /strict refuses unmatched
    // preflights; /shadow only counts.
    let vhosts = format!(
        r#"[{{name: all, domains: ['*'],
  typed_per_filter_config: {{envoy.filters.http.cors: {{"@type": {CORS_POLICY}, allow_methods: "GET,POST", allow_headers: x-foo, expose_headers: x-bar, max_age: "600", allow_credentials: false}}}},
  routes: [
  {{match: {{prefix: /strict}}, route: {{cluster: c}},
    typed_per_filter_config: {{envoy.filters.http.cors: {{"@type": {CORS_POLICY}, allow_origin_string_match: [{{exact: "https://a.com"}}], forward_not_matching_preflights: false}}}}}},
  {{match: {{prefix: /shadow}}, route: {{cluster: c}},
    typed_per_filter_config: {{envoy.filters.http.cors: {{"@type": {CORS_POLICY}, allow_origin_string_match: [{{exact: "https://a.com"}}], filter_enabled: {{default_value: {{numerator: 0}}}}, shadow_enabled: {{default_value: {{numerator: 100}}}}}}}}}},
  {{match: {{prefix: /direct}}, direct_response: {{status: 204}},
    typed_per_filter_config: {{envoy.filters.http.cors: {{"@type": {CORS_POLICY}, allow_origin_string_match: [{{exact: "https://a.com"}}]}}}}}},
  {{match: {{prefix: /}}, route: {{cluster: c}},
    typed_per_filter_config: {{envoy.filters.http.cors: {{"@type": {CORS_POLICY}, allow_origin_string_match: [{{exact: "https://a.com"}}, {{suffix: ".b.com"}}], allow_credentials: true}}}}}}]}}]"#
    );
    let clusters = format!("[{}]", cluster("c", &[up], ""));
    for driver in drivers() {
        let proxy = Proxy::start(
            &config_with_filters(hcm_auto(), &filters, &vhosts, &clusters),
            &one_core(driver),
        )
        .await;
        let addr = proxy.addr();
        for h2 in [false, true] {
            let what = format!("{driver}, h2={h2}");
            // A preflight from an allowed origin is answered by the proxy.
            let (s, h, body) = send(
                addr,
                h2,
                "OPTIONS",
                "/api",
                &[
                    ("origin", "https://x.b.com"),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await;
            assert_eq!(s, 200, "{what}");
            assert!(body.is_empty(), "{what}");
            assert_eq!(header(&h, "x-method"), None, "{what}: answered upstream");
            assert_eq!(
                header(&h, "access-control-allow-origin"),
                Some("https://x.b.com"),
                "{what}"
            );
            assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
            assert_eq!(header(&h, "access-control-allow-methods"), Some("GET,POST"));
            assert_eq!(header(&h, "access-control-allow-headers"), Some("x-foo"));
            assert_eq!(header(&h, "access-control-max-age"), Some("600"));
            assert_eq!(header(&h, "access-control-expose-headers"), Some("x-bar"));
            // A preflight from an origin no policy allows goes to the upstream.
            let (s, h, _) = send(
                addr,
                h2,
                "OPTIONS",
                "/api",
                &[
                    ("origin", "https://evil.com"),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await;
            assert_eq!(
                (s, header(&h, "x-method")),
                (200, Some("OPTIONS")),
                "{what}"
            );
            assert_eq!(
                header(&h, "access-control-allow-origin"),
                Some("upstream-value"),
                "{what}"
            );
            // ... unless the route refuses to forward unmatched preflights.
            let (s, h, _) = send(
                addr,
                h2,
                "OPTIONS",
                "/strict",
                &[
                    ("origin", "https://evil.com"),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await;
            assert_eq!((s, header(&h, "x-method")), (200, None), "{what}");
            assert_eq!(header(&h, "access-control-allow-origin"), None, "{what}");
            assert_eq!(header(&h, "access-control-allow-methods"), Some("GET,POST"));
            // A cross-origin request: forwarded, the allowed origin replaces the upstream's.
            let (s, h, body) = send(addr, h2, "GET", "/api", &[("origin", "https://a.com")]).await;
            assert_eq!((s, &body[..]), (200, &b"from upstream"[..]), "{what}");
            assert_eq!(
                header(&h, "access-control-allow-origin"),
                Some("https://a.com"),
                "{what}"
            );
            assert_eq!(header(&h, "access-control-expose-headers"), Some("x-bar"));
            assert_eq!(header(&h, "access-control-allow-methods"), None, "{what}");
            // Origins are compared exactly (case-sensitive): no CORS headers of the proxy.
            let (_, h, _) = send(addr, h2, "GET", "/api", &[("origin", "HTTPS://A.COM")]).await;
            assert_eq!(
                header(&h, "access-control-allow-origin"),
                Some("upstream-value"),
                "{what}"
            );
            // Shadow mode counts the origin, changes nothing.
            let (_, h, _) = send(
                addr,
                h2,
                "OPTIONS",
                "/shadow",
                &[
                    ("origin", "https://a.com"),
                    ("access-control-request-method", "GET"),
                ],
            )
            .await;
            assert_eq!(header(&h, "x-method"), Some("OPTIONS"), "{what}");
            // A direct response route is not the filter's: nothing added, nothing counted.
            let (s, h, _) = send(addr, h2, "GET", "/direct", &[("origin", "https://a.com")]).await;
            assert_eq!((s, header(&h, "access-control-allow-origin")), (204, None));
        }
        // Per round: valid x.b.com, a.com, shadow a.com; invalid evil.com twice, A.COM.
        assert_eq!(
            proxy
                .stat_reaching("http.ingress.cors.origin_valid", 6)
                .await,
            6
        );
        assert_eq!(proxy.stat("http.ingress.cors.origin_invalid").await, 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rate_limit_is_one_bucket_for_every_core() {
    let backend = Backend::start("b").await;
    let filters = filter(
        "envoy.filters.http.local_ratelimit",
        RATELIMIT,
        "stat_prefix: rl, token_bucket: {max_tokens: 5, tokens_per_fill: 5, fill_interval: 3600s}, \
         filter_enabled: {default_value: {numerator: 100}}, filter_enforced: {default_value: {numerator: 100}}, \
         response_headers_to_add: [{header: {key: x-limited-by, value: ringside}}], enable_x_ratelimit_headers: DRAFT_VERSION_03",
    );
    let vhosts = format!(
        r#"[{{name: all, domains: ['*'], routes: [
  {{match: {{prefix: /free}}, route: {{cluster: b}},
    typed_per_filter_config: {{envoy.filters.http.local_ratelimit: {{"@type": {FILTER_CONFIG}, disabled: true}}}}}},
  {{match: {{prefix: /}}, route: {{cluster: b}}}}]}}]"#
    );
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    let proxy = Proxy::start(
        &config_with_filters(hcm_auto(), &filters, &vhosts, &clusters),
        &["--concurrency", "2", "--drain-time-s", "1"],
    )
    .await;
    let addr = proxy.addr();
    // Twelve connections, spread over both cores by the kernel: five requests pass.
    let mut statuses = Vec::new();
    let mut limited = None;
    for i in 0..12 {
        let (s, h, body) = send(addr, i % 2 == 1, "GET", "/x", &[]).await;
        statuses.push(s);
        if s == 200 {
            assert!(header(&h, "x-ratelimit-limit") == Some("5"), "{h:?}");
            assert!(header(&h, "x-ratelimit-remaining").is_some(), "{h:?}");
        } else {
            limited = Some((h, body));
        }
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        7,
        "{statuses:?}"
    );
    let (h, body) = limited.unwrap();
    assert_eq!(body, b"local_rate_limited");
    // Envoy's local rate limit sets no x-envoy-ratelimited (the global one does).
    assert_eq!(header(&h, "x-envoy-ratelimited"), None);
    assert_eq!(header(&h, "x-limited-by"), Some("ringside"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    // Disabled on /free.
    assert_eq!(send(addr, false, "GET", "/free", &[]).await.0, 200);
    // The connections did land on both cores (else this would not show sharing).
    let (_, workers) = proxy
        .admin_get("/stats?filter=worker_.\\.downstream_cx_total")
        .await;
    let per_core: Vec<i64> = workers
        .lines()
        .filter_map(|l| l.rsplit(": ").next()?.parse().ok())
        .collect();
    assert!(
        per_core.len() == 2 && per_core.iter().all(|&n| n > 0),
        "{workers}"
    );
    assert_eq!(proxy.stat("rl.http_local_rate_limit.enabled").await, 12);
    assert_eq!(proxy.stat("rl.http_local_rate_limit.ok").await, 5);
    assert_eq!(proxy.stat("rl.http_local_rate_limit.rate_limited").await, 7);
    assert_eq!(proxy.stat("rl.http_local_rate_limit.enforced").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_run_in_order_and_unknown_ones_are_refused_by_type() {
    let backend = Backend::start("b").await;
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    // Rate limit before fault: a limited request is never aborted by the fault filter.
    let filters = [
        filter(
            "envoy.filters.http.local_ratelimit",
            RATELIMIT,
            "stat_prefix: rl, token_bucket: {max_tokens: 1, fill_interval: 3600s}, \
             filter_enabled: {default_value: {numerator: 100}}, filter_enforced: {default_value: {numerator: 100}}",
        ),
        filter(
            "envoy.filters.http.fault",
            FAULT,
            "abort: {http_status: 503, percentage: {numerator: 100}}",
        ),
    ]
    .join("\n");
    let proxy = Proxy::start(
        &config_with_filters("", &filters, &all_to("b"), &clusters),
        &one_core("legacy"),
    )
    .await;
    assert_eq!(http_get(proxy.addr(), "/", &[]).await.0, 503);
    assert_eq!(http_get(proxy.addr(), "/", &[]).await.0, 429);
    assert_eq!(proxy.stat("http.ingress.fault.aborts_injected").await, 1);

    // A filter Ringside does not implement stops startup, named by its type.
    let unknown = filter(
        "envoy.filters.http.buffer",
        "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes: 1024",
    );
    let err = refused(&config_with_filters("", &unknown, &all_to("b"), &clusters));
    assert!(
        err.contains("envoy.extensions.filters.http.buffer.v3.Buffer"),
        "{err}"
    );
    // A field of an implemented filter that Ringside does not implement: refused by name.
    let partial = filter(
        "envoy.filters.http.fault",
        FAULT,
        "response_rate_limit: {fixed_limit: {limit_kbps: 1}, percentage: {numerator: 100}}",
    );
    let err = refused(&config_with_filters("", &partial, &all_to("b"), &clusters));
    assert!(err.contains("response_rate_limit"), "{err}");
}

/// `--mode validate` on `yaml`, which must fail: its error output.
fn refused(yaml: &str) -> String {
    let path = temp_dir().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["-c", path.to_str().unwrap(), "--mode", "validate"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "accepted:\n{yaml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
