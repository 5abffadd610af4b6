//! Retries (`retry_policy`), over every codec pairing: what the client gets, what the
//! upstream saw (each attempt, its `x-envoy-attempt-count` and the replayed body) and the
//! cluster's retry counters.

// The test upstreams run on tokio threads: a Mutex is right there.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// How a scripted upstream fails its first attempts.
#[derive(Clone, Copy)]
enum Fail {
    /// Answers this status (body "failed").
    Status(u16),
    /// Answers a gRPC trailers-only response with this `grpc-status`.
    Grpc(u32),
    /// Waits this long before answering 200.
    Slow(u64),
}

/// What the scripted upstream saw.
#[derive(Default)]
struct Script {
    requests: AtomicUsize,
    /// `x-envoy-attempt-count` of each request.
    attempts: Mutex<Vec<String>>,
    /// Body length of each request.
    bodies: Mutex<Vec<usize>>,
    /// Requests that arrived with `x-envoy-retry-on`.
    leaked: AtomicUsize,
}

/// An upstream (HTTP/2 when `h2`, else HTTP/1.1) whose first `fails` requests fail as
/// `how`; later ones answer 200 "ok <body length>".
async fn scripted(h2: bool, fails: usize, how: Fail) -> (SocketAddr, Arc<Script>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = Arc::new(Script::default());
    let s = script.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                if h2 {
                    serve_h2(tcp, s, fails, how).await
                } else {
                    serve_h1(tcp, s, fails, how).await
                }
            });
        }
    });
    (addr, script)
}

/// Counts a request: whether it fails.
fn note(s: &Script, attempt: Option<String>, body: usize, fails: usize) -> bool {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    s.attempts.lock().unwrap().push(attempt.unwrap_or_default());
    s.bodies.lock().unwrap().push(body);
    n < fails
}

async fn serve_h1(tcp: TcpStream, s: Arc<Script>, fails: usize, how: Fail) {
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let s = s.clone();
        async move {
            let attempt = req
                .headers()
                .get("x-envoy-attempt-count")
                .map(|v| v.to_str().unwrap().to_string());
            if req.headers().contains_key("x-envoy-retry-on") {
                s.leaked.fetch_add(1, Ordering::SeqCst);
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let fail = note(&s, attempt, body.len(), fails);
            let resp = match (fail, how) {
                (true, Fail::Status(code)) => http::Response::builder()
                    .status(code)
                    .body(Full::new(Bytes::from_static(b"failed"))),
                (true, Fail::Slow(ms)) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    http::Response::builder().body(Full::new(Bytes::from_static(b"slow")))
                }
                (true, Fail::Grpc(code)) => http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code.to_string())
                    .body(Full::new(Bytes::new())),
                (false, _) => http::Response::builder()
                    .body(Full::new(Bytes::from(format!("ok {}", body.len())))),
            };
            Ok::<_, std::convert::Infallible>(resp.unwrap())
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

async fn serve_h2(tcp: TcpStream, s: Arc<Script>, fails: usize, how: Fail) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let s = s.clone();
        tokio::spawn(async move {
            let attempt = req
                .headers()
                .get("x-envoy-attempt-count")
                .map(|v| v.to_str().unwrap().to_string());
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(Ok(d)) = body.data().await {
                n += d.len();
                let _ = body.flow_control().release_capacity(d.len());
            }
            let fail = note(&s, attempt, n, fails);
            match (fail, how) {
                (true, Fail::Status(code)) => {
                    let resp = http::Response::builder().status(code).body(()).unwrap();
                    if let Ok(mut tx) = respond.send_response(resp, false) {
                        let _ = tx.send_data(Bytes::from_static(b"failed"), true);
                    }
                }
                (true, Fail::Grpc(code)) => {
                    let resp = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", code.to_string())
                        .body(())
                        .unwrap();
                    let _ = respond.send_response(resp, true);
                }
                (true, Fail::Slow(ms)) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let resp = http::Response::builder().body(()).unwrap();
                    if let Ok(mut tx) = respond.send_response(resp, false) {
                        let _ = tx.send_data(Bytes::from_static(b"slow"), true);
                    }
                }
                (false, _) => {
                    let resp = http::Response::builder().body(()).unwrap();
                    if let Ok(mut tx) = respond.send_response(resp, false) {
                        let _ = tx.send_data(Bytes::from(format!("ok {n}")), true);
                    }
                }
            }
        });
    }
}

