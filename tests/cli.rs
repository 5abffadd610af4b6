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
        // Quiet past 100 ms: the connections have turned cold.
        tokio::time::sleep(Duration::from_millis(300)).await;
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

/// Two listeners, one marked INBOUND and one OUTBOUND, to `backend`.
fn two_directions(backend: std::net::SocketAddr) -> String {
    format!(
        "static_resources:\n  listeners:\n{}{}  clusters: [{}]\n",
        http_listener("inbound", "    traffic_direction: INBOUND\n", "b"),
        http_listener("outbound", "    traffic_direction: OUTBOUND\n", "b"),
        cluster("b", &[backend], "")
    )
}

/// Whether `addr` refuses connections within `within` (a core applies the drain when its
/// command arrives).
async fn refuses_within(addr: std::net::SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(addr).await.is_err() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn post(admin: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    String::from_utf8(read_all(&mut s, Duration::from_secs(2)).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_listeners_stops_inbound_listeners_as_pilot_agent_asks() {
    let backend = Backend::start("b").await;
    // A plain drain of the inbound listeners: they stop accepting at once; outbound serves.
    let args = [
        "--concurrency",
        "1",
        "--drain-time-s",
        "1",
        "--drain-strategy",
        "immediate",
    ];
    let p = Proxy::start(&two_directions(backend.addr), &args).await;
    let (inb, outb) = (p.listeners["inbound"], p.listeners["outbound"]);
    assert_eq!(http_get(inb, "/", &[]).await.0, 200);
    let out = post(p.admin, "/drain_listeners?inboundonly").await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("OK\n"),
        "{out}"
    );
    assert!(
        refuses_within(inb, Duration::from_secs(3)).await,
        "inbound still accepts"
    );
    assert_eq!(http_get(outb, "/", &[]).await.0, 200);

    // pilot-agent's graceful drain: the inbound listener keeps accepting for the drain time,
    // its new connections are told to close, then it stops; outbound keeps serving.
    let p = Proxy::start(&two_directions(backend.addr), &args).await;
    let (inb, outb) = (p.listeners["inbound"], p.listeners["outbound"]);
    let out = post(p.admin, "/drain_listeners?inboundonly&graceful").await;
    assert!(out.ends_with("OK\n"), "{out}");
    let (s, h, _) = http_get(inb, "/", &[]).await;
    assert_eq!((s, header(&h, "connection")), (200, Some("close")));
    // A second graceful drain of the same listeners changes nothing.
    assert!(post(p.admin, "/drain_listeners?inboundonly&graceful")
        .await
        .ends_with("OK\n"));
    let t = Instant::now();
    assert!(
        refuses_within(inb, Duration::from_secs(4)).await,
        "inbound accepts after the drain time"
    );
    // It stopped at the end of the drain time (1 s after the POST), not before.
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let (s, h, _) = http_get(outb, "/", &[]).await;
    assert_eq!((s, header(&h, "connection")), (200, None));

    // pilot-agent's readiness probe reads only the stats that moved, and the gauges Envoy
    // sets as it starts: `server.state: 0` (LIVE) and `listener_manager.workers_started: 1`.
    let (_, used) = p.admin_get("/stats?usedonly").await;
    assert!(
        used.contains("http.outbound.downstream_rq_total: "),
        "{used}"
    );
    assert!(used.contains("\nserver.state: 0\n"), "{used}");
    assert!(
        used.contains("listener_manager.workers_started: 1\n"),
        "{used}"
    );
    assert!(
        !used
            .lines()
            .any(|l| l.ends_with(": 0") && l != "server.state: 0"),
        "{used}"
    );
    assert!(
        !used.contains("upstream_cx_connect_ms: No recorded values"),
        "{used}"
    );
}

/// The bootstrap's `application_log_config` sets the log format as `--log-format` would
/// (Istio's bootstrap carries it), or writes JSON lines with `json_format`; giving both it
/// and `--log-format` is refused, as Envoy refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstraps_application_log_config_sets_the_log_format() {
    let backend = Backend::start("b").await;
    let clusters = format!("[{}]", cluster("b", &[backend.addr], ""));
    let with_log = |log_format: &str| {
        format!(
            "application_log_config: {{log_format: {log_format}}}\n{}",
            config("", &all_to("b"), &clusters)
        )
    };
    let text = with_log(&format!(
        "{{text_format: \"{}\"}}",
        ISTIO_LOG_FORMAT.replace('\t', "\\t")
    ));
    let proxy = Proxy::start(&text, &["--concurrency", "1", "-l", "info"]).await;
    assert_eq!(http_get(proxy.addr(), "/", &[]).await.0, 200);
    let err = proxy.stderr();
    let started = err
        .lines()
        .find(|l| l.contains("ringside started"))
        .unwrap_or_else(|| panic!("no start line in:\n{err}"));
    assert_eq!(started.split('\t').count(), 5, "{started}");
    assert!(
        started.contains("\tinfo\tenvoy main src/app.rs:"),
        "{started}"
    );
    drop(proxy);

    let json = with_log(r#"{json_format: {level: "%l", component: "%n", message: "%j"}}"#);
    let proxy = Proxy::start(&json, &["--concurrency", "1", "-l", "info"]).await;
    let err = proxy.stderr();
    let started = err
        .lines()
        .find(|l| l.contains("ringside started"))
        .unwrap_or_else(|| panic!("no start line in:\n{err}"));
    let v: serde_json::Value = serde_json::from_str(started).expect("a JSON line");
    assert_eq!(v["level"], "info", "{started}");
    assert_eq!(v["component"], "main", "{started}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .starts_with("ringside started"));
    drop(proxy);

    let dir = temp_dir();
    let cfg = dir.join("both.yaml");
    std::fs::write(&cfg, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
        .arg("-c")
        .arg(&cfg)
        .args(["--log-format", "%v", "--mode", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Only one of ApplicationLogConfig.log_format or CLI option --log-format"),
        "{err}"
    );
}

/// The bootstrap's `stats_config`: `stats_matcher` decides which stats exist in every admin
/// output, `stats_tags` how `/stats/prometheus` names and labels them (Istio's regexes
/// here, with `use_all_default_tags: false`), as Envoy does; a bad tag regex is refused
/// with its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_config_limits_and_labels_the_stats() {
    let a = Backend::start("a").await;
    let stats_config = r#"stats_config:
  use_all_default_tags: false
  stats_tags:
  - {tag_name: cluster_name, regex: '^cluster(\.(.+);)'}
  - {tag_name: response_code, regex: '_rq(_(\d{3}))$'}
  - {tag_name: fixed, fixed_value: v}
  stats_matcher:
    inclusion_list:
      patterns: [{prefix: server}, {prefix: listener_manager}, {safe_regex: {regex: 'cluster\.a;\..*'}}]
"#;
    let clusters = format!("[{}]", cluster("a", &[a.addr], "alt_stat_name: 'a;',"));
    let vhosts = "[{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a}}]}]";
    let yaml = format!("{stats_config}{}", config("", vhosts, &clusters));
    let p = Proxy::start(&yaml, &one_core("legacy")).await;
    assert_eq!(http_get(p.addr(), "/", &[]).await.0, 200);
    assert_eq!(p.stat_reaching("cluster.a;.upstream_rq_200", 1).await, 1);
    let (_, text) = p.admin_get("/stats").await;
    assert!(text.contains("cluster.a;.upstream_rq_total: 1"), "{text}");
    assert!(
        !text.contains("http.ingress.") && !text.contains("listener.127"),
        "{text}"
    );
    let (_, prom) = p.admin_get("/stats/prometheus").await;
    for line in [
        "# TYPE envoy_cluster_upstream_rq counter",
        "envoy_cluster_upstream_rq{cluster_name=\"a\",response_code=\"200\",fixed=\"v\"} 1",
        "envoy_cluster_upstream_rq_total{cluster_name=\"a\",fixed=\"v\"} 1",
        "envoy_server_state{fixed=\"v\"} 0",
    ] {
        assert!(prom.contains(line), "no {line} in\n{prom}");
    }
    // An invalid filter is a 400 naming the error, as in Envoy.
    let (s, body) = p.admin_get("/stats?filter=(").await;
    assert_eq!(s, 400);
    assert!(body.starts_with("Invalid re2 regex"), "{body}");

    let (ok, err) = validate(
        "bad.yaml",
        "stats_config:\n  stats_tags:\n  - {tag_name: x, regex: '(unclosed'}\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("stats_config.stats_tags[0].regex")
            && err.contains("Invalid regex '(unclosed'"),
        "{err}"
    );
}

/// `--allow-unknown-static-fields`, as pilot-agent passes it: fields outside Envoy's API are
/// dropped with a warning and counted; a field that is in Envoy's API but not implemented
/// by Ringside stays refused by name; without the flag, both are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_static_fields_are_dropped_only_when_outside_envoys_api() {
    let a = Backend::start("a").await;
    let clusters = format!("[{}]", cluster("a", &[a.addr], "frobnicate_level: 3,"));
    let vhosts = "[{name: v, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a}}]}]";
    let yaml = format!(
        "future_top_level: {{x: 1}}\n{}",
        config("          newFutureKnob: true", vhosts, &clusters)
    );
    let p = Proxy::start(
        &yaml,
        &["--concurrency", "1", "--allow-unknown-static-fields"],
    )
    .await;
    assert_eq!(http_get(p.addr(), "/", &[]).await.0, 200);
    assert_eq!(p.stat("server.static_unknown_fields").await, 3);
    let log = p.stderr();
    for field in [
        "future_top_level",
        "static_resources.clusters[0].frobnicate_level",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.newFutureKnob",
    ] {
        assert!(log.contains(field), "{field} not in {log}");
    }

    let check = |yaml: &str, flag: bool| {
        let args: &[&str] = if flag {
            &["--allow-unknown-static-fields"]
        } else {
            &[]
        };
        validate("c.yaml", yaml, args)
    };
    // Without the flag a field outside Envoy's API is refused by name.
    let (ok, err) = check("future_top_level: 1\n", false);
    assert!(!ok && err.contains("future_top_level"), "{err}");
    // In Envoy's API but not implemented: refused with or without the flag.
    for flag in [false, true] {
        let (ok, err) = check("flags_path: /etc/envoy/flags\n", flag);
        assert!(!ok && err.contains("flags_path"), "{flag}: {err}");
    }
}
