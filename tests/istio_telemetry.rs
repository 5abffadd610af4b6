//! Istio's telemetry between two sidecars, configured as istiod configures them: the
//! client's (an OUTBOUND listener) and the server's (INBOUND) exchange their workloads'
//! metadata in `x-envoy-peer-metadata` headers, which neither the application nor the
//! client ever sees, and each reports `istio_requests_total` and its histograms with
//! Istio's labels — the peer's workload from the exchange, the service from the cluster's
//! `istio` metadata or the Host header — in `/stats` and `/stats/prometheus`.

mod support;

use support::*;

/// A node as pilot-agent describes a pod.
fn node(id: &str, workload: &str, app: &str, version: &str) -> String {
    format!(
        r#"node:
  id: {id}
  cluster: {app}.default
  metadata:
    NAME: {workload}-abc12
    NAMESPACE: default
    WORKLOAD_NAME: {workload}
    CLUSTER_ID: Kubernetes
    ISTIO_VERSION: 1.24.0
    LABELS:
      app: {app}
      version: {version}
      pod-template-hash: abc12
      service.istio.io/canonical-name: {app}
      service.istio.io/canonical-revision: {version}
"#
    )
}

/// An RBAC filter (before istio.stats, as istiod orders them) denying `/denied`.
const DENY_DENIED: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules: {action: DENY, policies: {deny: {permissions: [{url_path: {path: {prefix: /denied}}}], principals: [{any: true}]}}}
"#;

/// istiod's HTTP metadata exchange for an inbound or outbound listener.
fn exchange(inbound: bool) -> String {
    let side = if inbound { "downstream" } else { "upstream" };
    format!(
        r#"          - name: istio.metadata_exchange
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/io.istio.http.peer_metadata.Config
              value:
                {side}_discovery: [{{istio_headers: {{}}}}, {{workload_discovery: {{}}}}]
                {side}_propagation: [{{istio_headers: {{}}}}]
"#
    )
}

fn sidecar(
    node: &str,
    direction: &str,
    filters: &str,
    stats: &str,
    routes: &str,
    cluster: &str,
    upstream: std::net::SocketAddr,
) -> String {
    sidecar_tls(
        node,
        direction,
        filters,
        stats,
        routes,
        cluster,
        upstream,
        ("", "", ""),
    )
}

/// A sidecar whose filter chain has `tls.0` (network filters) before its connection
/// manager and `tls.1` after it (a transport socket), and whose cluster has `tls.2`.
#[allow(clippy::too_many_arguments)]
fn sidecar_tls(
    node: &str,
    direction: &str,
    filters: &str,
    stats: &str,
    routes: &str,
    cluster: &str,
    upstream: std::net::SocketAddr,
    tls: (&str, &str, &str),
) -> String {
    let (before, after, cluster_tls) = tls;
    format!(
        r#"{node}static_resources:
  listeners:
  - name: {direction}
    traffic_direction: {direction}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{before}      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {direction}
          route_config:
            name: r
            virtual_hosts: [{{name: all, domains: ['*'], routes: {routes}}}]
          http_filters:
{filters}          - name: istio.stats
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/stats.PluginConfig
              value: {stats}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{after}  clusters:
  - name: '{cluster}'
    connect_timeout: 1s
{cluster_tls}
    metadata:
      filter_metadata:
        istio:
          services: [{{host: reviews.default.svc.cluster.local, name: reviews, namespace: default}}]
    load_assignment:
      cluster_name: '{cluster}'
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
"#,
        upstream.ip(),
        upstream.port()
    )
}

