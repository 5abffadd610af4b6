//! Large bodies with bounded memory, graceful stop, DNS clusters, load balancing and the
//! command line.

mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_with_small_rss() {
    for driver in drivers() {
        let b = Backend::start("a").await;
        let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: a, timeout: 0s}}]}]";
        let p = Proxy::start(
            &config("", vhosts, &format!("[{}]", cluster("a", &[b.addr], ""))),
            &["--concurrency", "1", "--io-driver", driver],
        )
        .await;
        let before = p.rss_anon_kib();

        // Download: 1 GiB with content-length, read as it streams.
        let stream = TcpStream::connect(p.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("/bytes/{GIB}"))
            .header("host", "h")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let mut body = sender.send_request(req).await.unwrap().into_body();
        let mut got = 0u64;
        let mut peak = 0;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                got += d.len() as u64;
                if got % (64 << 20) < d.len() as u64 {
                    peak = peak.max(p.rss_anon_kib());
                }
            }
        }
        assert_eq!(got, GIB, "{driver}");

        // Upload: 1 GiB chunked; the upstream counts it.
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        s.write_all(b"POST /count HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let block = vec![b'y'; 1 << 20];
        let header = format!("{:x}\r\n", block.len());
        for i in 0..1024 {
            s.write_all(header.as_bytes()).await.unwrap();
            s.write_all(&block).await.unwrap();
            s.write_all(b"\r\n").await.unwrap();
            if i % 64 == 0 {
                peak = peak.max(p.rss_anon_kib());
            }
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let out = String::from_utf8(read_all(&mut s, Duration::from_secs(5)).await).unwrap();
        assert!(out.ends_with(&format!("\r\n\r\n{GIB}")), "{out}");
        let after = p.rss_anon_kib();
        eprintln!("{driver}: RSS before {before} KiB, peak {peak} KiB, after {after} KiB");
        assert!(
            peak < before + 16 * 1024,
            "{driver}: streaming must not buffer: RSS {before} -> {peak} KiB"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    for driver in drivers() {
        let (_b, mut p) = proxy_to_one_backend(
            "",
            &[
                "--concurrency",
                "1",
                "--io-driver",
                driver,
                "--drain-time-s",
                "5",
                // Closes asked for at once (pilot-agent's choice); gradual: tests/cli.rs.
                "--drain-strategy",
                "immediate",
            ],
        )
        .await;
        let addr = p.addr();
        // An idle keep-alive connection and a request in flight.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let first = read_all(&mut idle, Duration::from_millis(300)).await;
        assert!(first.starts_with(b"HTTP/1.1 200"));
        let slow = tokio::spawn(async move {
            raw(
                addr,
                b"GET /sleep/700 HTTP/1.1\r\nHost: h\r\n\r\n",
                Duration::from_secs(3),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.terminate();
        let out = String::from_utf8(slow.await.unwrap()).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK")
                && out.contains("connection: close")
                && out.ends_with("slept"),
            "{driver}: {out}"
        );
        // The idle connection was closed, not left hanging.
        assert!(read_all(&mut idle, Duration::from_secs(2)).await.is_empty());
        assert_eq!(
            p.wait_exit(Duration::from_secs(5)),
            Some(0),
            "{driver}: {}",
            p.stderr()
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_and_logical_dns_resolve_off_the_cores() {
    let b = Backend::start("a").await;
    let port = b.addr.port();
    let clusters = format!(
        "[{{name: strict, type: STRICT_DNS, dns_lookup_family: V4_ONLY, load_assignment: {{cluster_name: strict, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: localhost, port_value: {port}}}}}}}}}]}}]}}}},
          {{name: logical, type: LOGICAL_DNS, dns_lookup_family: V4_ONLY, load_assignment: {{cluster_name: logical, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: localhost, port_value: {port}}}}}}}}}]}}]}}}}]"
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /s}, route: {cluster: strict, auto_host_rewrite: true}}, {match: {prefix: /l}, route: {cluster: logical}}]}]";
    let p = Proxy::start(
        &config("", vhosts, &clusters.replace('\n', " ")),
        &["--concurrency", "1"],
    )
    .await;
    let (s, _, body) = http_get(p.addr(), "/s", &[]).await;
    assert_eq!((s, body.as_slice()), (200, &b"upstream a /s"[..]));
    assert_eq!(
        b.seen.header("host").as_deref(),
        Some("localhost"),
        "auto_host_rewrite uses the DNS name"
    );
    let (s, _, _) = http_get(p.addr(), "/l", &[]).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_least_request_spread_over_endpoints() {
    for policy in ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"] {
        let b1 = Backend::start("one").await;
        let b2 = Backend::start("two").await;
        let c = cluster("a", &[b1.addr, b2.addr], &format!("lb_policy: {policy},"));
        let p = Proxy::start(
            &config("", &all_to("a"), &format!("[{c}]")),
            &["--concurrency", "1"],
        )
        .await;
        for _ in 0..40 {
            assert_eq!(http_get(p.addr(), "/", &[]).await.0, 200);
        }
        let (n1, n2) = (
            b1.seen.requests.load(Ordering::SeqCst),
            b2.seen.requests.load(Ordering::SeqCst),
        );
        assert_eq!(n1 + n2, 40);
        if policy == "ROUND_ROBIN" {
            assert_eq!((n1, n2), (20, 20));
        } else {
            assert!(n1 >= 5 && n2 >= 5, "{policy}: {n1}/{n2}");
        }
    }
}

