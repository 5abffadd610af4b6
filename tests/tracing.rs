//! Tracing with a provider: spans reach a Zipkin collector (a hyper server taking Zipkin's
//! JSON v2) and an OTLP collector (a tonic `TraceService` built from OTLP's protos), with
//! the trace ids, parent ids and tags expected; B3 (multi and single) and W3C
//! propagation to the upstream; unsampled requests propagate without exporting; a
//! collector that fails is counted and never slows requests. HTTP/1.1 and HTTP/2
//! clients, both drivers. (Envoy's exact spans are compared in
//! tests/interop/tracing_parity.py.)

// The collectors are tokio servers in the test process, not the proxy's request path.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ringside::proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use ringside::proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use ringside::proto::opentelemetry::proto::trace::v1::Span;
use support::*;

/// A Zipkin collector: the spans of every POST, answered with `status`.
async fn zipkin(status: u16) -> (SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let spans: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let s = spans.clone();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            assert_eq!(req.uri().path(), "/api/v2/spans");
                            assert_eq!(req.headers()["content-type"], "application/json");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                            s.lock().unwrap().extend(v);
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    (addr, spans)
}

/// An exported span with its resource's attributes.
type Exported = (Vec<String>, Span);

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in req.into_inner().resource_spans {
            let resource: Vec<String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| {
                    format!(
                        "{}={:?}",
                        kv.key,
                        kv.value.as_ref().and_then(|v| v.value.clone())
                    )
                })
                .collect();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    self.spans.lock().unwrap().push((resource.clone(), s));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn otlp() -> (SocketAddr, Collector) {
    let c = Collector::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = c.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    (addr, c)
}

const H2: &str = r#"typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}},"#;
/// Spans go out one by one.
const FLUSH_AT_ONCE: &str = r#"{layered_runtime: {layers: [{name: s, static_layer: {tracing.zipkin.min_flush_spans: 1, tracing.opentelemetry.min_flush_spans: 1}}]}, node: {id: node-1, cluster: svc-cluster, locality: {zone: zone-a}}}"#;

fn provider(zipkin: bool) -> &'static str {
    if zipkin {
        r#"{name: envoy.tracers.zipkin, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: collector, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON, trace_id_128bit: true, shared_span_context: false}}"#
    } else {
        r#"{name: envoy.tracers.opentelemetry, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, grpc_service: {envoy_grpc: {cluster_name: collector}}, service_name: checkout}}"#
    }
}

async fn traced_proxy(
    zipkin: bool,
    backend: SocketAddr,
    collector: SocketAddr,
    driver: &str,
) -> Proxy {
    traced_proxy_with(zipkin, backend, collector, driver, FLUSH_AT_ONCE).await
}

/// [`traced_proxy`] with another bootstrap (`--config-yaml`).
async fn traced_proxy_with(
    zipkin: bool,
    backend: SocketAddr,
    collector: SocketAddr,
    driver: &str,
    bootstrap: &str,
) -> Proxy {
    let extra = format!(
        "          tracing: {{random_sampling: {{value: 100}}, custom_tags: [{{tag: team, literal: {{value: payments}}}}, {{tag: caller, request_header: {{name: x-caller, default_value: nobody}}}}], provider: {}}}",
        provider(zipkin)
    );
    let clusters = format!(
        "[{}, {}]",
        cluster("a", &[backend], ""),
        cluster("collector", &[collector], if zipkin { "" } else { H2 })
    );
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /named}, route: {cluster: a}, decorator: {operation: named-op}}, {match: {prefix: /}, route: {cluster: a}}]}]";
    let mut args = one_core(driver);
    args.extend(["--config-yaml", bootstrap]);
    Proxy::start(&config(&extra, vhosts, &clusters), &args).await
}