/// The value of the `metric` sample whose labels are exactly `labels`, read with a
/// Prometheus text-format parser; its line must also list the labels in `labels`' order
/// (Istio's).
fn sample(prom: &str, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
    let scrape = prometheus_parse::Scrape::parse(prom.lines().map(|l| Ok(l.to_string())))
        .expect("a Prometheus text exposition");
    // A histogram's bucket is one count of the parsed histogram (`le` is its bound).
    let (name, le) = match (
        metric.strip_suffix("_bucket"),
        labels.iter().find(|l| l.0 == "le"),
    ) {
        (Some(base), Some((_, le))) => (base, Some(*le)),
        _ => (metric, None),
    };
    let series: Vec<_> = labels.iter().filter(|l| l.0 != "le").collect();
    let found = scrape.samples.iter().find(|s| {
        s.metric == name
            && s.labels.len() == series.len()
            && series.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    })?;
    let value = match (&found.value, le) {
        (
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v),
            None,
        ) => *v as u64,
        (prometheus_parse::Value::Histogram(buckets), Some(le)) => {
            let bound: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            buckets.iter().find(|b| b.less_than == bound)?.count as u64
        }
        (other, _) => panic!("{metric}: unexpected {other:?}"),
    };
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let head = format!("{metric}{{{}}} ", want.join(","));
    assert!(
        prom.lines().any(|l| l.starts_with(&head)),
        "{metric}: labels not in Istio's order: {head}\n{prom}"
    );
    Some(value)
}

/// Istio's 25 labels with these values, in Istio's order.
fn labels(v: [&str; 25]) -> Vec<(&'static str, &str)> {
    const NAMES: [&str; 25] = [
        "reporter",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_service_name",
        "destination_service_namespace",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ];
    NAMES.into_iter().zip(v).collect()
}

/// The productpage's outbound sidecar (`stats` its istio.stats PluginConfig) to
/// `reviews`, whose endpoint at `app` istiod describes as the reviews-v3 workload.
fn productpage_to_reviews_v3(app: std::net::SocketAddr, stats: &str) -> String {
    sidecar(
        &node("sidecar~10.0.0.1~productpage", "productpage-v1", "productpage", "v1"),
        "OUTBOUND",
        &exchange(false),
        stats,
        "[{match: {prefix: /}, route: {cluster: 'outbound|9080||reviews.default.svc.cluster.local'}}]",
        "outbound|9080||reviews.default.svc.cluster.local",
        app,
    )
    .replace(
        "{lb_endpoints: [{endpoint:",
        "{lb_endpoints: [{metadata: {filter_metadata: {istio: {workload: 'reviews-v3;default;reviews;v3;Kubernetes'}}}, endpoint:",
    )
}

/// What that sidecar reports for a request answered 200, with `request_protocol`.
fn reviews_v3_labels(protocol: &str) -> Vec<(&'static str, &str)> {
    labels([
        "source",
        "productpage-v1",
        "productpage",
        "v1",
        "default",
        "unknown",
        "productpage",
        "v1",
        "Kubernetes",
        "reviews-v3",
        "default",
        "unknown",
        "unknown",
        "unknown",
        "reviews.default.svc.cluster.local",
        "reviews",
        "v3",
        "reviews",
        "default",
        "Kubernetes",
        protocol,
        "200",
        "",
        "-",
        "unknown",
    ])
}

