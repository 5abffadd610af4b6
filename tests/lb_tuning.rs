//! What tunes a cluster's load balancing, as DestinationRule programs it through istiod:
//! locality weights (`locality_weighted_lb_config`, Istio's `localityLbSetting.distribute`),
//! slow start (`slow_start_config`, Istio's `warmupDurationSecs`) and least request's
//! `active_request_bias`. Shapes over real sockets, with wide tolerances; the exact weights
//! are Envoy's formulas (unit tests in `src/upstream/pick.rs`).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::ads::*;
use support::*;

fn ep(a: SocketAddr, healthy: bool) -> String {
    let status = if healthy { "HEALTHY" } else { "UNHEALTHY" };
    format!(
        "{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, health_status: {status}}}",
        a.port()
    )
}

/// A STATIC cluster `c` with locality weighting, its localities (weight, endpoints).
fn weighted_cluster(localities: &[(Option<u32>, Vec<String>)], extra: &str) -> String {
    let ls: Vec<String> = localities
        .iter()
        .enumerate()
        .map(|(i, (w, eps))| {
            let weight = w.map_or(String::new(), |w| format!("load_balancing_weight: {w}, "));
            format!(
                "{{locality: {{zone: z{i}}}, {weight}lb_endpoints: [{}]}}",
                eps.join(", ")
            )
        })
        .collect();
    format!(
        "{{name: c, connect_timeout: 1s, {extra} common_lb_config: {{locality_weighted_lb_config: {{}}}}, load_assignment: {{cluster_name: c, endpoints: [{}]}}}}",
        ls.join(", ")
    )
}