#[test]
fn validate_mode_names_file_line_and_field() {
    let dir = temp_dir();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "static_resources:\n  clusters:\n  - name: c\n    lb_policy: ROUND_ROBIN\n    upstream_bind_config: {}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["--mode", "validate", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:5", bad.display())), "{err}");
    assert!(
        err.contains("static_resources.clusters[0]") && err.contains("upstream_bind_config"),
        "{err}"
    );

    let semantic = dir.join("semantic.yaml");
    std::fs::write(
        &semantic,
        "static_resources:\n  clusters:\n  - name: c\n    lb_policy: LOAD_BALANCING_POLICY_CONFIG\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["--mode", "validate", "-c"])
        .arg(&semantic)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:4: ", semantic.display()))
            && err.contains("static_resources.clusters[0].lb_policy")
            && err.contains("LOAD_BALANCING_POLICY_CONFIG"),
        "{err}"
    );

    for good in ["envoy-demo.yaml", "sidecar-capture.yaml"] {
        let good = format!("{}/examples/{good}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args(["--mode", "validate", "-c", &good])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["--mode", "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "the embedded default validates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_yaml_overrides_the_file() {
    let b = Backend::start("a").await;
    let yaml = config(
        "",
        &all_to("a"),
        &format!("[{}]", cluster("a", &[b.addr], "")),
    );
    // --config-yaml appends a second listener with a direct response.
    let extra = "static_resources: {listeners: [{name: extra, address: {socket_address: {address: 127.0.0.1, port_value: 0}}, filter_chains: [{filters: [{name: h, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: extra, route_config: {virtual_hosts: [{name: v, domains: ['*'], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: extra}}}]}]}, http_filters: [{name: r, typed_config: {'@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]}}]}]}]}";
    let p = Proxy::start(&yaml, &["--concurrency", "1", "--config-yaml", extra]).await;
    assert_eq!(p.listeners.len(), 2);
    let (_, _, body) = http_get(p.listeners["extra"], "/", &[]).await;
    assert_eq!(body, b"extra");
    let (_, _, body) = http_get(p.listeners["main"], "/", &[]).await;
    assert_eq!(body, b"upstream a /");
}

/// The overload manager's global downstream connection limit (Istio's bootstrap sets one):
/// past it a new connection is closed without an answer and counted in the listener's
/// `downstream_global_cx_overflow`; a listener with `ignore_global_conn_limit` (Istio's
/// 15021 and 15090) keeps serving; a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_connection_limit_closes_connections_past_it() {
    let backend = Backend::start("b").await;
    let yaml = format!(
        r#"overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 2
static_resources:
  listeners:
{}{}  clusters: [{}]
"#,
        http_listener("main", "", "b"),
        http_listener(
            "exempt",
            "    ignore_global_conn_limit: true\n    bypass_overload_manager: true\n",
            "b"
        ),
        cluster("b", &[backend.addr], "")
    );
    for driver in drivers() {
        let proxy = Proxy::start(&yaml, &one_core(driver)).await;
        let main = proxy.listeners["main"];
        let request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let served = |mut s: TcpStream| async move {
            s.write_all(request).await.unwrap();
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::io::AsyncReadExt::read(&mut s, &mut buf),
            )
            .await
            .map_or(0, |r| r.unwrap_or(0));
            (buf[..n].starts_with(b"HTTP/1.1 200"), s)
        };
        let (ok1, c1) = served(TcpStream::connect(main).await.unwrap()).await;
        let (ok2, _c2) = served(TcpStream::connect(main).await.unwrap()).await;
        assert!(ok1 && ok2, "{driver}: two connections fit");
        let (ok3, _) = served(TcpStream::connect(main).await.unwrap()).await;
        assert!(!ok3, "{driver}: the third is closed");
        // Port-0 listeners keep their configured address in their stat names.
        let stat = "listener.127.0.0.1_0.downstream_global_cx_overflow";
        assert_eq!(proxy.stat_reaching(stat, 1).await, 1, "{driver}");
        // The exempt listener is not counted.
        assert_eq!(
            http_get(proxy.listeners["exempt"], "/", &[]).await.0,
            200,
            "{driver}"
        );
        // A closed connection frees its place.
        drop(c1);
        let mut freed = false;
        for _ in 0..50 {
            if served(TcpStream::connect(main).await.unwrap()).await.0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(freed, "{driver}: a place was freed");
    }
}

