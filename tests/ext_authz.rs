//! `envoy.filters.http.ext_authz` against a tonic authorization server: a request is
//! checked from its own core over HTTP/2, the service's verdict and header changes apply,
//! an unreachable or slow service answers `status_on_error` (or lets the request through
//! with `failure_mode_allow`), and Istio's CUSTOM action asks only when the shadow RBAC
//! policy matched. HTTP/1.1 and HTTP/2 clients, both drivers. (Envoy's exact behaviour,
//! including what the service is asked, is compared in tests/interop/ext_authz_parity.py.)

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringside::proto::envoy::config::core::v3 as core;
use ringside::proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use ringside::proto::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use support::*;

#[derive(Default, Clone)]
struct Service {
    calls: Arc<AtomicUsize>,
}

fn hv(k: &str, v: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Service {
    async fn check(
        &self,
        req: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let http = req
            .into_inner()
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .unwrap_or_default();
        let verdict = http.headers.get("x-verdict").cloned().unwrap_or_default();
        let status = |code| {
            Some(ringside::proto::google::rpc::Status {
                code,
                ..Default::default()
            })
        };
        Ok(tonic::Response::new(match verdict.as_str() {
            "deny" => CheckResponse {
                status: status(7),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(ringside::proto::envoy::r#type::v3::HttpStatus { code: 418 }),
                    headers: vec![hv("x-why", "teapot")],
                    body: format!("no entry for {}", http.path),
                })),
                ..Default::default()
            },
            "deny-204" => CheckResponse {
                status: status(7),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(ringside::proto::envoy::r#type::v3::HttpStatus { code: 204 }),
                    body: "a body a 204 cannot carry".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            "slow" => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                CheckResponse::default()
            }
            _ => CheckResponse {
                status: status(0),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        hv("x-user", "checked"),
                        hv(
                            "x-seen-body",
                            &format!(
                                "{}:{}",
                                http.body,
                                http.headers
                                    .get("x-envoy-auth-partial-body")
                                    .cloned()
                                    .unwrap_or_default()
                            ),
                        ),
                    ],
                    headers_to_remove: vec!["x-secret".into()],
                    response_headers_to_add: vec![hv("x-authz", "ok")],
                    ..Default::default()
                })),
                ..Default::default()
            },
        }))
    }
}

async fn start_service() -> (Service, SocketAddr) {
    let svc = Service::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let s = svc.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(s))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    (svc, addr)
}

const H2: &str = r#"typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}},"#;

