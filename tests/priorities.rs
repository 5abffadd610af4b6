//! Priorities (EDS `priority`, Istio's locality failover): the load goes to the highest
//! priority as far as its healthy share allows (times the overprovisioning factor), the
//! rest to the next; in total panic, by host count. Compared with Envoy in
//! tests/interop/outlier_parity.py; here, the shapes over real sockets.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use support::*;

/// A STATIC cluster `c` whose localities are (priority, [(address, healthy)]).
fn cluster_with(levels: &[(u32, Vec<(SocketAddr, bool)>)], extra: &str) -> String {
    let localities: Vec<String> = levels
        .iter()
        .enumerate()
        .map(|(i, (p, eps))| {
            let eps: Vec<String> = eps
                .iter()
                .map(|(a, ok)| {
                    format!(
                        "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, health_status: {}}}",
                        a.port(),
                        if *ok { "HEALTHY" } else { "UNHEALTHY" }
                    )
                })
                .collect();
            format!(
                "{{priority: {p}, locality: {{region: r, zone: z{i}}}, lb_endpoints: [{}]}}",
                eps.join(", ")
            )
        })
        .collect();
    format!(
        "[{{name: c, connect_timeout: 1s, {extra} load_assignment: {{cluster_name: c, endpoints: [{}]}}}}]",
        localities.join(", ")
    )
}

async fn proxy(levels: &[(u32, Vec<(SocketAddr, bool)>)], extra: &str) -> Proxy {
    Proxy::start(
        &config("", &all_to("c"), &cluster_with(levels, extra)),
        &["--concurrency", "1"],
    )
    .await
}

async fn send_n(p: &Proxy, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if http_get(p.addr(), "/x", &[]).await.0 == 200 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn the_highest_priority_takes_what_its_health_allows() {
    let (a, na) = counting_upstream(200, false).await;
    let (b, nb) = counting_upstream(200, false).await;
    let (c, nc) = counting_upstream(200, false).await;
    // All healthy: P1 takes nothing.
    let p = proxy(&[(0, vec![(a, true), (b, true)]), (1, vec![(c, true)])], "").await;
    assert_eq!(send_n(&p, 20).await, 20);
    assert_eq!(nc.load(Ordering::SeqCst), 0);
    assert_eq!(na.load(Ordering::SeqCst) + nb.load(Ordering::SeqCst), 20);
    let (_, text) = p.admin_get("/clusters").await;
    assert!(text.contains(&format!("c::{c}::priority::1")), "{text}");
    assert!(text.contains(&format!("c::{a}::zone::z0")), "{text}");
    assert!(text.contains(&format!("c::{c}::region::r")), "{text}");
    let (_, json) = p.admin_get("/clusters?format=json").await;
    assert!(
        json.contains("\"priority\": 1") && json.contains("\"zone\": \"z1\""),
        "{json}"
    );
    drop(p);

    // Half of P0 healthy: its health is 1.4 × 50% = 70, so P1 takes the other 30%.
    nc.store(0, Ordering::SeqCst);
    let p = proxy(
        &[(0, vec![(a, true), (b, false)]), (1, vec![(c, true)])],
        "",
    )
    .await;
    assert_eq!(send_n(&p, 400).await, 400);
    let to_c = nc.load(Ordering::SeqCst);
    assert!(
        (80..=160).contains(&to_c),
        "P1 took {to_c} of 400 (expected about 120)"
    );
    drop(p);

    // P0 all unhealthy: everything fails over to P1 (no panic: P1 is whole).
    nc.store(0, Ordering::SeqCst);
    let p = proxy(
        &[(0, vec![(a, false), (b, false)]), (1, vec![(c, true)])],
        "",
    )
    .await;
    assert_eq!(send_n(&p, 20).await, 20);
    assert_eq!(nc.load(Ordering::SeqCst), 20);
    assert_eq!(p.stat("cluster.c.lb_healthy_panic").await, 0);
}

#[tokio::test]
async fn total_panic_splits_by_host_count() {
    let (a, na) = counting_upstream(200, false).await;
    let (c, nc) = counting_upstream(200, false).await;
    let p = proxy(&[(0, vec![(a, false)]), (1, vec![(c, false)])], "").await;
    assert_eq!(send_n(&p, 200).await, 200);
    let (ta, tc) = (na.load(Ordering::SeqCst), nc.load(Ordering::SeqCst));
    assert!(ta >= 60 && tc >= 60, "50/50 by host count: {ta}/{tc}");
    assert_eq!(p.stat("cluster.c.lb_healthy_panic").await, 200);
    drop(p);
    // Panic off: nothing to pick.
    let p = proxy(
        &[(0, vec![(a, false)]), (1, vec![(c, false)])],
        "common_lb_config: {healthy_panic_threshold: {value: 0}},",
    )
    .await;
    let (status, _, body) = http_get(p.addr(), "/x", &[]).await;
    assert_eq!((status, &body[..]), (503, &b"no healthy upstream"[..]));
}

#[tokio::test]
async fn an_ejected_host_fails_over_to_the_next_priority() {
    // Istio's locality failover: DestinationRule outlier detection, the local zone's
    // endpoints at P0, the next at P1.
    let (bad, nbad) = counting_upstream(503, false).await;
    let (good, ngood) = counting_upstream(200, false).await;
    let p = proxy(
        &[(0, vec![(bad, true)]), (1, vec![(good, true)])],
        "outlier_detection: {consecutive_5xx: 2, interval: 0.2s, base_ejection_time: 30s, max_ejection_percent: 100}, common_lb_config: {healthy_panic_threshold: {value: 0}},",
    )
    .await;
    assert_eq!(send_n(&p, 2).await, 0);
    assert_eq!(
        p.stat_reaching("cluster.c.outlier_detection.ejections_active", 1)
            .await,
        1
    );
    assert_eq!(send_n(&p, 10).await, 10);
    assert_eq!(nbad.load(Ordering::SeqCst), 2);
    assert_eq!(ngood.load(Ordering::SeqCst), 10);
}

#[test]
fn priorities_are_refused_where_not_supported() {
    let (ok, err) = validate(
        "dns-priority",
        &config(
            "",
            &all_to("c"),
            "[{name: c, type: STRICT_DNS, connect_timeout: 1s, load_assignment: {cluster_name: c, endpoints: [{priority: 1, lb_endpoints: [{endpoint: {address: {socket_address: {address: localhost, port_value: 1}}}}]}]}}]",
        ),
        &[],
    );
    assert!(!ok && err.contains("endpoints[0].priority"), "{err}");
    // Envoy's bound: at most 128.
    let (ok, err) = validate(
        "priority-129",
        &config(
            "",
            &all_to("c"),
            "[{name: c, connect_timeout: 1s, load_assignment: {cluster_name: c, endpoints: [{priority: 129, lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}}]",
        ),
        &[],
    );
    assert!(!ok && err.contains("must be at most 128"), "{err}");
}