async fn send(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let out = raw(
            addr,
            b"GET / HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}

fn load(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[tokio::test]
async fn localities_take_their_weight_of_the_load() {
    let (a, ca) = counting_upstream(200, false).await;
    let (b, cb) = counting_upstream(200, false).await;
    let (z, cz) = counting_upstream(200, false).await;
    // A weighs 1, B 3; Z has no weight: no traffic under locality weighting.
    let c = weighted_cluster(
        &[
            (Some(1), vec![ep(a, true)]),
            (Some(3), vec![ep(b, true)]),
            (None, vec![ep(z, true)]),
        ],
        "",
    );
    let p = Proxy::start(
        &config("", &all_to("c"), &format!("[{c}]")),
        &one_core("legacy"),
    )
    .await;
    send(p.addr(), 200).await;
    assert_eq!(load(&cz), 0);
    // Envoy's locality scheduler is a weighted round robin: 1 in 4.
    assert!((45..=55).contains(&load(&ca)), "A took {}", load(&ca));
    assert!((145..=155).contains(&load(&cb)), "B took {}", load(&cb));
}

/// A locality's weight shrinks with its availability (overprovisioning × healthy share,
/// at most 1): half its hosts healthy makes 0.7 of its weight.
#[tokio::test]
async fn a_locality_with_unhealthy_hosts_takes_less() {
    let (a1, ca) = counting_upstream(200, false).await;
    let (a2, _) = counting_upstream(200, false).await;
    let (b, cb) = counting_upstream(200, false).await;
    let c = weighted_cluster(
        &[
            (Some(1), vec![ep(a1, true), ep(a2, false)]),
            (Some(1), vec![ep(b, true)]),
        ],
        "",
    );
    let p = Proxy::start(
        &config("", &all_to("c"), &format!("[{c}]")),
        &one_core("legacy"),
    )
    .await;
    send(p.addr(), 170).await;
    // 0.7 / 1.7 of 170 = 70.
    assert!((62..=78).contains(&load(&ca)), "A took {}", load(&ca));
    assert_eq!(load(&ca) + load(&cb), 170);
}

/// In panic (too few healthy hosts), localities are not weighed: every host takes its
/// share, as in Envoy.
#[tokio::test]
async fn panic_ignores_localities() {
    let (a, ca) = counting_upstream(200, false).await;
    let (b, cb) = counting_upstream(200, false).await;
    let c = weighted_cluster(
        &[
            (Some(1), vec![ep(a, false)]),
            (Some(100), vec![ep(b, false)]),
        ],
        "",
    );
    let p = Proxy::start(
        &config("", &all_to("c"), &format!("[{c}]")),
        &one_core("legacy"),
    )
    .await;
    send(p.addr(), 40).await;
    assert_eq!((load(&ca), load(&cb)), (20, 20));
    assert_eq!(p.stat("cluster.c.lb_healthy_panic").await, 40);
}

#[test]
fn locality_weighting_is_refused_where_not_implemented() {
    let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (extra, want) in [
        (
            "lb_policy: RING_HASH,",
            "is not implemented with RING_HASH or MAGLEV",
        ),
        (
            "type: STRICT_DNS,",
            "is implemented for STATIC and EDS clusters only",
        ),
    ] {
        let c = weighted_cluster(&[(Some(1), vec![ep(a, true)])], extra);
        let (ok, out) = validate("lw", &config("", &all_to("c"), &format!("[{c}]")), &[]);
        assert!(!ok && out.contains(want), "{extra}: {out}");
        assert!(
            out.contains("common_lb_config.locality_weighted_lb_config"),
            "{out}"
        );
    }
}

/// Least request with unequal weights weighs each host by weight / (active + 1)^bias: with
/// the default bias a host whose requests pile up takes fewer new ones; with bias 0 it
/// keeps its weight's share.
#[tokio::test]
async fn active_request_bias_steers_away_from_busy_hosts() {
    let mut held = Vec::new();
    for (bias, range) in [("1.0", 0..=14), ("0.0", 16..=80)] {
        let (slow, cs) = counting_upstream(200, true).await;
        let (fast, _) = counting_upstream(200, false).await;
        let c = format!(
            "{{name: c, connect_timeout: 1s, lb_policy: LEAST_REQUEST, least_request_lb_config: {{active_request_bias: {{default_value: {bias}}}}}, load_assignment: {{cluster_name: c, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, load_balancing_weight: 1}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, load_balancing_weight: 2}}]}}]}}}}",
            slow.port(),
            fast.port()
        );
        let p = Proxy::start(
            &config("", &all_to("c"), &format!("[{c}]")),
            &one_core("legacy"),
        )
        .await;
        for _ in 0..80 {
            let before = load(&cs);
            let addr = p.addr();
            let req = tokio::spawn(async move {
                raw(
                    addr,
                    b"GET / HTTP/1.1\r\nhost: c\r\nconnection: close\r\n\r\n",
                    Duration::from_secs(30),
                )
                .await
            });
            // Either the fast host answers, or the slow one holds it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if req.is_finished() || load(&cs) > before {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "request lost");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !req.is_finished() {
                held.push(req);
            }
        }
        assert!(
            range.contains(&load(&cs)),
            "bias {bias}: the busy host took {}",
            load(&cs)
        );
        held.iter().for_each(|h| h.abort());
    }
}

/// Slow start: an endpoint that joins takes a small share at first, growing over the
/// window; the endpoints already there are out of theirs.
#[tokio::test]
async fn a_new_endpoint_warms_up() {
    let (a, ca) = counting_upstream(200, false).await;
    let (b, cb) = counting_upstream(200, false).await;
    let mut ads = AdsServer::tcp(0).await;
    let boot = bootstrap(&ads.addr, false);
    let proxy = Proxy::start(&boot, &one_core("legacy")).await;
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(LISTENER).await;
    let cluster = cluster_any(
        "{name: svc, type: EDS, connect_timeout: 1s, eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}, round_robin_lb_config: {slow_start_config: {slow_start_window: 3s, min_weight_percent: {value: 1}}}}",
    );
    ads.push(CLUSTER, "c1", vec![cluster]);
    ads.next_sotw(CLUSTER).await;
    ads.next_sotw(ENDPOINT).await;
    ads.push(ENDPOINT, "e1", vec![cla("svc", &[a])]);
    ads.next_sotw(ENDPOINT).await;
    ads.push(LISTENER, "l1", vec![rds_listener("l1", 0, "r1")]);
    ads.next_sotw(LISTENER).await;
    ads.next_sotw(ROUTE).await;
    ads.push(ROUTE, "r1", vec![route_to("r1", "svc")]);
    ads.next_sotw(ROUTE).await;
    let addr = proxy.wait_listener("l1").await;
    send(addr, 5).await;
    // `a` is out of its window before `b` comes.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    ads.push(ENDPOINT, "e2", vec![cla("svc", &[a, b])]);
    ads.next_sotw(ENDPOINT).await;
    proxy
        .wait_config("two endpoints", |v| {
            v.to_string()
                .contains(&format!("\"port_value\":{}", b.port()))
        })
        .await;
    let (a0, b0) = (load(&ca), load(&cb));
    send(addr, 100).await;
    let early = load(&cb) - b0;
    assert!(early < 30, "the new endpoint took {early} of 100 at once");
    assert_eq!(load(&ca) - a0 + early, 100);
    // Once its window has passed, it takes half.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let b1 = load(&cb);
    send(addr, 100).await;
    let late = load(&cb) - b1;
    assert!(
        (40..=60).contains(&late),
        "the warmed-up endpoint took {late} of 100"
    );
}
