//! HTTP/2 through the proxy with the `h2` crate as the real client and upstream: h2c with
//! prior knowledge on an AUTO listener, HTTP/2 to an HTTP/1.1 upstream, HTTP/2 end to end
//! with full-duplex streaming and trailers, multiplexing on one upstream connection, and
//! gRPC-shaped answers the proxy makes itself.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// An h2c client with prior knowledge.
async fn h2_client(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn body_of(mut body: h2::RecvStream) -> (Vec<u8>, Option<http::HeaderMap>) {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (out, body.trailers().await.unwrap())
}

/// Sends `data` within the peer's flow-control window, waiting for more as needed.
async fn send_flow(tx: &mut h2::SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
            Some(c) => c?,
            None => return Err(h2::Reason::CANCEL.into()),
        };
        let chunk = data.split_to(cap.min(data.len()));
        tx.send_data(chunk, false)?;
    }
    Ok(())
}

type Counter = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// An HTTP/2 upstream: echoes each request body back chunk by chunk as it arrives, then
/// ends with trailers `grpc-status: 0` and `x-seen-path`; `/slow/...` waits 2 s before
/// its headers; `/reset/...` resets its stream after the first echoed chunk. Counts
/// connections and the request streams it saw reset.
async fn h2_echo_upstream() -> (SocketAddr, Counter) {
    let (addr, conns, _) = h2_echo_upstream_counting().await;
    (addr, conns)
}

async fn h2_echo_upstream_counting() -> (SocketAddr, Counter, Counter) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let resets = std::sync::Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let r = resets.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::Builder::new()
                    .initial_window_size(1 << 20)
                    .initial_connection_window_size(4 << 20)
                    .handshake(tcp)
                    .await
                else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let r = r.clone();
                    tokio::spawn(async move {
                        let path = req.uri().path().to_string();
                        let authority = req.uri().authority().map(|a| a.to_string());
                        let mut body = req.into_body();
                        if path.starts_with("/slow/") {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        let resp = Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .header("x-authority", authority.unwrap_or_default())
                            .body(())
                            .unwrap();
                        let Ok(mut tx) = respond.send_response(resp, false) else {
                            // Reset by the proxy while this peer held its headers.
                            r.fetch_add(1, Ordering::SeqCst);
                            return;
                        };
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else {
                                r.fetch_add(1, Ordering::SeqCst);
                                return;
                            };
                            let n = chunk.len();
                            if send_flow(&mut tx, chunk).await.is_err() {
                                return;
                            }
                            let _ = body.flow_control().release_capacity(n);
                            if path.starts_with("/reset/") {
                                // Let the head and the chunk go out first.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                tx.send_reset(h2::Reason::INTERNAL_ERROR);
                                return;
                            }
                        }
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("x-seen-path", path.parse().unwrap());
                        let _ = tx.send_trailers(trailers);
                    });
                }
            });
        }
    });
    (addr, conns, resets)
}