/// `upstream_connection_options.tcp_keepalive` (Istio sets it on its control-plane cluster;
/// DestinationRules set it on service clusters): the proxy's upstream sockets carry TCP
/// keepalive with the configured idle time, as `ss` sees them; without it they do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sockets_carry_the_configured_tcp_keepalive() {
    if Command::new("ss").arg("-V").output().is_err() {
        eprintln!("SKIPPED: ss (iproute2) is not installed");
        return;
    }
    for (extra, want) in [
        (
            "upstream_connection_options: {tcp_keepalive: {keepalive_time: 77, keepalive_interval: 9, keepalive_probes: 3}},",
            true,
        ),
        ("", false),
    ] {
        let backend = Backend::start("b").await;
        let yaml = config(
            "",
            &all_to("b"),
            &format!("[{}]", cluster("b", &[backend.addr], extra)),
        );
        let proxy = Proxy::start(&yaml, &["--concurrency", "1"]).await;
        // A keep-alive request leaves the upstream connection pooled and open.
        assert_eq!(http_get(proxy.addr(), "/", &[]).await.0, 200);
        let out = Command::new("ss")
            .args(["-tno", "state", "established"])
            .arg(format!("dport = :{}", backend.addr.port()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let timer = text.lines().find_map(|l| l.split("timer:(").nth(1));
        match (want, timer) {
            (true, Some(t)) => {
                assert!(t.starts_with("keepalive,"), "{text}");
                // The idle time counts down from 77 s: 1min1x sec.
                assert!(t.contains("1min1"), "{text}");
            }
            (true, None) => panic!("no keepalive timer on the upstream socket:\n{text}"),
            (false, t) => assert!(t.is_none_or(|t| !t.starts_with("keepalive")), "{text}"),
        }
    }
}

/// Context switches of every thread of process `pid` so far: a thread that no timer and
/// no event wakes makes none.
fn wakeups(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = t.unwrap().path().join("status");
        let Ok(status) = std::fs::read_to_string(path) else {
            continue; // the thread exited meanwhile
        };
        n += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum::<u64>();
    }
    n
}

