//! File access loggers (`envoy.access_loggers.file`) on connection managers and on the admin
//! listener, and `/reopen_logs` after a rotation.

mod support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_loggers_write_requests_and_admin_calls_and_reopen_after_rotation() {
    let b = Backend::start("a").await;
    let dir = temp_dir();
    let http_log = dir.join("http.log");
    let admin_log = dir.join("admin.log");
    let extra = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: "{}", log_format: {{text_format_source: {{inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %REQ(USER-AGENT)%\n"}}}}}}"#,
        http_log.display()
    );
    let admin = format!(
        r#"admin: {{access_log: [{{name: envoy.access_loggers.file, typed_config: {{"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: "{}", log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE_DETAILS%|%PROTOCOL%|%REQ(:METHOD)% %REQ(:PATH)%|%RESPONSE_CODE%|%BYTES_RECEIVED%|%REQ(X-FORWARDED-FOR)%|%REQ(X-FORWARDED-PROTO)%|%UPSTREAM_CLUSTER%\n"}}}}}}}}]}}"#,
        admin_log.display()
    );
    let p = Proxy::start(
        &config(
            &extra,
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], "")),
        ),
        &["--concurrency", "1", "--config-yaml", &admin],
    )
    .await;
    http_get(p.addr(), "/one", &[("user-agent", "ua-1")]).await;
    assert_eq!(wait_lines(&http_log, 1).await, ["/one 200 ua-1"]);
    // Admin calls, a POST body read and counted.
    let (s, _, _) = http_get(p.admin, "/ready", &[("x-forwarded-for", "1.2.3.4")]).await;
    assert_eq!(s, 200);
    let (s, _) = admin_post(p.admin, "/healthcheck/ok", b"abc").await;
    assert_eq!(s, 200);
    let admin_lines = wait_lines(&admin_log, 3).await;
    assert!(
        admin_lines.contains(
            &"admin_filter_response|HTTP/1.1|GET /ready|200|0|1.2.3.4,127.0.0.1|http|-".to_string()
        ),
        "{admin_lines:?}"
    );
    assert!(
        admin_lines.contains(
            &"admin_filter_response|HTTP/1.1|POST /healthcheck/ok|200|3|127.0.0.1|http|-"
                .to_string()
        ),
        "{admin_lines:?}"
    );

    // Rotation: the file is moved away; after /reopen_logs, lines go to a new file.
    let rotated = dir.join("http.log.1");
    std::fs::rename(&http_log, &rotated).unwrap();
    let (s, body) = admin_post(p.admin, "/reopen_logs", b"").await;
    assert_eq!((s, body.as_str()), (200, "OK\n"));
    http_get(p.addr(), "/two", &[("user-agent", "ua-2")]).await;
    assert_eq!(wait_lines(&http_log, 1).await, ["/two 200 ua-2"]);
    assert_eq!(wait_lines(&rotated, 1).await, ["/one 200 ua-1"]);
}

/// A log file that cannot be opened is refused with its field, as Envoy refuses it.
#[test]
fn an_unopenable_log_file_is_refused_by_field() {
    let (ok, err) = validate(
        "bad.yaml",
        "admin:\n  access_log:\n  - name: f\n    typed_config: {'@type': type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /nonexistent-dir/x.log}\n",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:4: bootstrap: admin.access_log[0].typed_config.path: cannot open access log file '/nonexistent-dir/x.log'"),
        "{err}"
    );
}

