//! Active health checks (`health_checks`): HTTP/1.1, h2c, gRPC and TCP checks run by the
//! control thread; hosts that fail them (or have not passed one yet) take no traffic on any
//! core; `/clusters` and `cluster.<name>.health_check.*` say so. Driven by short intervals
//! and waits on stats, never by timing assertions.

// The test upstreams run on tokio threads.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 upstream: `/healthz` answers 200 while `ok` holds (else 503, or with
/// `immediate` a 200 carrying `x-envoy-immediate-health-check-fail`); anything else
/// answers 200 and counts.
async fn upstream(ok: Arc<AtomicBool>, immediate: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let s = served.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (ok, s) = (ok.clone(), s.clone());
            tokio::spawn(async move {
                let mut have = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&have[..end]).to_string();
                        have.drain(..end + 4);
                        let resp = if head.starts_with("GET /healthz ") {
                            assert!(
                                head.to_lowercase().contains("user-agent: envoy/hc"),
                                "{head}"
                            );
                            match (ok.load(Ordering::SeqCst), immediate) {
                                (true, _) => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string(),
                                (false, false) => "HTTP/1.1 503 X\r\ncontent-length: 0\r\n\r\n".to_string(),
                                (false, true) => "HTTP/1.1 503 X\r\nx-envoy-immediate-health-check-fail: true\r\ncontent-length: 0\r\n\r\n".to_string(),
                            }
                        } else {
                            s.fetch_add(1, Ordering::SeqCst);
                            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx".to_string()
                        };
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, served)
}

fn hc_cluster(addrs: &[SocketAddr], check: &str) -> String {
    cluster(
        "c",
        addrs,
        &format!("health_checks: [{{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 2, healthy_threshold: 2, {check}}}],"),
    )
}

async fn proxy(addrs: &[SocketAddr], check: &str, cores: &str) -> Proxy {
    let yaml = config("", &all_to("c"), &format!("[{}]", hc_cluster(addrs, check)));
    Proxy::start(&yaml, &["--concurrency", cores]).await
}

async fn send(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let (status, _, _) = http_get(addr, "/x", &[]).await;
        assert_eq!(status, 200);
    }
}

const HTTP: &str = "http_health_check: {path: /healthz}";