/// Wakeups of the proxy over `window`, from 200 ms on (the close of the test's last
/// admin connection is read then).
async fn wakeups_over(p: &Proxy, window: Duration) -> u64 {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = wakeups(p.child.id());
    tokio::time::sleep(window).await;
    wakeups(p.child.id()) - before
}

/// An idle proxy takes no wake-ups: no timer ticks on the cores or the control thread
/// while nothing is pooled, buffered or checked (each tick would also fault back in the
/// code start-up paged out). A request wakes the access-log flusher once and the pool's
/// sweep while it holds the upstream connection; both sleep again once their work is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_takes_no_wakeups() {
    let b = Backend::start("a").await;
    let opts = "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, common_http_protocol_options: {idle_timeout: 0.5s}, explicit_http_config: {http_protocol_options: {}}}},";
    for driver in drivers() {
        let log = temp_dir().join("access.log");
        let extra = format!(
            r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: "{}", log_format: {{text_format_source: {{inline_string: "%REQ(:PATH)% %RESPONSE_CODE%\n"}}}}}}"#,
            log.display()
        );
        let yaml = config(
            &extra,
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], opts)),
        );
        let mut args = one_core(driver);
        args.extend(["--file-flush-interval-msec", "100"]);
        let p = Proxy::start(&yaml, &args).await;
        // Start-up's last step (returning its memory) is 200 ms in.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            wakeups_over(&p, Duration::from_millis(2500)).await,
            0,
            "{driver}: woken while idle"
        );
        assert_eq!(http_get(p.addr(), "/once", &[]).await.0, 200, "{driver}");
        // The line is written within the flush interval; the pooled upstream connection
        // closes at its idle timeout (the sweep's tick after 0.5 s).
        assert_eq!(wait_lines(&log, 1).await, ["/once 200"], "{driver}");
        p.stat_reaching("cluster.a.upstream_cx_idle_timeout", 1)
            .await;
        assert_eq!(
            wakeups_over(&p, Duration::from_millis(2500)).await,
            0,
            "{driver}: woken after the request's work was done"
        );
    }
}

/// A keep-alive connection quiet for a while turns cold (it lets go of its buffers and
/// request state, and waits for readiness) and serves on when bytes come: a lone
/// request, a pipelined pair, a head split across reads, a request body; the idle timeout
/// still counts from the end of the last response, and a request arriving just as the
/// connection cools is served, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_keepalive_connections_turn_cold_and_serve_on() {
    let b = Backend::start("a").await;
    for driver in drivers() {
        let hcm = "          common_http_protocol_options: {idle_timeout: 1.2s}";
        let p = proxy_to(hcm, "a", b.addr, &one_core(driver)).await;
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        serves_across_quiet_gaps(&mut s, "h", "a", driver).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(b"GET /split HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"st: h\r\n\r\n").await.unwrap();
        assert_eq!(
            one_response(&mut s).await.1,
            "upstream a /split",
            "{driver}"
        );
        serves_a_body_after_a_quiet(&mut s, "h", driver).await;
        // Quiet past the idle timeout: closed 1.2 s after the last response, cold or not.
        let quiet = std::time::Instant::now();
        let rest = read_all(&mut s, Duration::from_secs(3)).await;
        let waited = quiet.elapsed();
        assert!(rest.is_empty(), "{driver}: {rest:?}");
        assert!(
            waited > Duration::from_millis(1000) && waited < Duration::from_millis(2500),
            "{driver}: closed after {waited:?}"
        );
        assert_eq!(
            p.stat("http.ingress.downstream_cx_idle_timeout").await,
            1,
            "{driver}"
        );
    }
}

