//! Downstream TLS and Istio-style mutual TLS through the real binary: certificates made at
//! test time with rcgen (a mesh CA, SPIFFE workload identities), tokio-rustls and h2 as
//! the clients, a hyper upstream. Covers mTLS with SAN checks, each kind of refusal with
//! its stat, ALPN picking HTTP/2, PERMISSIVE (plaintext and mTLS on one port), session
//! resumption and the handshake timeout.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::pki::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The client identity the listeners in these tests allow.
fn client_of(ca: &Ca) -> Identity {
    ca.issue(
        "client",
        Some("spiffe://cluster.local/ns/default/sa/client"),
        false,
    )
}

/// A `transport_socket` YAML block (at the filter chain's indentation) for a
/// DownstreamTlsContext with the server identity in files.
fn tls_socket(dir: &Path, server: &Identity, ca: &Ca, extra: &str) -> String {
    let cert = write(dir, "server.pem", &server.cert_pem);
    let key = write(dir, "server.key", &server.key_pem);
    let ca = write(dir, "root.pem", &ca.pem());
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context:
              trusted_ca: {{filename: {ca}}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://cluster.local/ns/default/sa/client"}}}}]
            alpn_protocols: [h2, http/1.1]
{extra}"#
    )
}

/// Server-side TLS only (no client certificate asked for), as at an edge; `chain_extra`
/// goes before it in the filter chain.
fn edge_socket(dir: &Path, server: &Identity, chain_extra: &str) -> String {
    let cert = write(dir, "s.pem", &server.cert_pem);
    let key = write(dir, "s.key", &server.key_pem);
    format!(
        r#"{chain_extra}      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]"#
    )
}

const HCM: &str = r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config: {name: local, virtual_hosts: [{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]"#;

/// A bootstrap whose one listener has the given filter chains (YAML list items).
fn bootstrap(listener_filters: &str, chains: &str, backend: SocketAddr) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
{listener_filters}
    filter_chains:
{chains}
  clusters: [{}]
"#,
        cluster("backend", &[backend], "")
    )
}

fn mtls_chain(socket: &str) -> String {
    format!("    - filters:\n{HCM}\n{socket}")
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut s = connector
        .connect(ServerName::try_from("svc.local").unwrap(), tcp)
        .await?;
    // With TLS 1.3 a client learns of a rejected certificate only on its first read.
    s.write_all(b"").await?;
    Ok(s)
}