async fn wait_for<T: Clone>(v: &Mutex<Vec<T>>, n: usize) -> Vec<T> {
    for _ in 0..200 {
        if v.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v.lock().unwrap().clone()
}

fn tag<'a>(span: &'a serde_json::Value, k: &str) -> Option<&'a str> {
    span["tags"][k].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipkin_spans_carry_b3_contexts_and_envoys_tags() {
    for driver in drivers() {
        for h2 in [false, true] {
            let b = Backend::start("a").await;
            let (collector, spans) = zipkin(202).await;
            let p = traced_proxy(true, b.addr, collector, driver).await;

            // A new trace: the span id is the trace id's low half, and goes upstream.
            let (s, resp, _) = send(p.addr(), h2, "GET", "/up?q=1", &[("x-caller", "web")]).await;
            assert_eq!(s, 200);
            assert_eq!(header(&resp, "x-envoy-decorator-operation"), None);
            let got = wait_for(&spans, 1).await;
            let span = &got[0];
            let trace = span["traceId"].as_str().unwrap();
            assert_eq!(trace.len(), 32, "{span}");
            assert_eq!(span["id"].as_str().unwrap(), &trace[16..]);
            assert!(span.get("parentId").is_none());
            assert_eq!(b.seen.header("x-b3-traceid").as_deref(), Some(trace));
            assert_eq!(b.seen.header("x-b3-spanid").as_deref(), span["id"].as_str());
            assert_eq!(b.seen.header("x-b3-sampled").as_deref(), Some("1"));
            assert_eq!(b.seen.header("x-b3-parentspanid"), None);
            assert_eq!(span["kind"], "SERVER");
            assert_eq!(span["name"], "example.com");
            assert_eq!(span["localEndpoint"]["serviceName"], "svc-cluster");
            assert_eq!(span["annotations"][0]["value"], "ss");
            assert!(span["duration"].as_u64().is_some() && span["timestamp"].as_u64().unwrap() > 0);
            for (k, v) in [
                ("http.status_code", "200"),
                ("http.method", "GET"),
                ("http.url", "http://example.com/up?q=1"),
                ("http.protocol", if h2 { "HTTP/2" } else { "HTTP/1.1" }),
                ("upstream_cluster", "a"),
                ("upstream_cluster.name", "a"),
                ("response_flags", "-"),
                ("component", "proxy"),
                ("node_id", "node-1"),
                ("zone", "zone-a"),
                ("peer.address", "127.0.0.1"),
                ("team", "payments"),
                ("caller", "web"),
            ] {
                assert_eq!(tag(span, k), Some(v), "{k} in {span}");
            }
            let id = tag(span, "guid:x-request-id").unwrap();
            assert_eq!(&id[14..15], "9", "the sampling decision is in the id: {id}");

            // A caller's B3 context: same trace, the caller's span is the parent.
            let caller = [
                ("x-b3-traceid", "a3ce929d0e0e4736"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-parentspanid", "0020000000000001"),
                ("x-b3-sampled", "1"),
            ];
            send(p.addr(), h2, "GET", "/named", &caller).await;
            let span = wait_for(&spans, 2).await[1].clone();
            assert_eq!(span["traceId"], "a3ce929d0e0e4736");
            assert_eq!(span["parentId"], "a2fb4a1d1a96d312");
            assert_eq!(span["name"], "named-op");
            assert_eq!(tag(&span, "caller"), Some("nobody"));
            assert_eq!(
                b.seen.header("x-b3-traceid").as_deref(),
                Some("a3ce929d0e0e4736")
            );
            assert_eq!(b.seen.header("x-b3-spanid").as_deref(), span["id"].as_str());
            assert_eq!(
                b.seen.header("x-b3-parentspanid").as_deref(),
                Some("a2fb4a1d1a96d312")
            );

            // A single b3 header is answered in kind.
            let single = "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1";
            send(p.addr(), h2, "GET", "/up", &[("b3", single)]).await;
            let span = wait_for(&spans, 3).await[2].clone();
            let want = format!(
                "463ac35c9f6413ad48485a3953bb6124-{}-1-a2fb4a1d1a96d312",
                span["id"].as_str().unwrap()
            );
            assert_eq!(b.seen.header("b3"), Some(want));
            assert_eq!(b.seen.header("x-b3-traceid"), None);

            // Not sampled: propagated, never exported.
            let unsampled = [("x-b3-sampled", "0")];
            let (s, _, _) = send(p.addr(), h2, "GET", "/up", &unsampled).await;
            assert_eq!(s, 200);
            assert_eq!(b.seen.header("x-b3-sampled").as_deref(), Some("0"));
            assert!(b.seen.header("x-b3-spanid").is_some());
            // A header Envoy cannot read: a null span, nothing injected or exported.
            send(p.addr(), h2, "GET", "/up", &[("b3", "garbage")]).await;
            assert_eq!(b.seen.header("b3").as_deref(), Some("garbage"));
            assert_eq!(b.seen.header("x-b3-spanid"), None);
            send(p.addr(), h2, "GET", "/named", &[]).await;
            let got = wait_for(&spans, 4).await;
            assert_eq!(got.len(), 4, "only sampled spans are exported: {got:?}");

            assert_eq!(p.stat("http.ingress.tracing.random_sampling").await, 6);
            assert_eq!(p.stat_reaching("tracing.zipkin.reports_sent", 4).await, 4);
            assert_eq!(p.stat("tracing.zipkin.spans_sent").await, 4);
            assert_eq!(p.stat("tracing.zipkin.reports_dropped").await, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_spans_reach_an_otlp_collector_with_w3c_contexts() {
    for driver in drivers() {
        for h2 in [false, true] {
            let b = Backend::start("a").await;
            let (addr, c) = otlp().await;
            let p = traced_proxy(false, b.addr, addr, driver).await;

            let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
            let (s, _, _) = send(
                p.addr(),
                h2,
                "GET",
                "/up",
                &[("traceparent", tp), ("tracestate", state)],
            )
            .await;
            assert_eq!(s, 200);
            let got = wait_for(&c.spans, 1).await;
            let (resource, span) = &got[0];
            assert!(
                resource
                    .iter()
                    .any(|a| a.contains("service.name") && a.contains("checkout")),
                "{resource:?}"
            );
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            assert_eq!(hex(&span.trace_id), "0af7651916cd43dd8448eb211c80319c");
            assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331");
            assert_eq!(span.trace_state, state);
            assert_eq!(span.name, "ingress");
            assert_eq!(span.kind, 2, "SERVER");
            assert_eq!(span.flags, 0x301, "sampled, with a remote parent");
            assert!(
                span.end_time_unix_nano >= span.start_time_unix_nano
                    && span.start_time_unix_nano > 0
            );
            assert!(span.status.is_none());
            let attr = |k: &str| {
                span.attributes.iter().find(|a| a.key == k).and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    ringside::proto::opentelemetry::proto::common::v1::any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
            };
            assert_eq!(attr("http.status_code").as_deref(), Some("200"));
            assert_eq!(attr("team").as_deref(), Some("payments"));
            assert_eq!(attr("upstream_cluster").as_deref(), Some("a"));
            let sent = format!(
                "00-0af7651916cd43dd8448eb211c80319c-{}-01",
                hex(&span.span_id)
            );
            assert_eq!(b.seen.header("traceparent"), Some(sent));
            assert_eq!(b.seen.header("tracestate").as_deref(), Some(state));

            // A caller that did not sample: propagated with flags 00, not exported.
            let off = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
            send(p.addr(), h2, "GET", "/up", &[("traceparent", off)]).await;
            let up = b.seen.header("traceparent").unwrap();
            assert!(
                up.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && up.ends_with("-00"),
                "{up}"
            );
            assert_ne!(&up[36..52], "b7ad6b7169203331");
            // A new trace, and a decorated route's name.
            send(p.addr(), h2, "GET", "/named", &[]).await;
            let got = wait_for(&c.spans, 2).await;
            assert_eq!(got.len(), 2, "{got:?}");
            let span = &got[1].1;
            assert_eq!(span.name, "named-op");
            assert!(span.parent_span_id.is_empty());
            assert_eq!(span.flags, 0x101);
            assert_eq!(b.seen.header("tracestate").as_deref(), Some(""));
            assert_eq!(
                p.stat_reaching("tracing.opentelemetry.spans_sent", 2).await,
                2
            );
        }
    }
}

/// A collector that answers with an error, or is not there: reports are counted as
/// dropped, and requests go on at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_zipkin_collector_is_counted_and_never_blocks_requests() {
    let b = Backend::start("a").await;
    let (collector, spans) = zipkin(500).await;
    let p = traced_proxy(true, b.addr, collector, "legacy").await;
    for _ in 0..3 {
        let (s, _, _) = http_get(p.addr(), "/up", &[]).await;
        assert_eq!(s, 200);
    }
    assert_eq!(wait_for(&spans, 3).await.len(), 3);
    assert_eq!(
        p.stat_reaching("tracing.zipkin.reports_dropped", 3).await,
        3
    );
    assert_eq!(p.stat("tracing.zipkin.reports_sent").await, 0);

    let gone = refusing_addr();
    let p = traced_proxy(true, b.addr, gone.1, "legacy").await;
    three_quick_requests(&p).await;
    assert_eq!(
        p.stat_reaching("tracing.zipkin.reports_dropped", 3).await,
        3
    );
}

/// Three traced requests, all answered at full speed whatever their spans' fate.
async fn three_quick_requests(p: &Proxy) {
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let (s, _, _) = http_get(p.addr(), "/up", &[]).await;
        assert_eq!(s, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(2));
}

/// An OTLP collector that is not there: each failed export is counted, spans count as
/// sent when handed to the export (as Envoy counts them), and requests go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_otlp_collector_is_counted_and_never_blocks_requests() {
    let b = Backend::start("a").await;
    let gone = refusing_addr();
    let p = traced_proxy(false, b.addr, gone.1, "legacy").await;
    three_quick_requests(&p).await;
    assert_eq!(
        p.stat_reaching("tracing.opentelemetry.exports_failed", 3)
            .await,
        3
    );
    assert_eq!(p.stat("tracing.opentelemetry.spans_sent").await, 3);
}

/// The bootstrap's provider (Istio's form) serves connection managers that trace without
/// one; what is not implemented is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstraps_provider_and_refusals() {
    let b = Backend::start("a").await;
    let (collector, spans) = zipkin(202).await;
    let clusters = format!(
        "[{}, {}]",
        cluster("a", &[b.addr], ""),
        cluster("zipkin", &[collector], "")
    );
    let bootstrap = r#"{tracing: {http: {name: envoy.tracers.zipkin, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: zipkin, collector_endpoint: /api/v2/spans, collector_endpoint_version: HTTP_JSON, trace_id_128bit: true}}}, layered_runtime: {layers: [{name: s, static_layer: {tracing.zipkin.min_flush_spans: 1}}]}}"#;
    let mut args = one_core("legacy");
    args.extend(["--config-yaml", bootstrap]);
    let p = Proxy::start(
        &config("          tracing: {}", &all_to("a"), &clusters),
        &args,
    )
    .await;
    http_get(p.addr(), "/x", &[]).await;
    let got = wait_for(&spans, 1).await;
    // shared_span_context defaults to true: a server span says so.
    assert_eq!(got[0]["shared"], true, "{}", got[0]);

    for (field, yaml, want) in [
        (
            "unknown cluster",
            r#"provider: {name: z, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: nope, collector_endpoint: /s, collector_endpoint_version: HTTP_JSON}}"#,
            "envoy.tracers.zipkin: unknown cluster 'nope'",
        ),
        (
            "proto",
            r#"provider: {name: z, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: a, collector_endpoint: /s, collector_endpoint_version: HTTP_PROTO}}"#,
            "collector_endpoint_version: only HTTP_JSON is supported",
        ),
        (
            "other tracer",
            r#"provider: {name: d, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.DatadogConfig}}"#,
            "provider.typed_config",
        ),
        (
            "spawn",
            r#"spawn_upstream_span: true, provider: {name: z, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig, collector_cluster: a, collector_endpoint: /s, collector_endpoint_version: HTTP_JSON}}"#,
            "tracing.spawn_upstream_span: is not supported with a tracing provider",
        ),
        (
            "metadata without a path",
            r#"custom_tags: [{tag: t, metadata: {kind: {route: {}}, metadata_key: {key: k}}}]"#,
            "custom_tags[0].metadata.metadata_key.path: needs at least one segment",
        ),
        (
            "metadata without a kind",
            r#"custom_tags: [{tag: t, metadata: {metadata_key: {key: k, path: [{key: p}]}}}]"#,
            "custom_tags[0].metadata.kind: a kind (request, route, cluster, host) is required",
        ),
    ] {
        let yaml = config(
            &format!("          tracing: {{{yaml}}}"),
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], "")),
        );
        let (ok, err) = validate("t.yaml", &yaml, &[]);
        assert!(!ok, "{field}");
        assert!(err.contains(want), "{field}: {err}");
    }
}

