//! Admin paths Istio's tools call: `/logging` (istioctl proxy-config log), `/reset_counters`,
//! `/help`, and the POST-only rule, as Envoy 1.40 answers them.

mod support;

use std::time::Duration;
use support::*;

async fn post(p: &Proxy, path: &str) -> (u16, String) {
    let (s, _, body) = request(p.admin, "POST", path, &[], bytes::Bytes::new()).await;
    (s, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_levels_change_at_run_time_and_counters_reset() {
    let b = Backend::start("a").await;
    let (_held, closed) = refusing_addr();
    let clusters = format!(
        "[{}, {}]",
        cluster("a", &[b.addr], ""),
        cluster("gone", &[closed], "")
    );
    let vhosts = "[{name: v, domains: ['*'], routes: [
        {match: {prefix: /gone}, route: {cluster: gone}},
        {match: {prefix: /}, route: {cluster: a}}]}]";
    let p = Proxy::start(
        &config("", vhosts, &clusters),
        &[
            "--concurrency",
            "1",
            "-l",
            "info",
            "--component-log-level",
            "http:warning",
        ],
    )
    .await;

    // The loggers and their levels, as the command line set them.
    let (s, list) = post(&p, "/logging").await;
    assert_eq!(s, 200);
    assert!(list.starts_with("active loggers:\n"), "{list}");
    assert!(
        list.contains("\n  http: warning\n") && list.contains("\n  upstream: info\n"),
        "{list}"
    );
    assert!(list.ends_with("\n\n"), "{list}");

    // A debug line of the upstream logger appears only once its level says so.
    assert_eq!(http_get(p.addr(), "/gone", &[]).await.0, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!p.stderr().contains("connect failed"), "{}", p.stderr());
    let (s, list) = post(&p, "/logging?upstream=debug").await;
    assert_eq!(s, 200);
    assert!(list.contains("\n  upstream: debug\n"), "{list}");
    assert_eq!(http_get(p.addr(), "/gone", &[]).await.0, 503);
    let mut seen = false;
    for _ in 0..50 {
        if p.stderr().contains("connect failed") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "{}", p.stderr());
    let (_, list) = post(&p, "/logging?paths=http:debug,router:error").await;
    assert!(
        list.contains("\n  http: debug\n") && list.contains("\n  router: error\n"),
        "{list}"
    );
    let (_, list) = post(&p, "/logging?level=critical").await;
    assert!(
        list.contains("\n  http: critical\n") && list.contains("\n  upstream: critical\n"),
        "{list}"
    );

    // Envoy's refusals.
    for (q, e) in [
        ("nope=debug", "error: unknown logger name\n\n"),
        ("http=loud", "error: unknown logger level\n\n"),
        (
            "paths=http:debug,nope:info",
            "error: unknown logger name\n\n",
        ),
        (
            "level=info&http=debug",
            "error: invalid number of parameters\n\n",
        ),
        (
            "group=http:debug",
            "error: group parameter requires fine-grain logging to be enabled\n\n",
        ),
    ] {
        let (s, body) = post(&p, &format!("/logging?{q}")).await;
        assert_eq!(s, 400, "{q}");
        assert!(body.starts_with(e), "{q}: {body}");
        assert!(
            body.contains("usage: /logging?level=<level> (change all levels)\n"),
            "{body}"
        );
    }
    let (s, body) = p.admin_get("/logging").await;
    assert_eq!(
        (s, body.as_str()),
        (405, "Method GET not allowed, POST required.")
    );

    // /reset_counters: counters read 0 and count on from there; gauges keep their value.
    http_get(p.addr(), "/x", &[]).await;
    assert!(p.stat("cluster.a.upstream_rq_total").await >= 1);
    let (s, body) = post(&p, "/reset_counters").await;
    assert_eq!((s, body.as_str()), (200, "OK\n"));
    assert_eq!(p.stat("cluster.a.upstream_rq_total").await, 0);
    assert_eq!(p.stat("http.ingress.downstream_rq_total").await, 0);
    assert_eq!(p.stat("server.concurrency").await, 1);
    http_get(p.addr(), "/x", &[]).await;
    assert_eq!(p.stat_reaching("cluster.a.upstream_rq_total", 1).await, 1);
    let (s, _) = p.admin_get("/reset_counters").await;
    assert_eq!(s, 405);

    // /clusters?format=json, as istioctl proxy-config endpoints reads it.
    let (_, clusters) = p.admin_get("/clusters?format=json").await;
    let v: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let a = v["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "a")
        .expect("cluster a");
    let host = &a["host_statuses"][0];
    assert_eq!(
        host["address"]["socket_address"]["port_value"],
        b.addr.port()
    );
    assert_eq!(host["health_status"]["eds_health_status"], "HEALTHY");
    assert_eq!(a["circuit_breakers"]["thresholds"][0]["max_requests"], 1024);
    assert_eq!(a["observability_name"], "a");
    assert!(a.get("added_via_api").is_none(), "a static cluster: {a}");
    let (_, text) = p.admin_get("/clusters").await;
    assert!(
        text.contains(&format!("a::{}::health_flags::healthy\n", b.addr)),
        "{text}"
    );

    // /config_dump's name_regex (whole names) and mask, as Envoy applies them.
    let proxy = &p;
    let dump = |q: &'static str| async move {
        let (s, body) = proxy.admin_get(q).await;
        (
            s,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
            body,
        )
    };
    let (s, v, _) = dump("/config_dump?resource=static_clusters&name_regex=a").await;
    let names: Vec<_> = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cluster"]["name"].clone())
        .collect();
    assert_eq!((s, names), (200, vec![serde_json::json!("a")]));
    let (_, v, _) = dump("/config_dump?resource=static_clusters&mask=cluster.name").await;
    for c in v["configs"].as_array().unwrap() {
        let keys: Vec<_> = c["cluster"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["@type", "name"], "{c}");
        assert!(c.get("last_updated").is_none(), "{c}");
    }
    let (_, v, _) = dump("/config_dump?mask=static_clusters").await;
    let types: Vec<_> = v["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["@type"].clone())
        .collect();
    assert_eq!(
        types,
        [serde_json::json!(
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump"
        )]
    );
    let (s, _, body) = dump("/config_dump?mask=static_clusters.cluster.name").await;
    assert_eq!(s, 400, "a path through a repeated field: {body}");
    assert!(body.contains("could not be successfully applied to any configs"));
    let (s, _, body) = dump("/config_dump?name_regex=(").await;
    assert!(s == 400 && body.contains("name_regex"), "{body}");

    // A chunked body admin does not read: answered, then the connection closes, so its
    // bytes are never taken for a next request.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(p.admin).await.unwrap();
        c.write_all(b"POST /healthcheck/ok HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out))
            .await
            .expect("admin closes the connection")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
    }

    let (_, help) = p.admin_get("/help").await;
    assert!(help.starts_with("admin commands are:\n"), "{help}");
    assert!(
        help.contains("  /reset_counters (POST): reset all counters to zero\n"),
        "{help}"
    );
    // Every /config_dump parameter Ringside serves is listed under it, as Envoy lists them.
    for param in ["resource", "mask", "name_regex", "include_eds"] {
        assert!(
            help.contains(&format!("\n      {param}: ")),
            "{param}: {help}"
        );
    }
}

