//! Outlier detection (`outlier_detection`) and panic mode (`healthy_panic_threshold`), as
//! Envoy 1.40 applies them: hosts that fail are ejected by the control thread and every core
//! stops sending them traffic until their ejection time is up; the stats and `/clusters`
//! say so. Driven by short intervals and waits on stats, never by timing assertions.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpListener;

/// An upstream that answers every request with `status` (HTTP/2 when `h2`), counting them.
async fn fixed(status: u16, h2: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                if h2 {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        c.fetch_add(1, Ordering::SeqCst);
                        let resp = http::Response::builder().status(status).body(()).unwrap();
                        if let Ok(mut tx) = respond.send_response(resp, false) {
                            let _ = tx.send_data(Bytes::from_static(b"x"), true);
                        }
                    }
                    return;
                }
                let svc = hyper::service::service_fn(move |_req| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"x")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, count)
}

/// A proxy with one route to cluster `c` over `addrs`, the cluster's fields in `extra`.
async fn proxy(addrs: &[SocketAddr], extra: &str) -> Proxy {
    proxy_logging(addrs, extra, None).await
}

/// As [`proxy`], on two cores (each counts its own attempts; the detector adds them up).
async fn proxy_two_cores(addrs: &[SocketAddr], extra: &str) -> Proxy {
    let yaml = config(
        "",
        &all_to("c"),
        &format!("[{}]", cluster("c", addrs, extra)),
    );
    Proxy::start(&yaml, &["--concurrency", "2"]).await
}

/// As [`proxy`], writing outlier events to `log`.
async fn proxy_logging(addrs: &[SocketAddr], extra: &str, log: Option<&std::path::Path>) -> Proxy {
    let mut yaml = config(
        "",
        &all_to("c"),
        &format!("[{}]", cluster("c", addrs, extra)),
    );
    if let Some(log) = log {
        yaml = format!(
            "cluster_manager: {{outlier_detection: {{event_log_path: '{}'}}}}\n{yaml}",
            log.display()
        );
    }
    Proxy::start(&yaml, &["--concurrency", "1"]).await
}

/// Sends `n` requests; returns how many got each status.
async fn send_n(p: &Proxy, n: usize) -> std::collections::BTreeMap<u16, usize> {
    let mut out = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, _, _) = http_get(p.addr(), "/x", &[]).await;
        *out.entry(status).or_default() += 1;
    }
    out
}

/// The name of cluster `c`'s outlier stat `name`.
fn od(name: &str) -> String {
    format!("cluster.c.outlier_detection.{name}")
}