#[tokio::test]
async fn h2c_client_reaches_an_http1_upstream() {
    for driver in drivers() {
        let (backend, proxy) = proxy_to_one_backend("", &one_core(driver)).await;
        let mut client = h2_client(proxy.addr()).await;

        let req = Request::get(format!("http://example.com:{}/hello", proxy.addr().port()))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        assert!(resp.headers().contains_key("x-envoy-upstream-service-time"));
        let (body, _) = body_of(resp.into_body()).await;
        assert_eq!(body, b"upstream a /hello", "{driver}");
        assert_eq!(
            backend.seen.header("host").as_deref(),
            Some(format!("example.com:{}", proxy.addr().port()).as_str())
        );
        assert_eq!(
            backend.seen.header("x-forwarded-proto").as_deref(),
            Some("http")
        );

        // A body of unknown length goes to the HTTP/1.1 upstream chunked, in pieces.
        let req = Request::post("http://example.com/count").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        for _ in 0..10 {
            tx.send_data(Bytes::from(vec![b'x'; 10_000]), false)
                .unwrap();
        }
        tx.send_data(Bytes::new(), true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status();
        let (body, _) = body_of(resp.into_body()).await;
        assert_eq!(status, 200, "{driver}: {}", String::from_utf8_lossy(&body));
        assert_eq!(String::from_utf8_lossy(&body), "100000", "{driver}");

        // Any authority matches the catch-all virtual host.
        let req = Request::get("http://nothing.example/x").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status();
        let (body, _) = body_of(resp.into_body()).await;
        assert_eq!(status, 200, "{driver}: {}", String::from_utf8_lossy(&body));
        assert_eq!(body, b"upstream a /x");

        assert_eq!(
            proxy.stat("http.ingress.downstream_cx_http2_total").await,
            1
        );
        assert_eq!(
            proxy.stat("http.ingress.downstream_rq_http2_total").await,
            3
        );
        assert_eq!(
            proxy.stat("http.ingress.downstream_cx_http1_total").await,
            0
        );
    }
}

/// Clusters `grpc`, the echo upstream over HTTP/2 (with its connection count), and
/// `gone`, an address nothing listens on.
async fn grpc_and_gone() -> (String, Counter) {
    let (up, conns) = h2_echo_upstream().await;
    let dead = local_socket().local_addr().unwrap(); // bound, never listening: refused
    let clusters = format!(
        "[{}, {}]",
        cluster("grpc", &[up], "http2_protocol_options: {},"),
        cluster("gone", &[dead], "http2_protocol_options: {},")
    );
    (clusters, conns)
}

#[tokio::test]
async fn h2_end_to_end_streams_both_ways_with_trailers_on_one_upstream_connection() {
    for driver in drivers() {
        let (clusters, conns) = grpc_and_gone().await;
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {prefix: /gone/}, route: {cluster: gone}},
            {match: {prefix: /slow/}, route: {cluster: grpc, timeout: 0.2s}},
            {match: {prefix: /}, route: {cluster: grpc}}]}]";
        let proxy = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
        let mut client = h2_client(proxy.addr()).await;

        // Full duplex: each message comes back before the next is sent.
        let req = Request::post("http://svc.local/echo.Echo/Chat")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"ping-0"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        assert_eq!(resp.headers()["x-authority"], "svc.local");
        let mut rx = resp.into_body();
        for i in 0..5 {
            let mut got = Vec::new();
            while got.len() < 6 {
                let chunk = rx.data().await.unwrap().unwrap();
                let _ = rx.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, format!("ping-{i}").as_bytes(), "{driver}");
            let end = i == 4;
            let next = if end {
                Bytes::new()
            } else {
                Bytes::from(format!("ping-{}", i + 1))
            };
            tx.send_data(next, end).unwrap();
        }
        let (rest, trailers) = body_of(rx).await;
        assert!(rest.is_empty());
        let trailers = trailers.expect("trailers arrive");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-seen-path"], "/echo.Echo/Chat");

        // Concurrent streams share one upstream connection.
        let mut calls = Vec::new();
        for i in 0..8 {
            let mut c = client.clone();
            calls.push(tokio::spawn(async move {
                let req = Request::post(format!("http://svc.local/echo.Echo/Unary{i}"))
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap();
                let (resp, mut tx) = c.send_request(req, false).unwrap();
                tx.send_data(Bytes::from(vec![b'a' + i as u8; 300_000]), true)
                    .unwrap();
                let (body, trailers) = body_of(resp.await.unwrap().into_body()).await;
                assert_eq!(body.len(), 300_000);
                assert!(body.iter().all(|&b| b == b'a' + i as u8));
                assert_eq!(trailers.unwrap()["grpc-status"], "0");
            }));
        }
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{driver}"
        );
        assert_eq!(proxy.stat("cluster.grpc.upstream_cx_http2_total").await, 1);
        assert_eq!(proxy.stat("cluster.grpc.upstream_rq_total").await, 9);

        // The proxy's own errors to a gRPC client are gRPC-shaped: HTTP 200 with
        // grpc-status 14 (UNAVAILABLE) when the upstream cannot be reached...
        let req = Request::post("http://svc.local/gone/x")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap()),
            Some("14"),
            "{driver} {:?}",
            resp.headers()
        );
        assert!(resp.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .starts_with("upstream connect error"));

        // ... and 4 (DEADLINE_EXCEEDED) when the route timeout passes (it starts once the
        // request has ended, as in Envoy).
        let req = Request::post("http://svc.local/slow/x")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "4", "{driver}");
        assert_eq!(proxy.stat("cluster.grpc.upstream_rq_timeout").await, 1);
    }
}

