//! `envoy.filters.http.ext_authz` with an HTTP authorization service (a hyper server): the
//! check is a request of its own from the request's core, over that core's keep-alive
//! pool; a 200 allows (the service's chosen headers reach the upstream and the client, the
//! ones it names in `x-envoy-auth-headers-to-remove` are removed), another status denies
//! with the service's answer, a slow service answers `status_on_error`; headers become
//! dynamic metadata the access log prints. HTTP/1.1 and HTTP/2 clients, both drivers.
//! (What the service is asked, byte for byte against Envoy 1.40, is compared in
//! tests/interop/ext_authz_http_parity.py.)

// The test's own service threads share what they saw (no request path here).
#![allow(clippy::disallowed_types)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

/// One request the service was asked: method, path, headers.
type Request = (String, String, Vec<(String, String)>);

/// What the authorization service saw.
#[derive(Default)]
struct Asked {
    connections: AtomicUsize,
    requests: Mutex<Vec<Request>>,
}

/// The service: `/deny...` is refused (418 with a body and headers), `/slow...` answers
/// after 2 s, anything else is allowed with headers for the upstream, the client and the
/// access log.
async fn start_service() -> (Arc<Asked>, SocketAddr) {
    let asked = Arc::new(Asked::default());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let a = asked.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            a.connections.fetch_add(1, Ordering::SeqCst);
            let a = a.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let a = a.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = header_list(req.headers());
                            a.requests.lock().unwrap().push((
                                req.method().to_string(),
                                path.clone(),
                                headers,
                            ));
                            let b = http::Response::builder();
                            let resp = if path.starts_with("/authz/deny") {
                                b.status(418)
                                    .header("x-why", "teapot")
                                    .header("x-meta", "denied")
                                    .body(Full::new(Bytes::from(format!("no entry for {path}"))))
                            } else {
                                if path.starts_with("/authz/slow") {
                                    tokio::time::sleep(Duration::from_secs(2)).await;
                                }
                                b.status(200)
                                    .header("x-user", "checked")
                                    .header("x-envoy-auth-headers-to-remove", "x-secret")
                                    .header("x-authz", "ok")
                                    .header("x-meta", "allowed")
                                    .body(Full::new(Bytes::new()))
                            };
                            Ok::<_, Infallible>(resp.unwrap())
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    (asked, addr)
}