/// One HTTP/1.1 request over an established TLS stream; the response, whole.
async fn get(s: &mut TlsStream<TcpStream>, path: &str) -> std::io::Result<String> {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer within 5 s"))??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether a request over a fresh TLS connection with `config` is answered 200.
async fn served(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    match tls_connect(addr, config).await {
        Ok(mut s) => get(&mut s, "/x")
            .await
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        Err(_) => false,
    }
}

/// The set-up the mTLS tests share: a mesh CA, the server's identity, a client with the
/// SPIFFE identity the listener allows, and the upstream.
struct Mesh {
    ca: Ca,
    server: Identity,
    client: Identity,
    backend: Backend,
}

impl Mesh {
    async fn new() -> Mesh {
        let ca = Ca::new("cluster.local");
        let server = ca.issue("svc.local", None, false);
        let client = client_of(&ca);
        Mesh {
            ca,
            server,
            client,
            backend: Backend::start("b").await,
        }
    }
}

/// A transport socket requiring a client certificate, its files in a new directory.
fn mtls_socket(server: &Identity, ca: &Ca) -> String {
    tls_socket(
        &temp_dir(),
        server,
        ca,
        "          require_client_certificate: true",
    )
}

const SSL: &str = "listener.127.0.0.1_0.ssl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_spiffe_identities() {
    let Mesh {
        ca: mesh,
        server,
        client,
        backend,
    } = Mesh::new().await;
    let other = Ca::new("elsewhere");
    let wrong_sa = mesh.issue(
        "client",
        Some("spiffe://cluster.local/ns/default/sa/intruder"),
        false,
    );
    let foreign = other.issue(
        "client",
        Some("spiffe://cluster.local/ns/default/sa/client"),
        false,
    );
    let expired = mesh.issue(
        "client",
        Some("spiffe://cluster.local/ns/default/sa/client"),
        true,
    );
    for driver in drivers() {
        let before = backend.seen.requests.load(SeqCst);
        let socket = mtls_socket(&server, &mesh);
        let yaml = bootstrap("", &mtls_chain(&socket), backend.addr);
        let proxy = Proxy::start(&yaml, &one_core(driver)).await;
        let addr = proxy.addr();

        // The right identity is served, over HTTP/1.1 when ALPN offers only that.
        let good = Arc::new(client_config(&mesh, Some(&client), &[b"http/1.1"]));
        let mut s = tls_connect(addr, good.clone())
            .await
            .expect("mTLS handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let resp = get(&mut s, "/hello").await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{driver}: {resp}");
        assert_eq!(proxy.stat(&format!("{SSL}.handshake")).await, 1);

        // Istio's client sidecars offer only `istio-*` protocols: with none in common the
        // handshake finishes without ALPN, as Envoy's does, and HTTP/1.1 is served.
        let istio = Arc::new(client_config(
            &mesh,
            Some(&client),
            &[b"istio-peer-exchange", b"istio-http/1.1", b"istio"],
        ));
        let mut s = tls_connect(addr, istio)
            .await
            .expect("a handshake with no ALPN in common");
        assert_eq!(s.get_ref().1.alpn_protocol(), None, "{driver}");
        let resp = get(&mut s, "/hello").await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{driver}: {resp}");
        // A client offering no ALPN at all is served as before.
        let plain = Arc::new(client_config(&mesh, Some(&client), &[]));
        let mut s = tls_connect(addr, plain).await.expect("no ALPN offered");
        assert!(get(&mut s, "/x").await.unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(
            backend.seen.header("x-forwarded-proto").as_deref(),
            Some("https"),
            "{driver}: the scheme is the downstream transport's"
        );

        // Each refusal is specific, counted, and never falls back to plaintext.
        let cases: [(&str, Option<&Identity>, &str); 4] = [
            ("no client certificate", None, "fail_verify_no_cert"),
            (
                "a SPIFFE identity the chain does not allow",
                Some(&wrong_sa),
                "fail_verify_san",
            ),
            (
                "a certificate from another CA",
                Some(&foreign),
                "fail_verify_error",
            ),
            (
                "an expired certificate",
                Some(&expired),
                "fail_verify_error",
            ),
        ];
        let mut expect_error = 0;
        for (what, id, stat) in cases {
            let before = proxy.stat(&format!("{SSL}.{stat}")).await;
            let c = Arc::new(client_config(&mesh, id, &[b"http/1.1"]));
            assert!(!served(addr, c).await, "{driver}: {what} was served");
            assert_eq!(
                proxy
                    .stat_reaching(&format!("{SSL}.{stat}"), before + 1)
                    .await,
                before + 1,
                "{driver}: {what}"
            );
            if stat == "fail_verify_error" {
                expect_error += 1;
            }
        }
        assert_eq!(
            proxy.stat(&format!("{SSL}.fail_verify_error")).await,
            expect_error
        );
        // Plaintext to a TLS-only chain is not answered in plaintext.
        let reply = raw(
            addr,
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(
            !reply.starts_with(b"HTTP/"),
            "{driver}: plaintext was answered"
        );
        assert!(
            proxy
                .stat_reaching(&format!("{SSL}.connection_error"), 1)
                .await
                >= 1
        );
        // Only the authenticated requests reached the upstream (three: with ALPN
        // http/1.1, with only istio-* offered, with none offered).
        assert_eq!(backend.seen.requests.load(SeqCst), before + 3, "{driver}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_serves_http2_over_tls() {
    let Mesh {
        ca: mesh,
        server,
        client,
        backend,
    } = Mesh::new().await;
    for driver in drivers() {
        let socket = mtls_socket(&server, &mesh);
        let proxy = Proxy::start(
            &bootstrap("", &mtls_chain(&socket), backend.addr),
            &one_core(driver),
        )
        .await;
        // By ALPN; then as Istio's client sidecars speak HTTP/2 to a server sidecar: they
        // offer only `istio-h2` and `istio`, no protocol is agreed, and the preface tells
        // (Envoy's AUTO codec).
        let offers: [&[&[u8]]; 2] = [&[b"h2", b"http/1.1"], &[b"istio-h2", b"istio"]];
        for (n, alpn) in offers.into_iter().enumerate() {
            let c = Arc::new(client_config(&mesh, Some(&client), alpn));
            let tls = tls_connect(proxy.addr(), c).await.unwrap();
            let agreed = (n == 0).then_some(&b"h2"[..]);
            assert_eq!(tls.get_ref().1.alpn_protocol(), agreed, "{driver}");
            let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
            tokio::spawn(conn);
            for i in 0..3 {
                let req = http::Request::get(format!("https://svc.local/h2/{i}"))
                    .body(())
                    .unwrap();
                let (resp, _) = send.send_request(req, true).unwrap();
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), 200, "{driver} {alpn:?}");
            }
        }
        assert_eq!(
            proxy.stat("http.ingress.downstream_cx_http2_total").await,
            2
        );
        assert_eq!(proxy.stat("http.ingress.downstream_rq_total").await, 6);
        assert_eq!(backend.seen.last_uri.lock().unwrap().as_str(), "/h2/2");
        assert_eq!(
            backend.seen.header("x-forwarded-proto").as_deref(),
            Some("https"),
            "{driver}"
        );
    }
}

/// Istio's PERMISSIVE mode: the TLS inspector sends mTLS clients to the TLS chain and
/// plaintext clients to the other, on one port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_plaintext_and_mtls_on_one_port() {
    let Mesh {
        ca: mesh,
        server,
        client,
        backend,
    } = Mesh::new().await;
    for driver in drivers() {
        let socket = mtls_socket(&server, &mesh);
        let chains = format!(
            "    - filter_chain_match: {{transport_protocol: tls}}\n      filters:\n{HCM}\n{socket}\n    - filter_chain_match: {{transport_protocol: raw_buffer}}\n      filters:\n{HCM}"
        );
        let inspector = "    listener_filters:\n    - {name: envoy.filters.listener.tls_inspector, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}";
        let proxy = Proxy::start(
            &bootstrap(inspector, &chains, backend.addr),
            &one_core(driver),
        )
        .await;
        let addr = proxy.addr();
        let plain = raw(
            addr,
            b"GET /plain HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        assert!(
            plain.starts_with(b"HTTP/1.1 200"),
            "{driver}: {}",
            String::from_utf8_lossy(&plain)
        );
        let c = Arc::new(client_config(&mesh, Some(&client), &[b"http/1.1"]));
        assert!(
            served(addr, c).await,
            "{driver}: mTLS on the PERMISSIVE port"
        );
        assert_eq!(proxy.stat(&format!("{SSL}.handshake")).await, 1);
        // A TLS client without a certificate is refused, not downgraded.
        let anon = Arc::new(client_config(&mesh, None, &[b"http/1.1"]));
        assert!(!served(addr, anon).await, "{driver}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_and_slow_handshakes_time_out() {
    let mesh = Ca::new("cluster.local");
    let server = mesh.issue("svc.local", None, false);
    let backend = Backend::start("b").await;
    for driver in drivers() {
        let dir = temp_dir();
        let socket = edge_socket(
            &dir,
            &server,
            "      transport_socket_connect_timeout: 0.3s\n",
        );
        let proxy = Proxy::start(
            &bootstrap("", &mtls_chain(&socket), backend.addr),
            &one_core(driver),
        )
        .await;
        let addr = proxy.addr();
        let c = Arc::new(client_config(&mesh, None, &[]));
        for _ in 0..2 {
            let mut s = tls_connect(addr, c.clone()).await.unwrap();
            let resp = get(&mut s, "/r").await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 200"), "{driver}: {resp}");
        }
        // The second connection resumed the first one's session (a TLS 1.3 ticket).
        let mut s = tls_connect(addr, c.clone()).await.unwrap();
        assert_eq!(
            s.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{driver}"
        );
        let _ = get(&mut s, "/r").await;
        assert!(
            proxy
                .stat_reaching(&format!("{SSL}.session_reused"), 1)
                .await
                >= 1
        );
        assert!(
            proxy
                .stat_reaching(&format!("{SSL}.no_certificate"), 3)
                .await
                >= 3
        );

        // A client that opens a connection and never says hello is cut at 0.3 s.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf))
            .await
            .expect("the proxy closes a silent handshake")
            .unwrap_or(0);
        assert_eq!(n, 0, "{driver}");
        assert_eq!(
            proxy
                .stat_reaching(
                    "listener.127.0.0.1_0.downstream_cx_transport_socket_connect_timeout",
                    1
                )
                .await,
            1,
            "{driver}"
        );
    }
}

/// What a TLS upstream learned of one connection.
#[derive(Debug, Clone, Default)]
struct PeerView {
    sni: String,
    alpn: String,
    /// The client certificate's URI SANs (its SPIFFE identity).
    spiffe: String,
}

/// A TLS upstream as a mesh workload runs one: its certificate from `ca`, client
/// certificates required and checked against `ca`, ALPN `h2`, `http/1.1`, `istio`. It
/// serves HTTP/2 when ALPN picked `h2`, else HTTP/1.1, answering every request with
/// `tls <sni> <alpn> <client SPIFFE id>`.
/// A TLS acceptor presenting `me`, requiring a client certificate of `ca`, offering
/// `alpn`.
fn mtls_acceptor(ca: &Ca, me: &Identity, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = CertificateDer::pem_slice_iter(me.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(me.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

struct TlsUpstream {
    addr: SocketAddr,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl TlsUpstream {
    async fn start(ca: &Ca, me: &Identity) -> TlsUpstream {
        let acceptor = mtls_acceptor(ca, me, &[b"h2", b"http/1.1", b"istio"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (hs, rq) = (handshakes.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, hs, rq) = (acceptor.clone(), hs.clone(), rq.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    hs.fetch_add(1, SeqCst);
                    let c = tls.get_ref().1;
                    let view = PeerView {
                        sni: c.server_name().unwrap_or("-").to_string(),
                        alpn: c
                            .alpn_protocol()
                            .map_or("-".into(), |p| String::from_utf8_lossy(p).into_owned()),
                        spiffe: c
                            .peer_certificates()
                            .and_then(|certs| ringside::model::tls::subject_alt_names(&certs[0]))
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|(t, _)| *t == ringside::model::tls::SanType::Uri)
                            .map(|(_, n)| n)
                            .collect::<Vec<_>>()
                            .join(","),
                    };
                    let body = format!("tls {} {} {}", view.sni, view.alpn, view.spiffe);
                    if view.alpn == "h2" {
                        serve_h2(tls, body, rq).await;
                    } else {
                        serve_h1(tls, body, rq).await;
                    }
                });
            }
        });
        TlsUpstream {
            addr,
            handshakes,
            requests,
        }
    }
}

async fn serve_h1(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    body: String,
    rq: Arc<std::sync::atomic::AtomicUsize>,
) {
    let svc = hyper::service::service_fn(move |_req| {
        rq.fetch_add(1, SeqCst);
        let b = body.clone();
        async move {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from(b),
            )))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
        .await;
}

async fn serve_h2(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    body: String,
    rq: Arc<std::sync::atomic::AtomicUsize>,
) {
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((_req, mut respond))) = conn.accept().await {
        rq.fetch_add(1, SeqCst);
        let resp = http::Response::builder().status(200).body(()).unwrap();
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(bytes::Bytes::from(body.clone()), true);
        }
    }
}

/// An UpstreamTlsContext (YAML flow) presenting `me` from files, trusting `ca`, requiring
/// the server to be `server_san`, offering `alpn`, with `extra` fields.
fn upstream_tls(
    dir: &Path,
    (me, ca): (&Identity, &Ca),
    server_san: &str,
    alpn: &str,
    extra: &str,
) -> String {
    let cert = write(dir, "client.pem", &me.cert_pem);
    let key = write(dir, "client.key", &me.key_pem);
    let ca = write(dir, "root.pem", &ca.pem());
    format!(
        r#"{{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {extra} common_tls_context: {{alpn_protocols: [{alpn}], tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}], validation_context: {{trusted_ca: {{filename: {ca}}}, match_subject_alt_names: [{{exact: "{server_san}"}}]}}}}}}}}"#
    )
}

/// An HTTP listener routing `/wrong/` and `/h2/` to their clusters and the rest to
/// `backend`.
fn routed(clusters: &[String]) -> String {
    config(
        "",
        "[{name: all, domains: ['*'], routes: [{match: {prefix: /wrong/}, route: {cluster: wrong}}, {match: {prefix: /h2/}, route: {cluster: h2}}, {match: {prefix: /}, route: {cluster: backend}}]}]",
        &format!("[{}]", clusters.join(", ")),
    )
}

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";

/// Istio's outbound cluster shape: endpoints labelled `tlsMode: istio` get mutual TLS with
/// the SPIFFE checks and Istio's SNI, the others plaintext; connections are pooled per
/// TLS identity; a wrong server identity is refused and counted; HTTP/2 clusters ask for
/// `h2` by ALPN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mutual_tls_per_endpoint_with_istio_sni() {
    let mesh = Ca::new("cluster.local");
    let reviews = mesh.issue("reviews", Some(REVIEWS), false);
    let me = mesh.issue("productpage", Some(PRODUCTPAGE), false);
    let tls_up = TlsUpstream::start(&mesh, &reviews).await;
    let plain = Backend::start("plain").await;
    let sni = "outbound_.9080_._.reviews.default.svc.cluster.local";
    for driver in drivers() {
        let dir = temp_dir();
        let hs_before = tls_up.handshakes.load(SeqCst);
        let istio = upstream_tls(
            &dir,
            (&me, &mesh),
            REVIEWS,
            "istio-peer-exchange, istio",
            &format!("sni: \"{sni}\","),
        );
        let eps = format!(
            "[{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}, metadata: {{filter_metadata: {{envoy.transport_socket_match: {{tlsMode: istio}}}}}}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]",
            tls_up.addr.port(),
            plain.addr.port()
        );
        let backend = format!(
            "{{name: backend, connect_timeout: 1s, transport_socket_matches: [{{name: tlsMode-istio, match: {{tlsMode: istio}}, transport_socket: {istio}}}, {{name: tlsMode-disabled, match: {{}}, transport_socket: {{name: envoy.transport_sockets.raw_buffer}}}}], load_assignment: {{cluster_name: backend, endpoints: [{{lb_endpoints: {eps}}}]}}}}"
        );
        let wrong = cluster(
            "wrong",
            &[tls_up.addr],
            &format!(
                "transport_socket: {},",
                upstream_tls(
                    &dir,
                    (&me, &mesh),
                    "spiffe://cluster.local/ns/default/sa/ratings",
                    "",
                    ""
                )
            ),
        );
        let h2c = cluster(
            "h2",
            &[tls_up.addr],
            &format!(
                "http2_protocol_options: {{}}, transport_socket: {},",
                upstream_tls(&dir, (&me, &mesh), REVIEWS, "", "")
            ),
        );
        let proxy = Proxy::start(&routed(&[backend, wrong, h2c]), &one_core(driver)).await;
        let addr = proxy.addr();

        // Round robin alternates the two endpoints: mTLS to the labelled one, plaintext to
        // the other, over keep-alive connections.
        let mut bodies = Vec::new();
        for i in 0..4 {
            let (status, _, body) = http_get(addr, &format!("/r/{i}"), &[]).await;
            let body = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "{driver}: {body}");
            bodies.push(body);
        }
        let tls_answers: Vec<_> = bodies.iter().filter(|b| b.starts_with("tls ")).collect();
        assert_eq!(tls_answers.len(), 2, "{driver}: {bodies:?}");
        for b in &tls_answers {
            assert_eq!(
                b.as_str(),
                format!("tls {sni} istio {PRODUCTPAGE}"),
                "{driver}: the upstream sees Istio's SNI, ALPN and our SPIFFE identity"
            );
        }
        assert_eq!(
            bodies
                .iter()
                .filter(|b| b.starts_with("upstream plain"))
                .count(),
            2,
            "{driver}: {bodies:?}"
        );
        assert_eq!(
            tls_up.handshakes.load(SeqCst) - hs_before,
            1,
            "{driver}: the TLS connection is pooled and reused"
        );
        assert_eq!(proxy.stat("cluster.backend.ssl.handshake").await, 1);

        // A server whose SPIFFE identity the cluster does not expect is refused.
        let requests_before = tls_up.requests.load(SeqCst);
        let (status, _, body) = http_get(addr, "/wrong/x", &[]).await;
        assert_eq!(status, 503, "{driver}: {body:?}");
        assert_eq!(proxy.stat("cluster.wrong.ssl.fail_verify_san").await, 1);
        assert_eq!(
            tls_up.requests.load(SeqCst),
            requests_before,
            "{driver}: nothing was sent to the unverified server"
        );

        // HTTP/2 over TLS: ALPN h2 when the context names no protocol.
        let (status, _, body) = http_get(addr, "/h2/x", &[]).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{driver}: {body}");
        assert_eq!(body, format!("tls - h2 {PRODUCTPAGE}"), "{driver}");
        assert_eq!(proxy.stat("cluster.h2.upstream_cx_http2_total").await, 1);
    }
}

