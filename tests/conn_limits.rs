//! The connection options istiod writes into a cluster's typed `HttpProtocolOptions`
//! (`common_http_protocol_options`) beyond `idle_timeout` and
//! `max_requests_per_connection`: `max_connection_duration` (a DestinationRule's
//! `connectionPool.tcp.maxConnectionDuration`) retires upstream connections by age, on
//! both upstream codecs; `max_headers_count` bounds an upstream's response head.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The typed options with `common` as `common_http_protocol_options`, for HTTP/2
/// upstreams when `h2`.
fn options(common: &str, h2: bool) -> String {
    let explicit = if h2 {
        "http2_protocol_options"
    } else {
        "http_protocol_options"
    };
    format!("typed_extension_protocol_options: {{envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, common_http_protocol_options: {{{common}}}, explicit_http_config: {{{explicit}: {{}}}}}}}},")
}

/// An HTTP/2 upstream: `/sleep/N` answers after N ms, `/headers/N` with N headers besides
/// `:status`. Counts the connections it accepted and those that ended.
async fn h2_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (opened, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, c) = (opened.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                if let Ok(mut conn) = h2::server::handshake(tcp).await {
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        tokio::spawn(async move {
                            let path = req.uri().path().to_string();
                            let n: usize = path.rsplit('/').next().unwrap().parse().unwrap_or(0);
                            let mut resp = Response::builder().status(200);
                            if path.starts_with("/sleep/") {
                                tokio::time::sleep(Duration::from_millis(n as u64)).await;
                            } else {
                                for i in 0..n {
                                    resp = resp.header(format!("x-h{i}"), "v");
                                }
                            }
                            if let Ok(mut tx) = respond.send_response(resp.body(()).unwrap(), false)
                            {
                                let _ = tx.send_data(Bytes::from_static(b"ok"), true);
                            }
                        });
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, opened, closed)
}

/// An HTTP/1.1 upstream answering `/headers/N` with exactly N header lines (the last
/// is content-length), keeping connections alive.
async fn h1_headers_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/");
                        let n: usize = path.rsplit('/').next().unwrap().parse().unwrap_or(1);
                        let mut out = String::from("HTTP/1.1 200 OK\r\n");
                        for i in 0..n.saturating_sub(1) {
                            out.push_str(&format!("x-h{i}: v\r\n"));
                        }
                        out.push_str("content-length: 2\r\n\r\nok");
                        if tcp.write_all(out.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

async fn get(addr: SocketAddr, path: &str, h2: bool) -> (u16, String) {
    if h2 {
        let (status, _, body) = h2_request(addr, "GET", path, &[]).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    } else {
        let (status, _, body) = http_get(addr, path, &[]).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// HTTP/1.1 upstreams: a pooled connection past `max_connection_duration` is closed, even
/// when no request asks for it (the core's sweep), and counted; one that passes its age
/// while busy goes once its response is done; requests then open new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_connections_retire_at_max_connection_duration() {
    let b = Backend::start("a").await;
    let opts = options("max_connection_duration: 1s, idle_timeout: 60s", false);
    let clusters = format!("[{}]", cluster("aged", &[b.addr], &opts));
    for driver in drivers() {
        let conns = b.seen.connections.load(Ordering::SeqCst);
        let p = Proxy::start(&config("", &all_to("aged"), &clusters), &one_core(driver)).await;
        // Two requests share one connection while it is young.
        for _ in 0..2 {
            assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200, "{driver}");
        }
        assert_eq!(
            b.seen.connections.load(Ordering::SeqCst),
            conns + 1,
            "{driver}"
        );
        // Idle in the pool past its age: closed without a request, and counted.
        let reached = "cluster.aged.upstream_cx_max_duration_reached";
        assert_eq!(p.stat_reaching(reached, 1).await, 1, "{driver}");
        assert_eq!(
            p.stat_falling_to("cluster.aged.upstream_cx_active", 0)
                .await,
            0
        );
        assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200, "{driver}");
        assert_eq!(
            b.seen.connections.load(Ordering::SeqCst),
            conns + 2,
            "{driver}"
        );
        // Busy when its age passes: the response is whole, then the connection goes.
        let (status, _, body) = http_get(p.addr(), "/sleep/1300", &[]).await;
        assert_eq!((status, &body[..]), (200, &b"slept"[..]), "{driver}");
        assert_eq!(p.stat(reached).await, 2, "{driver}");
        assert_eq!(
            p.stat("cluster.aged.upstream_cx_active").await,
            0,
            "{driver}"
        );
        assert_eq!(p.stat("cluster.aged.upstream_cx_idle_timeout").await, 0);
    }
}