fn bootstrap(backend: SocketAddr, authz: SocketAddr) -> String {
    let names = |n: &[&str]| {
        let p: Vec<String> = n.iter().map(|n| format!("{{exact: {n}}}")).collect();
        format!("{{patterns: [{}]}}", p.join(", "))
    };
    let filter = format!(
        r#"- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
    http_service:
      server_uri: {{uri: "http://authz", cluster: authz, timeout: 0.5s}}
      path_prefix: /authz
      authorization_request: {{headers_to_add: [{{key: x-peer, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}]}}
      authorization_response:
        allowed_upstream_headers: {upstream}
        allowed_client_headers: {client}
        allowed_client_headers_on_success: {success}
        dynamic_metadata_from_headers: {metadata}
"#,
        upstream = names(&["x-user"]),
        client = names(&["x-why"]),
        success = names(&["x-authz"]),
        metadata = names(&["x-meta"]),
    );
    let filter: String = filter.lines().map(|l| format!("          {l}\n")).collect();
    let log = r#"          access_log: [{name: envoy.access_loggers.stdout, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog, log_format: {text_format_source: {inline_string: "authz-log %RESPONSE_CODE% %DYNAMIC_METADATA(envoy.filters.http.ext_authz)%\n"}}}}]"#;
    config_with_filters(
        log,
        &filter,
        &all_to("backend"),
        &format!(
            "[{}, {}]",
            cluster("backend", &[backend], ""),
            cluster("authz", &[authz], "")
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_service_decides_over_a_pooled_connection() {
    let (asked, authz) = start_service().await;
    let backend = Backend::start("b").await;
    for driver in drivers() {
        let p = Proxy::start(&bootstrap(backend.addr, authz), &one_core(driver)).await;
        let addr = p.wait_listener("main").await;
        let connections = asked.connections.load(Ordering::SeqCst);
        for h2 in [false, true] {
            let case = format!("{driver}, HTTP/2 {h2}");
            // Allowed: the chosen headers reach the upstream and the client.
            let (status, headers, _) = send(
                addr,
                h2,
                "GET",
                "/x?q=1",
                &[
                    ("x-secret", "s"),
                    ("x-user", "forged"),
                    ("authorization", "Bearer t"),
                ],
            )
            .await;
            assert_eq!(status, 200, "{case}");
            assert_eq!(header(&headers, "x-authz"), Some("ok"), "{case}");
            assert_eq!(header(&headers, "x-meta"), None, "{case}");
            assert_eq!(backend.seen.header("x-user").as_deref(), Some("checked"));
            assert!(backend.seen.header("x-secret").is_none(), "{case}");
            // The service was asked with the request's method, prefixed path, host and
            // authorization, and what headers_to_add says.
            let (method, path, seen) = asked.requests.lock().unwrap().last().cloned().unwrap();
            assert_eq!(
                (method.as_str(), path.as_str()),
                ("GET", "/authz/x"),
                "{case}"
            );
            assert_eq!(header(&seen, "authorization"), Some("Bearer t"), "{case}");
            assert_eq!(header(&seen, "x-peer"), Some("127.0.0.1"), "{case}");
            assert_eq!(header(&seen, "x-secret"), None, "{case}");
            assert_eq!(header(&seen, "content-length"), Some("0"), "{case}");
            // Denied: the service's status, body and chosen headers.
            let (status, headers, body) = send(addr, h2, "POST", "/deny/door", &[]).await;
            assert_eq!(
                (status, String::from_utf8_lossy(&body).into_owned()),
                (418, "no entry for /authz/deny/door".to_string()),
                "{case}"
            );
            assert_eq!(header(&headers, "x-why"), Some("teapot"), "{case}");
            assert_eq!(header(&headers, "x-meta"), None, "{case}");
            let method = asked.requests.lock().unwrap().last().unwrap().0.clone();
            assert_eq!(method, "POST", "{case}");
        }
        // Four checks, one connection: the core's keep-alive pool held it.
        assert_eq!(
            asked.connections.load(Ordering::SeqCst),
            connections + 1,
            "{driver}"
        );
        // Too slow for server_uri.timeout: status_on_error's default, 403, no body.
        let (status, _, body) = send(addr, false, "GET", "/slow", &[]).await;
        assert_eq!((status, body.len()), (403, 0), "{driver}");
        assert_eq!(p.stat("http.ingress.ext_authz.ok").await, 2, "{driver}");
        assert_eq!(p.stat("http.ingress.ext_authz.denied").await, 2, "{driver}");
        assert_eq!(p.stat("http.ingress.ext_authz.error").await, 1, "{driver}");
        // The service's headers as dynamic metadata; an allowing check adds its duration.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = p.stdout();
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("authz-log")).collect();
        assert_eq!(lines.len(), 5, "{driver}: {out}");
        assert!(
            lines[0].starts_with("authz-log 200 {\"ext_authz_duration\":"),
            "{driver}: {}",
            lines[0]
        );
        assert!(
            lines[0].ends_with(",\"x-meta\":\"allowed\"}"),
            "{driver}: {}",
            lines[0]
        );
        assert_eq!(
            lines[1], "authz-log 418 {\"x-meta\":\"denied\"}",
            "{driver}"
        );
        assert_eq!(lines[4], "authz-log 403 -", "{driver}");
    }
}

#[test]
fn what_the_http_service_cannot_do_is_refused_by_name() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let good = bootstrap(addr, addr);
    assert!(validate("authz-http-ok", &good, &[]).0);
    for (field, from, to) in [
        (
            "retry_policy",
            "path_prefix: /authz",
            "path_prefix: /authz\n      retry_policy: {num_retries: 2}",
        ),
        ("server_uri.timeout", ", timeout: 0.5s}", "}"),
        ("path_prefix", "path_prefix: /authz", "path_prefix: authz"),
        ("headers_to_add[0].key", "key: x-peer", "key: host"),
    ] {
        let yaml = good.replacen(from, to, 1);
        assert_ne!(yaml, good, "{field}");
        let (ok, out) = validate("authz-http-bad", &yaml, &[]);
        assert!(!ok, "{field} accepted");
        assert!(out.contains(field), "{field}: {out}");
    }
}