/// `tcp_proxy` with TLS at either end: a TLS listener in front of a plaintext echo server
/// (bytes both ways, then the idle timeout closes the quiet connection), and a plaintext
/// listener whose cluster originates mutual TLS (Envoy's double-proxy shape).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_terminates_and_originates_tls() {
    let mesh = Ca::new("cluster.local");
    let server = mesh.issue("svc.local", None, false);
    let reviews = mesh.issue("reviews", Some(REVIEWS), false);
    let me = mesh.issue("productpage", Some(PRODUCTPAGE), false);
    let tls_up = TlsUpstream::start(&mesh, &reviews).await;
    let (echo, _) = echo_server(local_socket());
    for driver in drivers() {
        let dir = temp_dir();
        let cert = write(&dir, "s.pem", &server.cert_pem);
        let key = write(&dir, "s.key", &server.key_pem);
        let tcp = |prefix: &str, cluster: &str, extra: &str| {
            format!(
                r#"[{{name: envoy.filters.network.tcp_proxy, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {prefix}, cluster: {cluster} {extra}}}}}]"#
            )
        };
        let yaml = format!(
            r#"static_resources:
  listeners:
  - name: terminate
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters: {}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
  - name: originate
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters: {}
  clusters: [{}, {}]
"#,
            tcp("terminate", "echo", ", idle_timeout: 0.5s"),
            tcp("originate", "mtls", ""),
            cluster("echo", &[echo], ""),
            cluster(
                "mtls",
                &[tls_up.addr],
                &format!(
                    "transport_socket: {},",
                    upstream_tls(&dir, (&me, &mesh), REVIEWS, "", "")
                )
            ),
        );
        let proxy = Proxy::start(&yaml, &one_core(driver)).await;

        let terminate = proxy.wait_listener("terminate").await;
        let c = Arc::new(client_config(&mesh, None, &[]));
        let mut s = tls_connect(terminate, c).await.expect("TLS to tcp_proxy");
        s.write_all(b"ping over tls").await.unwrap();
        let mut buf = [0u8; 13];
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf))
            .await
            .expect("echo within 3 s")
            .unwrap();
        assert_eq!(&buf, b"ping over tls", "{driver}");
        // Counted as the bytes passed, while the tunnel is open (within its 0.5 s idle
        // timeout), not when it ends.
        for (stat, want) in [
            ("tcp.terminate.downstream_cx_rx_bytes_total", 13),
            ("tcp.terminate.downstream_cx_tx_bytes_total", 13),
            ("cluster.echo.upstream_cx_tx_bytes_total", 13),
            ("cluster.echo.upstream_cx_rx_bytes_total", 13),
        ] {
            assert_eq!(proxy.stat(stat).await, want, "{driver} {stat}");
        }
        assert_eq!(
            proxy.stat("tcp.terminate.idle_timeout").await,
            0,
            "{driver}"
        );
        // Quiet for longer than idle_timeout: the proxy closes it (TLS close_notify or FIN).
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "{driver}: the idle TLS tunnel was not closed"
        );
        assert_eq!(
            proxy.stat_reaching("tcp.terminate.idle_timeout", 1).await,
            1,
            "{driver}"
        );

        let originate = proxy.wait_listener("originate").await;
        let reply = raw(
            originate,
            b"GET /over-mtls HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{driver}: {reply}");
        assert!(
            reply.ends_with(&format!("tls - - {PRODUCTPAGE}")),
            "{driver}: {reply}"
        );
        assert_eq!(proxy.stat("cluster.mtls.ssl.handshake").await, 1);
    }
}

