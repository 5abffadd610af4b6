//! The bootstrap's `stats_sinks`: statsd over UDP, in Envoy's line format, every
//! `stats_flush_interval`; the sinks Ringside does not implement are refused by name.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::*;
use tokio::net::UdpSocket;

/// Every datagram that arrives within `wait`.
async fn collect(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = Instant::now() + wait;
    while let Ok(Ok(n)) = tokio::time::timeout(
        end.saturating_duration_since(Instant::now()),
        sock.recv(&mut buf),
    )
    .await
    {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// Counters arrive as the change since the last flush (their sum is the count), gauges as
/// their value, each metric in a datagram of its own under the prefix; histograms as the
/// values recorded since the last flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_receives_counters_gauges_and_histograms() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let b = Backend::start("a").await;
    let sinks = format!(
        "stats_flush_interval: 0.2s\nstats_sinks: [{{name: envoy.stat_sinks.statsd, typed_config: {{\"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}, prefix: rs}}}}]\n"
    );
    let yaml = config(
        "",
        &all_to("a"),
        &format!("[{}]", cluster("a", &[b.addr], "")),
    ) + &sinks;
    let p = Proxy::start(&yaml, &one_core("legacy")).await;
    for _ in 0..3 {
        assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200);
    }
    let mut lines = collect(&sock, Duration::from_millis(700)).await;
    for _ in 0..2 {
        assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200);
    }
    lines.extend(collect(&sock, Duration::from_millis(700)).await);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("rs.") && !l.contains('\n')),
        "{lines:?}"
    );
    let mut counters: HashMap<&str, i64> = HashMap::new();
    for l in &lines {
        if let Some((name, v)) = l.strip_suffix("|c").and_then(|l| l.rsplit_once(':')) {
            *counters.entry(name).or_default() += v.parse::<i64>().unwrap();
        }
    }
    assert_eq!(
        counters.get("rs.cluster.a.upstream_rq_total"),
        Some(&5),
        "{counters:?}"
    );
    assert_eq!(counters.get("rs.http.ingress.downstream_rq_2xx"), Some(&5));
    // Each flush sends a used counter, 0 or not.
    let flushes = lines
        .iter()
        .filter(|l| l.starts_with("rs.cluster.a.upstream_rq_total:"))
        .count();
    assert!(flushes >= 4, "{flushes}");
    assert!(
        lines
            .iter()
            .any(|l| l == "rs.cluster.a.upstream_cx_active:1|g"),
        "{lines:?}"
    );
    let timed: u64 = lines
        .iter()
        .filter(|l| l.starts_with("rs.cluster.a.upstream_rq_time:"))
        .map(|l| match l.split_once("|@") {
            Some((_, rate)) => (1.0 / rate.parse::<f64>().unwrap()).round() as u64,
            None => 1,
        })
        .sum();
    assert_eq!(timed, 5, "{lines:?}");
}

/// A metrics service whose cluster is not a static one is refused, as Envoy refuses it;
/// TCP statsd and flushing on admin requests are refused by name; an interval outside
/// Envoy's bounds is refused.
#[test]
fn unsupported_sinks_are_refused_by_name() {
    let a = cluster("a", &["127.0.0.1:1".parse().unwrap()], "");
    let base = config("", &all_to("a"), &format!("[{a}]"));
    for (extra, want) in [
        ("stats_sinks: [{name: envoy.stat_sinks.metrics_service, typed_config: {\"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, grpc_service: {envoy_grpc: {cluster_name: x}}}}]", "stats_sinks[0].typed_config.grpc_service.envoy_grpc.cluster_name"),
        ("stats_sinks: [{name: s, typed_config: {\"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink, tcp_cluster_name: x}}]", "stats_sinks[0].typed_config.tcp_cluster_name"),
        ("stats_flush_on_admin: true", "stats_flush_on_admin"),
        ("stats_flush_interval: 600s", "stats_flush_interval"),
    ] {
        let (ok, out) = validate("sinks", &format!("{base}{extra}\n"), &[]);
        assert!(!ok, "{extra}");
        assert!(out.contains(want), "{extra}: {out}");
    }
}

mod metrics_service {
    use super::*;
    use ringside::proto::envoy::service::metrics::v3 as pb;
    use ringside::proto::io::prometheus::client as prom;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    /// A MetricsService that passes on every message it receives, tagged with its stream.
    struct Collector(
        UnboundedSender<(usize, pb::StreamMetricsMessage)>,
        Arc<AtomicUsize>,
    );