#[tokio::test]
async fn consecutive_5xx_ejects_a_host_until_its_time_is_up() {
    for h2 in [false, true] {
        let (good1, n1) = fixed(200, h2).await;
        let (good2, _) = fixed(200, h2).await;
        let (bad, nbad) = fixed(503, h2).await;
        let http2 = if h2 {
            "http2_protocol_options: {},"
        } else {
            ""
        };
        let log = temp_dir().join("outlier.log");
        let p = proxy_logging(
            &[good1, good2, bad],
            &format!(
                "{http2} outlier_detection: {{consecutive_5xx: 3, interval: 0.2s, base_ejection_time: 1s, max_ejection_percent: 100}},"
            ),
            Some(&log),
        )
        .await;
        // Round robin: the bad host answers every third request; its third 503 in a row
        // ejects it.
        send_n(&p, 9).await;
        assert_eq!(
            p.stat_reaching(&od("ejections_enforced_consecutive_5xx"), 1)
                .await,
            1,
            "h2 {h2}: {}",
            p.stderr()
        );
        assert_eq!(p.stat(&od("ejections_active")).await, 1);
        assert_eq!(p.stat(&od("ejections_detected_consecutive_5xx")).await, 1);
        assert_eq!(p.stat(&od("ejections_enforced_total")).await, 1);
        let (_, text) = p.admin_get("/clusters").await;
        assert!(
            text.contains(&format!("c::{bad}::health_flags::/failed_outlier_check")),
            "{text}"
        );
        assert!(text.contains(&format!("c::{good1}::health_flags::healthy")));
        assert!(
            text.contains("c::outlier::success_rate_average::-1"),
            "{text}"
        );
        let (_, json) = p.admin_get("/clusters?format=json").await;
        assert!(json.contains("\"failed_outlier_check\": true"), "{json}");
        // Out: the others take every request.
        let before = nbad.load(Ordering::SeqCst);
        let seen = send_n(&p, 12).await;
        assert_eq!(seen.get(&200), Some(&12), "h2 {h2}: {seen:?}");
        assert_eq!(nbad.load(Ordering::SeqCst), before);
        assert!(n1.load(Ordering::SeqCst) >= 6);
        // After the base ejection time (and the next interval) it is back, fails again,
        // and is ejected a second time (for twice as long).
        assert_eq!(
            p.stat_falling_to_within(&od("ejections_active"), 0, 5)
                .await,
            0
        );
        send_n(&p, 9).await;
        assert_eq!(p.stat_reaching(&od("ejections_enforced_total"), 2).await, 2);
        assert!(nbad.load(Ordering::SeqCst) > before);
        // The event log: Envoy's OutlierDetectionEvent, one JSON line per action.
        let lines = wait_lines(&log, 3).await;
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let e = &events[0];
        assert_eq!(e["type"], "CONSECUTIVE_5XX", "{lines:?}");
        assert_eq!(e["action"], "EJECT");
        assert_eq!(e["cluster_name"], "c");
        assert_eq!(e["upstream_url"], bad.to_string());
        assert_eq!(e["num_ejections"], 1);
        assert_eq!(e["enforced"], true);
        assert_eq!(e["eject_consecutive_event"], serde_json::json!({}));
        assert!(e.get("secs_since_last_action").is_none());
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(events[1]["action"], "UNEJECT");
        assert!(events[1]["secs_since_last_action"].is_string());
        assert_eq!(events[2]["action"], "EJECT");
        assert_eq!(events[2]["num_ejections"], 2);
        assert!(events[2]["secs_since_last_action"].is_string());
    }
}

#[tokio::test]
async fn max_ejection_percent_counts_an_overflow_instead() {
    let (good1, _) = fixed(200, false).await;
    let (good2, _) = fixed(200, false).await;
    let (bad, nbad) = fixed(500, false).await;
    // Envoy's default max_ejection_percent (10) with three hosts: one would be 33%.
    let p = proxy(
        &[good1, good2, bad],
        "outlier_detection: {consecutive_5xx: 2, interval: 0.2s},",
    )
    .await;
    send_n(&p, 6).await;
    assert!(p.stat_reaching(&od("ejections_overflow"), 1).await >= 1);
    assert_eq!(p.stat(&od("ejections_active")).await, 0);
    assert_eq!(p.stat(&od("ejections_enforced_total")).await, 0);
    let before = nbad.load(Ordering::SeqCst);
    send_n(&p, 3).await;
    assert_eq!(nbad.load(Ordering::SeqCst), before + 1, "still in rotation");
}

#[tokio::test]
async fn gateway_failures_and_their_enforcement() {
    let (good1, _) = fixed(200, false).await;
    let (bad, _) = fixed(502, false).await;
    // Gateway failures are detected whatever their enforcement; Envoy enforces them only
    // when asked (enforcing_consecutive_gateway_failure is 0 unset).
    let p = proxy(
        &[good1, bad],
        "outlier_detection: {consecutive_5xx: 1000, consecutive_gateway_failure: 2, interval: 0.2s, max_ejection_percent: 100},",
    )
    .await;
    send_n(&p, 4).await;
    assert_eq!(
        p.stat_reaching(&od("ejections_detected_consecutive_gateway_failure"), 1)
            .await,
        1
    );
    assert_eq!(p.stat(&od("ejections_active")).await, 0);
    drop(p);
    let p = proxy(
        &[good1, bad],
        "outlier_detection: {consecutive_5xx: 1000, consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100, interval: 0.2s, max_ejection_percent: 100},",
    )
    .await;
    send_n(&p, 4).await;
    assert_eq!(
        p.stat_reaching(&od("ejections_enforced_consecutive_gateway_failure"), 1)
            .await,
        1
    );
    assert_eq!(p.stat(&od("ejections_active")).await, 1);
    assert_eq!(p.stat(&od("ejections_detected_consecutive_5xx")).await, 0);
    assert_eq!(send_n(&p, 6).await.get(&200), Some(&6));
}