async fn prometheus(p: &Proxy, metric: &str, want: u64) -> String {
    // A request is reported once its stream is done, just after the client has its answer.
    for _ in 0..100 {
        let (status, body) = p.admin_get("/stats/prometheus").await;
        assert_eq!(status, 200);
        let total: u64 = body
            .lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        if total >= want {
            return body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{metric} never reached {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_report_istio_requests_with_each_others_workloads() {
    for driver in drivers() {
        let app = Backend::start("app").await;
        let server = Proxy::start(
            &sidecar(
                &node(
                    "sidecar~10.0.0.2~reviews-v2-abc12.default~default.svc.cluster.local",
                    "reviews-v2",
                    "reviews",
                    "v2",
                ),
                "INBOUND",
                &format!("{}{DENY_DENIED}", exchange(true)),
                // istiod's inbound form; response_flags dropped from the count, request
                // sizes not reported at all.
                "{disable_host_header_fallback: true, metrics: [{name: requests_total, tags_to_remove: [response_flags]}, {name: request_bytes, drop: true}]}",
                "[{match: {prefix: /}, name: default, route: {cluster: 'inbound|9080||'}}]",
                "inbound|9080||",
                app.addr,
            ),
            &one_core(driver),
        )
        .await;
        let server_addr = server.wait_listener("INBOUND").await;
        let client = Proxy::start(
            &sidecar(
                &node(
                    "sidecar~10.0.0.1~productpage-v1-abc12.default~default.svc.cluster.local",
                    "productpage-v1",
                    "productpage",
                    "v1",
                ),
                "OUTBOUND",
                &exchange(false),
                "{}",
                "[{match: {prefix: /x}, route: {cluster: 'outbound|9080||reviews.default.svc.cluster.local'}}, {match: {prefix: /status}, route: {cluster: 'outbound|9080||reviews.default.svc.cluster.local'}}, {match: {prefix: /denied}, route: {cluster: 'outbound|9080||reviews.default.svc.cluster.local'}}]",
                "outbound|9080||reviews.default.svc.cluster.local",
                server_addr,
            ),
            &one_core(driver),
        )
        .await;
        let addr = client.wait_listener("OUTBOUND").await;
        for i in 0..4 {
            let (status, headers, _) = send(addr, i % 2 == 1, "GET", "/x", &[]).await;
            assert_eq!(status, 200, "{driver}");
            // The exchange stays between the sidecars.
            assert!(
                !headers
                    .iter()
                    .any(|(n, _)| n.starts_with("x-envoy-peer-metadata")),
                "{driver}: {headers:?}"
            );
            assert_eq!(app.seen.header("x-envoy-peer-metadata"), None, "{driver}");
            assert_eq!(app.seen.header("x-envoy-peer-metadata-id"), None);
        }
        let (status, _, _) = send(addr, false, "GET", "/status/503", &[]).await;
        assert_eq!(status, 503);
        // Denied by RBAC before istio.stats runs: reported all the same.
        let (status, _, _) = send(addr, false, "GET", "/denied", &[]).await;
        assert_eq!(status, 403);
        // A gRPC call no route matches: the client's sidecar answers it (grpc-status 12).
        let (status, headers, _) = send(
            addr,
            true,
            "POST",
            "/pkg.Svc/Method",
            &[("content-type", "application/grpc")],
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "grpc-status"), Some("12"), "{headers:?}");

        let prom = prometheus(&client, "istio_requests_total", 7).await;
        let source = |code: &'static str| {
            labels([
                "source",
                "productpage-v1",
                "productpage",
                "v1",
                "default",
                "unknown",
                "productpage",
                "v1",
                "Kubernetes",
                "reviews-v2",
                "default",
                "unknown",
                "reviews",
                "v2",
                "reviews.default.svc.cluster.local",
                "reviews",
                "v2",
                "reviews",
                "default",
                "Kubernetes",
                "http",
                code,
                "",
                "-",
                "unknown",
            ])
        };
        assert_eq!(
            sample(&prom, "istio_requests_total", &source("200")),
            Some(4),
            "{driver}:\n{prom}"
        );
        assert_eq!(
            sample(&prom, "istio_requests_total", &source("503")),
            Some(1),
            "{driver}:\n{prom}"
        );
        assert_eq!(
            sample(&prom, "istio_requests_total", &source("403")),
            Some(1),
            "{driver}:\n{prom}"
        );
        // No route, no peer: the Host header names the service (outbound keeps the
        // fallback), the peer is unknown.
        let nr = labels([
            "source",
            "productpage-v1",
            "productpage",
            "v1",
            "default",
            "unknown",
            "productpage",
            "v1",
            "Kubernetes",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "unknown",
            "example.com",
            "unknown",
            "latest",
            "example.com",
            "unknown",
            "unknown",
            "grpc",
            "200",
            "12",
            "NR",
            "unknown",
        ]);
        assert_eq!(
            sample(&prom, "istio_requests_total", &nr),
            Some(1),
            "{driver}:\n{prom}"
        );
        let mut ok = source("200");
        ok.push(("le", "+Inf"));
        assert_eq!(
            sample(&prom, "istio_request_duration_milliseconds_bucket", &ok),
            Some(4),
            "{driver}:\n{prom}"
        );
        assert!(prom.contains("# TYPE istio_requests_total counter\n"));
        assert!(prom.contains("# TYPE istio_request_bytes histogram\n"));
        assert!(!prom.contains("envoy_istio"), "{prom}");

        // The server's side: the client's workload from the exchange, the service from
        // the inbound cluster's metadata (the Host header is not used), plaintext.
        let prom = prometheus(&server, "istio_requests_total", 6).await;
        let mut dest = labels([
            "destination",
            "productpage-v1",
            "productpage",
            "v1",
            "default",
            "unknown",
            "productpage",
            "v1",
            "Kubernetes",
            "reviews-v2",
            "default",
            "unknown",
            "reviews",
            "v2",
            "reviews.default.svc.cluster.local",
            "reviews",
            "v2",
            "reviews",
            "default",
            "Kubernetes",
            "http",
            "200",
            "",
            "-",
            "none",
        ]);
        dest.retain(|(k, _)| *k != "response_flags");
        assert_eq!(
            sample(&prom, "istio_requests_total", &dest),
            Some(4),
            "{driver}:\n{prom}"
        );
        dest.iter_mut()
            .find(|(k, _)| *k == "response_code")
            .unwrap()
            .1 = "403";
        assert_eq!(
            sample(&prom, "istio_requests_total", &dest),
            Some(1),
            "{driver}: the RBAC denial\n{prom}"
        );
        assert_eq!(
            sample(&prom, "istio_requests_total", &source("403")),
            None,
            "a server's series is not a client's"
        );
        // The other metrics keep every label; request sizes are dropped.
        assert!(
            prom.lines().any(|l| l
                .starts_with("istio_response_bytes_count{reporter=\"destination\"")
                && l.contains("response_flags=\"-\"")),
            "{prom}"
        );
        assert!(!prom.contains("istio_request_bytes"), "{prom}");
        // `/stats` joins the name and its tags with dots, in Istio's namespace.
        let (_, text) = server.admin_get("/stats?filter=istio_requests_total").await;
        assert!(
            text.lines().any(|l| l.starts_with(
                "istiocustom.istio_requests_total.reporter.destination.source_workload.productpage-v1.source_canonical_service.productpage."
            ) && l.ends_with(": 4")),
            "{driver}: {text}"
        );
    }
}

const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_server_reports_both_principals() {
    use support::pki::*;
    let ca = Ca::new("mesh");
    let server_id = ca.issue("reviews", Some(REVIEWS), false);
    let client_id = ca.issue("productpage", Some(PRODUCTPAGE), false);
    let dir = temp_dir();
    let root = write(&dir, "root.pem", &ca.pem());
    let (scert, skey) = (
        write(&dir, "server.pem", &server_id.cert_pem),
        write(&dir, "server.key", &server_id.key_pem),
    );
    let (ccert, ckey) = (
        write(&dir, "client.pem", &client_id.cert_pem),
        write(&dir, "client.key", &client_id.key_pem),
    );
    // istiod's inbound chain: istio_authn, then mutual TLS offering Istio's ALPN.
    let authn = r#"      - name: istio_authn
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config}
"#;
    let downstream = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {scert}}}, private_key: {{filename: {skey}}}}}]
            validation_context: {{trusted_ca: {{filename: {root}}}}}
            alpn_protocols: [h2, http/1.1]
