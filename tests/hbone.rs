//! Istio's HBONE through two Ringside sidecars, configured as istiod configures them (the
//! listeners and clusters of `../shared/compat`'s sidecar and waypoint dumps): an outbound
//! cluster whose endpoint is the internal listener `connect_originate`, which tunnels each
//! connection over HTTP/2 CONNECT with mutual TLS to the peer's `connect_terminate`, which
//! hands each CONNECT stream to the internal listener `main_internal`, whose chains (by
//! the restored destination port) serve the app. Both of Istio's forms are run: the
//! sidecar form (`tunnel` metadata, `istio.set_internal_dst_address`, `connect_authority`,
//! `istio_authn` shared) and the current one (Envoy's `original_dst` and
//! `set_filter_state` with `shared_with_upstream`), on both I/O drivers.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

const EXT: &str = r#"bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/udpa.type.v1.TypedStruct
    type_url: type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
    value: {buffer_size_kb: 64}
"#;

const ROUTER: &str = r#"{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}"#;

/// Istio's two generations of HBONE configuration.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// The sidecar dump's: `tunnel` endpoint metadata, Istio's own filters.
    Sidecar,
    /// The waypoint dump's and current istiod's: Envoy's `original_dst` and
    /// `set_filter_state`.
    Current,
}

/// The listener filter that restores an internal connection's destination.
fn restore_filter(form: Form) -> &'static str {
    match form {
        Form::Sidecar => {
            r#"{name: set_dst_address, typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/istio.set_internal_dst_address.v1.Config}}"#
        }
        Form::Current => {
            r#"{name: envoy.filters.listener.original_dst, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}}"#
        }
    }
}

fn tls_files(dir: &Path, ca: &Ca, id: &Identity, name: &str) -> (String, String, String) {
    (
        write(dir, &format!("{name}.pem"), &id.cert_pem),
        write(dir, &format!("{name}.key"), &id.key_pem),
        write(dir, "root.pem", &ca.pem()),
    )
}

/// The server sidecar: `connect_terminate` on a port of its own, `main_internal` serving
/// the HTTP app on `app`'s port and the TCP echo on `echo`'s; RBAC on the HTTP chain
/// allows `allowed` only (through the principal `istio_authn` shares).
fn server_config(
    dir: &Path,
    ca: &Ca,
    form: Form,
    app: SocketAddr,
    echo: SocketAddr,
    allowed: &str,
) -> String {
    let id = ca.issue("server", Some(SERVER_ID), false);
    let (cert, key, root) = tls_files(dir, ca, &id, "server");
    let restore = restore_filter(form);
    let (authn, filters, per_route) = match form {
        Form::Sidecar => (
            "      - {name: istio_authn, typed_config: {\"@type\": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config, value: {shared: true}}}\n",
            r#"{name: connect_baggage, typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.http.connect_baggage.Config}},
              {name: connect_authority, typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.http.connect_authority.Config}},"#,
            r#"typed_per_filter_config: {connect_authority: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.http.connect_authority.Config, value: {enabled: true}}}"#,
        ),
        Form::Current => (
            "",
            r#"{name: connect_authority, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config, on_request_headers: [
                {object_key: envoy.filters.listener.original_dst.local_ip, format_string: {text_format_source: {inline_string: "%REQ(:AUTHORITY)%"}}, shared_with_upstream: ONCE},
                {object_key: io.istio.peer_principal, factory_key: envoy.string, format_string: {text_format_source: {inline_string: "%DOWNSTREAM_PEER_URI_SAN%"}}, shared_with_upstream: ONCE},
                {object_key: io.istio.local_principal, factory_key: envoy.string, format_string: {text_format_source: {inline_string: "%DOWNSTREAM_LOCAL_URI_SAN%"}}, shared_with_upstream: ONCE}]}},"#,
            "",
        ),
    };
    format!(
        r#"{EXT}static_resources:
  listeners:
  - name: connect_terminate
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{authn}      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: connect_terminate
          http2_protocol_options: {{max_concurrent_streams: 100, allow_connect: true}}
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          route_config:
            name: default
            virtual_hosts:
            - name: default
              domains: ['*']
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: main_internal, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
                {per_route}
          http_filters: [{filters}
            {ROUTER}]
      transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            alpn_protocols: [h2]
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context:
              trusted_ca: {{filename: {root}}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://cluster.local/"}}}}]
  - name: main_internal
    internal_listener: {{}}
    traffic_direction: INBOUND
    listener_filters: [{restore}]
    filter_chains:
    - filter_chain_match: {{destination_port: {app_port}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_{app_port}
          access_log:
          - name: l
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{text_format_source: {{inline_string: "inbound %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %FILTER_STATE(io.istio.peer_principal)% %RESPONSE_CODE%\n"}}}}
          route_config:
            virtual_hosts: [{{name: inbound, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: app}}}}]}}]
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                policies:
                  allow-client:
                    permissions: [{{any: true}}]
                    principals: [{{filter_state: {{key: io.istio.peer_principal, string_match: {{exact: "{allowed}"}}}}}}]
          - {{name: istio.stats, typed_config: {{"@type": type.googleapis.com/stats.PluginConfig}}}}
          - {ROUTER}
    - filter_chain_match: {{destination_port: {echo_port}}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: inbound_echo, cluster: echo}}
  clusters:
  - name: main_internal
    load_assignment:
      cluster_name: main_internal
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: main_internal}}}}}}}}]}}]
    transport_socket:
      name: internal_upstream
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport
        transport_socket: {{name: raw_buffer, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}
  - {app_cluster}
  - {echo_cluster}
"#,
        app_port = app.port(),
        echo_port = echo.port(),
        app_cluster = cluster("app", &[app], ""),
        echo_cluster = cluster("echo", &[echo], ""),
    )
}