#[tokio::test]
async fn local_origin_failures_counted_apart() {
    let (good, _) = fixed(200, false).await;
    let (_refusing, refused) = refusing_addr();
    let p = proxy(
        &[good, refused],
        "outlier_detection: {split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, interval: 0.2s, max_ejection_percent: 100},",
    )
    .await;
    let seen = send_n(&p, 4).await;
    assert_eq!(seen.get(&503), Some(&2), "{seen:?}");
    assert_eq!(
        p.stat_reaching(
            &od("ejections_enforced_consecutive_local_origin_failure"),
            1
        )
        .await,
        1
    );
    // Split: connection failures are not 5xx responses.
    assert_eq!(p.stat(&od("ejections_detected_consecutive_5xx")).await, 0);
    assert_eq!(send_n(&p, 6).await.get(&200), Some(&6));
}

#[tokio::test]
async fn success_rate_and_failure_percentage() {
    let mut addrs = Vec::new();
    for _ in 0..4 {
        addrs.push(fixed(200, false).await.0);
    }
    let (bad, _) = fixed(500, false).await;
    addrs.push(bad);
    // Consecutive 5xx not enforced: only the interval's statistics can eject. Rates 100,
    // 100, 100, 100 and 0: mean 80, deviation 40, threshold 80 − 1.0 × 40 = 40. Two cores:
    // each reports its share of the volumes. 100 requests well within the 3 s interval:
    // whichever way an interval's end splits them, one side has 10 per host.
    let p = proxy_two_cores(
        &addrs,
        "outlier_detection: {enforcing_consecutive_5xx: 0, success_rate_request_volume: 10, success_rate_stdev_factor: 1000, interval: 3s, max_ejection_percent: 100},",
    )
    .await;
    send_n(&p, 100).await;
    assert_eq!(
        p.stat_reaching_within(&od("ejections_enforced_success_rate"), 1, 8)
            .await,
        1,
        "{}",
        p.stderr()
    );
    assert_eq!(p.stat(&od("ejections_success_rate")).await, 1);
    assert_eq!(p.stat(&od("ejections_active")).await, 1);
    drop(p);
    let p = proxy(
        &addrs,
        "outlier_detection: {enforcing_consecutive_5xx: 0, enforcing_success_rate: 0, enforcing_failure_percentage: 100, failure_percentage_request_volume: 10, interval: 3s, max_ejection_percent: 100},",
    )
    .await;
    send_n(&p, 100).await;
    assert_eq!(
        p.stat_reaching_within(&od("ejections_enforced_failure_percentage"), 1, 8)
            .await,
        1
    );
    // The success rate is not judged: its default volume is 100 requests a host.
    assert_eq!(p.stat(&od("ejections_detected_success_rate")).await, 0);
    assert_eq!(send_n(&p, 8).await.get(&200), Some(&8));
}

#[tokio::test]
async fn panic_mode_below_the_healthy_threshold() {
    let (a, na) = fixed(200, false).await;
    let (b, nb) = fixed(200, false).await;
    let unhealthy = |name: &str, threshold: &str| {
        format!(
            "{{name: {name}, connect_timeout: 1s, {threshold} load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, health_status: UNHEALTHY}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, health_status: UNHEALTHY}}]}}]}}}}",
            a.port(),
            b.port()
        )
    };
    // Every endpoint unhealthy: below Envoy's default 50%, all of them take traffic.
    let p = Proxy::start(
        &config("", &all_to("c"), &format!("[{}]", unhealthy("c", ""))),
        &["--concurrency", "1"],
    )
    .await;
    assert_eq!(send_n(&p, 4).await.get(&200), Some(&4));
    assert!(na.load(Ordering::SeqCst) >= 1 && nb.load(Ordering::SeqCst) >= 1);
    assert_eq!(p.stat("cluster.c.lb_healthy_panic").await, 4);
    drop(p);
    // healthy_panic_threshold 0 (what istiod sets with outlier detection): no panic.
    let p = Proxy::start(
        &config(
            "",
            &all_to("c"),
            &format!(
                "[{}]",
                unhealthy(
                    "c",
                    "common_lb_config: {healthy_panic_threshold: {value: 0}},"
                )
            ),
        ),
        &["--concurrency", "1"],
    )
    .await;
    let (status, _, body) = http_get(p.addr(), "/x", &[]).await;
    assert_eq!((status, &body[..]), (503, &b"no healthy upstream"[..]));
    assert_eq!(p.stat("cluster.c.lb_healthy_panic").await, 0);
}