/// A `Secret` resource: Istio's `default` (workload chain and key) or `ROOTCA`.
fn cert_secret(name: &str, id: &Identity) -> prost_types::Any {
    let chain = serde_json::to_string(&id.cert_pem).unwrap();
    let key = serde_json::to_string(&id.key_pem).unwrap();
    support::ads::any(
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &format!("{{name: {name}, tls_certificate: {{certificate_chain: {{inline_string: {chain}}}, private_key: {{inline_string: {key}}}}}}}"),
    )
}

fn root_secret(ca: &Ca) -> prost_types::Any {
    let pem = serde_json::to_string(&ca.pem()).unwrap();
    support::ads::any(
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        &format!("{{name: ROOTCA, validation_context: {{trusted_ca: {{inline_string: {pem}}}}}}}"),
    )
}

/// The TLS context fields Istio generates: `default` and `ROOTCA` from `sds_config`, with
/// the SPIFFE identity `san` required of the peer.
fn istio_sds_context(sds_config: &str, san: &str) -> String {
    format!(
        "common_tls_context: {{tls_certificate_sds_secret_configs: [{{name: default, sds_config: {sds_config}}}], combined_validation_context: {{default_validation_context: {{match_subject_alt_names: [{{exact: '{san}'}}]}}, validation_context_sds_secret_config: {{name: ROOTCA, sds_config: {sds_config}}}}}}}"
    )
}

const PILOT_AGENT_SDS: &str = "{api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}], set_node_on_first_message_only: true}, initial_fetch_timeout: 0s, resource_api_version: V3}";

/// An inbound mTLS listener and an outbound mTLS cluster, both with SDS certificates.
fn sds_resources(
    port: u16,
    upstream: SocketAddr,
    sds_config: &str,
) -> (prost_types::Any, prost_types::Any) {
    let cluster = support::ads::cluster_any(&format!(
        r#"{{name: backend, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: backend, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}, transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {}}}}}}}"#,
        upstream.port(),
        istio_sds_context(sds_config, REVIEWS)
    ));
    let listener = support::ads::listener_any(&format!(
        r#"
name: inbound
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: inbound
      route_config: {{name: local, virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: backend}}}}]}}]}}
      http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
      require_client_certificate: true
      {}