/// A big mesh's stats read: a readiness probe's few stats are picked as they are read,
/// and a scrape keeps neither every stat name's tags nor what building the exposition took. With 2,000 clusters (144,000 lines), three scrapes of
/// `/stats/prometheus` grew RSS by 120 MiB for good; now by the tag cache's bound (12).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraping_a_big_mesh_keeps_no_memory() {
    const CLUSTERS: usize = 2000;
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let clusters: Vec<String> = (0..CLUSTERS)
        .map(|i| cluster(&format!("outbound|80||svc-{i}"), &[backend], ""))
        .collect();
    let yaml = config(
        "",
        &all_to("outbound|80||svc-0"),
        &format!("[{}]", clusters.join(",")),
    );
    let p = Proxy::start(&yaml, &[]).await;
    let scrape = || async {
        let (status, _, body) = request(
            p.admin,
            "GET",
            "/stats/prometheus",
            &[],
            bytes::Bytes::new(),
        )
        .await;
        assert_eq!(status, 200);
        body
    };
    // pilot-agent's readiness probe: two stats of 144,000, kept as they are read (each
    // stat named as a string first left 20 MiB resident here, 120 MB at 10,000 services).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = p.rss_anon_kib();
    for _ in 0..3 {
        let probe = "/stats?usedonly&filter=^(server.state|listener_manager.workers_started)$";
        let (status, _, body) = request(p.admin, "GET", probe, &[], bytes::Bytes::new()).await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&body),
            "listener_manager.workers_started: 1\nserver.state: 0\n"
        );
    }
    let grown = p.rss_anon_kib().saturating_sub(before) / 1024;
    eprintln!("RSS grew {grown} MiB over three readiness probes");
    assert!(
        grown < 4,
        "RSS grew {grown} MiB over three readiness probes"
    );
    let before = p.rss_anon_kib();
    let body = scrape().await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(
            "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"outbound|80||svc-1999\"} 0"
        ),
        "every cluster's stats are exposed"
    );
    let lines = text.lines().count();
    assert!(lines > 100_000, "{lines} lines");
    for _ in 0..2 {
        scrape().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = p.rss_anon_kib().saturating_sub(before) / 1024;
    eprintln!("RSS grew {grown} MiB over three scrapes of {lines} lines");
    assert!(grown < 32, "RSS grew {grown} MiB over three scrapes");
}