/// Streams that arrive together at a proxy with no upstream connection yet share the one
/// it opens, as in Envoy (its pool attaches pending streams to the connecting client); when
/// that connection fails, every one of them fails with it, after one attempt.
#[tokio::test]
async fn a_burst_of_streams_waits_for_one_new_upstream_connection() {
    const STREAMS: usize = 24;
    for driver in drivers() {
        let (clusters, conns) = grpc_and_gone().await;
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {prefix: /gone/}, route: {cluster: gone}},
            {match: {prefix: /}, route: {cluster: grpc}}]}]";
        let proxy = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
        for prefix in ["/", "/gone/"] {
            let mut client = h2_client(proxy.addr()).await;
            // All the streams' heads are queued before the client's connection task writes
            // them: they reach the proxy together.
            let pending: Vec<_> = (0..STREAMS)
                .map(|i| {
                    let req = Request::post(format!("http://svc.local{prefix}Unary{i}"))
                        .header("content-type", "application/grpc")
                        .body(())
                        .unwrap();
                    let (resp, mut tx) = client.send_request(req, false).unwrap();
                    tx.send_data(Bytes::from(format!("m{i}")), true).unwrap();
                    resp
                })
                .collect();
            for (i, resp) in pending.into_iter().enumerate() {
                let resp = tokio::time::timeout(Duration::from_secs(5), resp)
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(resp.status(), 200, "{driver}");
                let status = resp.headers().get("grpc-status").cloned();
                let (body, trailers) = body_of(resp.into_body()).await;
                if prefix == "/" {
                    assert_eq!(body, format!("m{i}").as_bytes(), "{driver}");
                    assert_eq!(trailers.unwrap()["grpc-status"], "0");
                } else {
                    // UNAVAILABLE, the proxy's own answer.
                    assert_eq!(status.unwrap(), "14", "{driver}");
                    assert!(body.is_empty());
                }
            }
        }
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{driver}"
        );
        assert_eq!(proxy.stat("cluster.grpc.upstream_cx_http2_total").await, 1);
        assert_eq!(
            proxy.stat("cluster.grpc.upstream_rq_total").await,
            STREAMS as i64
        );
        assert_eq!(
            proxy.stat("cluster.gone.upstream_cx_total").await,
            1,
            "{driver}"
        );
        assert_eq!(proxy.stat("cluster.gone.upstream_cx_connect_fail").await, 1);
        assert_eq!(
            proxy.stat("cluster.gone.upstream_rq_503").await,
            STREAMS as i64,
            "{driver}"
        );
    }
}