"#,
        istio_sds_context(sds_config, "spiffe://cluster.local/ns/default/sa/client")
    ));
    (cluster, listener)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The leaf certificate a TLS stream's peer presented, as DER.
fn peer_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Whether new handshakes present `id`'s certificate within 5 s (a rotation took effect).
async fn presents_within(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    id: &Identity,
) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let s = tls_connect(addr, config.clone()).await.unwrap();
        if peer_leaf(&s) == leaf_der(id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn leaf_der(id: &Identity) -> Vec<u8> {
    CertificateDer::from_pem_slice(id.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Istio's shape end to end: CDS and LDS from one server on a Unix socket (istiod through
/// pilot-agent), the workload certificate `default` and the trust bundle `ROOTCA` from
/// another on its own Unix socket (pilot-agent's SDS, cluster `sds-grpc`). The listener
/// warms until its secrets arrive; a rotated certificate is used by new handshakes while
/// an established connection keeps serving and no request fails; a bad secret is NACKed
/// and the old one keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_from_pilot_agent_socket_rotates_mid_traffic_and_nacks_bad_secrets() {
    use support::ads::{AdsServer, CLUSTER, LISTENER, SECRET};
    let mesh = Ca::new("cluster.local");
    let v1 = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    let v2 = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    let client = client_of(&mesh);
    let reviews = mesh.issue("reviews", Some(REVIEWS), false);
    let tls_up = TlsUpstream::start(&mesh, &reviews).await;
    let dir = temp_dir();
    let mut xds = AdsServer::unix(dir.join("XDS")).await;
    let mut sds = AdsServer::unix(dir.join("socket")).await;
    let bootstrap = format!(
        "{}  - name: sds-grpc\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: {{cluster_name: sds-grpc, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: '{}'}}}}}}}}]}}]}}\n",
        support::ads::bootstrap(&xds.addr, false),
        dir.join("socket").display()
    );
    let proxy = Proxy::start(&bootstrap, &[]).await;
    let port = free_port();
    let (cluster, listener) = sds_resources(port, tls_up.addr, PILOT_AGENT_SDS);

    xds.next_sotw(CLUSTER).await;
    // An SDS source that is not a static cluster is refused, not left warming for ever.
    let (stray, _) = sds_resources(
        port,
        tls_up.addr,
        &PILOT_AGENT_SDS.replace("sds-grpc", "nope"),
    );
    xds.push(CLUSTER, "c0", vec![stray]);
    let nack = xds
        .next_sotw(CLUSTER)
        .await
        .error_detail
        .expect("NACK")
        .message;
    assert!(
        nack.contains("'nope', which is not a static cluster"),
        "{nack}"
    );
    xds.push(CLUSTER, "c1", vec![cluster]);
    assert!(xds.next_sotw(CLUSTER).await.error_detail.is_none());
    xds.next_sotw(LISTENER).await;
    xds.push(LISTENER, "l1", vec![listener]);
    assert!(xds.next_sotw(LISTENER).await.error_detail.is_none());
    // The SDS stream asks pilot-agent for exactly the two secrets, with the node.
    let first = sds.next_sotw(SECRET).await;
    assert!(
        first.node.is_some(),
        "the first SDS request carries the node"
    );
    assert_eq!(first.resource_names, ["ROOTCA", "default"]);
    // Without its certificate the listener is not served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a listener waiting for its secrets must not accept"
    );
    let secrets_dump = || async {
        let body = proxy.admin_get("/config_dump").await.1;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.SecretsConfigDump")
            .cloned()
            .expect("a SecretsConfigDump")
    };
    let warming = secrets_dump().await["dynamic_warming_secrets"].clone();
    let names: Vec<_> = warming
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, ["ROOTCA", "default"], "{warming}");

    let nonce = sds.push(
        SECRET,
        "s1",
        vec![cert_secret("default", &v1), root_secret(&mesh)],
    );
    let ack = sds.next_sotw(SECRET).await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.version_info.as_str()),
        (nonce.as_str(), "s1")
    );
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let addr = proxy.wait_listener("inbound").await;
    // /config_dump shows the secrets as Envoy does (istioctl reads it), the key redacted.
    let dump = secrets_dump().await;
    let active = dump["dynamic_active_secrets"].as_array().unwrap();
    let default = active
        .iter()
        .find(|s| s["name"] == "default")
        .expect("default");
    assert_eq!(
        default["secret"]["tls_certificate"]["private_key"]["inline_bytes"], "W3JlZGFjdGVkXQ==",
        "the private key is redacted"
    );
    assert!(
        !dump.to_string().contains("PRIVATE KEY"),
        "no key material in the dump"
    );
    assert_eq!(dump["dynamic_warming_secrets"].as_array().unwrap().len(), 0);
    let config = Arc::new(client_config(&mesh, Some(&client), &[b"http/1.1"]));
    let mut early = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&early), leaf_der(&v1));

    // Mid-traffic rotation: a loop of fresh mTLS connections runs throughout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (stop, config) = (stop.clone(), config.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(SeqCst) {
                match tls_connect(addr, config.clone()).await {
                    Ok(mut s) => match get(&mut s, "/during").await {
                        Ok(r) if r.starts_with("HTTP/1.1 200") => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    },
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    sds.push(
        SECRET,
        "s2",
        vec![cert_secret("default", &v2), root_secret(&mesh)],
    );
    assert!(sds.next_sotw(SECRET).await.error_detail.is_none());
    assert!(
        presents_within(addr, &config, &v2).await,
        "new handshakes never got the rotated certificate"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, SeqCst);
    let (ok, failed) = traffic.await.unwrap();
    assert!(
        failed.is_empty(),
        "requests failed during rotation: {failed:?}"
    );
    assert!(ok > 0);
    // The connection made before the rotation is still served, on its old certificate.
    let resp = get(&mut early, "/after").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains(&format!("tls - - {PRODUCTPAGE}")),
        "outbound mTLS used the SDS identity: {resp}"
    );

    // A secret whose key is not the certificate's is NACKed; v2 keeps serving.
    let mut bad = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    bad.key_pem = client.key_pem.clone();
    let nonce = sds.push(
        SECRET,
        "s3",
        vec![cert_secret("default", &bad), root_secret(&mesh)],
    );
    let nack = sds.next_sotw(SECRET).await;
    assert_eq!(nack.response_nonce, nonce);
    assert_eq!(
        nack.version_info, "s2",
        "a NACK carries the last accepted version"
    );
    let detail = nack.error_detail.expect("NACK").message;
    assert!(detail.contains("secret 'default'"), "{detail}");
    let s = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&s), leaf_der(&v2));
    assert!(proxy.stat("sds.default.update_rejected").await >= 1);
}

