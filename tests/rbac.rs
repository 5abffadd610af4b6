//! RBAC as istiod programs it for an AuthorizationPolicy, over real mutual TLS: SPIFFE
//! identities made at test time (rcgen), `istio_authn` putting the peer's identity in the
//! filter state (`io.istio.peer_principal`), the HTTP filter over HTTP/1.1 and HTTP/2, and
//! the network filter closing connections a policy refuses. Both drivers.
//! (Every rule kind on plain text is compared with Envoy 1.40 in
//! tests/interop/rbac_parity.py.)

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const TESTER: &str = "spiffe://cluster.local/ns/test/sa/tester";

const AUTHN: &str = r#"      - name: istio_authn
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config}
"#;

/// A filter chain with mutual TLS (any certificate of the mesh CA) and `filters`.
fn chain(filters: &str, dir: &std::path::Path, server: &Identity, ca: &Ca) -> String {
    let cert = write(dir, "server.pem", &server.cert_pem);
    let key = write(dir, "server.key", &server.key_pem);
    let root = write(dir, "root.pem", &ca.pem());
    format!(
        r#"    - filters:
{filters}      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context: {{trusted_ca: {{filename: {root}}}}}
            alpn_protocols: [h2, http/1.1]
"#
    )
}

/// istiod's translation of an AuthorizationPolicy allowing `GET /info*` from the `client`
/// service account, and `POST` from any workload in namespace `test` (its `source.namespace`
/// regex on the principal); a dry-run DENY of `DELETE` as shadow rules.
fn http_rbac() -> String {
    let from_client = format!(
        "{{filter_state: {{key: io.istio.peer_principal, string_match: {{exact: '{CLIENT}'}}}}}}"
    );
    let from_test = "{authenticated: {principal_name: {safe_regex: {regex: '.*/ns/test/.*'}}}}";
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          route_config: {{virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, shadow_rules_stat_prefix: istio_dry_run_allow_, shadow_rules: {{action: DENY, policies: {{dry: {{permissions: [{{header: {{name: ':method', exact_match: DELETE}}}}], principals: [{{any: true}}]}}}}}}}}
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  ns[default]-policy[info]-rule[0]:
                    permissions: [{{and_rules: {{rules: [{{or_rules: {{rules: [{{header: {{name: ':method', exact_match: GET}}}}]}}}}, {{or_rules: {{rules: [{{url_path: {{path: {{prefix: /info}}}}}}]}}}}]}}}}]
                    principals: [{{and_ids: {{ids: [{{or_ids: {{ids: [{from_client}]}}}}]}}}}]
                  ns[default]-policy[test]-rule[0]:
                    permissions: [{{header: {{name: ':method', exact_match: POST}}}}]
                    principals: [{from_test}]
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    )
}

fn bootstrap(chains: &str, backend: SocketAddr) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
{chains}
  clusters: [{}]
"#,
        cluster("backend", &[backend], "")
    )
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut s = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("svc.local").unwrap(), tcp)
        .await?;
    s.write_all(b"").await?;
    Ok(s)
}