#[tokio::test]
async fn codec_http2_serves_only_http2() {
    let (_backend, proxy) =
        proxy_to_one_backend("          codec_type: HTTP2", &one_core("legacy")).await;
    let mut client = h2_client(proxy.addr()).await;
    let req = Request::get("http://svc.local/x").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    // An HTTP/1.1 request is not answered in HTTP/1.1: the HTTP/2 server refuses the
    // preface (it may send a GOAWAY frame) and closes.
    let got = raw(
        proxy.addr(),
        b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        !got.starts_with(b"HTTP/1.1"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        proxy.stat("http.ingress.downstream_cx_http1_total").await,
        0
    );
    assert_eq!(proxy.stat("http.ingress.downstream_rq_total").await, 1);
}

#[tokio::test]
async fn http1_clients_reach_an_http2_upstream() {
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;
    for driver in drivers() {
        let (up, conns) = h2_echo_upstream().await;
        let clusters = format!(
            "[{}]",
            cluster("grpc", &[up], "http2_protocol_options: {},")
        );
        let proxy = Proxy::start(
            &config(
                "          upgrade_configs: [{upgrade_type: websocket}]",
                &all_to("grpc"),
                &clusters,
            ),
            &one_core(driver),
        )
        .await;
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);

        // A Content-Length body crosses as DATA frames and comes back; the upstream's
        // response has no length, so the HTTP/1.1 client gets it chunked.
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let req = hyper::Request::post("/echo.Echo/Unary")
            .header("host", "svc.local")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let resp = h1.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        assert_eq!(resp.headers()["x-authority"], "svc.local", "{driver}");
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        assert!(resp.headers().contains_key("x-envoy-upstream-service-time"));
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), body.len(), "{driver}");
        assert!(got[..] == body[..], "{driver}: body changed on the way");

        // A chunked body (unknown length) on the same keep-alive connection.
        let parts: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..20)
            .map(|i| Ok(Frame::data(Bytes::from(format!("part-{i:02};")))))
            .collect();
        let req = hyper::Request::post("/echo.Echo/Stream")
            .header("host", "svc.local")
            .body(StreamBody::new(futures_util::stream::iter(parts)))
            .unwrap();
        let (mut h1b, conn) = hyper::client::conn::http1::handshake(TokioIo::new(
            TcpStream::connect(proxy.addr()).await.unwrap(),
        ))
        .await
        .unwrap();
        tokio::spawn(conn);
        let resp = h1b.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        let want: String = (0..20).map(|i| format!("part-{i:02};")).collect();
        assert_eq!(String::from_utf8_lossy(&got), want, "{driver}");

        // A bodiless GET, still on the first connection.
        let req = hyper::Request::get("/ping")
            .header("host", "other.local")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h1.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        assert_eq!(resp.headers()["x-authority"], "other.local");
        assert!(resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty());

        // Pipelined requests on a raw connection are answered in order.
        let got = raw(
            proxy.addr(),
            b"GET /a HTTP/1.1\r\nhost: one\r\n\r\nPOST /b HTTP/1.1\r\nhost: two\r\ncontent-length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\nhost: three\r\nconnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        let one = text.find("x-authority: one").expect("first answered");
        let two = text.find("x-authority: two").expect("second answered");
        let three = text.find("x-authority: three").expect("third answered");
        assert!(one < two && two < three, "{text}");
        assert!(text.contains("5\r\nhello\r\n0\r\n\r\n"), "{text}");

        // An upgrade cannot ride an HTTP/2 upstream stream: refused, not downgraded.
        let got = raw(
            proxy.addr(),
            b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(
            text.contains("cannot be forwarded to an HTTP/2 cluster"),
            "{text}"
        );

        // Every HTTP/1.1 connection's streams shared one upstream HTTP/2 connection.
        assert_eq!(
            conns.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{driver}"
        );
        assert_eq!(proxy.stat("cluster.grpc.upstream_rq_total").await, 6);
        assert_eq!(proxy.stat("cluster.grpc.upstream_rq_completed").await, 6);
        assert_eq!(proxy.stat("cluster.grpc.upstream_rq_active").await, 0);
        assert_eq!(proxy.stat("cluster.grpc.upstream_cx_http2_total").await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_over_http2_with_bounded_memory_and_resets_both_ways() {
    use std::sync::atomic::Ordering;
    const GIB: usize = 1 << 30;
    let (up, _, resets) = h2_echo_upstream_counting().await;
    for driver in drivers() {
        let clusters = format!(
            "[{}]",
            cluster("echo", &[up], "http2_protocol_options: {},")
        );
        let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: echo, timeout: 0s}}]}]";
        let proxy = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
        let mut client = h2_client(proxy.addr()).await;
        let before = proxy.rss_anon_kib();

        // 1 GiB up while the echo of it comes down, both under flow control.
        let req = Request::post("http://svc/echo/big").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        let writer = tokio::spawn(async move {
            let block = Bytes::from(vec![b'z'; 1 << 20]);
            for _ in 0..(GIB >> 20) {
                send_flow(&mut tx, block.clone()).await.unwrap();
            }
            tx.send_data(Bytes::new(), true).unwrap();
        });
        let mut rx = resp.await.unwrap().into_body();
        let mut got = 0usize;
        let mut peak = 0;
        let mut next_sample = 0;
        while let Some(chunk) = rx.data().await {
            let chunk = chunk.unwrap();
            let _ = rx.flow_control().release_capacity(chunk.len());
            got += chunk.len();
            if got >= next_sample {
                peak = peak.max(proxy.rss_anon_kib());
                next_sample += 64 << 20;
            }
        }
        writer.await.unwrap();
        assert_eq!(got, GIB, "{driver}");
        assert_eq!(rx.trailers().await.unwrap().unwrap()["grpc-status"], "0");
        eprintln!("{driver}: RSS before {before} KiB, peak {peak} KiB");
        assert!(
            peak < before + 24 * 1024,
            "{driver}: HTTP/2 streaming must not buffer: RSS {before} -> {peak} KiB"
        );

        // The client resets its stream: the upstream stream is reset too.
        let seen = resets.load(Ordering::SeqCst);
        let req = Request::post("http://svc/echo/abandoned").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"first"), false).unwrap();
        let mut rx = resp.await.unwrap().into_body();
        assert_eq!(&rx.data().await.unwrap().unwrap()[..], b"first");
        tx.send_reset(h2::Reason::CANCEL);
        let t = std::time::Instant::now();
        while resets.load(Ordering::SeqCst) == seen {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{driver}: upstream never saw the reset"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The upstream resets its stream: the client's stream is reset, not ended cleanly.
        let req = Request::post("http://svc/reset/x").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"only"), false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        let mut rx = resp.into_body();
        let mut outcome = Ok(());
        while let Some(chunk) = rx.data().await {
            if let Err(e) = chunk {
                outcome = Err(e);
                break;
            }
        }
        let e = outcome.expect_err(&format!(
            "{driver}: the reset must reach the client, stats: {}",
            proxy.admin_get("/stats").await.1
        ));
        assert!(e.is_reset(), "{driver}: {e:?}");
        assert!(proxy.stat("cluster.echo.upstream_rq_rx_reset").await >= 1);
        assert!(proxy.stat("http.ingress.downstream_rq_rx_reset").await >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_timeouts_follow_envoy() {
    let (up, _) = h2_echo_upstream().await;
    let clusters = format!(
        "[{}]",
        cluster("echo", &[up], "http2_protocol_options: {},")
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: echo, timeout: 0.3s}}]}]";
    let hcm = "          stream_idle_timeout: 0.4s\n          common_http_protocol_options: {idle_timeout: 0.6s}";
    for driver in drivers() {
        let proxy = Proxy::start(&config(hcm, vhosts, &clusters), &one_core(driver)).await;
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);

        // A client still streaming after 1 s is not cut by the 0.3 s route timeout: it
        // starts when the request ends.
        let req = Request::post("http://svc/stream").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"0"), false).unwrap();
        let mut rx = resp.await.unwrap().into_body();
        for i in 1..=10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_data(Bytes::from(i.to_string()), i == 10).unwrap();
        }
        let (body, trailers) = body_of(rx).await;
        assert_eq!(body, b"012345678910", "{driver}");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");

        // A stream where nothing moves for the stream idle timeout is reset.
        let req = Request::post("http://svc/quiet").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"hello"), false).unwrap();
        rx = resp.await.unwrap().into_body();
        let t = std::time::Instant::now();
        let mut failed = false;
        while let Some(chunk) = rx.data().await {
            if chunk.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "{driver}: an idle stream must be reset");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(proxy.stat("http.ingress.downstream_rq_idle_timeout").await >= 1);
        drop(tx);

        // With no stream for the connection idle timeout, the proxy says GOAWAY and the
        // connection ends.
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the idle connection is closed")
            .unwrap()
            .unwrap();
        assert_eq!(
            proxy.stat("http.ingress.downstream_cx_idle_timeout").await,
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_on_drain_lets_in_flight_streams_finish_and_refuses_new_ones() {
    let (up, _) = h2_echo_upstream().await;
    let clusters = format!(
        "[{}]",
        cluster("echo", &[up], "http2_protocol_options: {},")
    );
    for driver in drivers() {
        let args = [
            "--concurrency",
            "1",
            "--io-driver",
            driver,
            "--drain-time-s",
            "10",
            // GOAWAY at once (pilot-agent's choice); the gradual strategy: tests/cli.rs.
            "--drain-strategy",
            "immediate",
        ];
        let mut proxy = Proxy::start(&config("", &all_to("echo"), &clusters), &args).await;
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);

        // In flight when the drain starts: the upstream holds its headers for 2 s.
        let req = Request::post("http://svc/slow/in-flight").body(()).unwrap();
        let (resp, mut tx) = client.send_request(req, false).unwrap();
        tx.send_data(Bytes::from_static(b"still here"), true)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.terminate();

        // The GOAWAY reaches the client: a stream opened after it is refused. h2 refuses
        // locally once it has seen GOAWAY, or the proxy refuses a stream above the last id.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let refused = loop {
            let req = Request::get("http://svc/after-goaway").body(()).unwrap();
            match client.clone().ready().await {
                Err(e) => break e,
                Ok(mut c) => match c.send_request(req, true) {
                    Err(e) => break e,
                    Ok((resp, _)) => {
                        if let Err(e) = resp.await {
                            break e;
                        }
                    }
                },
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{driver}: new streams are still accepted after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            refused.is_go_away() || refused.reason() == Some(h2::Reason::REFUSED_STREAM),
            "{driver}: {refused:?}"
        );

        // The stream that was in flight finishes whole.
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .expect("the in-flight stream is answered")
            .unwrap();
        assert_eq!(resp.status(), 200, "{driver}");
        let (body, trailers) = body_of(resp.into_body()).await;
        assert_eq!(body, b"still here", "{driver}");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");

        // Then the connection ends cleanly and the proxy exits 0 long before the drain time.
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the drained connection is closed")
            .unwrap()
            .unwrap();
        assert_eq!(
            proxy.wait_exit(Duration::from_secs(5)),
            Some(0),
            "{driver}: {}",
            proxy.stderr()
        );
    }
}