/// A proxy answering every request itself: 200, `ok`.
fn answers_ok() -> String {
    config(
        "",
        "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: ok}}}]}]",
        "[]",
    )
}

/// Once start-up has settled, the code only start-up ran leaves the resident set, also
/// when other processes map the same binary (every sidecar of a node that runs the same
/// image): MADV_PAGEOUT skips pages another process maps, so two proxies started together
/// each kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_code_leaves_the_resident_set_of_proxies_sharing_the_binary() {
    let yaml = answers_ok();
    let args = one_core("auto");
    let (a, b) = tokio::join!(Proxy::start(&yaml, &args), Proxy::start(&yaml, &args));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let exe = std::fs::metadata(env!("CARGO_BIN_EXE_ringside"))
        .unwrap()
        .len()
        / 1024;
    for p in [&a, &b] {
        let file = p.rss_file_kib();
        eprintln!("{file} KiB of file pages resident (binary {exe} KiB)");
        assert!(file < 8 * 1024, "{file} KiB of file pages resident");
    }
    // What a request runs comes back.
    let mut s = TcpStream::connect(a.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(one_response(&mut s).await.1, "ok");
}

/// Idle keep-alive connections hold little memory: once cold, a connection keeps only
/// its socket and what serves it, not its buffers or request-path state. (Anonymous
/// memory: the code the burst runs for the first time faults back in beside it, pages of
/// the binary shared with every process that maps it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_hold_little_memory() {
    const CONNS: usize = 1000;
    let yaml = answers_ok();
    for driver in drivers() {
        let p = Proxy::start(&yaml, &one_core(driver)).await;
        let mut warm = TcpStream::connect(p.addr()).await.unwrap();
        warm.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        one_response(&mut warm).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = p.rss_anon_kib();
        let mut conns = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
            conns.push(s);
        }
        for s in &mut conns {
            assert_eq!(one_response(s).await.1, "ok", "{driver}");
        }
        // Cold after 100 ms; the freed memory returned after the allocator's delay.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let per_conn = (p.rss_anon_kib().saturating_sub(before)) as f64 / CONNS as f64;
        eprintln!("{driver}: {per_conn:.1} KiB of anonymous RSS per idle connection");
        assert!(
            per_conn < 8.0,
            "{driver}: {per_conn:.1} KiB per idle connection"
        );
        // Still served.
        let s = &mut conns[CONNS - 1];
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(one_response(s).await.1, "ok", "{driver}");
    }
}

/// A cold connection keeps nothing of the requests it forwarded: not the buffer the
/// upstream request was written in (which a body passing through had grown), not its
/// heads' header slots. Each of these connections forwarded a 48 KB body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_connections_keep_no_forwarding_buffers() {
    const CONNS: usize = 300;
    const BODY: usize = 48 << 10;
    let request = {
        let mut r = format!(
            "POST /count HTTP/1.1\r\nHost: h\r\ncontent-length: {BODY}\r\nx-a: 1\r\nx-b: 2\r\n\r\n"
        )
        .into_bytes();
        r.resize(r.len() + BODY, b'x');
        r
    };
    for driver in drivers() {
        let (b, p) = proxy_to_one_backend("", &one_core(driver)).await;
        let mut warm = TcpStream::connect(p.addr()).await.unwrap();
        warm.write_all(&request).await.unwrap();
        assert_eq!(one_response(&mut warm).await.1, BODY.to_string());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = p.rss_anon_kib();
        let mut conns = Vec::with_capacity(CONNS);
        // One at a time: one upstream connection serves them all.
        for _ in 0..CONNS {
            let mut s = TcpStream::connect(p.addr()).await.unwrap();
            s.write_all(&request).await.unwrap();
            assert_eq!(one_response(&mut s).await.1, BODY.to_string(), "{driver}");
            conns.push(s);
        }
        // Cold after 100 ms; the freed memory returned after the allocator's delay.
        tokio::time::sleep(Duration::from_millis(800)).await;

        let per_conn = (p.rss_anon_kib().saturating_sub(before)) as f64 / CONNS as f64;
        eprintln!(
            "{driver}: {per_conn:.1} KiB of anonymous RSS per cold connection, {} upstream",
            b.seen.connections.load(Ordering::SeqCst)
        );
        // 43 KiB each when the upstream request's buffer stayed (the body passed through it).
        assert!(
            per_conn < 16.0,
            "{driver}: {per_conn:.1} KiB per cold connection"
        );
        let s = &mut conns[CONNS - 1];
        s.write_all(&request).await.unwrap();
        assert_eq!(one_response(s).await.1, BODY.to_string(), "{driver}");
    }
}