/// Secrets over the ADS stream itself (`sds_config: {ads: {}}`), incremental xDS as Istio's
/// bootstrap uses it: the Secret subscription follows what LDS and CDS name, and both
/// directions are served once the secrets arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_over_delta_ads() {
    use support::ads::{AdsServer, CLUSTER, LISTENER, SECRET};
    let mesh = Ca::new("cluster.local");
    let me = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    let client = client_of(&mesh);
    let reviews = mesh.issue("reviews", Some(REVIEWS), false);
    let tls_up = TlsUpstream::start(&mesh, &reviews).await;
    let mut xds = AdsServer::unix(temp_dir().join("XDS")).await;
    let proxy = Proxy::start(&support::ads::bootstrap(&xds.addr, true), &[]).await;
    let port = free_port();
    let (cluster, listener) =
        sds_resources(port, tls_up.addr, "{ads: {}, resource_api_version: V3}");
    xds.next_delta(CLUSTER).await;
    xds.next_delta(LISTENER).await;
    xds.push_delta(CLUSTER, vec![("backend", "c1", cluster)], &[]);
    xds.next_delta(CLUSTER).await;
    let sub = xds.next_delta(SECRET).await;
    assert_eq!(sub.resource_names_subscribe, ["ROOTCA", "default"]);
    xds.push_delta(LISTENER, vec![("inbound", "l1", listener)], &[]);
    xds.next_delta(LISTENER).await;
    xds.push_delta(
        SECRET,
        vec![
            ("default", "s1", cert_secret("default", &me)),
            ("ROOTCA", "s1", root_secret(&mesh)),
        ],
        &[],
    );
    let ack = xds.next_delta(SECRET).await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let addr = proxy.wait_listener("inbound").await;
    let config = Arc::new(client_config(&mesh, Some(&client), &[b"http/1.1"]));
    let mut s = tls_connect(addr, config).await.unwrap();
    assert_eq!(peer_leaf(&s), leaf_der(&me));
    let resp = get(&mut s, "/ads").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with(&format!("tls - - {PRODUCTPAGE}")), "{resp}");
}

/// The all-options bootstrap's shape: a static cluster (Istio's `envoy_metrics_service`)
/// whose certificate and trust bundle come from pilot-agent's SDS (`sds-grpc`), with no
/// ADS at all. The SDS stream asks for them; until they arrive the cluster is not served;
/// then requests reach the upstream over mutual TLS with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_cluster_takes_its_certificates_from_an_sds_server() {
    use support::ads::{AdsServer, SECRET};
    let mesh = Ca::new("cluster.local");
    let reviews = mesh.issue("reviews", Some(REVIEWS), false);
    let me = mesh.issue("productpage", Some(PRODUCTPAGE), false);
    let tls_up = TlsUpstream::start(&mesh, &reviews).await;
    let dir = temp_dir();
    let mut sds = AdsServer::unix(dir.join("socket")).await;
    let fed = format!(
        r#"{{name: fed, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: fed, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}, transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {}}}}}}}"#,
        tls_up.addr.port(),
        istio_sds_context(PILOT_AGENT_SDS, REVIEWS)
    );
    let sds_grpc = format!(
        "{{name: sds-grpc, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: sds-grpc, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: '{}'}}}}}}}}]}}]}}}}",
        dir.join("socket").display()
    );
    let yaml = config("", &all_to("fed"), &format!("[{fed}, {sds_grpc}]"));
    let proxy = Proxy::start(&yaml, &[]).await;
    let first = sds.next_sotw(SECRET).await;
    assert!(first.node.is_some());
    assert_eq!(first.resource_names, ["ROOTCA", "default"]);
    assert_eq!(http_get(proxy.addr(), "/", &[]).await.0, 503);
    assert_eq!(tls_up.handshakes.load(SeqCst), 0);
    sds.push(
        SECRET,
        "s1",
        vec![cert_secret("default", &me), root_secret(&mesh)],
    );
    assert!(sds.next_sotw(SECRET).await.error_detail.is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = http_get(proxy.addr(), "/", &[]).await;
        if status == 200 {
            assert!(!body.is_empty());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tls_up.handshakes.load(SeqCst) >= 1);
    assert_eq!(proxy.stat("cluster.fed.ssl.handshake").await, 1);
}