/// Rapid reset (CVE-2023-44487): a client that opens streams only to reset them at once
/// loses its connection, as with Envoy's premature-reset rule, and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_closes_the_connection() {
    use std::sync::atomic::Ordering;
    let (up, _, upstream_resets) = h2_echo_upstream_counting().await;
    let clusters = format!(
        "[{}]",
        cluster("echo", &[up], "http2_protocol_options: {},")
    );
    for driver in drivers() {
        let proxy = Proxy::start(&config("", &all_to("echo"), &clusters), &one_core(driver)).await;
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let before = upstream_resets.load(Ordering::SeqCst);
        let mut opened = 0;
        for i in 0..2000 {
            let Ok(mut c) = client.clone().ready().await else {
                break;
            };
            let req = Request::post(format!("http://svc/slow/{i}"))
                .body(())
                .unwrap();
            let Ok((resp, tx)) = c.send_request(req, false) else {
                break;
            };
            opened += 1;
            // Long enough for the proxy to accept and forward the stream; then both
            // handles go, and h2 sends RST_STREAM(CANCEL).
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop((resp, tx));
        }
        let end = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the flooding connection is closed by the proxy")
            .unwrap();
        assert!(
            opened < 2000,
            "{driver}: all {opened} streams were accepted ({end:?})"
        );
        assert_eq!(
            proxy
                .stat("http.ingress.downstream_rq_too_many_premature_resets")
                .await,
            1,
            "{driver}"
        );
        // The resets reached the upstream (it reads the body after its 2 s pause), so
        // nothing is left running there for the flood.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while upstream_resets.load(Ordering::SeqCst) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "{driver}: no reset upstream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A well-behaved client on another connection is served.
        let mut other = h2_client(proxy.addr()).await;
        let (resp, _) = other
            .send_request(Request::get("http://svc/fine").body(()).unwrap(), true)
            .unwrap();
        assert_eq!(resp.await.unwrap().status(), 200, "{driver}");
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The types of the frames in `bytes`, in order.
fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    types
}