#[tokio::test]
async fn a_host_failing_its_http_check_takes_no_traffic() {
    let good_ok = Arc::new(AtomicBool::new(true));
    let bad_ok = Arc::new(AtomicBool::new(false));
    let (good, good_n) = upstream(good_ok, false).await;
    let (bad, bad_n) = upstream(bad_ok.clone(), false).await;
    let p = proxy(&[good, bad], HTTP, "2").await;
    assert_eq!(
        p.stat_reaching("cluster.c.health_check.healthy", 1).await,
        1
    );
    p.stat_reaching("cluster.c.health_check.failure", 1).await;
    send(p.addr(), 20).await;
    assert_eq!(
        (good_n.load(Ordering::SeqCst), bad_n.load(Ordering::SeqCst)),
        (20, 0)
    );
    let (_, text) = p.admin_get("/clusters").await;
    assert!(
        text.contains(&format!("c::{bad}::health_flags::/failed_active_hc\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("c::{good}::health_flags::healthy\n")),
        "{text}"
    );
    let (_, json) = p.admin_get("/clusters?format=json").await;
    assert!(
        json.contains("\"failed_active_health_check\": true"),
        "{json}"
    );
    // It recovers after two checks in a row pass, and takes traffic again.
    bad_ok.store(true, Ordering::SeqCst);
    assert_eq!(
        p.stat_reaching("cluster.c.health_check.healthy", 2).await,
        2
    );
    send(p.addr(), 20).await;
    assert!(bad_n.load(Ordering::SeqCst) > 0);
    assert!(p.stat("cluster.c.health_check.attempt").await >= 4);
}

/// Network failures (here timeouts) take a host out only after `unhealthy_threshold` of
/// them in a row.
#[tokio::test]
async fn a_healthy_host_goes_out_after_the_unhealthy_threshold() {
    let ok = Arc::new(AtomicBool::new(true));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = listener.local_addr().unwrap();
    let o = ok.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let o = o.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = tcp.read(&mut buf).await;
                if o.load(Ordering::SeqCst) {
                    let _ = tcp.write_all(b"pong").await;
                }
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    let (b, _) = upstream(Arc::new(AtomicBool::new(true)), false).await;
    // "ping" / "pong" (`b`, an HTTP server, never passes: only `a`'s flags are read).
    let check =
        "timeout: 0.2s, tcp_health_check: {send: {text: 70696e67}, receive: [{text: 706f6e67}]}";
    let yaml = config(
        "",
        &all_to("c"),
        &format!(
            "[{}]",
            cluster(
                "c",
                &[a, b],
                &format!("health_checks: [{{interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 3, healthy_threshold: 1, {check}}}],")
            )
        ),
    );
    let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    // In: its flags do not say failed_active_hc (a first timeout shows, alone).
    let flag = |t: &str| {
        let line = format!("c::{a}::health_flags::");
        t.lines()
            .any(|l| l.starts_with(&line) && !l.contains("failed_active_hc"))
    };
    loop {
        let (_, text) = p.admin_get("/clusters").await;
        if flag(&text) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ok.store(false, Ordering::SeqCst);
    let before = p.stat("cluster.c.health_check.network_failure").await;
    loop {
        let (_, text) = p.admin_get("/clusters").await;
        if !flag(&text) {
            assert!(
                text.contains(&format!(
                    "c::{a}::health_flags::/failed_active_hc/active_hc_timeout\n"
                )),
                "{text}"
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Three timeouts in a row, at least, before it went out.
    assert!(p.stat("cluster.c.health_check.network_failure").await - before >= 3);
}

/// Cluster `c` of two HTTP upstreams (`a`'s checks follow `ok` and `immediate`, the
/// other's always pass) under `check` with `unhealthy_threshold`; returns the proxy and
/// `a` once both hosts are healthy.
async fn two_healthy_hosts(
    ok: Arc<AtomicBool>,
    immediate: bool,
    check: &str,
    unhealthy_threshold: u32,
) -> (Proxy, SocketAddr) {
    let (a, _) = upstream(ok, immediate).await;
    let (b, _) = upstream(Arc::new(AtomicBool::new(true)), false).await;
    let yaml = config(
        "",
        &all_to("c"),
        &format!(
            "[{}]",
            cluster(
                "c",
                &[a, b],
                &format!("health_checks: [{{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: {unhealthy_threshold}, healthy_threshold: 1, {check}}}],")
            )
        ),
    );
    let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    assert_eq!(
        p.stat_reaching("cluster.c.health_check.healthy", 2).await,
        2
    );
    (p, a)
}

/// An answer that is not the expected one takes a host out at once, whatever
/// `unhealthy_threshold` (Envoy's rule); with `x-envoy-immediate-health-check-fail` it is
/// flagged as excluded by it.
#[tokio::test]
async fn a_wrong_answer_takes_a_host_out_at_once() {
    let ok = Arc::new(AtomicBool::new(true));
    let (p, a) = two_healthy_hosts(ok.clone(), true, HTTP, 1000).await;
    ok.store(false, Ordering::SeqCst);
    assert_eq!(
        p.stat_falling_to("cluster.c.health_check.healthy", 1).await,
        1
    );
    let (_, text) = p.admin_get("/clusters").await;
    assert!(
        text.contains(&format!(
            "c::{a}::health_flags::/failed_active_hc/excluded_via_immediate_hc_fail\n"
        )),
        "{text}"
    );
}

/// A status in `retriable_statuses` is a failure that counts towards
/// `unhealthy_threshold` (Envoy's retriable active failure): the host stays in until that
/// many come in a row, and they are not network failures.
#[tokio::test]
async fn a_retriable_status_counts_towards_the_threshold() {
    for threshold in [1000, 3] {
        let ok = Arc::new(AtomicBool::new(true));
        let check =
            "http_health_check: {path: /healthz, retriable_statuses: [{start: 500, end: 504}]}";
        let (p, _) = two_healthy_hosts(ok.clone(), false, check, threshold).await;
        let before = p.stat("cluster.c.health_check.failure").await;
        ok.store(false, Ordering::SeqCst);
        if threshold == 1000 {
            // Several 503s in a row, and the host is still in.
            p.stat_reaching("cluster.c.health_check.failure", before + 4)
                .await;
            assert_eq!(p.stat("cluster.c.health_check.healthy").await, 2);
        } else {
            assert_eq!(
                p.stat_falling_to("cluster.c.health_check.healthy", 1).await,
                1
            );
            assert!(p.stat("cluster.c.health_check.failure").await - before >= 3);
        }
        assert_eq!(p.stat("cluster.c.health_check.network_failure").await, 0);
    }
}

/// TCP: connect, send the hex payload, find each expected payload in order; a host that
/// does not answer fails on the timeout (a network failure).
#[tokio::test]
async fn tcp_checks_send_and_expect_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pong = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4];
                if tcp.read_exact(&mut buf).await.is_ok() && &buf == b"ping" {
                    let _ = tcp.write_all(b"..pong..done").await;
                }
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let quiet = silent.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = silent.accept().await {
            h.lock().unwrap().push(tcp);
        }
    });
    // "ping" is 70696e67, "pong" 706f6e67, "done" 646f6e65.
    let check = "timeout: 0.3s, tcp_health_check: {send: {text: 70696e67}, receive: [{text: 706f6e67}, {text: 646f6e65}]}";
    let yaml = config(
        "",
        &all_to("c"),
        &format!(
            "[{}]",
            cluster(
                "c",
                &[pong, quiet],
                &format!("health_checks: [{{interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, {check}}}],")
            )
        ),
    );
    let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    assert_eq!(
        p.stat_reaching("cluster.c.health_check.healthy", 1).await,
        1
    );
    assert!(
        p.stat_reaching("cluster.c.health_check.network_failure", 1)
            .await
            >= 1
    );
    let (_, text) = p.admin_get("/clusters").await;
    assert!(
        text.contains(&format!("c::{quiet}::health_flags::/failed_active_hc")),
        "{text}"
    );
    assert!(
        text.contains(&format!("c::{pong}::health_flags::healthy")),
        "{text}"
    );
}

/// An h2 upstream: `grpc.health.v1.Health/Check` answers SERVING for service "up" and
/// NOT_SERVING otherwise; `/healthz` answers 200 over h2c.
async fn h2_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let (parts, mut body) = req.into_parts();
                        let mut got = Vec::new();
                        while let Some(Ok(d)) = body.data().await {
                            got.extend_from_slice(&d);
                        }
                        if parts.uri.path() == "/healthz" {
                            let resp = http::Response::builder().status(200).body(()).unwrap();
                            let _ = respond.send_response(resp, true);
                            return;
                        }
                        // HealthCheckRequest { service = "up" } is 0a 02 75 70.
                        let serving = got.ends_with(b"\x0a\x02up");
                        let resp = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut tx) = respond.send_response(resp, false) else {
                            return;
                        };
                        let status = if serving { 1u8 } else { 2u8 };
                        let _ = tx.send_data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]), false);
                        let mut t = http::HeaderMap::new();
                        t.insert("grpc-status", "0".parse().unwrap());
                        let _ = tx.send_trailers(t);
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn grpc_and_h2c_checks() {
    let (one, two) = (h2_upstream().await, h2_upstream().await);
    for (check, healthy) in [
        ("grpc_health_check: {service_name: up}", true),
        ("grpc_health_check: {service_name: down}", false),
        (
            "http_health_check: {path: /healthz, codec_client_type: HTTP2}",
            true,
        ),
    ] {
        let h2 = "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}},";
        let extra = format!("{h2} health_checks: [{{timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 2, healthy_threshold: 2, {check}}}],");
        let yaml = config(
            "",
            &all_to("c"),
            &format!("[{}]", cluster("c", &[one, two], &extra)),
        );
        let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
        if healthy {
            assert_eq!(
                p.stat_reaching("cluster.c.health_check.healthy", 2).await,
                2,
                "{check}"
            );
            assert_eq!(
                p.stat("cluster.c.health_check.network_failure").await,
                0,
                "{check}"
            );
        } else {
            p.stat_reaching("cluster.c.health_check.failure", 2).await;
            assert_eq!(p.stat("cluster.c.health_check.healthy").await, 0, "{check}");
            assert_eq!(
                p.stat("cluster.c.health_check.network_failure").await,
                0,
                "{check}"
            );
            let (_, text) = p.admin_get("/clusters").await;
            assert!(
                text.contains(&format!("c::{one}::health_flags::/failed_active_hc\n")),
                "{text}"
            );
        }
    }
}