/// HTTP/2 upstreams: a connection past `max_connection_duration` takes no new stream (the
/// next request opens another) while its streams in flight finish; then it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_connections_take_no_streams_past_max_connection_duration() {
    for driver in drivers() {
        http2_upstream_connections_take_no_streams_past_max_connection_duration_on(driver).await;
    }
}

async fn http2_upstream_connections_take_no_streams_past_max_connection_duration_on(driver: &str) {
    eprintln!("on the {driver} driver");
    let (up, opened, closed) = h2_upstream().await;
    let opts = options("max_connection_duration: 1s", true);
    let clusters = format!("[{}]", cluster("aged", &[up], &opts));
    let p = Proxy::start(&config("", &all_to("aged"), &clusters), &one_core(driver)).await;
    assert_eq!(get(p.addr(), "/x", true).await.0, 200);
    assert_eq!(get(p.addr(), "/x", false).await.0, 200);
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    // A stream that outlives the connection's age ...
    let addr = p.addr();
    let slow = tokio::spawn(async move { get(addr, "/sleep/1800", true).await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // ... goes on, while a new request goes to a new connection.
    assert_eq!(get(p.addr(), "/x", false).await.0, 200);
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(
        p.stat("cluster.aged.upstream_cx_max_duration_reached")
            .await,
        1
    );
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    assert_eq!(slow.await.unwrap(), (200, "ok".to_string()));
    // With its last stream done the old connection closes; the new one ages out too.
    assert_eq!(
        p.stat_reaching("cluster.aged.upstream_cx_max_duration_reached", 2)
            .await,
        2
    );
    assert_eq!(
        p.stat_falling_to("cluster.aged.upstream_cx_active", 0)
            .await,
        0
    );
    assert_eq!(closed.load(Ordering::SeqCst), 2);
}

/// HTTP/2 upstream connections without a stream for the cluster's `idle_timeout` close,
/// as Envoy's do (`upstream_cx_idle_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_upstream_connections_close_after_idle_timeout() {
    for driver in drivers() {
        idle_http2_upstream_connections_close_after_idle_timeout_on(driver).await;
    }
}

async fn idle_http2_upstream_connections_close_after_idle_timeout_on(driver: &str) {
    eprintln!("on the {driver} driver");
    let (up, opened, closed) = h2_upstream().await;
    let opts = options("idle_timeout: 1s", true);
    let clusters = format!("[{}]", cluster("idle", &[up], &opts));
    let p = Proxy::start(&config("", &all_to("idle"), &clusters), &one_core(driver)).await;
    assert_eq!(get(p.addr(), "/x", true).await.0, 200);
    assert_eq!(
        p.stat_reaching("cluster.idle.upstream_cx_idle_timeout", 1)
            .await,
        1
    );
    assert_eq!(
        p.stat_falling_to("cluster.idle.upstream_cx_active", 0)
            .await,
        0
    );
    assert_eq!(get(p.addr(), "/x", true).await.0, 200);
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert!(closed.load(Ordering::SeqCst) >= 1);
}

/// `max_headers_count` bounds the upstream's response head, as Envoy's codecs do: over
/// HTTP/1.1 more header lines than that is a protocol error (502, UPE,
/// `upstream_cx_protocol_error`); over HTTP/2, where `:status` counts, the stream is reset
/// (503, "remote reset"). The default is 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_heads_with_more_than_max_headers_count_headers_are_refused() {
    for driver in drivers() {
        response_heads_with_more_than_max_headers_count_headers_are_refused_on(driver).await;
    }
}