#[test]
fn invalid_settings_are_refused_by_name() {
    let (ok, err) = validate(
        "max_ejection_time",
        &config(
            "",
            &all_to("c"),
            "[{name: c, connect_timeout: 1s, outlier_detection: {base_ejection_time: 60s, max_ejection_time: 10s}}]",
        ),
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("outlier_detection.max_ejection_time")
            && err.contains("cannot be smaller than base_ejection_time"),
        "{err}"
    );
    let (ok, err) = validate(
        "percent",
        &config(
            "",
            &all_to("c"),
            "[{name: c, connect_timeout: 1s, outlier_detection: {max_ejection_percent: 101}}]",
        ),
        &[],
    );
    assert!(
        !ok && err.contains("outlier_detection.max_ejection_percent"),
        "{err}"
    );
}

/// An upstream that accepts, reads the request, and closes without answering.
async fn resetting() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn failures_after_connecting_count_as_envoy_counts_them() {
    let (good, _) = fixed(200, false).await;
    let reset = resetting().await;
    // Split: a connection made counts as a local success before its reset, so such a
    // host never has two local failures in a row (as in Envoy).
    let p = proxy(
        &[good, reset],
        "outlier_detection: {split_external_local_origin_errors: true, consecutive_local_origin_failure: 2, interval: 0.2s, max_ejection_percent: 100},",
    )
    .await;
    send_n(&p, 8).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        p.stat(&od("ejections_detected_consecutive_local_origin_failure"))
            .await,
        0
    );
    drop(p);
    // Not split: a reset is a 503, and three make a run.
    let p = proxy(
        &[good, reset],
        "outlier_detection: {consecutive_5xx: 3, interval: 0.2s, max_ejection_percent: 100},",
    )
    .await;
    send_n(&p, 6).await;
    assert_eq!(
        p.stat_reaching(&od("ejections_enforced_consecutive_5xx"), 1)
            .await,
        1
    );
}

/// An upstream that answers a head promising 100 bytes, sends 10 and closes.
async fn truncating() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_reset_after_the_response_head_counts_too() {
    let (good, _) = fixed(200, false).await;
    let bad = truncating().await;
    // The head counts as a 200, the reset after it as a 503 (Envoy's router reports both):
    // a threshold of one run ejects it.
    let p = proxy(
        &[good, bad],
        "outlier_detection: {consecutive_5xx: 1, interval: 0.2s, max_ejection_percent: 100},",
    )
    .await;
    for _ in 0..4 {
        raw(
            p.addr(),
            b"GET / HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n",
            std::time::Duration::from_secs(2),
        )
        .await;
    }
    assert_eq!(
        p.stat_reaching(&od("ejections_enforced_consecutive_5xx"), 1)
            .await,
        1
    );
    let (_, text) = p.admin_get("/clusters").await;
    assert!(
        text.contains(&format!("c::{bad}::health_flags::/failed_outlier_check")),
        "{text}"
    );
}

#[tokio::test]
async fn an_ejection_reaches_every_core() {
    let (good, _) = fixed(200, false).await;
    let (bad, nbad) = fixed(503, false).await;
    let p = proxy_two_cores(
        &[good, bad],
        "outlier_detection: {consecutive_5xx: 2, interval: 0.2s, base_ejection_time: 30s, max_ejection_percent: 100},",
    )
    .await;
    // Each request on its own connection: the kernel spreads them over both cores, and
    // one core's run of two reaches the threshold.
    for _ in 0..40 {
        send_n(&p, 1).await;
        if p.stat(&od("ejections_active")).await == 1 {
            break;
        }
    }
    assert_eq!(p.stat(&od("ejections_active")).await, 1);
    // The stat moves as the control thread decides; each core applies the decision from
    // its command channel a moment later.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = nbad.load(Ordering::SeqCst);
    // Whichever core takes them, no request reaches the ejected host.
    assert_eq!(send_n(&p, 30).await.get(&200), Some(&30));
    assert_eq!(nbad.load(Ordering::SeqCst), before);
}