"#
    );
    let upstream = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.9080_._.reviews.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-http/1.1, istio]
          tls_certificates: [{{certificate_chain: {{filename: {ccert}}}, private_key: {{filename: {ckey}}}}}]
          validation_context: {{trusted_ca: {{filename: {root}}}, match_subject_alt_names: [{{exact: "{REVIEWS}"}}]}}
"#
    );
    for driver in drivers() {
        let app = Backend::start("app").await;
        let server = Proxy::start(
            &sidecar_tls(
                &node("sidecar~10.0.0.2~reviews", "reviews-v2", "reviews", "v2"),
                "INBOUND",
                &exchange(true),
                "{disable_host_header_fallback: true}",
                "[{match: {prefix: /}, route: {cluster: 'inbound|9080||'}}]",
                "inbound|9080||",
                app.addr,
                (authn, &downstream, ""),
            ),
            &one_core(driver),
        )
        .await;
        let server_addr = server.wait_listener("INBOUND").await;
        let client = Proxy::start(
            &sidecar_tls(
                &node("sidecar~10.0.0.1~productpage", "productpage-v1", "productpage", "v1"),
                "OUTBOUND",
                &exchange(false),
                "{}",
                "[{match: {prefix: /}, route: {cluster: 'outbound|9080||reviews.default.svc.cluster.local'}}]",
                "outbound|9080||reviews.default.svc.cluster.local",
                server_addr,
                ("", "", &upstream),
            ),
            &one_core(driver),
        )
        .await;
        let addr = client.wait_listener("OUTBOUND").await;
        for i in 0..3 {
            let (status, _, _) = send(addr, i % 2 == 0, "GET", "/x", &[]).await;
            assert_eq!(status, 200, "{driver}");
        }
        let prom = prometheus(&server, "istio_requests_total", 3).await;
        let dest = labels([
            "destination",
            "productpage-v1",
            "productpage",
            "v1",
            "default",
            PRODUCTPAGE,
            "productpage",
            "v1",
            "Kubernetes",
            "reviews-v2",
            "default",
            REVIEWS,
            "reviews",
            "v2",
            "reviews.default.svc.cluster.local",
            "reviews",
            "v2",
            "reviews",
            "default",
            "Kubernetes",
            "http",
            "200",
            "",
            "-",
            "mutual_tls",
        ]);
        assert_eq!(
            sample(&prom, "istio_requests_total", &dest),
            Some(3),
            "{driver}:\n{prom}"
        );
        // The client's side learnt the server's workload over the same connection.
        let prom = prometheus(&client, "istio_requests_total", 3).await;
        assert!(
            prom.lines().any(
                |l| l.starts_with("istio_requests_total{reporter=\"source\"")
                    && l.contains("destination_workload=\"reviews-v2\"")
                    // Both principals from the upstream connection's certificates.
                    && l.contains(&format!("source_principal=\"{PRODUCTPAGE}\""))
                    && l.contains(&format!("destination_principal=\"{REVIEWS}\""))
                    && l.ends_with(" 3")
            ),
            "{driver}:\n{prom}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peer_headers_the_client_reads_the_endpoints_workload() {
    // istiod's endpoint metadata names the workload behind an address; an upstream that
    // answers without the exchange (no sidecar) is labelled from it.
    let app = Backend::start("plain").await;
    let yaml = productpage_to_reviews_v3(app.addr, "{}");
    let client = Proxy::start(&yaml, &one_core("legacy")).await;
    let addr = client.wait_listener("OUTBOUND").await;
    let (status, _, _) = send(addr, false, "GET", "/x", &[]).await;
    assert_eq!(status, 200);
    // The application behind it got the client's metadata, as a sidecar would have.
    assert!(app.seen.header("x-envoy-peer-metadata").is_some());
    let prom = prometheus(&client, "istio_requests_total", 1).await;
    let want = reviews_v3_labels("http");
    assert_eq!(
        sample(&prom, "istio_requests_total", &want),
        Some(1),
        "{prom}"
    );
    // istio-proxy's build gauge, from the node's ISTIO_VERSION.
    assert_eq!(
        sample(
            &prom,
            "istio_build",
            &[("component", "proxy"), ("tag", "1.24.0")]
        ),
        Some(1),
        "{prom}"
    );
    assert!(prom.contains("# TYPE istio_build gauge\n"), "{prom}");
}

/// A TCP sidecar: `filters` (network, YAML list items) then tcp_proxy to `cluster`.
fn tcp_sidecar(
    node: &str,
    direction: &str,
    filters: &str,
    transport: &str,
    cluster: &str,
    cluster_extra: &str,
    upstream: std::net::SocketAddr,
) -> String {
    format!(
        r#"{node}static_resources:
  listeners:
  - name: {direction}
    traffic_direction: {direction}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{filters}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {direction}
          cluster: '{cluster}'
{transport}  clusters:
  - name: '{cluster}'
    connect_timeout: 1s
    metadata: {{filter_metadata: {{istio: {{services: [{{host: db.default.svc.cluster.local, name: db, namespace: default}}]}}}}}}
{cluster_extra}    load_assignment:
      cluster_name: '{cluster}'
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]
"#,
        upstream.ip(),
        upstream.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sidecars_exchange_metadata_in_band_and_report_istio_tcp_metrics() {
    use support::pki::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DB: &str = "spiffe://cluster.local/ns/default/sa/db";
    let ca = Ca::new("mesh");
    let server_id = ca.issue("db", Some(DB), false);
    let client_id = ca.issue("productpage", Some(PRODUCTPAGE), false);
    let dir = temp_dir();
    let root = write(&dir, "root.pem", &ca.pem());
    let (scert, skey) = (
        write(&dir, "server.pem", &server_id.cert_pem),
        write(&dir, "server.key", &server_id.key_pem),
    );
    let (ccert, ckey) = (
        write(&dir, "client.pem", &client_id.cert_pem),
        write(&dir, "client.key", &client_id.key_pem),
    );
    // istiod's inbound TCP chain and outbound TCP cluster, as in the corpus.
    let inbound_filters = r#"      - name: istio_authn
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config}
      - name: istio.metadata_exchange
        typed_config: {"@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, protocol: istio-peer-exchange}
      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/stats.PluginConfig}
"#;
    let downstream = format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {scert}}}, private_key: {{filename: {skey}}}}}]
            validation_context: {{trusted_ca: {{filename: {root}}}}}
            alpn_protocols: [istio-peer-exchange, h2, http/1.1]
