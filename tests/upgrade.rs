//! HTTP/1.1 upgrades through the real binary: WebSocket with tokio-tungstenite as both
//! the client and the server, CONNECT with raw sockets.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server; returns its address.
async fn ws_echo() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() || ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_tunnelled_when_configured() {
    let upstream = ws_echo().await;
    for driver in drivers() {
        let p = proxy_to(
            "          upgrade_configs: [{upgrade_type: websocket}]",
            "ws",
            upstream,
            &one_core(driver),
        )
        .await;
        let url = format!("ws://{}/chat", p.addr());
        let (mut ws, resp) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert_eq!(resp.status(), 101, "{driver}");
        for i in 0..50 {
            let text = format!("message {i}");
            ws.send(Message::Text(text.clone())).await.unwrap();
            let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("echoed")
                .unwrap()
                .unwrap();
            assert_eq!(back, Message::Text(text));
        }
        // A large binary frame crosses intact.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        ws.send(Message::Binary(big.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back, Message::Binary(big));
        ws.close(None).await.unwrap();
        assert_eq!(p.stat("http.ingress.downstream_cx_upgrades_total").await, 1);
        assert_eq!(p.stat("http.ingress.downstream_rq_1xx").await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_is_not_configured_is_refused() {
    let upstream = ws_echo().await;
    let p = proxy_to(
        "          upgrade_configs: [{upgrade_type: websocket, enabled: false}]",
        "ws",
        upstream,
        &one_core("legacy"),
    )
    .await;
    let url = format!("ws://{}/chat", p.addr());
    let err = tokio_tungstenite::connect_async(&url).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_terminated_and_tunnelled_on_routes_that_ask_for_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tunnel_to, _) = echo_server(local_socket());
    let backend = Backend::start("web").await;
    for driver in drivers() {
        let clusters = format!(
            "[{}, {}]",
            cluster("tcp", &[tunnel_to], ""),
            cluster("web", &[backend.addr], "")
        );
        let vhosts = "[{name: all, domains: ['*'], routes: [
            {match: {connect_matcher: {}, headers: [{name: ':authority', string_match: {exact: 'closed.example:443'}}]},
             route: {cluster: tcp, upgrade_configs: [{upgrade_type: CONNECT, enabled: false}]}},
            {match: {connect_matcher: {}},
             route: {cluster: tcp, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}},
            {match: {prefix: /}, route: {cluster: web}}]}]";
        let p = Proxy::start(
            &config(
                "          upgrade_configs: [{upgrade_type: CONNECT}]",
                vhosts,
                &clusters,
            ),
            &one_core(driver),
        )
        .await;

        // The proxy answers 200 itself, without framing headers, then bytes flow both
        // ways, including bytes sent right behind the CONNECT head.
        let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"CONNECT db.example:5432 HTTP/1.1\r\nhost: db.example:5432\r\n\r\nearly ")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{driver}: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length")
                && !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{head}"
        );
        let mut echoed = vec![0u8; 6];
        s.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"early ");
        let big: Vec<u8> = (0..500_000u32).map(|i| (i % 249) as u8).collect();
        let (mut r, mut w) = s.into_split();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
            .await
            .expect("tunnel closes after the upstream's goodbye")
            .unwrap();
        writer.await.unwrap();
        assert_eq!(back.len(), big.len() + 3, "{driver}");
        assert!(back[..big.len()] == big[..] && back.ends_with(b"bye"));

        // A route that disables CONNECT refuses it.
        let got = raw(
            p.addr(),
            b"CONNECT closed.example:443 HTTP/1.1\r\nhost: closed.example:443\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(
            got.starts_with(b"HTTP/1.1 403"),
            "{driver}: {}",
            String::from_utf8_lossy(&got)
        );

        // Ordinary requests keep their routes.
        let (status, _, body) = http_get(p.addr(), "/page", &[]).await;
        assert_eq!((status, body.as_slice()), (200, &b"upstream web /page"[..]));
        assert_eq!(p.stat("http.ingress.downstream_cx_upgrades_total").await, 1);
    }

    // Without CONNECT in the connection manager's upgrade_configs, no route can enable it;
    // listed there with `enabled: false`, a route can.
    let clusters = format!("[{}]", cluster("tcp", &[tunnel_to], ""));
    let vhosts = "[{name: all, domains: ['*'], routes: [
        {match: {connect_matcher: {}},
         route: {cluster: tcp, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}}]}]";
    let p = Proxy::start(
        &config(
            "          upgrade_configs: [{upgrade_type: CONNECT, enabled: false}]",
            vhosts,
            &clusters,
        ),
        &one_core("legacy"),
    )
    .await;
    let got = raw(
        p.addr(),
        b"CONNECT db.example:5432 HTTP/1.1\r\nhost: db.example:5432\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let p = Proxy::start(&config("", vhosts, &clusters), &one_core("legacy")).await;
    let got = raw(
        p.addr(),
        b"CONNECT db.example:5432 HTTP/1.1\r\nhost: db.example:5432\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 403"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}
