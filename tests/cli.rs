//! pilot-agent's command line: the proxy starts and serves with exactly the flags
//! pilot-agent passes, each with Envoy's meaning: the log format and components, the
//! node overrides, the drain strategy (gradual spreads closes over the drain time,
//! immediate closes at once), and clear refusals of what cannot hold.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// pilot-agent's default `--log-format` (Istio's `pkg/envoy`).
const ISTIO_LOG_FORMAT: &str = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pilot_agents_command_line_starts_a_serving_proxy() {
    let backend = Backend::start("b").await;
    let dir = temp_dir();
    let log = dir.join("envoy.log");
    let log_path = log.to_str().unwrap().to_string();
    let proxy = proxy_to(
        "",
        "b",
        backend.addr,
        &[
            "--drain-time-s",
            "2",
            "--drain-strategy",
            "immediate",
            "--local-address-ip-version",
            "v4",
            "--file-flush-interval-msec",
            "1000",
            "--disable-hot-restart",
            "--allow-unknown-static-fields",
            "--log-format",
            ISTIO_LOG_FORMAT,
            "-l",
            "info",
            "--component-log-level",
            "misc:error,upstream:warning",
            "--skip-deprecated-logs",
            "--concurrency",
            "1",
            "--service-cluster",
            "reviews.default",
            "--service-node",
            "sidecar~10.0.0.7~reviews-v1.default~default.svc.cluster.local",
            "--log-path",
            &log_path,
            "--base-id",
            "7",
            "--parent-shutdown-time-s",
            "60",
            "--restart-epoch",
            "0",
        ],
    )
    .await;
    assert_eq!(http_get(proxy.addr(), "/", &[]).await.0, 200);
    // The node the flags set is the one the proxy reports (and sends to its control plane).
    let (_, info) = proxy.admin_get("/server_info").await;
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["node"]["cluster"], "reviews.default", "{info}");
    assert_eq!(
        v["node"]["id"], "sidecar~10.0.0.7~reviews-v1.default~default.svc.cluster.local",
        "{info}"
    );
    // The application log went to --log-path, in Istio's format.
    let text = std::fs::read_to_string(&log).unwrap();
    let started = text
        .lines()
        .find(|l| l.contains("ringside started"))
        .unwrap_or_else(|| panic!("no start line in:\n{text}"));
    let fields: Vec<&str> = started.split('\t').collect();
    assert_eq!(fields.len(), 5, "{started}");
    assert!(
        fields[0].ends_with('Z') && fields[0].len() == "2026-12-05T10:00:00.000000Z".len(),
        "{started}"
    );
    assert_eq!(fields[1], "info");
    assert!(fields[2].starts_with("envoy main src/app.rs:"), "{started}");
    assert!(fields[4].starts_with("thread="), "{started}");
    assert!(proxy.stderr().is_empty() || !proxy.stderr().contains("ringside started"));
}

#[test]
fn what_cannot_hold_is_refused_clearly() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args(args)
            .args(["--mode", "validate"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--component-log-level", "upstream:debug,nosuch:info"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid component specified 'nosuch'"),
        "{err}"
    );
    let (code, err) = run(&["-l", "loud"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid log level 'loud'"), "{err}");
    let (code, err) = run(&["--restart-epoch", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no hot restart"), "{err}");
    let (code, err) = run(&["--drain-strategy", "sometimes"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("gradual") && err.contains("immediate"),
        "{err}"
    );
    let (code, _) = run(&["--local-address-ip-version", "v6"]);
    assert_eq!(code, Some(0));
}

/// Opens `n` keep-alive connections that each served one request and now sit idle.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") || got < 20 {
            got += s.read(&mut buf[got..]).await.unwrap();
        }
        conns.push(s);
    }
    conns
}

/// When each connection was closed by the proxy, after `t0`.
async fn close_times(conns: Vec<TcpStream>, t0: Instant) -> Vec<Duration> {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return t0.elapsed(),
                        Ok(Ok(_)) => {}
                    }
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gradual_drain_spreads_closes_over_the_drain_time_and_immediate_does_not() {
    let backend = Backend::start("b").await;
    for (strategy, spread) in [("immediate", false), ("gradual", true)] {
        let args = [
            "--concurrency",
            "1",
            "--io-driver",
            "legacy",
            "--drain-time-s",
            "2",
            "--drain-strategy",
            strategy,
        ];
        let mut proxy = proxy_to("", "b", backend.addr, &args).await;
        let conns = idle_connections(proxy.addr(), 12).await;
        let t0 = Instant::now();
        proxy.terminate();
        let times = close_times(conns, t0).await;
        let late = times
            .iter()
            .filter(|t| **t > Duration::from_millis(300))
            .count();
        if spread {
            // Uniform over 2 s: about 10 of 12 close after 300 ms.
            assert!(late >= 4, "{strategy}: {times:?}");
            assert!(
                times.iter().all(|t| *t < Duration::from_millis(2600)),
                "{times:?}"
            );
        } else {
            assert_eq!(late, 0, "{strategy}: {times:?}");
        }
        assert_eq!(
            proxy.wait_exit(Duration::from_secs(6)),
            Some(0),
            "{strategy}"
        );
    }
}