    #[tonic::async_trait]
    impl pb::metrics_service_server::MetricsService for Collector {
        async fn stream_metrics(
            &self,
            req: tonic::Request<tonic::Streaming<pb::StreamMetricsMessage>>,
        ) -> Result<tonic::Response<pb::StreamMetricsResponse>, tonic::Status> {
            let n = self.1.fetch_add(1, Ordering::SeqCst);
            let mut s = req.into_inner();
            while let Some(m) = s.message().await? {
                let _ = self.0.send((n, m));
            }
            Ok(tonic::Response::new(pb::StreamMetricsResponse {}))
        }
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    async fn collector() -> (
        std::net::SocketAddr,
        UnboundedReceiver<(usize, pb::StreamMetricsMessage)>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = unbounded_channel();
        let svc =
            pb::metrics_service_server::MetricsServiceServer::new(Collector(tx, Arc::default()));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await;
        });
        (addr, rx)
    }

    fn bootstrap(ms: std::net::SocketAddr, backend: std::net::SocketAddr, options: &str) -> String {
        let clusters = format!(
            "[{}, {}]",
            cluster("a", &[backend], ""),
            cluster("ms", &[ms], "http2_protocol_options: {},")
        );
        config("", &all_to("a"), &clusters)
            + &format!("node: {{id: sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local, cluster: app.ns}}\nstats_flush_interval: 0.2s\nstats_sinks: [{{name: envoy.stat_sinks.metrics_service, typed_config: {{\"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig, transport_api_version: V3, grpc_service: {{envoy_grpc: {{cluster_name: ms}}}}{options}}}}}]\n")
    }

    fn find<'a>(
        m: &'a pb::StreamMetricsMessage,
        name: &str,
        kind: prom::MetricType,
    ) -> Option<&'a prom::Metric> {
        m.envoy_metrics
            .iter()
            .find(|f| f.name() == name && f.r#type() == kind)
            .map(|f| &f.metric[0])
    }

    /// As Envoy's sink: one stream, the node in its first message only; counters
    /// cumulative, gauges, and each histogram over the last interval as a summary and a
    /// histogram; each stat its own family of one metric, named by its full name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_envoys_metric_families() {
        let (ms, mut rx) = collector().await;
        let b = Backend::start("a").await;
        let p = Proxy::start(&bootstrap(ms, b.addr, ""), &one_core("legacy")).await;
        for _ in 0..3 {
            assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200);
        }
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let last = loop {
            let (stream, m) = tokio::time::timeout_at(deadline.into(), rx.recv())
                .await
                .expect("metrics within 5 s")
                .unwrap();
            if let Some(id) = &m.identifier {
                let node = id.node.as_ref().unwrap();
                assert_eq!(node.id, "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local");
                assert_eq!(node.cluster, "app.ns");
            }
            seen.push((stream, m.identifier.is_some()));
            if find(&m, "cluster.a.upstream_rq_total", prom::MetricType::Counter)
                .is_some_and(|c| c.counter.as_ref().unwrap().value() == 3.0)
                && seen.len() >= 2
            {
                break m;
            }
        };
        assert!(seen.iter().all(|(s, _)| *s == 0), "{seen:?}");
        assert!(seen[0].1 && seen[1..].iter().all(|(_, id)| !id), "{seen:?}");
        assert!(last.envoy_metrics.iter().all(|f| f.metric.len() == 1));
        let g = find(
            &last,
            "cluster.a.upstream_cx_active",
            prom::MetricType::Gauge,
        )
        .unwrap();
        assert_eq!(g.gauge.as_ref().unwrap().value(), 1.0);
        assert!(g.timestamp_ms() > 0);
        // The requests were in an earlier interval: this one's histogram is empty but sent.
        let h = find(
            &last,
            "cluster.a.upstream_rq_time",
            prom::MetricType::Histogram,
        )
        .unwrap();
        let h = h.histogram.as_ref().unwrap();
        assert_eq!(h.bucket.len(), 19);
        assert_eq!(h.bucket[0].upper_bound(), 0.5);
        let s = find(
            &last,
            "cluster.a.upstream_rq_time",
            prom::MetricType::Summary,
        )
        .unwrap();
        let q: Vec<f64> = s
            .summary
            .as_ref()
            .unwrap()
            .quantile
            .iter()
            .map(|q| q.quantile())
            .collect();
        assert_eq!(
            q,
            [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0]
        );
    }

    /// `report_counters_as_deltas`, `emit_tags_as_labels` (the tag-extracted name, the
    /// tags as labels) and `histogram_emit_mode: HISTOGRAM`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deltas_labels_and_histograms_only() {
        let (ms, mut rx) = collector().await;
        let b = Backend::start("a").await;
        let options = ", report_counters_as_deltas: true, emit_tags_as_labels: true, histogram_emit_mode: HISTOGRAM";
        let p = Proxy::start(&bootstrap(ms, b.addr, options), &one_core("legacy")).await;
        for _ in 0..2 {
            assert_eq!(http_get(p.addr(), "/x", &[]).await.0, 200);
        }
        let mut total = 0.0;
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut summaries = 0;
        while let Ok(Some((_, m))) = tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            summaries += m
                .envoy_metrics
                .iter()
                .filter(|f| f.r#type() == prom::MetricType::Summary)
                .count();
            for f in &m.envoy_metrics {
                let is_rq_total = f.name() == "cluster.upstream_rq_total"
                    && f.metric[0]
                        .label
                        .iter()
                        .any(|l| l.name() == "envoy.cluster_name" && l.value() == "a");
                if is_rq_total {
                    total += f.metric[0].counter.as_ref().unwrap().value();
                }
            }
        }
        assert_eq!(total, 2.0);
        assert_eq!(summaries, 0);
    }
}