/// The client sidecar: an HTTP listener and a TCP listener whose clusters' endpoints are
/// `connect_originate` (one per destination), tunnelling to `terminate`.
fn client_config(
    dir: &Path,
    ca: &Ca,
    form: Form,
    app: SocketAddr,
    echo: SocketAddr,
    terminate: SocketAddr,
) -> String {
    let id = ca.issue("client", Some(CLIENT_ID), false);
    let (cert, key, root) = tls_files(dir, ca, &id, "client");
    let endpoint = |dst: SocketAddr| {
        match form {
        Form::Sidecar => format!(
            "{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: connect_originate, endpoint_id: '{dst}'}}}}}}, metadata: {{filter_metadata: {{tunnel: {{destination: '{dst}', address: '{terminate}'}}}}}}}}"
        ),
        Form::Current => format!(
            "{{endpoint: {{address: {{envoy_internal_address: {{server_listener_name: connect_originate, endpoint_id: '{dst}'}}}}}}, metadata: {{filter_metadata: {{envoy.filters.listener.original_dst: {{local: '{dst}', waypoint: '{terminate}'}}}}}}}}"
        ),
    }
    };
    let namespace = match form {
        Form::Sidecar => "tunnel",
        Form::Current => "envoy.filters.listener.original_dst",
    };
    let hbone_cluster = |name: &str, dst: SocketAddr| {
        format!(
            r#"{{name: {name}, connect_timeout: 2s, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{ep}]}}]}},
      transport_socket: {{name: internal_upstream, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport,
        passthrough_metadata: [{{kind: {{host: {{}}}}, name: {namespace}}}],
        transport_socket: {{name: raw_buffer, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}}}}}}}}}}"#,
            ep = endpoint(dst)
        )
    };
    let restore = restore_filter(form);
    let lb = match form {
        Form::Sidecar => "",
        Form::Current => "original_dst_lb_config: {metadata_key: {key: envoy.filters.listener.original_dst, path: [{key: waypoint}]}}",
    };
    format!(
        r#"{EXT}static_resources:
  listeners:
{http}  - name: outbound_tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: outbound_tcp, cluster: echo_hbone}}
  - name: connect_originate
    internal_listener: {{}}
    listener_filters: [{restore}]
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: connect_originate
          cluster: connect_originate
          tunneling_config:
            hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"
            headers_to_add: [{{header: {{key: baggage, value: "k8s.namespace.name=default,k8s.deployment.name=client,service.name=client,service.version=v1"}}}}]
  clusters:
  - {app_cluster}
  - {echo_cluster}
  - name: connect_originate
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    {lb}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{allow_connect: true}}}}
    transport_socket:
      name: tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          alpn_protocols: [h2]
          tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
          validation_context:
            trusted_ca: {{filename: {root}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{SERVER_ID}"}}}}]
"#,
        http = http_listener("outbound_http", "", "app_hbone"),
        app_cluster = hbone_cluster("app_hbone", app),
        echo_cluster = hbone_cluster("echo_hbone", echo),
    )
}

struct Mesh {
    client: Proxy,
    server: Proxy,
    backend: Backend,
}