/// Opens a POST to `/r` over a new HTTP/2 connection (prior knowledge): the response to
/// come and the request body's stream (already ended when `end`).
async fn h2_post(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    end: bool,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .method("POST")
        .uri("http://example.com/r");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send.send_request(b.body(()).unwrap(), end).unwrap()
}

/// A POST with `body` over HTTP/2 (prior knowledge) or HTTP/1.1: status, headers, body.
async fn post(
    addr: SocketAddr,
    h2: bool,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    if !h2 {
        return request(addr, "POST", "/r", headers, body).await;
    }
    let (resp, mut tx) = h2_post(addr, headers, body.is_empty()).await;
    if !body.is_empty() {
        tx.reserve_capacity(body.len());
        tx.send_data(body, true).unwrap();
    }
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut hdrs = header_list(resp.headers());
    let mut rx = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.unwrap();
        let _ = rx.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    if let Ok(Some(t)) = rx.trailers().await {
        hdrs.extend(header_list(&t));
    }
    (status, hdrs, out)
}

/// A proxy with one route to cluster `up` (HTTP/2 when `h2_up`) at `addrs`, whose route
/// has `policy` as its `retry_policy` (YAML flow mapping).
async fn proxy(addrs: &[SocketAddr], h2_up: bool, policy: &str) -> Proxy {
    proxy_on(addrs, h2_up, policy, "legacy").await
}

/// As [`proxy`], on io driver `driver`.
async fn proxy_on(addrs: &[SocketAddr], h2_up: bool, policy: &str, driver: &str) -> Proxy {
    let extra = if h2_up {
        "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}},"
    } else {
        ""
    };
    let vhosts = format!(
        "[{{name: all, domains: ['*'], include_request_attempt_count: true, include_attempt_count_in_response: true, routes: [{{match: {{prefix: /}}, route: {{cluster: up, retry_policy: {policy}}}}}]}}]"
    );
    let clusters = format!("[{}]", cluster("up", addrs, extra));
    Proxy::start(&config("", &vhosts, &clusters), &one_core(driver)).await
}

const PAIRINGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retriable_status_is_retried_with_the_body_on_every_codec_pairing() {
    let policy = "{retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 2, retry_back_off: {base_interval: 0.001s}}";
    for (driver, (h2_down, h2_up)) in drivers().into_iter().flat_map(|d| PAIRINGS.map(|p| (d, p))) {
        let (addr, script) = scripted(h2_up, 1, Fail::Status(503)).await;
        let p = proxy_on(&[addr], h2_up, policy, driver).await;
        let body = Bytes::from(vec![b'b'; 5000]);
        let (status, headers, got) = post(p.addr(), h2_down, &[], body).await;
        let case = format!("{driver}: client h2 {h2_down}, upstream h2 {h2_up}");
        assert_eq!(status, 200, "{case}");
        assert_eq!(got, b"ok 5000", "{case}: the body was sent again whole");
        assert_eq!(
            header(&headers, "x-envoy-attempt-count"),
            Some("2"),
            "{case}"
        );
        assert_eq!(script.requests.load(Ordering::SeqCst), 2, "{case}");
        assert_eq!(*script.attempts.lock().unwrap(), ["1", "2"], "{case}");
        assert_eq!(*script.bodies.lock().unwrap(), [5000, 5000], "{case}");
        assert_eq!(p.stat("cluster.up.upstream_rq_retry").await, 1, "{case}");
        assert_eq!(
            p.stat("cluster.up.upstream_rq_retry_success").await,
            1,
            "{case}"
        );
        assert_eq!(
            p.stat("cluster.up.upstream_rq_retry_backoff_exponential")
                .await,
            1,
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_pass_the_last_response_on() {
    let policy = "{retry_on: 5xx, num_retries: 2, retry_back_off: {base_interval: 0.001s}}";
    for (h2_down, h2_up) in [(false, false), (true, true)] {
        let (addr, script) = scripted(h2_up, usize::MAX, Fail::Status(502)).await;
        let p = proxy(&[addr], h2_up, policy).await;
        let (status, headers, got) = post(p.addr(), h2_down, &[], Bytes::new()).await;
        let case = format!("client h2 {h2_down}, upstream h2 {h2_up}");
        assert_eq!(status, 502, "{case}");
        assert_eq!(got, b"failed", "{case}: the upstream's own answer");
        assert_eq!(
            header(&headers, "x-envoy-attempt-count"),
            Some("3"),
            "{case}"
        );
        assert_eq!(script.requests.load(Ordering::SeqCst), 3, "{case}");
        assert_eq!(p.stat("cluster.up.upstream_rq_retry").await, 2, "{case}");
        assert_eq!(
            p.stat("cluster.up.upstream_rq_retry_limit_exceeded").await,
            1,
            "{case}"
        );
        assert_eq!(
            p.stat("cluster.up.upstream_rq_retry_success").await,
            0,
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_moves_to_another_host() {
    let (_hold, dead) = refusing_addr();
    let (alive, script) = scripted(false, 0, Fail::Status(503)).await;
    let policy = "{retry_on: connect-failure, num_retries: 3, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}], host_selection_retry_max_attempts: 3, retry_back_off: {base_interval: 0.001s}}";
    let p = proxy(&[dead, alive], false, policy).await;
    for i in 0..8 {
        let (status, _, got) = post(p.addr(), i % 2 == 1, &[], Bytes::from_static(b"x")).await;
        assert_eq!((status, got.as_slice()), (200, &b"ok 1"[..]), "request {i}");
    }
    assert_eq!(script.requests.load(Ordering::SeqCst), 8);
    // Every attempt that met the dead host was retried, on the live one (the balancer's
    // turn moves with each pick, retries' included, so most first attempts meet it).
    let retries = p.stat("cluster.up.upstream_rq_retry").await;
    assert!(retries >= 4, "{retries}");
    assert_eq!(p.stat("cluster.up.upstream_cx_connect_fail").await, retries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_nothing_is_retried() {
    let (addr, script) = scripted(false, 1, Fail::Status(503)).await;
    let clusters = format!("[{}]", cluster("up", &[addr], ""));
    let p = Proxy::start(
        &config("", &all_to("up"), &clusters),
        &["--concurrency", "1"],
    )
    .await;
    let (status, _, _) = post(p.addr(), false, &[], Bytes::new()).await;
    assert_eq!(status, 503);
    assert_eq!(script.requests.load(Ordering::SeqCst), 1);
    assert_eq!(p.stat("cluster.up.upstream_rq_retry").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_from_a_trailers_only_answer() {
    let policy = "{retry_on: 'unavailable,cancelled', num_retries: 2, retry_back_off: {base_interval: 0.001s}}";
    let (addr, script) = scripted(true, 1, Fail::Grpc(14)).await;
    let p = proxy(&[addr], true, policy).await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let body = Bytes::from_static(b"\0\0\0\0\x03abc");
    let (status, _, got) = post(p.addr(), true, &grpc, body).await;
    assert_eq!(status, 200);
    assert_eq!(got, b"ok 8");
    assert_eq!(script.requests.load(Ordering::SeqCst), 2);
    // Another status is not a condition of the policy: passed on as it came.
    let (addr, script) = scripted(true, 1, Fail::Grpc(13)).await;
    let p = proxy(&[addr], true, policy).await;
    let (status, headers, _) = post(p.addr(), true, &grpc, Bytes::new()).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "grpc-status"), Some("13"));
    assert_eq!(script.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_gives_the_attempt_up_and_tries_again() {
    let policy = "{retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s, retry_back_off: {base_interval: 0.001s}}";
    for h2_up in [false, true] {
        let (addr, script) = scripted(h2_up, 1, Fail::Slow(3000)).await;
        let p = proxy(&[addr], h2_up, policy).await;
        let started = std::time::Instant::now();
        let (status, _, got) = post(p.addr(), false, &[], Bytes::new()).await;
        assert_eq!(
            (status, got.as_slice()),
            (200, &b"ok 0"[..]),
            "upstream h2 {h2_up}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "upstream h2 {h2_up}"
        );
        assert_eq!(script.requests.load(Ordering::SeqCst), 2);
        assert_eq!(p.stat("cluster.up.upstream_rq_per_try_timeout").await, 1);
        assert_eq!(p.stat("cluster.up.upstream_rq_retry").await, 1);
    }
    // With no retry left, the attempt's timeout is the answer: 504.
    let policy = "{retry_on: connect-failure, num_retries: 1, per_try_timeout: 0.2s}";
    let (addr, _) = scripted(false, 1, Fail::Slow(3000)).await;
    let p = proxy(&[addr], false, policy).await;
    let (status, _, got) = post(p.addr(), false, &[], Bytes::new()).await;
    assert_eq!(
        (status, got.as_slice()),
        (504, &b"upstream request timeout"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_of_the_circuit_breaker_is_respected() {
    // max_retries 0: every retry overflows.
    let (addr, script) = scripted(false, 1, Fail::Status(503)).await;
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 2}}}]}]";
    let clusters = format!(
        "[{}]",
        cluster(
            "up",
            &[addr],
            "circuit_breakers: {thresholds: [{max_retries: 0}]},"
        )
    );
    let p = Proxy::start(&config("", vhosts, &clusters), &["--concurrency", "1"]).await;
    let (status, _, _) = post(p.addr(), false, &[], Bytes::new()).await;
    assert_eq!(status, 503);
    assert_eq!(script.requests.load(Ordering::SeqCst), 1);
    assert_eq!(p.stat("cluster.up.upstream_rq_retry_overflow").await, 1);
    assert_eq!(p.stat("cluster.up.upstream_rq_retry").await, 0);
}

/// `retry_budget`: retries outstanding may be a share of the requests in flight, at least
/// `min_retry_concurrency`; it replaces `max_retries` (0 here, which would refuse all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_replaces_max_retries() {
    for (budget, retried) in [
        (
            "{budget_percent: {value: 0}, min_retry_concurrency: 0}",
            false,
        ),
        (
            "{budget_percent: {value: 0}, min_retry_concurrency: 1}",
            true,
        ),
        (
            "{budget_percent: {value: 100}, min_retry_concurrency: 0}",
            true,
        ),
    ] {
        let (addr, script) = scripted(false, 1, Fail::Status(503)).await;
        let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 2}}}]}]";
        let extra = format!(
            "circuit_breakers: {{thresholds: [{{max_retries: 0, max_requests: 4294967295, retry_budget: {budget}}}]}},"
        );
        let clusters = format!("[{}]", cluster("up", &[addr], &extra));
        let p = Proxy::start(&config("", vhosts, &clusters), &["--concurrency", "1"]).await;
        let (status, _, _) = post(p.addr(), false, &[], Bytes::new()).await;
        assert_eq!(status, if retried { 200 } else { 503 }, "{budget}");
        let overflow = p.stat("cluster.up.upstream_rq_retry_overflow").await;
        assert_eq!(
            (overflow, script.requests.load(Ordering::SeqCst)),
            if retried { (0, 2) } else { (1, 1) },
            "{budget}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_headers_count_only_on_internal_requests_and_never_go_upstream() {
    let (addr, script) = scripted(false, 1, Fail::Status(503)).await;
    let clusters = format!("[{}]", cluster("up", &[addr], ""));
    // No policy on the route: the header asks for retries. The request is external
    // (Envoy 1.40 lists no address as internal by default): the header is dropped.
    let p = Proxy::start(
        &config("", &all_to("up"), &clusters),
        &["--concurrency", "1"],
    )
    .await;
    let h = [("x-envoy-retry-on", "5xx")];
    let (status, _, _) = post(p.addr(), false, &h, Bytes::new()).await;
    assert_eq!(status, 503);
    assert_eq!(script.requests.load(Ordering::SeqCst), 1);
    // Internal (loopback listed): honoured, and not forwarded.
    let (addr, script) = scripted(false, 1, Fail::Status(503)).await;
    let clusters = format!("[{}]", cluster("up", &[addr], ""));
    let hcm = "          use_remote_address: true\n          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.0, prefix_len: 8}]}";
    let p = Proxy::start(
        &config(hcm, &all_to("up"), &clusters),
        &["--concurrency", "1"],
    )
    .await;
    let (status, _, got) = post(p.addr(), false, &h, Bytes::new()).await;
    assert_eq!((status, got.as_slice()), (200, &b"ok 0"[..]));
    assert_eq!(script.requests.load(Ordering::SeqCst), 2);
    assert_eq!(script.leaked.load(Ordering::SeqCst), 0);
}

#[test]
fn retry_policies_are_validated_as_envoy_validates_them() {
    let with = |policy: &str| {
        let vhosts = format!(
            "[{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: up, retry_policy: {policy}}}}}]}}]"
        );
        let clusters = format!("[{}]", cluster("up", &["127.0.0.1:1".parse().unwrap()], ""));
        validate("retry.yaml", &config("", &vhosts, &clusters), &[])
    };
    // istiod's policy (the name-only predicate as older istiod writes it, accepted).
    let (ok, err) = with("{retry_on: 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes', num_retries: 2, retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts}], host_selection_retry_max_attempts: 5, retriable_status_codes: [503]}");
    assert!(ok, "{err}");
    // Unknown conditions are ignored, as Envoy ignores them (with a warning).
    let (ok, err) = with("{retry_on: '5xx,bogus'}");
    assert!(ok, "{err}");
    assert!(err.contains("bogus"), "{err}");
    // Refused, by name.
    for (policy, want) in [
        ("{retry_on: http3-post-connect-failure}", "http3-post-connect-failure"),
        ("{retry_on: 5xx, retry_back_off: {base_interval: 1s, max_interval: 0.5s}}", "max_interval"),
        ("{retry_on: 5xx, retry_back_off: {max_interval: 1s}}", "base_interval"),
        ("{retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.omit_canary_hosts}]}", "omit_canary_hosts"),
        ("{retry_on: 5xx, retry_priority: {name: envoy.retry_priorities.previous_priorities}}", "retry_priority"),
        ("{retry_on: 5xx, retriable_status_codes: [70000]}", "retriable_status_codes[0]"),
    ] {
        let (ok, err) = with(policy);
        assert!(!ok, "{policy} was accepted");
        assert!(err.contains(want), "{policy}: {err}");
    }
}

/// An HTTP/2 upstream that grants no flow-control window and refuses every stream, so a
/// request body can never be sent; it records the paths it was asked for.
async fn refusing_h2() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::Builder::new()
                    .initial_window_size(0)
                    .handshake::<_, Bytes>(tcp)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    seen.lock().unwrap().push(req.uri().path().to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_could_not_be_sent_is_never_read_as_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, paths) = refusing_h2().await;
    let p = proxy(&[addr], true, "{retry_on: connect-failure}").await;
    // The body looks like a request; a real one follows it on the same connection.
    let inner = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut raw = format!(
        "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    raw.extend_from_slice(inner);
    raw.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    // Two requests, two answers: the body was not taken for a third.
    assert_eq!(text.matches("HTTP/1.1 ").count(), 2, "{text}");
    let paths = paths.lock().unwrap().clone();
    assert!(!paths.iter().any(|p| p == "/smuggled"), "{paths:?}");
    assert!(
        paths.iter().all(|p| p == "/first" || p == "/second"),
        "{paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_trailers_is_not_sent_again() {
    // Trailers are not kept for another attempt, so such a request is not retried.
    let policy = "{retry_on: retriable-status-codes, retriable_status_codes: [503], num_retries: 2, retry_back_off: {base_interval: 0.001s}}";
    let (addr, script) = scripted(true, 1, Fail::Status(503)).await;
    let p = proxy(&[addr], true, policy).await;
    let (resp, mut tx) = h2_post(p.addr(), &[], false).await;
    tx.send_data(Bytes::from_static(b"abc"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "1".parse().unwrap());
    tx.send_trailers(trailers).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(script.requests.load(Ordering::SeqCst), 1);
    assert_eq!(p.stat("cluster.up.upstream_rq_retry").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_gets_one_100_continue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let policy = "{retry_on: 5xx, num_retries: 2, retry_back_off: {base_interval: 0.001s}}";
    let (addr, script) = scripted(false, 1, Fail::Status(503)).await;
    let p = proxy(&[addr], false, policy).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(
        b"POST /r HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    s.write_all(b"hello").await.unwrap();
    let mut got = buf[..n].to_vec();
    while !String::from_utf8_lossy(&got).contains("ok 5") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("100 Continue").count(), 1, "{text}");
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    assert_eq!(script.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_try_timeout_of_a_streaming_request_starts_at_its_end() {
    // HTTP/2 on both sides: the body streams in its own task. The client takes longer than
    // the per-try timeout to send it; the attempt's clock starts only once it has ended.
    let policy = "{retry_on: 5xx, num_retries: 1, per_try_timeout: 0.3s}";
    let (addr, script) = scripted(true, 0, Fail::Status(503)).await;
    let p = proxy(&[addr], true, policy).await;
    let (resp, mut tx) = h2_post(p.addr(), &[], false).await;
    tx.send_data(Bytes::from_static(b"ab"), false).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    tx.send_data(Bytes::from_static(b"c"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(Ok(d)) = body.data().await {
        got.extend_from_slice(&d);
    }
    assert_eq!(got, b"ok 3");
    assert_eq!(script.requests.load(Ordering::SeqCst), 1);
    assert_eq!(p.stat("cluster.up.upstream_rq_per_try_timeout").await, 0);
}