/// A TLS stream tonic's server can serve (the test's own TLS acceptor in front).
struct Served(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for Served {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for Served {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Served {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A MetricsService collector behind mutual TLS (it requires a client certificate of
/// `ca`): the node id of each stream's first message.
struct Collector(tokio::sync::mpsc::UnboundedSender<String>);

#[tonic::async_trait]
impl ringside::proto::envoy::service::metrics::v3::metrics_service_server::MetricsService
    for Collector
{
    async fn stream_metrics(
        &self,
        req: tonic::Request<
            tonic::Streaming<ringside::proto::envoy::service::metrics::v3::StreamMetricsMessage>,
        >,
    ) -> Result<
        tonic::Response<ringside::proto::envoy::service::metrics::v3::StreamMetricsResponse>,
        tonic::Status,
    > {
        let mut s = req.into_inner();
        while let Some(m) = s.message().await? {
            if let Some(node) = m.identifier.and_then(|i| i.node) {
                let _ = self.0.send(node.id);
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

/// The all-options bootstrap's metrics service, end to end: its sink streams to a static
/// cluster whose client certificate and trust bundle come from pilot-agent's SDS, over
/// mutual TLS with the collector's identity checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_service_sink_streams_over_sds_fed_mutual_tls() {
    use support::ads::{AdsServer, SECRET};
    let mesh = Ca::new("cluster.local");
    let collector_id = mesh.issue("reviews", Some(REVIEWS), false);
    let me = mesh.issue("productpage", Some(PRODUCTPAGE), false);
    let acceptor = mtls_acceptor(&mesh, &collector_id, &[b"h2"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ms = listener.local_addr().unwrap();
    let (tx, mut nodes) = tokio::sync::mpsc::unbounded_channel();
    let incoming = async_stream_of(listener, acceptor);
    tokio::spawn(async move {
        let svc = ringside::proto::envoy::service::metrics::v3::metrics_service_server::MetricsServiceServer::new(Collector(tx));
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    let dir = temp_dir();
    let mut sds = AdsServer::unix(dir.join("socket")).await;
    let ms_cluster = format!(
        r#"{{name: ms, type: STATIC, connect_timeout: 1s, http2_protocol_options: {{}}, load_assignment: {{cluster_name: ms, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}, transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, {}}}}}}}"#,
        ms.port(),
        istio_sds_context(PILOT_AGENT_SDS, REVIEWS)
    );
    let sds_grpc = format!(
        "{{name: sds-grpc, type: STATIC, connect_timeout: 1s, load_assignment: {{cluster_name: sds-grpc, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: '{}'}}}}}}}}]}}]}}}}",
        dir.join("socket").display()
    );
    let b = Backend::start("a").await;
    let yaml = config(
        "",
        &all_to("a"),
        &format!("[{}, {ms_cluster}, {sds_grpc}]", cluster("a", &[b.addr], "")),
    ) + "node: {id: sidecar~10.0.0.2~pp.ns~ns.svc.cluster.local}\nstats_flush_interval: 0.2s\nstats_sinks: [{name: envoy.stat_sinks.metrics_service, typed_config: {\"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, transport_api_version: V3, grpc_service: {envoy_grpc: {cluster_name: ms}}}}]\n";
    let _proxy = Proxy::start(&yaml, &[]).await;
    assert_eq!(
        sds.next_sotw(SECRET).await.resource_names,
        ["ROOTCA", "default"]
    );
    // Nothing can reach the collector without the certificates.
    assert!(
        tokio::time::timeout(Duration::from_millis(600), nodes.recv())
            .await
            .is_err(),
        "metrics before the certificates"
    );
    sds.push(
        SECRET,
        "s1",
        vec![cert_secret("default", &me), root_secret(&mesh)],
    );
    let id = tokio::time::timeout(Duration::from_secs(5), nodes.recv())
        .await
        .expect("metrics over mutual TLS")
        .unwrap();
    assert_eq!(id, "sidecar~10.0.0.2~pp.ns~ns.svc.cluster.local");
}

/// The TLS connections `acceptor` makes of what `listener` accepts, for tonic.
fn async_stream_of(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl tokio_stream::Stream<Item = std::io::Result<Served>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok(Served(tls)));
                }
            });
        }
    });
    tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
}

/// Each core keeps its own session cache, but TLS 1.3 tickets open on any core: with two
/// cores (SO_REUSEPORT spreads the connections), every reconnect resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_resume_across_cores() {
    let mesh = Ca::new("cluster.local");
    let server = mesh.issue("svc.local", None, false);
    let backend = Backend::start("b").await;
    let socket = edge_socket(&temp_dir(), &server, "");
    let proxy = Proxy::start(
        &bootstrap("", &mtls_chain(&socket), backend.addr),
        &["--concurrency", "2"],
    )
    .await;
    let c = Arc::new(client_config(&mesh, None, &[]));
    let mut first = tls_connect(proxy.addr(), c.clone()).await.unwrap();
    assert!(get(&mut first, "/t")
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    for i in 0..12 {
        let mut s = tls_connect(proxy.addr(), c.clone()).await.unwrap();
        assert_eq!(
            s.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "connection {i}"
        );
        assert!(get(&mut s, "/t").await.unwrap().starts_with("HTTP/1.1 200"));
    }
}

/// An SDS file as Envoy reads one (`path_config_source`): a DiscoveryResponse of secrets.
fn sds_file(path: &Path, secrets: &[prost_types::Any]) {
    let items: Vec<String> = secrets
        .iter()
        .map(|any| {
            use prost::Message;
            let s = ringside::proto::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
                any.value.as_slice(),
            )
            .unwrap();
            let (chain, key) = match &s.r#type {
                Some(ringside::proto::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(t)) => (t.certificate_chain.clone(), t.private_key.clone()),
                _ => (None, None),
            };
            let inline = |d: Option<ringside::proto::envoy::config::core::v3::DataSource>| match d.and_then(|d| d.specifier) {
                Some(ringside::proto::envoy::config::core::v3::data_source::Specifier::InlineString(s)) => serde_json::to_string(&s).unwrap(),
                _ => "\"\"".into(),
            };
            match &s.r#type {
                Some(ringside::proto::envoy::extensions::transport_sockets::tls::v3::secret::Type::ValidationContext(v)) => format!(
                    r#"{{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret, name: {}, validation_context: {{trusted_ca: {{inline_string: {}}}}}}}"#,
                    s.name,
                    inline(v.trusted_ca.clone())
                ),
                _ => format!(
                    r#"{{"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret, name: {}, tls_certificate: {{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}}}"#,
                    s.name,
                    inline(chain),
                    inline(key)
                ),
            }
        })
        .collect();
    // Replaced by a rename, as Kubernetes secret volumes and cert-manager do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("resources: [{}]\n", items.join(", "))).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Certificates from an SDS file on a static listener (no control plane at all): read at
/// start, rotated when the file is replaced (new handshakes get the new certificate, an
/// established connection keeps serving), a bad replacement is refused and the old one
/// keeps serving, and a missing file is a start-up error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_file_rotates_a_static_listener_certificate() {
    let mesh = Ca::new("cluster.local");
    let v1 = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    let v2 = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    let client = client_of(&mesh);
    let backend = Backend::start("b").await;
    let dir = temp_dir();
    let file = dir.join("sds.yaml");
    sds_file(&file, &[cert_secret("default", &v1), root_secret(&mesh)]);
    let source = format!(
        "{{path_config_source: {{path: '{}', watched_directory: {{path: '{}'}}}}, resource_api_version: V3}}",
        file.display(),
        dir.display()
    );
    let socket = format!(
        "      transport_socket:\n        name: envoy.transport_sockets.tls\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n          require_client_certificate: true\n          {}",
        istio_sds_context(&source, "spiffe://cluster.local/ns/default/sa/client")
    );
    let yaml = bootstrap("", &mtls_chain(&socket), backend.addr);
    let proxy = Proxy::start(&yaml, &one_core("auto")).await;
    let addr = proxy.addr();
    let config = Arc::new(client_config(&mesh, Some(&client), &[b"http/1.1"]));
    let mut early = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&early), leaf_der(&v1));

    sds_file(&file, &[cert_secret("default", &v2), root_secret(&mesh)]);
    assert!(
        presents_within(addr, &config, &v2).await,
        "the rotated file was never used: {}",
        proxy.stderr()
    );
    let resp = get(&mut early, "/after").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // A key that is not the certificate's: refused, v2 keeps serving.
    let mut bad = mesh.issue("svc.local", Some(PRODUCTPAGE), false);
    bad.key_pem = client.key_pem.clone();
    sds_file(&file, &[cert_secret("default", &bad), root_secret(&mesh)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !proxy.stderr().contains("SDS file change rejected") {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(peer_leaf(&s), leaf_der(&v2));

    // A missing file stops the start with its name.
    let missing = dir.join("missing.yaml");
    let cfg = dir.join("missing-config.yaml");
    std::fs::write(
        &cfg,
        yaml.replace(&*file.to_string_lossy(), &missing.to_string_lossy()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["--mode", "validate", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&*missing.to_string_lossy())
            && err.contains("tls_certificate_sds_secret_configs[0].sds_config"),
        "{err}"
    );
}

/// `x-forwarded-client-cert` as Envoy writes it with `APPEND_FORWARD`: the verified client's
/// element (our URI SAN as `By`, the SHA-256 of its certificate, its URI SAN) after what
/// the client sent; a TLS client without a certificate cannot forward one at all.
/// (`tests/interop/envoy_parity.py` compares every mode and detail with Envoy 1.40.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_client_cert_names_the_verified_client() {
    let Mesh {
        ca,
        client,
        backend,
        ..
    } = Mesh::new().await;
    let server = ca.issue(
        "svc.local",
        Some("spiffe://cluster.local/ns/default/sa/server"),
        false,
    );
    let hcm = HCM.replace(
        "stat_prefix: ingress",
        "stat_prefix: ingress\n          forward_client_cert_details: APPEND_FORWARD\n          set_current_client_cert_details: {uri: true}",
    );
    let socket = tls_socket(&temp_dir(), &server, &ca, "");
    let yaml = bootstrap(
        "",
        &format!("    - filters:\n{hcm}\n{socket}"),
        backend.addr,
    );
    let hash: String = ring::digest::digest(&ring::digest::SHA256, &leaf_der(&client))
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let forwarded = |seen: &Seen| {
        let h = seen.last_headers.lock().unwrap();
        header(&h, "x-forwarded-client-cert").map(str::to_string)
    };
    for driver in drivers() {
        let proxy = Proxy::start(&yaml, &one_core(driver)).await;
        let addr = proxy.addr();
        let request = b"GET / HTTP/1.1\r\nHost: svc.local\r\nx-forwarded-client-cert: By=spiffe://earlier\r\nConnection: close\r\n\r\n";
        for (me, want) in [
            (
                Some(&client),
                Some(format!(
                    "By=spiffe://earlier,By=spiffe://cluster.local/ns/default/sa/server;Hash={hash};URI=spiffe://cluster.local/ns/default/sa/client"
                )),
            ),
            (None, None),
        ] {
            let config = Arc::new(client_config(&ca, me, &[b"http/1.1"]));
            let mut s = tls_connect(addr, config).await.expect("handshake");
            s.write_all(request).await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .unwrap()
                .unwrap();
            assert!(out.starts_with(b"HTTP/1.1 200"), "{driver}");
            assert_eq!(forwarded(&backend.seen), want, "{driver}, client cert {}", me.is_some());
        }
    }
}

/// A client as Istio's sidecars make one for an HTTP/1.1 service: `client`'s identity,
/// ALPN `istio-http/1.1` and `istio`.
fn istio_http1_client(mesh: &Ca, client: &Identity) -> Arc<rustls::ClientConfig> {
    Arc::new(client_config(
        mesh,
        Some(client),
        &[b"istio-http/1.1", b"istio"],
    ))
}

/// A chain like [`mtls_chain`]'s whose connection manager closes idle connections after
/// `idle`.
fn mtls_chain_idle(socket: &str, idle: &str) -> String {
    format!("    - filters:\n{HCM}\n          common_http_protocol_options: {{idle_timeout: {idle}}}\n{socket}")
}

/// A mutual-TLS keep-alive connection quiet for a while turns cold as a plaintext one does
/// (its buffers let go, the socket waited on beneath TLS) and serves on: a lone request
/// around the 100 ms edge, a pipelined pair, a TLS record split across the quiet, a body
/// after it; the idle timeout still counts from the last response and ends with
/// close_notify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_mutual_tls_connections_turn_cold_and_serve_on() {
    let Mesh {
        ca: mesh,
        server,
        client,
        backend,
    } = Mesh::new().await;
    let c = istio_http1_client(&mesh, &client);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: svc.local\r\n\r\n").into_bytes();
    for driver in drivers() {
        let socket = mtls_socket(&server, &mesh);
        let p = Proxy::start(
            &bootstrap("", &mtls_chain_idle(&socket, "1.2s"), backend.addr),
            &one_core(driver),
        )
        .await;
        let mut s = tls_connect(p.addr(), c.clone()).await.unwrap();
        serves_across_quiet_gaps(&mut s, "svc.local", "b", driver).await;
        // One TLS record, its first half before the connection turns cold, the rest after:
        // the half the proxy read must wait in its TLS layer, not be lost.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let record = {
            use std::io::Write;
            let (_, conn) = s.get_mut();
            conn.writer().write_all(&get("/split")).unwrap();
            let mut wire = Vec::new();
            conn.write_tls(&mut wire).unwrap();
            wire
        };
        let half = record.len() / 2;
        s.get_mut().0.write_all(&record[..half]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.get_mut().0.write_all(&record[half..]).await.unwrap();
        assert_eq!(
            one_response(&mut s).await.1,
            "upstream b /split",
            "{driver}"
        );
        serves_a_body_after_a_quiet(&mut s, "svc.local", driver).await;
        // Quiet past the idle timeout: closed 1.2 s after the last response, with
        // close_notify (a clean end of stream, not a truncation).
        let quiet = std::time::Instant::now();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        let waited = quiet.elapsed();
        assert!(matches!(end, Ok(Ok(0))), "{driver}: {end:?}");
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

/// Idle mutual-TLS keep-alive connections, as between sidecars, hold little memory: once
/// cold, no buffer of the request path, only the TLS session and what serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mutual_tls_connections_hold_little_memory() {
    const CONNS: usize = 400;
    let Mesh {
        ca: mesh,
        server,
        client,
        backend,
    } = Mesh::new().await;
    let c = istio_http1_client(&mesh, &client);
    let get = b"GET /idle HTTP/1.1\r\nHost: svc.local\r\n\r\n";
    for driver in drivers() {
        let socket = mtls_socket(&server, &mesh);
        let p = Proxy::start(
            &bootstrap("", &mtls_chain(&socket), backend.addr),
            &one_core(driver),
        )
        .await;
        let mut warm = tls_connect(p.addr(), c.clone()).await.unwrap();
        warm.write_all(get).await.unwrap();
        one_response(&mut warm).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let before = p.rss_anon_kib();
        let mut conns = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut s = tls_connect(p.addr(), c.clone()).await.unwrap();
            s.write_all(get).await.unwrap();
            assert_eq!(one_response(&mut s).await.1, "upstream b /idle", "{driver}");
            conns.push(s);
        }
        // Cold after 100 ms; the freed memory returned after the allocator's delay.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let per_conn = (p.rss_anon_kib().saturating_sub(before)) as f64 / CONNS as f64;
        eprintln!("{driver}: {per_conn:.1} KiB of anonymous RSS per idle mTLS connection");
        assert!(
            per_conn < 16.0,
            "{driver}: {per_conn:.1} KiB per idle mTLS connection"
        );
        // Still served.
        let s = &mut conns[CONNS - 1];
        s.write_all(get).await.unwrap();
        assert_eq!(one_response(s).await.1, "upstream b /idle", "{driver}");
    }
}