/// One raw HTTP/2 frame: length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes `frames` over and over until `total` bytes went or the proxy stops reading
/// (backpressure) or closes; true when it closed the connection.
async fn flood(s: &mut TcpStream, frames: &[u8], total: usize) -> bool {
    use tokio::io::AsyncWriteExt;
    let mut sent = 0;
    while sent < total {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(frames)).await {
            Err(_) => return false, // not read any more: held back, not buffered
            Ok(Err(_)) => return true,
            Ok(Ok(())) => sent += frames.len(),
        }
    }
    false
}

/// CONTINUATION, SETTINGS and PING floods cost the proxy bounded memory: the header list
/// is capped (the connection is closed), and ACKs are not queued without bound for a
/// client that does not read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_settings_and_ping_floods_are_bounded() {
    for driver in drivers() {
        let (_b, proxy) = proxy_to_one_backend("", &one_core(driver)).await;
        let before = proxy.rss_anon_kib();

        // HEADERS without END_HEADERS, then CONTINUATION after CONTINUATION: literal
        // header fields ("x-a: aaaaa") that never end.
        let mut block = Vec::new();
        while block.len() < 16_000 {
            block.extend_from_slice(b"\x00\x03x-a\x05aaaaa");
        }
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut start = PREFACE.to_vec();
        start.extend(frame(4, 0, 0, &[]));
        start.extend(frame(1, 0, 1, &block));
        use tokio::io::AsyncWriteExt;
        s.write_all(&start).await.unwrap();
        flood(&mut s, &frame(9, 0, 1, &block), 64 << 20).await;
        let answer = read_all(&mut s, Duration::from_secs(2)).await;
        // The proxy says GOAWAY (h2 counts CONTINUATION frames against the header list
        // limit) and closes: read_all returned because the stream ended or went quiet.
        assert!(
            frame_types(&answer).contains(&7),
            "{driver}: no GOAWAY for a CONTINUATION flood: frames {:?}",
            frame_types(&answer)
        );
        drop(s);

        // SETTINGS and PING frames whose ACKs are never read: once more than Envoy's
        // max_outbound_control_frames (1,000) ACKs wait, the connection is closed.
        for (n, f) in [frame(4, 0, 0, &[]), frame(6, 0, 0, &[0; 8])]
            .into_iter()
            .enumerate()
        {
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut start = PREFACE.to_vec();
            start.extend(frame(4, 0, 0, &[]));
            s.write_all(&start).await.unwrap();
            let many: Vec<u8> = f.iter().copied().cycle().take(f.len() * 4096).collect();
            assert!(
                flood(&mut s, &many, 64 << 20).await,
                "{driver}: a flood of frame type {} was held back, not closed",
                f[3]
            );
            assert_eq!(
                proxy
                    .stat_reaching("http2.outbound_control_flood", n as i64 + 1)
                    .await,
                n as i64 + 1,
                "{driver}"
            );
            let now = proxy.rss_anon_kib();
            assert!(
                now < before + 16 * 1024,
                "{driver}: RSS {before} -> {now} KiB under a flood of frame type {}",
                f[3]
            );
        }
        assert!(
            proxy.rss_anon_kib() < before + 16 * 1024,
            "{driver}: RSS {before} -> {} KiB",
            proxy.rss_anon_kib()
        );

        // The core still serves.
        let mut c = h2_client(proxy.addr()).await;
        let (resp, _) = c
            .send_request(Request::get("http://svc/x").body(()).unwrap(), true)
            .unwrap();
        assert_eq!(resp.await.unwrap().status(), 200, "{driver}");
    }
}