#[test]
fn bad_health_checks_are_refused_by_name() {
    let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let tls = "transport_socket: {name: tls, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext}},";
    for (extra, want) in [
        ("health_checks: [{interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}],", "health_checks[0].timeout: is required"),
        ("health_checks: [{timeout: 1s, interval: 1s, healthy_threshold: 1, tcp_health_check: {}}],", "health_checks[0].unhealthy_threshold: is required"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1}],", "health_checks[0].health_checker"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h, request_headers_to_add: [{header: {key: x, value: '%HOSTNAME%'}}]}}],", "formatters"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}, {timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}}],", "only one health check"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {}, event_log_path: /tmp/x}],", "event_log_path"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, grpc_health_check: {}}],", "must speak HTTP/2 for gRPC"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: 'no slash'}}],", "http_health_check.path: must be a path"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 0, healthy_threshold: 1, tcp_health_check: {}}],", "unhealthy_threshold: must be at least 1"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h, host: 'a b'}}],", "not a valid authority"),
        ("health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: {path: /h, retriable_statuses: [{start: 503, end: 503}]}}],", "http_health_check.retriable_statuses[0]: must be a range"),
    ] {
        let yaml = config("", &all_to("c"), &format!("[{}]", cluster("c", &[a], extra)));
        let (ok, out) = validate("hc", &yaml, &[]);
        assert!(!ok && out.contains(want), "{extra}: {out}");
    }
    let extra = format!("{tls} health_checks: [{{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}}}}],");
    let yaml = config(
        "",
        &all_to("c"),
        &format!("[{}]", cluster("c", &[a], &extra)),
    );
    let (ok, out) = validate("hc", &yaml, &[]);
    assert!(!ok && out.contains("over TLS"), "{out}");
}