/// Custom tags read the route's, the cluster's and the upstream host's metadata; a DNS
/// cluster's hosts carry their endpoint's metadata (tracing_parity.py compares STATIC
/// clusters with Envoy), over HTTP/1.1 and HTTP/2, on both drivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tags_read_route_cluster_and_host_metadata() {
    for driver in drivers() {
        let b = Backend::start("a").await;
        let (collector, spans) = zipkin(202).await;
        let md = |t: &str, kind: &str, key: &str, path: &str| {
            format!("{{tag: {t}, metadata: {{kind: {{{kind}: {{}}}}, metadata_key: {{key: {key}, path: [{path}]}}, default_value: none}}}}")
        };
        let tags = [
            md("route", "route", "istio", "{key: config}"),
            md("cluster", "cluster", "istio", "{key: services}"),
            md("host", "host", "istio", "{key: workload}"),
            md("host_deep", "host", "istio", "{key: nested}, {key: n}"),
            md("host_absent", "host", "istio", "{key: absent}"),
        ];
        let extra = format!(
            "          tracing: {{random_sampling: {{value: 100}}, custom_tags: [{}], provider: {}}}",
            tags.join(", "),
            provider(true)
        );
        let port = b.addr.port();
        let dns = format!(
            "{{name: a, connect_timeout: 1s, type: STRICT_DNS, dns_lookup_family: V4_ONLY, \
             metadata: {{filter_metadata: {{istio: {{services: [{{name: a}}]}}}}}}, \
             load_assignment: {{cluster_name: a, endpoints: [{{lb_endpoints: [{{endpoint: \
             {{address: {{socket_address: {{address: localhost, port_value: {port}}}}}}}, \
             metadata: {{filter_metadata: {{istio: {{workload: 'a-v1;ns;a;v1;K', nested: {{n: 7}}}}}}}}}}]}}]}}}}"
        );
        let clusters = format!("[{dns}, {}]", cluster("collector", &[collector], ""));
        let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /md}, route: {cluster: a}, metadata: {filter_metadata: {istio: {config: vs-a}}}}, {match: {prefix: /}, route: {cluster: a}}]}]";
        let mut args = one_core(driver);
        args.extend(["--config-yaml", FLUSH_AT_ONCE]);
        let p = Proxy::start(&config(&extra, vhosts, &clusters), &args).await;
        for (h2, path, route) in [
            (false, "/md", "vs-a"),
            (true, "/md", "vs-a"),
            (false, "/other", "none"),
        ] {
            let n = spans.lock().unwrap().len();
            let (s, _, _) = send(p.addr(), h2, "GET", path, &[]).await;
            assert_eq!(s, 200, "{driver} {path}");
            let got = wait_for(&spans, n + 1).await;
            let span = &got[n];
            assert_eq!(tag(span, "route"), Some(route), "{span}");
            assert_eq!(tag(span, "cluster"), Some(r#"[{"name":"a"}]"#), "{span}");
            assert_eq!(tag(span, "host"), Some("a-v1;ns;a;v1;K"), "{span}");
            assert_eq!(tag(span, "host_deep"), Some("7"), "{span}");
            assert_eq!(tag(span, "host_absent"), Some("none"), "{span}");
        }
    }
}

/// Spans still batched when the proxy stops are exported before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_batched_at_exit_are_sent() {
    let b = Backend::start("a").await;
    let (collector, spans) = zipkin(202).await;
    // Batches that neither fill nor time out while the proxy runs.
    let runtime = r#"{layered_runtime: {layers: [{name: s, static_layer: {tracing.zipkin.min_flush_spans: 100, tracing.zipkin.flush_interval_ms: 600000}}]}}"#;
    let mut p = traced_proxy_with(true, b.addr, collector, "legacy", runtime).await;
    for _ in 0..3 {
        let (s, _, _) = http_get(p.addr(), "/up", &[]).await;
        assert_eq!(s, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(spans.lock().unwrap().is_empty(), "nothing is due yet");
    p.terminate();
    assert_eq!(
        tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10))),
        Some(0)
    );
    assert_eq!(wait_for(&spans, 3).await.len(), 3);
}
