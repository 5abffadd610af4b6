//! Circuit breakers hold for the whole proxy: `max_requests` refuses the request past it,
//! `max_connections` makes a request wait as pending (under `max_pending_requests`) until a
//! connection of the cluster is free, and every refusal is Envoy's 503 with
//! `x-envoy-overloaded: true` over either downstream codec.

mod support;

use std::time::Duration;
use support::*;

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

const OVERFLOW: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: overflow";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_cores_and_codecs() {
    let a = Backend::start("a").await;
    let clusters = format!(
        "[{}, {}, {}]",
        cluster(
            "rq",
            &[a.addr],
            "circuit_breakers: {thresholds: [{max_requests: 1}]},"
        ),
        cluster(
            "cx",
            &[a.addr],
            "circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 1, track_remaining: true}]},"
        ),
        cluster(
            "cxu",
            &[a.addr],
            "circuit_breakers: {thresholds: [{max_connections: 1, max_pending_requests: 4294967295}]},"
        ),
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [
        {match: {prefix: /rq/}, route: {cluster: rq, prefix_rewrite: /}},
        {match: {prefix: /cx/}, route: {cluster: cx, prefix_rewrite: /}},
        {match: {prefix: /cxu/}, route: {cluster: cxu, prefix_rewrite: /}}]}]";
    // Two cores: the limit is the proxy's, whichever core takes each connection.
    let p = Proxy::start(
        &config("", vhosts, &clusters),
        &["--concurrency", "2", "--io-driver", "legacy"],
    )
    .await;
    let addr = p.addr();

    // max_requests 1: a second request while one is in flight is refused, on HTTP/1.1 and
    // HTTP/2 alike.
    let slow = tokio::spawn(async move { http_get(addr, "/rq/sleep/400", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, h, body) = http_get(addr, "/rq/x", &[]).await;
    assert_eq!((s, header(&h, "x-envoy-overloaded")), (503, Some("true")));
    assert_eq!(body, OVERFLOW);
    let (s, h, _) = h2_request(addr, "GET", "/rq/x", &[]).await;
    assert_eq!((s, header(&h, "x-envoy-overloaded")), (503, Some("true")));
    assert_eq!(slow.await.unwrap().0, 200);
    assert_eq!(p.stat("cluster.rq.upstream_rq_active_overflow").await, 2);
    // Free again once the first is done.
    assert_eq!(http_get(addr, "/rq/x", &[]).await.0, 200);

    // max_connections 1, max_pending_requests 1: the second request waits for the only
    // connection and is then served; a third, past the pending limit, is refused.
    let first = tokio::spawn(async move { http_get(addr, "/cx/sleep/500", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(async move { http_get(addr, "/cx/sleep/10", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, remaining) = p
        .admin_get("/stats?filter=cluster.cx.circuit_breakers")
        .await;
    assert!(
        remaining.contains("cluster.cx.circuit_breakers.default.remaining_cx: 0")
            && remaining.contains("cluster.cx.circuit_breakers.default.remaining_pending: 0")
            && remaining.contains("cluster.cx.circuit_breakers.default.cx_open: 1"),
        "{remaining}"
    );
    let (s, h, body) = h2_request(addr, "GET", "/cx/x", &[]).await;
    assert_eq!((s, header(&h, "x-envoy-overloaded")), (503, Some("true")));
    assert_eq!(body, OVERFLOW);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    assert_eq!(p.stat("cluster.cx.upstream_cx_overflow").await, 1);
    assert_eq!(p.stat("cluster.cx.upstream_rq_pending_overflow").await, 1);
    // Never more than one connection at a time.
    assert!(p.stat("cluster.cx.upstream_cx_active").await <= 1);
    // With pending requests unlimited (istiod's 2^32-1) a waiting request is still woken
    // when the connection is free (not refused at the connect timeout).
    let first = tokio::spawn(async move { http_get(addr, "/cxu/sleep/300", &[]).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _, _) = http_get(addr, "/cxu/x", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(p.stat("cluster.cxu.upstream_rq_pending_overflow").await, 0);

    // The connection stays pooled, so the cluster is still at its connection limit.
    let (_, after) = p
        .admin_get("/stats?filter=cluster.cx.circuit_breakers")
        .await;
    assert!(
        after.contains("default.cx_open: 1") && after.contains("default.remaining_cx: 0"),
        "{after}"
    );
}

/// What is not implemented is refused by name, never ignored.
#[test]
fn per_host_and_pool_limits_are_refused_by_field() {
    for (extra, field) in [
        (
            "circuit_breakers: {per_host_thresholds: [{max_connections: 1, max_requests: 2}]}",
            "circuit_breakers.per_host_thresholds[0].max_requests: only max_connections applies per host",
        ),
        (
            "circuit_breakers: {thresholds: [{max_connection_pools: 1}]}",
            "circuit_breakers.thresholds[0].max_connection_pools",
        ),
    ] {
        let yaml = format!("static_resources:\n  clusters:\n  - name: c\n    {extra}\n");
        let (ok, err) = validate("c.yaml", &yaml, &[]);
        assert!(!ok && err.contains(field), "{err}");
    }
}

/// `per_host_thresholds.max_connections`: a request that would open a second connection to
/// a host at its limit waits, as a pending request, for the host's first to close, then
/// goes through (`upstream_cx_overflow` counts the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_host_connection_limit_makes_requests_wait() {
    let b = Backend::start("b").await;
    let clusters = format!(
        "[{}]",
        cluster(
            "c",
            &[b.addr],
            "circuit_breakers: {per_host_thresholds: [{max_connections: 1}]},"
        )
    );
    let p = Proxy::start(
        &config("", &all_to("c"), &clusters),
        &["--concurrency", "1"],
    )
    .await;
    let addr = p.addr();
    let slow = tokio::spawn(async move { http_get(addr, "/sleep/300", &[]).await.0 });
    // The first request holds the host's one connection.
    p.stat_reaching("cluster.c.upstream_rq_active", 1).await;
    let (status, _, _) = http_get(addr, "/x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(p.stat("cluster.c.upstream_cx_overflow").await, 1);
    assert_eq!(p.stat("cluster.c.upstream_rq_pending_overflow").await, 0);
}