/// A burst of connections queued before the proxy turns to them is taken many per
/// wake-up (a completed accept, then non-blocking ones until the queue is empty), and
/// each is served like any other: on io_uring the extra ones are blocking sockets as the
/// ring's own accepts are, on the legacy driver non-blocking ones. With exact balance
/// they are handed between two cores as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_queued_connections_is_accepted_and_served() {
    const CONNS: usize = 400;
    let direct = answers_ok();
    let balanced = direct.replacen(
        "    filter_chains:",
        "    connection_balance_config: {exact_balance: {}}\n    filter_chains:",
        1,
    );
    let cases = drivers()
        .into_iter()
        .map(|d| (d, direct.clone(), one_core(d)))
        .chain([(
            "legacy",
            balanced,
            vec!["--concurrency", "2", "--io-driver", "legacy"],
        )]);
    for (driver, yaml, args) in cases {
        let p = Proxy::start(&yaml, &args).await;
        // All connected (the kernel completes them into the listener's queue) before any
        // request is sent.
        let mut conns = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            conns.push(TcpStream::connect(p.addr()).await.unwrap());
        }
        for s in &mut conns {
            s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
        }
        for s in &mut conns {
            assert_eq!(one_response(s).await.1, "ok", "{driver} {args:?}");
        }
        // And again, on every connection.
        for s in &mut conns {
            s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(one_response(s).await.1, "ok", "{driver} {args:?}");
        }
        assert_eq!(
            p.stat("http.ingress.downstream_cx_total").await,
            CONNS as i64,
            "{driver} {args:?}"
        );
    }
}

/// The listen queue is as long as Envoy's (`somaxconn`, as Envoy's default -1 asks):
/// while the proxy is stopped, a burst of 1,500 connections all finish their handshakes
/// into it; with a queue of 1,024 the rest would have had their SYNs dropped, retried a
/// second later. Once it runs again, every one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_longer_than_1024_fits_the_listen_queue() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < 1600 {
        eprintln!("net.core.somaxconn is {somaxconn}: no queue longer than 1,024 to show");
        return;
    }
    let conns = 1500;
    raise_nofile(2 * conns + 200);
    let yaml = answers_ok();
    let p = Proxy::start(&yaml, &one_core("legacy")).await;
    let pid = p.child.id().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    let addr = p.addr();
    let connects: Vec<_> = (0..conns)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(800), TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(conns);
    for c in connects {
        if let Ok(Ok(s)) = c.await.unwrap() {
            streams.push(s);
        }
    }
    signal("-CONT");
    assert_eq!(
        streams.len(),
        conns,
        "handshakes finished while the proxy was stopped"
    );
    for s in &mut streams {
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
    }
    for s in &mut streams {
        assert_eq!(one_response(s).await.1, "ok");
    }
}

/// Raises this process's open-file limit (inherited by the proxies it starts) to at
/// least `n`, as far as the hard limit allows.
fn raise_nofile(n: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct passed, which lives across
    // both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < n as u64 {
            lim.rlim_cur = lim.rlim_max.min(n as u64);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