/// Frames that cost the proxy work without carrying anything end the connection after
/// Envoy's bounds: two empty DATA frames in a row, PRIORITY frames past 100 per stream,
/// WINDOW_UPDATE frames past 5 + 2 x (streams + 10 x DATA frames sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_frame_floods_close_the_connection() {
    use tokio::io::AsyncWriteExt;
    let priority = frame(2, 0, 3, &[0, 0, 0, 0, 16]);
    let window_update = frame(8, 0, 0, &[0, 0, 0, 1]);
    // A HEADERS frame opening stream 1 (HPACK: :method GET, :scheme http, :path /,
    // :authority h) without END_STREAM, so DATA frames on it are valid.
    let headers = frame(1, 0x4, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'h']);
    let empty_data = frame(0, 0, 1, &[]);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "empty DATA frames",
            [
                headers.clone(),
                empty_data.clone(),
                empty_data.clone(),
                empty_data,
            ]
            .concat(),
            "http2.inbound_empty_frames_flood",
        ),
        (
            "PRIORITY frames",
            priority
                .iter()
                .copied()
                .cycle()
                .take(priority.len() * 101)
                .collect(),
            "http2.inbound_priority_frames_flood",
        ),
        (
            "WINDOW_UPDATE frames",
            window_update
                .iter()
                .copied()
                .cycle()
                .take(window_update.len() * 6)
                .collect(),
            "http2.inbound_window_update_frames_flood",
        ),
    ];
    for driver in drivers() {
        let (_b, proxy) = proxy_to_one_backend("", &one_core(driver)).await;
        for (what, frames, stat) in &cases {
            let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
            let mut bytes = PREFACE.to_vec();
            bytes.extend(frame(4, 0, 0, &[]));
            bytes.extend_from_slice(frames);
            s.write_all(&bytes).await.unwrap();
            // Closed by the proxy: the read ends (EOF or reset), it does not go quiet.
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            assert!(
                closed.is_ok(),
                "{driver}: {what}: the connection stayed open"
            );
            assert_eq!(proxy.stat_reaching(stat, 1).await, 1, "{driver}: {what}");
        }
        // One PRIORITY frame per stream, or a WINDOW_UPDATE now and then, is fine: a
        // well-behaved client is served.
        let mut c = h2_client(proxy.addr()).await;
        let (resp, _) = c
            .send_request(Request::get("http://svc/x").body(()).unwrap(), true)
            .unwrap();
        assert_eq!(resp.await.unwrap().status(), 200, "{driver}");
        assert_eq!(proxy.stat("http2.outbound_control_flood").await, 0);
    }
}
