//! File access loggers (`envoy.access_loggers.file`) on connection managers and on the admin
//! listener, and `/reopen_logs` after a rotation.

mod support;

use std::time::Duration;
use support::*;

/// Waits until `path` holds at least `n` lines.
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    text.lines().map(str::to_owned).collect()
}

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
    assert_eq!(lines(&http_log, 1).await, ["/one 200 ua-1"]);
    // Admin calls, a POST body read and counted.
    let (s, _, _) = http_get(p.admin, "/ready", &[("x-forwarded-for", "1.2.3.4")]).await;
    assert_eq!(s, 200);
    let (s, _) = admin_post(p.admin, "/healthcheck/ok", b"abc").await;
    assert_eq!(s, 200);
    let admin_lines = lines(&admin_log, 3).await;
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
    assert_eq!(lines(&http_log, 1).await, ["/two 200 ua-2"]);
    assert_eq!(lines(&rotated, 1).await, ["/one 200 ua-1"]);
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
