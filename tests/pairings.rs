//! The same requests over all four codec pairings (HTTP/1.1 or HTTP/2 downstream, each to
//! an HTTP/1.1 and an HTTP/2 upstream) count the same: `upstream_rq_active` while a
//! request is in flight, the least-request load that steers the next requests away from a
//! busy host, and the per-code counters.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/2 upstream answering `/sleep/N` after N ms; counts its requests.
async fn h2_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let ms: u64 = req
                            .uri()
                            .path()
                            .strip_prefix("/sleep/")
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let resp = Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut tx) = respond.send_response(resp, false) {
                            let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                        }
                    });
                }
            });
        }
    });
    (addr, seen)
}

/// A GET over HTTP/2 (prior knowledge) on a new connection; the status.
async fn h2_get(addr: SocketAddr, path: &str) -> u16 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://svc{path}")).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk;
    }
    status
}

async fn get(addr: SocketAddr, path: String, h2: bool) -> u16 {
    if h2 {
        h2_get(addr, &path).await
    } else {
        http_get(addr, &path, &[]).await.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_pairing_counts_requests_in_flight_and_balances_on_them() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (c, c_seen) = h2_upstream().await;
    let (d, d_seen) = h2_upstream().await;
    let lr = "lb_policy: LEAST_REQUEST, least_request_lb_config: {choice_count: 20},";
    let clusters = format!(
        "[{}, {}]",
        cluster("one", &[a.addr, b.addr], lr),
        cluster(
            "two",
            &[c, d],
            &format!("{lr} http2_protocol_options: {{}},")
        ),
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [
        {match: {prefix: /h1/}, route: {cluster: one, prefix_rewrite: /}},
        {match: {prefix: /h2/}, route: {cluster: two, prefix_rewrite: /}}]}]";
    let h1_seen = |i: usize| [&a, &b][i].seen.requests.load(Ordering::SeqCst);
    let h2_seen = |i: usize| [&c_seen, &d_seen][i].load(Ordering::SeqCst);
    for driver in drivers() {
        let p = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
        let addr = p.addr();
        for (down_h2, up) in [(false, "h1"), (false, "h2"), (true, "h1"), (true, "h2")] {
            let pairing = format!("{driver}: {} -> {up}", if down_h2 { "h2" } else { "h1" });
            let cluster = if up == "h1" { "one" } else { "two" };
            let seen = |i| if up == "h1" { h1_seen(i) } else { h2_seen(i) };
            let before = [seen(0), seen(1)];
            let ok = format!("cluster.{cluster}.upstream_rq_200");
            let ok_before = p.stat(&ok).await;
            let active = format!("cluster.{cluster}.upstream_rq_active");
            // One slow request holds a host; while it is in flight it is counted ...
            let slow = tokio::spawn(get(addr, format!("/{up}/sleep/1500"), down_h2));
            assert_eq!(p.stat_reaching(&active, 1).await, 1, "{pairing}");
            // The host counts the request once it has read it: a moment after the proxy.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let busy = loop {
                if let Some(i) = (0..2).find(|&i| seen(i) > before[i]) {
                    break i;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{pairing}: the slow request reached no host"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            // ... so least-request sends the next ones to the other host.
            for _ in 0..5 {
                assert_eq!(
                    get(addr, format!("/{up}/x"), down_h2).await,
                    200,
                    "{pairing}"
                );
            }
            assert_eq!(
                seen(busy),
                before[busy] + 1,
                "{pairing}: sent to the busy host"
            );
            assert_eq!(seen(1 - busy), before[1 - busy] + 5, "{pairing}");
            assert_eq!(slow.await.unwrap(), 200, "{pairing}");
            // The proxy lowers the gauge just after the client has the response: wait for
            // it (`stat_reaching` only waits for a rise).
            assert_eq!(p.stat_falling_to(&active, 0).await, 0, "{pairing}");
            // Every pairing counts the response code.
            assert_eq!(p.stat(&ok).await, ok_before + 6, "{pairing}");
        }
    }
}

/// The `_count` of a histogram in `/stats/prometheus`, for the sample with `labels`.
async fn histogram_count(p: &Proxy, family: &str, labels: &str) -> u64 {
    let (_, text) = p.admin_get("/stats/prometheus").await;
    let line = format!("{family}_count{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_pairing_records_the_timing_histograms() {
    let a = Backend::start("a").await;
    let (c, _) = h2_upstream().await;
    let clusters = format!(
        "[{}, {}]",
        cluster("one", &[a.addr], ""),
        cluster("two", &[c], "http2_protocol_options: {},"),
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [
        {match: {prefix: /h1/}, route: {cluster: one, prefix_rewrite: /}},
        {match: {prefix: /h2/}, route: {cluster: two, prefix_rewrite: /}}]}]";
    let p = Proxy::start(&config("", vhosts, &clusters), &one_core("legacy")).await;
    let addr = p.addr();
    // Before any request: Envoy lists the connect histogram empty and creates the request
    // time histogram on its first sample.
    let (_, text) = p.admin_get("/stats").await;
    assert!(
        text.contains("cluster.one.upstream_cx_connect_ms: No recorded values"),
        "{text}"
    );
    assert!(!text.contains("cluster.one.upstream_rq_time:"), "{text}");
    for (down_h2, up) in [(false, "h1"), (false, "h2"), (true, "h1"), (true, "h2")] {
        assert_eq!(get(addr, format!("/{up}/sleep/30"), down_h2).await, 200);
    }
    let one = "envoy_cluster_name=\"one\"";
    let two = "envoy_cluster_name=\"two\"";
    assert_eq!(
        histogram_count(&p, "envoy_cluster_upstream_rq_time", one).await,
        2
    );
    assert_eq!(
        histogram_count(&p, "envoy_cluster_upstream_rq_time", two).await,
        2
    );
    // One HTTP/2 connection to `two`; `one` opened a connection per HTTP/1.1 request it
    // could not reuse.
    assert_eq!(
        histogram_count(&p, "envoy_cluster_upstream_cx_connect_ms", two).await,
        1
    );
    assert!(histogram_count(&p, "envoy_cluster_upstream_cx_connect_ms", one).await >= 1);
    let ingress = "envoy_http_conn_manager_prefix=\"ingress\"";
    assert_eq!(
        histogram_count(&p, "envoy_http_downstream_rq_time", ingress).await,
        4
    );
    // Every upstream request took the upstream's 30 ms: none is in the 25 ms bucket.
    let (_, prom) = p.admin_get("/stats/prometheus").await;
    assert!(
        prom.contains(
            "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"two\",le=\"25\"} 0"
        ),
        "{prom}"
    );
    assert!(prom.contains(
        "envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=\"two\",le=\"+Inf\"} 2"
    ));
    // The text form: quantiles with the cumulative value, all at least 30 ms.
    let (_, text) = p
        .admin_get("/stats?filter=cluster.two.upstream_rq_time")
        .await;
    let line = text
        .lines()
        .find(|l| l.starts_with("cluster.two.upstream_rq_time: "))
        .unwrap();
    assert!(
        line.starts_with("cluster.two.upstream_rq_time: P0(nan,"),
        "{line}"
    );
    let p0: f64 = line["cluster.two.upstream_rq_time: P0(nan,".len()..]
        .split(')')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(p0 >= 30.0, "{line}");
}

/// `max_requests_per_connection` counts HTTP/2 streams too: an upstream connection that
/// served its share takes no new stream (and goes once its last one ends), so five
/// requests need three connections at two per connection, from either downstream codec.
/// The cluster-level (deprecated) field pilot-agent's bootstrap uses is the same setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstreams_serve_at_most_max_requests_per_connection_streams() {
    // The deprecated cluster fields, then the typed HttpProtocolOptions istiod writes.
    let typed = "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, common_http_protocol_options: {max_requests_per_connection: 2, idle_timeout: 30s}, explicit_http_config: {http2_protocol_options: {}}}},";
    for options in [
        "http2_protocol_options: {}, max_requests_per_connection: 2,",
        typed,
    ] {
        let (c, seen) = h2_upstream().await;
        let clusters = format!("[{}]", cluster("two", &[c], options));
        let vhosts =
            "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: two}}]}]";
        let p = Proxy::start(&config("", vhosts, &clusters), &one_core("legacy")).await;
        for down_h2 in [false, true, false, true, false] {
            assert_eq!(get(p.addr(), "/sleep/0".to_string(), down_h2).await, 200);
        }
        assert_eq!(seen.load(Ordering::SeqCst), 5, "{options}");
        assert_eq!(
            p.stat("cluster.two.upstream_cx_http2_total").await,
            3,
            "{options}"
        );
        assert_eq!(p.stat("cluster.two.upstream_cx_max_requests").await, 2);
        // The two exhausted connections are closed; the third stays for more.
        assert_eq!(
            p.stat_reaching("cluster.two.upstream_cx_active", 1).await,
            1
        );
    }
}