"#
    );
    let outbound_filters = r#"      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: {}}
"#;
    let upstream = format!(
        r#"    filters:
    - name: istio.metadata_exchange
      typed_config: {{"@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, protocol: istio-peer-exchange}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: outbound_.5432_._.db.default.svc.cluster.local
        common_tls_context:
          alpn_protocols: [istio-peer-exchange, istio]
          tls_certificates: [{{certificate_chain: {{filename: {ccert}}}, private_key: {{filename: {ckey}}}}}]
          validation_context: {{trusted_ca: {{filename: {root}}}, match_subject_alt_names: [{{exact: "{DB}"}}]}}
"#
    );
    for driver in drivers() {
        let (echo, _) = echo_server(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        let server = Proxy::start(
            &tcp_sidecar(
                &node("sidecar~10.0.0.2~db", "db-v1", "db", "v1"),
                "INBOUND",
                inbound_filters,
                &downstream,
                "inbound|5432||",
                "",
                echo,
            ),
            &one_core(driver),
        )
        .await;
        let server_addr = server.wait_listener("INBOUND").await;
        let client = Proxy::start(
            &tcp_sidecar(
                &node(
                    "sidecar~10.0.0.1~productpage",
                    "productpage-v1",
                    "productpage",
                    "v1",
                ),
                "OUTBOUND",
                outbound_filters,
                "",
                "outbound|5432||db.default.svc.cluster.local",
                &upstream,
                server_addr,
            ),
            &one_core(driver),
        )
        .await;
        let addr = client.wait_listener("OUTBOUND").await;
        // The application's bytes come back exactly: both frames were taken off.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello over the mesh").await.unwrap();
        let mut got = vec![0u8; 19];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(&got, b"hello over the mesh", "{driver}");
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert_eq!(rest, b"bye", "{driver}");
        drop(s);

        let prom = prometheus(&server, "istio_tcp_connections_closed_total", 1).await;
        let dest: Vec<(&str, &str)> = labels([
            "destination",
            "productpage-v1",
            "productpage",
            "v1",
            "default",
            PRODUCTPAGE,
            "productpage",
            "v1",
            "Kubernetes",
            "db-v1",
            "default",
            DB,
            "db",
            "v1",
            "db.default.svc.cluster.local",
            "db",
            "v1",
            "db",
            "default",
            "Kubernetes",
            "tcp",
            "",
            "",
            "-",
            "mutual_tls",
        ])
        .into_iter()
        .filter(|(k, _)| *k != "response_code" && *k != "grpc_response_status")
        .collect();
        for (metric, want) in [
            ("istio_tcp_connections_opened_total", 1),
            ("istio_tcp_connections_closed_total", 1),
            ("istio_tcp_received_bytes_total", 19),
            ("istio_tcp_sent_bytes_total", 22),
        ] {
            assert_eq!(
                sample(&prom, metric, &dest),
                Some(want),
                "{driver} {metric}:\n{prom}"
            );
        }
        // The client's side learnt the server's workload in band.
        let prom = prometheus(&client, "istio_tcp_connections_closed_total", 1).await;
        assert!(
            prom.lines().any(|l| l.starts_with(
                "istio_tcp_sent_bytes_total{reporter=\"source\",source_workload=\"productpage-v1\""
            ) && l.contains("destination_workload=\"db-v1\"")
                && l.contains(&format!("source_principal=\"{PRODUCTPAGE}\""))
                && l.contains(&format!("destination_principal=\"{DB}\""))
                && l.contains("destination_service=\"db.default.svc.cluster.local\"")
                && l.contains("request_protocol=\"tcp\"")
                && l.ends_with(" 22")),
            "{driver}:\n{prom}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tcp_connection_is_reported_every_tcp_reporting_duration() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A plaintext inbound TCP chain with istio.stats reporting every 200 ms: a long-lived
    // connection's bytes show while it is open, counted opened once and closed at the end.
    let (echo, _) = echo_server(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let filters = r#"      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: {tcp_reporting_duration: 0.2s, metrics: [{name: tcp_connections_opened_total, dimensions: {destination_port: "string(destination.port)", request_host: "request.host"}}]}}
"#;
    for driver in drivers() {
        let server = Proxy::start(
            &tcp_sidecar(
                &node("sidecar~10.0.0.2~db", "db-v1", "db", "v1"),
                "INBOUND",
                filters,
                "",
                "inbound|5432||",
                "",
                echo,
            ),
            &one_core(driver),
        )
        .await;
        let addr = server.wait_listener("INBOUND").await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"12345").await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        let total = |prom: &str, metric: &str| -> u64 {
            prom.lines()
                .filter(|l| l.starts_with(&format!("{metric}{{")))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        // Still open: the periodic report shows it.
        let prom = prometheus(&server, "istio_tcp_received_bytes_total", 5).await;
        assert_eq!(
            total(&prom, "istio_tcp_connections_opened_total"),
            1,
            "{driver}\n{prom}"
        );
        assert_eq!(
            total(&prom, "istio_tcp_connections_closed_total"),
            0,
            "{prom}"
        );
        assert_eq!(total(&prom, "istio_tcp_sent_bytes_total"), 5, "{prom}");
        s.write_all(b"678").await.unwrap();
        let mut got = [0u8; 3];
        s.read_exact(&mut got).await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        let prom = prometheus(&server, "istio_tcp_connections_closed_total", 1).await;
        // The same series all along: one opened, one closed, every byte once.
        assert_eq!(
            total(&prom, "istio_tcp_connections_opened_total"),
            1,
            "{prom}"
        );
        assert_eq!(total(&prom, "istio_tcp_received_bytes_total"), 8, "{prom}");
        assert_eq!(total(&prom, "istio_tcp_sent_bytes_total"), 8 + 3, "{prom}");
        assert_eq!(
            prom.lines()
                .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
                .count(),
            1,
            "{prom}"
        );
        // The opened counter's dimensions (a connection has no request: `unknown`).
        let opened = prom
            .lines()
            .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .unwrap();
        let tail = format!(
            r#",destination_port="{}",request_host="unknown"}} 1"#,
            addr.port()
        );
        assert!(opened.ends_with(&tail), "{opened}");
        assert!(
            prom.lines()
                .filter(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
                .all(|l| !l.contains("destination_port")),
            "{prom}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_network_rbac_denies_is_still_reported() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // istiod's inbound TCP chain with an AuthorizationPolicy that allows nothing: the
    // connection is closed, and istio.stats still counts it opened and closed, as
    // istio-proxy's filter does for every connection it saw.
    let (echo, _) = echo_server(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let filters = r#"      - name: envoy.filters.network.rbac
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: tcp., rules: {}}
      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/stats.PluginConfig}
"#;
    let server = Proxy::start(
        &tcp_sidecar(
            &node("sidecar~10.0.0.2~db", "db-v1", "db", "v1"),
            "INBOUND",
            filters,
            "",
            "inbound|5432||",
            "",
            echo,
        ),
        &one_core("legacy"),
    )
    .await;
    let addr = server.wait_listener("INBOUND").await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(b"12345").await;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "a denied connection got bytes back");
    let prom = prometheus(&server, "istio_tcp_connections_closed_total", 1).await;
    let line = |metric: &str| {
        prom.lines()
            .find(|l| l.starts_with(&format!("{metric}{{")))
            .unwrap_or_else(|| panic!("no {metric}\n{prom}"))
            .to_string()
    };
    let opened = line("istio_tcp_connections_opened_total");
    for label in [
        "reporter=\"destination\"",
        "destination_workload=\"db-v1\"",
        "destination_service=\"db.default.svc.cluster.local\"",
        "response_flags=\"-\"",
    ] {
        assert!(opened.contains(label), "{label}: {opened}");
    }
    assert!(opened.ends_with("} 1"), "{opened}");
    assert!(line("istio_tcp_received_bytes_total").ends_with("} 0"));
    assert_eq!(server.stat("tcp.rbac.denied").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_overrides_add_and_replace_labels_from_cel_expressions() {
    // What istiod makes of a Telemetry resource's tagOverrides: per metric, dimensions
    // (tag → CEL expression) and tags to remove. A standard label's value is replaced in
    // place; new labels follow Istio's, in name order; a missing attribute is `unknown`.
    let app = Backend::start("plain").await;
    let stats = r#"{metrics: [
        {name: requests_total, tags_to_remove: [grpc_response_status, response_flags],
         dimensions: {request_protocol: "request.headers['x-proto']", request_host: "request.host",
                      destination_port: "string(destination.port)", peer_service: "filter_state.upstream_peer.service",
                      user: "request.headers['x-user']", big: "response.code >= 500 ? 'yes' : 'no'"}},
        {name: request_duration_milliseconds, dimensions: {response_flags: "'flagged'"}}]}"#;
    let yaml = productpage_to_reviews_v3(app.addr, stats);
    for driver in drivers() {
        let client = Proxy::start(&yaml, &one_core(driver)).await;
        let addr = client.wait_listener("OUTBOUND").await;
        for h2 in [false, true] {
            let (status, _, _) = send(
                addr,
                h2,
                "GET",
                "/x",
                &[("host", "reviews:9080"), ("x-proto", "custom")],
            )
            .await;
            assert_eq!(status, 200);
        }
        let prom = prometheus(&client, "istio_requests_total", 2).await;
        let mut want = reviews_v3_labels("custom");
        // Removed: grpc_response_status and response_flags.
        want.retain(|(k, _)| !matches!(*k, "grpc_response_status" | "response_flags"));
        let port = addr.port().to_string();
        want.extend([
            ("big", "no"),
            ("destination_port", port.as_str()),
            ("peer_service", "reviews"),
            ("request_host", ""),
            ("user", "unknown"),
        ]);
        // The HTTP/1.1 request's Host, the HTTP/2 client's :authority.
        for host in ["reviews:9080", "example.com"] {
            want[26].1 = host;
            assert_eq!(
                sample(&prom, "istio_requests_total", &want),
                Some(1),
                "{driver} {host}: {prom}"
            );
        }
        // The other metrics keep Istio's labels; the duration's flags are an expression's.
        let bucket = prom
            .lines()
            .find(|l| l.starts_with("istio_request_duration_milliseconds_count{"))
            .unwrap_or_else(|| panic!("{prom}"));
        assert!(bucket.contains(r#"request_protocol="http""#), "{bucket}");
        assert!(bucket.contains(r#"response_flags="flagged""#), "{bucket}");
        assert!(!bucket.contains("request_host"), "{bucket}");
        assert!(
            prom.lines()
                .any(|l| l.starts_with("istio_request_bytes_count{")
                    && l.contains(r#"response_flags="-""#)),
            "{prom}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_override_ringside_cannot_evaluate_is_refused_by_name() {
    let app = Backend::start("plain").await;
    for (expr, words) in [
        (
            "request.time",
            "`request.time`, an attribute Ringside does not provide",
        ),
        ("request.host ==", "is not a valid CEL expression"),
    ] {
        let yaml = sidecar(
            &node(
                "sidecar~10.0.0.1~productpage",
                "productpage-v1",
                "productpage",
                "v1",
            ),
            "OUTBOUND",
            "",
            &format!("{{metrics: [{{name: requests_total, dimensions: {{t: \"{expr}\"}}}}]}}"),
            "[{match: {prefix: /}, route: {cluster: c}}]",
            "c",
            app.addr,
        );
        let (ok, err) = validate("dims.yaml", &yaml, &[]);
        assert!(
            !ok && err.contains("metrics[0].dimensions[\"t\"]") && err.contains(words),
            "{expr}: {err}"
        );
    }
}