/// One request over mutual TLS as `who`, over HTTP/2 when `h2`: (status, body).
async fn call(
    addr: SocketAddr,
    ca: &Ca,
    who: &Identity,
    h2: bool,
    method: &str,
    path: &str,
) -> (u16, String) {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let config = Arc::new(client_config(ca, Some(who), alpn));
    let mut s = connect(addr, config).await.unwrap();
    if h2 {
        let (mut send, conn) = h2::client::handshake(s).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://svc.local{path}"))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
            out.extend_from_slice(&d);
        }
        return (status, String::from_utf8_lossy(&out).into_owned());
    }
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_policy_over_mutual_tls() {
    let ca = Ca::new("cluster.local");
    let server = ca.issue("svc.local", None, false);
    let client = ca.issue("client", Some(CLIENT), false);
    let tester = ca.issue("tester", Some(TESTER), false);
    let backend = Backend::start("b").await;
    for driver in drivers() {
        let dir = temp_dir();
        let chains = chain(&format!("{AUTHN}{}", http_rbac()), &dir, &server, &ca);
        let p = Proxy::start(&bootstrap(&chains, backend.addr), &one_core(driver)).await;
        let addr = p.addr();
        for h2 in [false, true] {
            let case = format!("{driver}, HTTP/2 {h2}");
            let ok = |r: (u16, String)| r.0 == 200;
            assert!(
                ok(call(addr, &ca, &client, h2, "GET", "/info/x").await),
                "{case}"
            );
            let denied = call(addr, &ca, &client, h2, "GET", "/admin").await;
            assert_eq!(denied, (403, "RBAC: access denied".into()), "{case}");
            assert_eq!(
                call(addr, &ca, &client, h2, "POST", "/info").await.0,
                403,
                "{case}: the client's account may only GET"
            );
            assert!(
                ok(call(addr, &ca, &tester, h2, "POST", "/x").await),
                "{case}"
            );
            assert_eq!(
                call(addr, &ca, &tester, h2, "GET", "/info").await.0,
                403,
                "{case}: another namespace's account is not the client's"
            );
            assert_eq!(
                call(addr, &ca, &client, h2, "DELETE", "/info").await.0,
                403,
                "{case}"
            );
        }
        assert_eq!(p.stat("http.inbound.rbac.allowed").await, 4);
        assert_eq!(p.stat("http.inbound.rbac.denied").await, 8);
        assert_eq!(
            p.stat("http.inbound.rbac.istio_dry_run_allow_.shadow_denied")
                .await,
            2
        );
        assert_eq!(
            p.stat("http.inbound.rbac.istio_dry_run_allow_.shadow_allowed")
                .await,
            10
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_istio_authn_the_peer_principal_is_not_in_the_filter_state() {
    let ca = Ca::new("cluster.local");
    let server = ca.issue("svc.local", None, false);
    let client = ca.issue("client", Some(CLIENT), false);
    let backend = Backend::start("b").await;
    let dir = temp_dir();
    let chains = chain(&http_rbac(), &dir, &server, &ca);
    let p = Proxy::start(&bootstrap(&chains, backend.addr), &one_core("legacy")).await;
    let r = call(p.addr(), &ca, &client, false, "GET", "/info").await;
    assert_eq!(r.0, 403, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_rbac_closes_connections_the_policy_refuses() {
    let ca = Ca::new("cluster.local");
    let server = ca.issue("svc.local", None, false);
    let client = ca.issue("client", Some(CLIENT), false);
    let tester = ca.issue("tester", Some(TESTER), false);
    let backend = Backend::start("b").await;
    let filters = format!(
        r#"{AUTHN}      - name: envoy.filters.network.rbac
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: tcp., rules: {{policies: {{only-client: {{permissions: [{{any: true}}], principals: [{{filter_state: {{key: io.istio.peer_principal, string_match: {{exact: '{CLIENT}'}}}}}}]}}}}}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: tp, cluster: backend}}
"#
    );
    for driver in drivers() {
        let dir = temp_dir();
        let chains = chain(&filters, &dir, &server, &ca);
        let p = Proxy::start(&bootstrap(&chains, backend.addr), &one_core(driver)).await;
        let (status, _) = call(p.addr(), &ca, &client, false, "GET", "/x").await;
        assert_eq!(status, 200, "{driver}: the client's connection is proxied");
        let (status, body) = call(p.addr(), &ca, &tester, false, "GET", "/x").await;
        assert_eq!(
            (status, body.as_str()),
            (0, ""),
            "{driver}: closed, unanswered"
        );
        assert_eq!(p.stat("tcp.rbac.allowed").await, 1, "{driver}");
        assert_eq!(p.stat_reaching("tcp.rbac.denied", 1).await, 1, "{driver}");
        assert_eq!(p.stat("tcp.tp.downstream_cx_total").await, 1, "{driver}");
    }
}

/// What Envoy refuses is refused (an empty `and_ids` would otherwise match everyone), by
/// field; what Ringside does not evaluate is refused by name.
#[test]
fn empty_sets_and_unimplemented_fields_are_refused() {
    let filter = |rules: &str| {
        format!(
            r#"static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{{match: {{prefix: /}}, direct_response: {{status: 200}}}}]}}]}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: {rules}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    for (rules, want) in [
        (
            "{policies: {p: {permissions: [{any: true}], principals: [{and_ids: {ids: []}}]}}}",
            "principals[0].and_ids.ids: at least one id is required",
        ),
        (
            "{policies: {p: {permissions: [{and_rules: {rules: []}}], principals: [{any: true}]}}}",
            "permissions[0].and_rules.rules: at least one rule is required",
        ),
        (
            "{policies: {p: {permissions: [], principals: [{any: true}]}}}",
            "policies['p'].permissions: at least one is required",
        ),
        (
            "{policies: {p: {permissions: [{any: true}], principals: [{any: true}], condition: {}}}}",
            "condition",
        ),
    ] {
        let (ok, err) = validate("r.yaml", &filter(rules), &[]);
        assert!(!ok && err.contains(want), "{rules}: {err}");
    }
}