/// An upstream whose `/healthz` answers 200 and everything else 503.
async fn failing_traffic() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut have = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        let hc = have.starts_with(b"GET /healthz ");
                        have.drain(..end + 4);
                        let resp: &[u8] = match hc {
                            true => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                            false => b"HTTP/1.1 503 X\r\ncontent-length: 0\r\n\r\n",
                        };
                        if tcp.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// `successful_active_health_check_uneject_host` (true by default): a host outlier
/// detection ejected is let back as soon as it checks healthy; without it, it stays out
/// for its ejection time.
#[tokio::test]
async fn a_passing_check_lets_an_ejected_host_back() {
    for (uneject, back) in [
        ("", true),
        ("successful_active_health_check_uneject_host: false,", false),
    ] {
        let bad = failing_traffic().await;
        let (good, _) = upstream(Arc::new(AtomicBool::new(true)), false).await;
        let extra = format!(
            "outlier_detection: {{consecutive_5xx: 2, interval: 60s, base_ejection_time: 60s, max_ejection_percent: 100, {uneject}}}, health_checks: [{{timeout: 1s, interval: 0.2s, no_traffic_interval: 0.2s, unhealthy_threshold: 2, healthy_threshold: 1, {HTTP}}}],"
        );
        let yaml = config(
            "",
            &all_to("c"),
            &format!("[{}]", cluster("c", &[bad, good], &extra)),
        );
        let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
        assert_eq!(
            p.stat_reaching("cluster.c.health_check.healthy", 2).await,
            2
        );
        // Two 503s in a row from `bad` eject it.
        for _ in 0..8 {
            let _ = http_get(p.addr(), "/x", &[]).await;
            if p.stat("cluster.c.outlier_detection.ejections_enforced_total")
                .await
                > 0
            {
                break;
            }
        }
        assert_eq!(
            p.stat_reaching("cluster.c.outlier_detection.ejections_enforced_total", 1)
                .await,
            1
        );
        if back {
            assert_eq!(
                p.stat_falling_to("cluster.c.outlier_detection.ejections_active", 0)
                    .await,
                0
            );
        } else {
            // Checks keep passing; the host stays out.
            let checks = p.stat("cluster.c.health_check.success").await;
            p.stat_reaching("cluster.c.health_check.success", checks + 3)
                .await;
            assert_eq!(
                p.stat("cluster.c.outlier_detection.ejections_active").await,
                1
            );
        }
    }
}