async fn mesh(driver: &str, form: Form, allowed: &str) -> Mesh {
    let ca = Ca::new("hbone mesh");
    let backend = Backend::start("app").await;
    let (echo, _) = echo_server(local_socket());
    let dir = temp_dir();
    let server = Proxy::start(
        &server_config(&dir, &ca, form, backend.addr, echo, allowed),
        &one_core(driver),
    )
    .await;
    let terminate = server.listeners["connect_terminate"];
    let client = Proxy::start(
        &client_config(&dir, &ca, form, backend.addr, echo, terminate),
        &one_core(driver),
    )
    .await;
    Mesh {
        client,
        server,
        backend,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_cross_two_sidecars_over_hbone() {
    for driver in drivers() {
        for form in [Form::Sidecar, Form::Current] {
            let m = mesh(driver, form, CLIENT_ID).await;
            let at = m.client.listeners["outbound_http"];
            // Several requests: the client's tunnel stream and the server's internal
            // connection are reused; the HTTP/2 connection to 15008 carries them.
            for i in 0..3 {
                let (status, _, body) = http_get(at, &format!("/hello/{i}"), &[]).await;
                let body = String::from_utf8_lossy(&body);
                assert_eq!(status, 200, "{driver}: {body}");
                assert_eq!(body, format!("upstream app /hello/{i}"));
            }
            assert_eq!(
                m.backend
                    .seen
                    .requests
                    .load(std::sync::atomic::Ordering::SeqCst),
                3
            );
            // The server's inbound side saw the original destination, an internal peer and
            // the client's identity (shared by istio_authn or set_filter_state).
            let lines = wait_lines(&m.server.stdout_path, 1).await;
            assert_eq!(
                lines[0],
                // %FILTER_STATE% prints the object serialised, a JSON string, as Envoy does.
                format!(
                    "inbound {} envoy://internal_client_address/ \"{CLIENT_ID}\" 200",
                    m.backend.addr
                ),
                "{driver}"
            );
            // Opaque TCP through the same tunnel machinery, half-close included.
            let mut s = tokio::net::TcpStream::connect(m.client.listeners["outbound_tcp"])
                .await
                .unwrap();
            s.write_all(b"ping over hbone").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
                .await
                .expect("the echo answers")
                .unwrap();
            assert_eq!(got, b"ping over hbonebye");
            // One mutual-TLS HTTP/2 connection to 15008, its CONNECTs counted.
            assert_eq!(
                m.client
                    .stat("cluster.connect_originate.upstream_cx_http2_total")
                    .await,
                1
            );
            assert!(
                m.client
                    .stat("cluster.connect_originate.upstream_rq_total")
                    .await
                    >= 2
            );
            assert!(
                m.server
                    .stat("http.connect_terminate.downstream_cx_upgrades_total")
                    .await
                    >= 2
            );
            assert_eq!(
                m.server
                    .stat("http.connect_terminate.downstream_rq_2xx")
                    .await,
                m.server
                    .stat("http.connect_terminate.downstream_rq_total")
                    .await
            );
            assert_eq!(
                m.client
                    .stat("cluster.app_hbone.internal_upstream.no_metadata")
                    .await,
                0
            );
            // The server's istio.stats (reporter destination) sees the client through the
            // tunnel: its principal, mutual TLS, and (where connect_baggage runs) its
            // workload from the CONNECT's baggage.
            let prom = m.server.admin_get("/stats/prometheus").await.1;
            let series: Vec<&str> = prom
                .lines()
                .filter(|l| {
                    l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\"")
                })
                .collect();
            assert_eq!(series.len(), 1, "{driver}: {prom}");
            let s = series[0];
            assert!(s.ends_with(" 3"), "{driver}: {s}");
            for label in [
                format!("source_principal=\"{CLIENT_ID}\""),
                format!("destination_principal=\"{SERVER_ID}\""),
                "connection_security_policy=\"mutual_tls\"".to_string(),
                "reporter=\"destination\"".to_string(),
            ] {
                assert!(s.contains(&label), "{driver}: {label} in {s}");
            }
            if form == Form::Sidecar {
                assert!(s.contains("source_workload=\"client\""), "{driver}: {s}");
                assert!(
                    s.contains("source_workload_namespace=\"default\""),
                    "{driver}: {s}"
                );
                assert!(
                    s.contains("source_canonical_service=\"client\""),
                    "{driver}: {s}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_internal_rbac_reads_the_principal_the_tunnel_carried() {
    for form in [Form::Sidecar, Form::Current] {
        let m = mesh(
            "legacy",
            form,
            "spiffe://cluster.local/ns/default/sa/someone-else",
        )
        .await;
        let (status, _, body) = http_get(m.client.listeners["outbound_http"], "/x", &[]).await;
        assert_eq!(status, 403, "{body:?}");
        assert_eq!(body, b"RBAC: access denied");
        assert_eq!(
            m.backend
                .seen
                .requests
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_the_peer_refuses_is_a_connect_failure() {
    // The client trusts another server identity: the TLS handshake to 15008 fails, so
    // the tunnel never comes up and the request is answered 503.
    let ca = Ca::new("hbone mesh");
    let backend = Backend::start("app").await;
    let (echo, _) = echo_server(local_socket());
    let dir = temp_dir();
    let server = Proxy::start(
        &server_config(&dir, &ca, Form::Sidecar, backend.addr, echo, CLIENT_ID),
        &one_core("legacy"),
    )
    .await;
    let terminate = server.listeners["connect_terminate"];
    let client = Proxy::start(
        &client_config(&dir, &ca, Form::Sidecar, backend.addr, echo, terminate)
            .replace(SERVER_ID, "spiffe://cluster.local/ns/other/sa/impostor"),
        &one_core("legacy"),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(client.listeners["outbound_tcp"])
        .await
        .unwrap();
    s.write_all(b"x").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        client
            .stat("cluster.connect_originate.upstream_cx_connect_fail")
            .await
            >= 1
    );
    let (status, _, _) = http_get(client.listeners["outbound_http"], "/x", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        backend
            .seen
            .requests
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// The TCP proxy's tunnel over HTTP/1.1 (a cluster without HTTP/2): `CONNECT host
/// HTTP/1.1` to a proxy that terminates it, any 2xx opening the tunnel; a refusal closes
/// the client's connection with nothing carried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_proxy_tunnels_over_http1_connect() {
    let (echo, _) = echo_server(local_socket());
    let term_listener = |name: &str, hcm: &str, upgrades: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
{hcm}          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{{match: {{connect_matcher: {{}}}}, route: {{cluster: echo{upgrades}}}}}]}}]}}
          http_filters: [{ROUTER}]
"#
        )
    };
    let term = Proxy::start(
        &format!(
            "static_resources:\n  listeners:\n{}{}  clusters: [{}]\n",
            term_listener(
                "terminates",
                "          upgrade_configs: [{upgrade_type: CONNECT}]\n",
                ", upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]"
            ),
            // CONNECT not configured: Envoy's 403.
            term_listener("refuses", "", ""),
            cluster("echo", &[echo], "")
        ),
        &one_core("legacy"),
    )
    .await;
    let orig_listener = |name: &str| {
        format!(
            r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {name}, cluster: {name}, tunneling_config: {{hostname: "%DOWNSTREAM_LOCAL_ADDRESS%"}}}}
"#
        )
    };
    // A tunnel server whose answer comes in two pieces, a 2xx other than 200.
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = raw.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap() == 0 {
                return;
            }
            head.push(b[0]);
        }
        assert!(head.starts_with(b"CONNECT 127.0.0.1:"), "{head:?}");
        s.write_all(b"HTTP/1.1 203 Tunnel\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"x-a: b\r\n\r\nfirst ").await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        s.write_all(&rest).await.unwrap();
    });
    let orig = Proxy::start(
        &format!(
            "static_resources:\n  listeners:\n{}{}{}  clusters: [{}, {}, {}]\n",
            orig_listener("to_terminates"),
            orig_listener("to_refuses"),
            orig_listener("to_raw"),
            cluster("to_terminates", &[term.listeners["terminates"]], ""),
            cluster("to_refuses", &[term.listeners["refuses"]], ""),
            cluster("to_raw", &[raw_addr], ""),
        ),
        &one_core("legacy"),
    )
    .await;
    let exchange = |at: SocketAddr| async move {
        let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
        s.write_all(b"over http/1.1").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        // A refused tunnel closes with the client's bytes unread: a reset, which ends it too.
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("the connection ends");
        got
    };
    assert_eq!(
        exchange(orig.listeners["to_terminates"]).await,
        b"over http/1.1bye"
    );
    assert_eq!(
        term.stat("http.terminates.downstream_cx_upgrades_total")
            .await,
        1
    );
    assert_eq!(
        orig.stat("tcp.to_terminates.downstream_cx_rx_bytes_total")
            .await,
        13
    );
    assert_eq!(
        orig.stat("tcp.to_terminates.downstream_cx_tx_bytes_total")
            .await,
        16
    );
    // Any 2xx opens an HTTP/1.1 tunnel, whatever reads its head took; bytes after the
    // head are the tunnel's first.
    assert_eq!(
        exchange(orig.listeners["to_raw"]).await,
        b"first over http/1.1"
    );
    // CONNECT is not allowed there: a 403, so no tunnel and nothing carried.
    assert_eq!(exchange(orig.listeners["to_refuses"]).await, b"");
    assert_eq!(term.stat("http.refuses.downstream_rq_4xx").await, 1);
}