/// POSTs `body` to an admin path.
async fn admin_post(admin: std::net::SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

const FILE_LOG: &str =
    "\"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// A file logger's YAML (for `access_log:`), with a log_format and an optional filter.
fn logger(path: &std::path::Path, log_format: &str, filter: &str) -> String {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!("\n            filter: {filter}")
    };
    format!(
        "          - name: envoy.access_loggers.file{filter}\n            typed_config: {{{FILE_LOG}, path: \"{}\", log_format: {log_format}}}",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_filters_and_the_runtime_decide_what_is_written() {
    let b = Backend::start("a").await;
    let dir = temp_dir();
    let json = dir.join("json.log");
    let errors = dir.join("errors.log");
    let sampled = dir.join("sampled.log");
    let logs = [
        logger(
            &json,
            "{json_format: {code: '%RESPONSE_CODE%', path: '%REQ(:PATH)%', up: '%RESP(X-NOPE?CONTENT-LENGTH)%', missing: '%REQ(X-NOPE)%', flags: '%RESPONSE_FLAGS%', n: [1, '%BYTES_SENT%']}, omit_empty_values: true}",
            "",
        ),
        logger(
            &errors,
            "{text_format: \"%RESPONSE_CODE% %RESPONSE_FLAGS%\\n\"}",
            "{status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: log.min}}}}",
        ),
        logger(
            &sampled,
            "{text_format: \"%REQ(:PATH)%\\n\"}",
            "{runtime_filter: {runtime_key: log.sampled, percent_sampled: {numerator: 0}}}",
        ),
    ];
    let extra = format!("          access_log:\n{}", logs.join("\n"));
    let vhosts =
        r#"[{name: all, domains: ["*"], routes: [{match: {prefix: "/a"}, route: {cluster: a}}]}]"#;
    let runtime = "layered_runtime:\n  layers:\n  - name: admin\n    admin_layer: {}\n";
    let yaml = format!(
        "{runtime}{}",
        config(
            &extra,
            vhosts,
            &format!("[{}]", cluster("a", &[b.addr], ""))
        )
    );
    let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    http_get(p.addr(), "/a/1", &[]).await;
    http_get(p.addr(), "/nope", &[]).await;
    let lines = wait_lines(&json, 2).await;
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Typed values, keys sorted, the missing one left out (omit_empty_values).
    assert_eq!(
        lines[0], r#"{"code":200,"flags":"-","n":[1,15],"path":"/a/1","up":"15"}"#,
        "{lines:?}"
    );
    assert_eq!(parsed[1]["code"], 404);
    assert_eq!(parsed[1]["flags"], "NR");
    assert!(parsed[1].get("up").is_some() && parsed[1].get("missing").is_none());
    assert_eq!(wait_lines(&errors, 1).await, ["404 NR"]);

    // The runtime's values replace the configured ones, for the next requests.
    for kv in ["log.min=200", "log.sampled=100"] {
        let (s, _) = admin_post(p.admin, &format!("/runtime_modify?{kv}"), b"").await;
        assert_eq!(s, 200);
    }
    http_get(p.addr(), "/a/2", &[]).await;
    assert_eq!(wait_lines(&errors, 2).await, ["404 NR", "200 -"]);
    assert_eq!(wait_lines(&sampled, 1).await, ["/a/2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_proxy_logs_each_connection_when_it_ends() {
    let b = Backend::start("a").await;
    let dir = temp_dir();
    let log = dir.join("tcp.log");
    let yaml = format!(
        r#"static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: a
          access_log:
{}
  clusters: [{}]
"#,
        logger(
            &log,
            "{json_format: {code: '%RESPONSE_CODE%', flags: '%RESPONSE_FLAGS%', proto: '%PROTOCOL%', rx: '%BYTES_RECEIVED%', cluster: '%UPSTREAM_CLUSTER%', up: '%UPSTREAM_HOST%', local: '%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%'}}",
            "{log_type_filter: {types: [TcpConnectionEnd]}}",
        ),
        cluster("a", &[b.addr], "")
    );
    let p = Proxy::start(&yaml, &["--concurrency", "1"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let out = raw(p.addr(), request, Duration::from_secs(2)).await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
    let lines = wait_lines(&log, 1).await;
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["flags"], "-");
    assert_eq!(v["proto"], serde_json::Value::Null);
    assert_eq!(v["rx"], request.len());
    assert_eq!(v["cluster"], "a");
    assert_eq!(v["up"], b.addr.to_string());
    assert_eq!(v["local"], "127.0.0.1");
}

/// Formats and filters Ringside does not implement are refused by name.
#[test]
fn unsupported_formats_and_filters_are_refused_by_field() {
    let base = |logger: &str| {
        format!(
            "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}\nstatic_resources:\n  listeners:\n  - name: l\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    filter_chains:\n    - filters:\n      - name: hcm\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: x\n          route_config: {{}}\n          http_filters: [{{name: r, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]\n          access_log:\n          - name: f\n{logger}\n"
        )
    };
    let cases = [
        (
            "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {json_format: {a: {b: '%NOPE%'}}}}",
            "access_log[0].typed_config.log_format.json_format: a.b: unsupported format command `%NOPE%`",
        ),
        (
            "            filter: {metadata_filter: {}}\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}",
            "access_log[0].filter.metadata_filter: the metadata access log filter is not supported",
        ),
        (
            "            filter: {response_flag_filter: {flags: [UF, XX]}}\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}",
            "access_log[0].filter.response_flag_filter.flags[1]: unknown response flag 'XX'",
        ),
        (
            "            filter: {and_filter: {filters: [{not_health_check_filter: {}}]}}\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}",
            "access_log[0].filter.and_filter.filters: at least two filters are required",
        ),
        (
            "            filter: {extension_filter: {name: envoy.access_loggers.extension_filters.cel, typed_config: {\"@type\": type.googleapis.com/xds.type.v3.TypedStruct, type_url: x}}}\n            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}",
            "access log filter 'envoy.access_loggers.extension_filters.cel' (xds.type.v3.TypedStruct) is not supported",
        ),
        (
            "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {text_format: \"%START_TIME(%Q)%\"}}",
            "the conversion `%Q` is not supported",
        ),
        (
            "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig, common_config: {log_name: x, transport_api_version: V3, grpc_service: {envoy_grpc: {cluster_name: otel}}}, attributes: {values: [{key: n, value: {int_value: 7}}]}}",
            "access_log[0].typed_config.attributes.n: Only string values, nested key value lists and array values are supported",
        ),
        (
            "            typed_config: {\"@type\": type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig, common_config: {log_name: x, grpc_service: {envoy_grpc: {cluster_name: otel}}}}",
            "common_config.transport_api_version: only V3 is supported",
        ),
    ];
    for (logger, want) in cases {
        let (ok, err) = validate("log.yaml", &base(logger), &[]);
        assert!(!ok, "{logger}");
        assert!(err.contains(want), "{want}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_stops_reading_never_blocks_a_core_lines_are_dropped_and_counted() {
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = Backend::start("a").await;
    let dir = temp_dir();
    // A FIFO whose reader never reads: the access-log thread blocks on its first write
    // once the pipe's buffer is full, as behind a stalled disk or log collector.
    let fifo = dir.join("stalled.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o4000) // O_NONBLOCK: opening does not wait for a writer
        .open(&fifo)
        .unwrap();
    let extra = format!(
        "          access_log:\n{}",
        logger(&fifo, "{text_format: \"%REQ(X-BIG)%\\n\"}", "")
    );
    let p = Proxy::start(
        &config(
            &extra,
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], "")),
        ),
        &["--concurrency", "1", "--file-flush-interval-msec", "10"],
    )
    .await;
    // 48 KiB lines: past 64 MiB waiting, the cores drop batches instead of queueing them.
    let big = "x".repeat(48 * 1024);
    let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {big}\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    let started = std::time::Instant::now();
    for i in 0..1600 {
        s.write_all(req.as_bytes()).await.unwrap();
        // Each answer is small: read until its body ("upstream a /") is in.
        let mut got = Vec::new();
        while !got.ends_with(b"upstream a /") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("request {i} got no answer: a core is blocked"))
                .unwrap();
            assert!(n > 0, "request {i}: connection closed");
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // Every line is either queued or dropped (the last ones once the core's buffer is
    // handed over, at the next flush).
    let (mut queued_lines, mut dropped) = (0, 0);
    for _ in 0..100 {
        queued_lines = p.stat("access_log_file.write_buffered").await;
        dropped = p.stat("access_log_file.dropped_lines").await;
        if queued_lines + dropped == 1600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        queued_lines + dropped,
        1600,
        "{queued_lines} queued, {dropped} dropped"
    );
    assert!(dropped > 0, "no line was dropped");
    let queued = p.stat("access_log_file.write_total_buffered").await;
    assert!(queued <= 64 << 20, "{queued} bytes queued");
    assert!(queued > 60 << 20, "{queued} bytes queued");
}
