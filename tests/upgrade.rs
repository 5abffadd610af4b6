//! HTTP/1.1 upgrades (WebSocket) through the real binary, with tokio-tungstenite as both
//! the client and the server.

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