fn bootstrap(backend: SocketAddr, authz: SocketAddr, dead: SocketAddr) -> String {
    let ext = |cluster: &str, extra: &str| {
        format!(
            r#"          - name: envoy.filters.http.ext_authz
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, transport_api_version: V3, grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}, timeout: 0.5s}}{extra}}}
"#
        )
    };
    let listener = |name: &str, filters: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config: {{virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}]}}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    let shadow = r#"          - name: envoy.filters.http.rbac
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, shadow_rules_stat_prefix: istio_ext_authz_, shadow_rules: {action: DENY, policies: {'istio-ext-authz-ns[a]-policy[b]-rule[0]': {permissions: [{url_path: {path: {prefix: /guarded}}}], principals: [{any: true}]}}}}
"#;
    let custom = ext(
        "authz",
        ", filter_enabled_metadata: {filter: envoy.filters.http.rbac, path: [{key: istio_ext_authz_shadow_effective_policy_id}], value: {string_match: {prefix: istio-ext-authz}}}",
    );
    format!(
        "static_resources:\n  listeners:\n{}{}{}{}{}  clusters: [{}, {}, {}]\n",
        listener("checked", &ext("authz", "")),
        listener(
            "body",
            &ext(
                "authz",
                ", with_request_body: {max_request_bytes: 4, allow_partial_message: true}"
            )
        ),
        listener(
            "failopen",
            &ext(
                "dead",
                ", failure_mode_allow: true, failure_mode_allow_header_add: true"
            )
        ),
        listener("failclosed", &ext("dead", ", status_on_error: {code: 503}")),
        listener("istio", &format!("{shadow}{custom}")),
        cluster("backend", &[backend], ""),
        cluster("authz", &[authz], H2),
        cluster("dead", &[dead], H2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_service_decides_and_changes_headers() {
    let (svc, authz) = start_service().await;
    let backend = Backend::start("b").await;
    let (_dead_socket, dead) = refusing_addr();
    for driver in drivers() {
        let p = Proxy::start(&bootstrap(backend.addr, authz, dead), &one_core(driver)).await;
        let checked = p.wait_listener("checked").await;
        for h2 in [false, true] {
            let case = format!("{driver}, HTTP/2 {h2}");
            // Allowed: the service's headers reach the upstream and the client.
            let (status, headers, _) = send(
                checked,
                h2,
                "GET",
                "/x",
                &[("x-secret", "s"), ("x-user", "forged")],
            )
            .await;
            assert_eq!(status, 200, "{case}");
            assert_eq!(header(&headers, "x-authz"), Some("ok"), "{case}");
            assert_eq!(backend.seen.header("x-user").as_deref(), Some("checked"));
            assert!(backend.seen.header("x-secret").is_none(), "{case}");
            // Denied: the service's status, body and headers.
            let (status, headers, body) =
                send(checked, h2, "GET", "/door", &[("x-verdict", "deny")]).await;
            assert_eq!(
                (status, String::from_utf8_lossy(&body).into_owned()),
                (418, "no entry for /door".to_string()),
                "{case}"
            );
            assert_eq!(header(&headers, "x-why"), Some("teapot"), "{case}");
            // A 204 denial carries no body (Envoy sends one, which a keep-alive client would
            // read as its next response).
            let (status, _, body) =
                send(checked, h2, "GET", "/x", &[("x-verdict", "deny-204")]).await;
            assert_eq!((status, body.len()), (204, 0), "{case}");
            // Too slow for the call's timeout: status_on_error's default, 403.
            let (status, _, body) = send(checked, h2, "GET", "/x", &[("x-verdict", "slow")]).await;
            assert_eq!((status, body.len()), (403, 0), "{case}");
        }
        assert_eq!(p.stat("http.checked.ext_authz.ok").await, 2);
        assert_eq!(p.stat("http.checked.ext_authz.denied").await, 4);
        assert_eq!(p.stat("http.checked.ext_authz.error").await, 2);
        // An unreachable service: through with failure_mode_allow, else status_on_error.
        let open = p.wait_listener("failopen").await;
        assert_eq!(send(open, false, "GET", "/x", &[]).await.0, 200, "{driver}");
        assert_eq!(
            backend
                .seen
                .header("x-envoy-auth-failure-mode-allowed")
                .as_deref(),
            Some("true")
        );
        let closed = p.wait_listener("failclosed").await;
        assert_eq!(
            send(closed, true, "GET", "/x", &[]).await.0,
            503,
            "{driver}"
        );
        // Istio's CUSTOM action: only requests the shadow policy matched are checked.
        let istio = p.wait_listener("istio").await;
        let before = svc.calls.load(Ordering::SeqCst);
        let other = send(istio, false, "GET", "/open", &[("x-verdict", "deny")]).await;
        assert_eq!(other.0, 200, "{driver}");
        assert_eq!(
            svc.calls.load(Ordering::SeqCst),
            before,
            "{driver}: not asked"
        );
        let guarded = send(istio, true, "GET", "/guarded", &[("x-verdict", "deny")]).await;
        assert_eq!(guarded.0, 418, "{driver}");
        assert_eq!(svc.calls.load(Ordering::SeqCst), before + 1, "{driver}");
        assert_eq!(p.stat("http.istio.ext_authz.disabled").await, 1);
    }
}

#[test]
fn what_is_not_implemented_is_refused_by_name() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let good = bootstrap(addr, addr, addr);
    assert!(validate("authz-ok", &good, &[]).0);
    for (field, extra) in [
        ("clear_route_cache", "clear_route_cache: true"),
        ("include_peer_certificate", "include_peer_certificate: true"),
    ] {
        let yaml = good.replacen(
            "transport_api_version: V3,",
            &format!("transport_api_version: V3, {extra},"),
            1,
        );
        let (ok, out) = validate("authz-bad", &yaml, &[]);
        assert!(!ok, "{field} accepted");
        assert!(out.contains(field), "{field}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_its_stream_ends_the_check() {
    let (_svc, authz) = start_service().await;
    let backend = Backend::start("b").await;
    let (_dead_socket, dead) = refusing_addr();
    for driver in drivers() {
        let yaml = bootstrap(backend.addr, authz, dead).replace("timeout: 0.5s", "timeout: 10s");
        let p = Proxy::start(&yaml, &one_core(driver)).await;
        let checked = p.wait_listener("checked").await;
        let tcp = tokio::net::TcpStream::connect(checked).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("http://example.com/x")
            .header("x-verdict", "slow")
            .body(())
            .unwrap();
        let (_resp, mut stream) = client.send_request(req, true).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.send_reset(h2::Reason::CANCEL);
        // Seen at once, not when the (2 s) check would have answered.
        let started = std::time::Instant::now();
        assert_eq!(
            p.stat_reaching("http.checked.downstream_rq_rx_reset", 1)
                .await,
            1,
            "{driver}"
        );
        assert!(started.elapsed() < Duration::from_millis(1500), "{driver}");
        // The abandoned check is never counted as answered.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(p.stat("http.checked.ext_authz.ok").await, 0, "{driver}");
        assert_eq!(p.stat("http.checked.ext_authz.error").await, 0, "{driver}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_request_body_the_check_carries_the_body_s_start_and_the_upstream_all_of_it() {
    let (_svc, authz) = start_service().await;
    let backend = Backend::start("b").await;
    let (_dead_socket, dead) = refusing_addr();
    for driver in drivers() {
        let p = Proxy::start(&bootstrap(backend.addr, authz, dead), &one_core(driver)).await;
        let addr = p.wait_listener("body").await;
        for h2 in [false, true] {
            let case = format!("{driver}, HTTP/2 {h2}");
            let body = bytes::Bytes::from_static(b"hello world");
            let (status, _, answer) = if h2 {
                h2_post(addr, "/count", body.clone()).await
            } else {
                request(addr, "POST", "/count", &[], body.clone()).await
            };
            assert_eq!(status, 200, "{case}");
            // The upstream got the whole body; the service its first 4 bytes, partial.
            assert_eq!(String::from_utf8_lossy(&answer), "11", "{case}");
            assert_eq!(
                backend.seen.header("x-seen-body").as_deref(),
                Some("hell:true"),
                "{case}"
            );
        }
    }
}

/// A POST over HTTP/2 with `body`: status, headers, answer.
async fn h2_post(
    addr: SocketAddr,
    path: &str,
    body: bytes::Bytes,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://example.com{path}"))
        .body(())
        .unwrap();
    let (resp, mut tx) = send.send_request(req, false).unwrap();
    tx.send_data(body, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let hdrs = header_list(resp.headers());
    let mut rx = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = rx.data().await {
        let chunk = chunk.unwrap();
        let _ = rx.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, hdrs, out)
}