async fn response_heads_with_more_than_max_headers_count_headers_are_refused_on(driver: &str) {
    eprintln!("on the {driver} driver");
    let h1 = h1_headers_upstream().await;
    let (h2, _, _) = h2_upstream().await;
    let clusters = format!(
        "[{}, {}, {}, {}]",
        cluster("h1", &[h1], &options("max_headers_count: 3", false)),
        cluster("h2", &[h2], &options("max_headers_count: 3", true)),
        cluster("h1default", &[h1], ""),
        cluster("h1wide", &[h1], &options("max_headers_count: 300", false)),
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [
        {match: {prefix: /h1/}, route: {cluster: h1}},
        {match: {prefix: /h2/}, route: {cluster: h2}},
        {match: {prefix: /default/}, route: {cluster: h1default}},
        {match: {prefix: /wide/}, route: {cluster: h1wide}}]}]";
    let p = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
    for down_h2 in [false, true] {
        assert_eq!(get(p.addr(), "/h1/headers/3", down_h2).await.0, 200);
        let (status, body) = get(p.addr(), "/h1/headers/4", down_h2).await;
        assert_eq!(status, 502, "{body}");
        assert!(body.ends_with("reset reason: protocol error"), "{body}");
        assert_eq!(get(p.addr(), "/h2/headers/2", down_h2).await.0, 200);
        let (status, body) = get(p.addr(), "/h2/headers/3", down_h2).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.ends_with("reset reason: remote reset"), "{body}");
        // (The test's own HTTP/1.1 client takes at most 100 headers, the proxy's
        // included.)
        assert_eq!(get(p.addr(), "/default/headers/95", down_h2).await.0, 200);
        assert_eq!(get(p.addr(), "/default/headers/101", down_h2).await.0, 502);
    }
    // Past the parser's slots on the stack.
    let wide = raw(
        p.addr(),
        b"GET /wide/headers/250 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(wide.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert_eq!(get(p.addr(), "/wide/headers/250", true).await.0, 200);
    assert_eq!(p.stat("cluster.h1.upstream_cx_protocol_error").await, 2);
    assert_eq!(
        p.stat("cluster.h1default.upstream_cx_protocol_error").await,
        2
    );
    assert_eq!(p.stat("cluster.h2.upstream_rq_rx_reset").await, 2);
    // Charged to the clusters as Envoy's router charges an upstream's failure.
    assert_eq!(p.stat("cluster.h2.upstream_rq_503").await, 2);
    assert_eq!(p.stat("cluster.h1.upstream_rq_502").await, 2);
    assert_eq!(p.stat("cluster.h1.upstream_rq_completed").await, 4);
}

/// HTTP/1.1 upstream connections serve at most `max_requests_per_connection` requests;
/// each that reaches it is counted in `upstream_cx_max_requests` and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_connections_serve_at_most_max_requests_per_connection() {
    let b = Backend::start("a").await;
    let opts = options("max_requests_per_connection: 2", false);
    let clusters = format!("[{}]", cluster("two", &[b.addr], &opts));
    for driver in drivers() {
        let conns = b.seen.connections.load(Ordering::SeqCst);
        let p = Proxy::start(&config("", &all_to("two"), &clusters), &one_core(driver)).await;
        for _ in 0..5 {
            assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200, "{driver}");
        }
        assert_eq!(
            b.seen.connections.load(Ordering::SeqCst),
            conns + 3,
            "{driver}"
        );
        assert_eq!(p.stat("cluster.two.upstream_cx_max_requests").await, 2);
        assert_eq!(
            p.stat("cluster.two.upstream_cx_active").await,
            1,
            "{driver}"
        );
    }
}

/// The cluster's `http2_protocol_options.max_concurrent_streams` (a DestinationRule's
/// `maxConcurrentStreams`) bounds the streams open on one upstream connection, whatever
/// more the upstream allows: a second request while one is in flight opens a second
/// connection; once both are done, the next requests share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_connections_carry_at_most_max_concurrent_streams() {
    for driver in drivers() {
        http2_upstream_connections_carry_at_most_max_concurrent_streams_on(driver).await;
    }
}

async fn http2_upstream_connections_carry_at_most_max_concurrent_streams_on(driver: &str) {
    eprintln!("on the {driver} driver");
    let (up, opened, _) = h2_upstream().await;
    let opts = "http2_protocol_options: {max_concurrent_streams: 1},";
    let clusters = format!("[{}]", cluster("one", &[up], opts));
    let p = Proxy::start(&config("", &all_to("one"), &clusters), &one_core(driver)).await;
    let addr = p.addr();
    let slow = tokio::spawn(async move { get(addr, "/sleep/800", true).await });
    assert_eq!(
        p.stat_reaching("cluster.one.upstream_rq_active", 1).await,
        1
    );
    assert_eq!(get(p.addr(), "/x", false).await.0, 200);
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(slow.await.unwrap().0, 200);
    for _ in 0..3 {
        assert_eq!(get(p.addr(), "/x", true).await.0, 200);
    }
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(p.stat("cluster.one.upstream_cx_http2_total").await, 2);
}
