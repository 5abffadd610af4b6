//! Request mirroring (`request_mirror_policies`): the copy each policy sends, its head and
//! body as the mirror cluster sees them, over HTTP/1.1 and HTTP/2 on both sides; that a
//! mirror never holds the primary response back; which policy applies; the stats.

// The test upstreams run on tokio threads: a Mutex is right there.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One request a mirror upstream took.
#[derive(Clone, Debug)]
struct Rec {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: usize,
}

impl Rec {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A recording upstream (HTTP/2 when `h2`): answers 200 "mirror" once `gate` lets it
/// (immediately when `gate` is `None`).
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Rec>>>,
    arrived: Arc<Notify>,
}

impl Recorder {
    async fn start(h2: bool, gate: Option<Arc<Notify>>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (s, a) = (seen.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (s, a, g) = (s.clone(), a.clone(), gate.clone());
                tokio::spawn(async move {
                    if h2 {
                        serve_h2(tcp, s, a, g).await
                    } else {
                        serve_h1(tcp, s, a, g).await
                    }
                });
            }
        });
        Recorder {
            addr,
            seen,
            arrived,
        }
    }

    /// Waits until `n` requests arrived (at most 10 s), and returns them.
    async fn wait(&self, n: usize) -> Vec<Rec> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            {
                let seen = self.seen.lock().unwrap();
                if seen.len() >= n {
                    return seen.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{n} mirrored requests expected, {} arrived",
                    self.seen.lock().unwrap().len()
                );
            }
        }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn record(
    seen: &Mutex<Vec<Rec>>,
    arrived: &Notify,
    method: &str,
    path: &str,
    h: &http::HeaderMap,
    body: usize,
) {
    seen.lock().unwrap().push(Rec {
        method: method.into(),
        path: path.into(),
        headers: header_list(h),
        body,
    });
    arrived.notify_waiters();
}

async fn serve_h1(
    tcp: TcpStream,
    seen: Arc<Mutex<Vec<Rec>>>,
    arrived: Arc<Notify>,
    gate: Option<Arc<Notify>>,
) {
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (seen, arrived, gate) = (seen.clone(), arrived.clone(), gate.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes().len());
            let Ok(n) = body else {
                return Err("request body cut");
            };
            let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
            record(
                &seen,
                &arrived,
                parts.method.as_str(),
                path,
                &parts.headers,
                n,
            );
            if let Some(g) = gate {
                g.notified().await;
            }
            Ok(http::Response::new(Full::new(Bytes::from_static(
                b"mirror",
            ))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

async fn serve_h2(
    tcp: TcpStream,
    seen: Arc<Mutex<Vec<Rec>>>,
    arrived: Arc<Notify>,
    gate: Option<Arc<Notify>>,
) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let (seen, arrived, gate) = (seen.clone(), arrived.clone(), gate.clone());
        tokio::spawn(async move {
            let (parts, mut body) = req.into_parts();
            let mut n = 0;
            while let Some(d) = body.data().await {
                let Ok(d) = d else { return };
                n += d.len();
                let _ = body.flow_control().release_capacity(d.len());
            }
            let mut headers = parts.headers.clone();
            if let Some(a) = parts.uri.authority() {
                headers.insert("host", a.as_str().parse().unwrap());
            }
            let path = parts.uri.path_and_query().map_or("", |p| p.as_str());
            record(&seen, &arrived, parts.method.as_str(), path, &headers, n);
            if let Some(g) = gate {
                g.notified().await;
            }
            let resp = http::Response::builder().status(200).body(()).unwrap();
            if let Ok(mut tx) = respond.send_response(resp, false) {
                let _ = tx.send_data(Bytes::from_static(b"mirror"), true);
            }
        });
    }
}

/// A proxy routing everything to `primary`, with `policies` (YAML flow list) on the route
/// and `m` (and `m2`, when given) as mirror clusters; `mirror_extra` goes into the mirror
/// clusters.
async fn proxy(
    driver: &str,
    primary: SocketAddr,
    policies: &str,
    mirrors: &[(&str, SocketAddr)],
    mirror_extra: &str,
) -> Proxy {
    let vhosts = format!(
        "[{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: primary, request_mirror_policies: {policies}}}}}]}}]"
    );
    let mut clusters = vec![cluster("primary", &[primary], "")];
    for (name, addr) in mirrors {
        clusters.push(cluster(name, &[*addr], mirror_extra));
    }
    let yaml = config("", &vhosts, &format!("[{}]", clusters.join(", ")));
    Proxy::start(&yaml, &one_core(driver)).await
}

const H2_CLUSTER: &str = "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}},";

#[tokio::test]
async fn a_mirror_gets_the_request_with_a_shadow_host() {
    for driver in drivers() {
        for h2 in [false, true] {
            let primary = Backend::start("primary").await;
            let m = Recorder::start(h2, None).await;
            let extra = if h2 { H2_CLUSTER } else { "" };
            let p = proxy(
                driver,
                primary.addr,
                "[{cluster: m}]",
                &[("m", m.addr)],
                extra,
            )
            .await;
            let (status, _, body) = http_get(
                p.addr(),
                "/a/b?c=d",
                &[
                    ("host", "svc.example:8080"),
                    ("x-forwarded-for", "10.0.0.9"),
                ],
            )
            .await;
            assert_eq!(status, 200);
            assert_eq!(body, b"upstream primary /a/b");
            let got = &m.wait(1).await[0];
            assert_eq!(
                (got.method.as_str(), got.path.as_str()),
                ("GET", "/a/b?c=d")
            );
            assert_eq!(
                got.header("host"),
                Some("svc.example-shadow:8080"),
                "{driver} h2={h2}"
            );
            assert_eq!(got.header("x-envoy-internal"), Some("true"));
            let xff = got.header("x-forwarded-for").unwrap();
            assert!(xff.starts_with("10.0.0.9,"), "{xff}");
            assert!(xff.len() > "10.0.0.9,".len(), "{xff}");
            // The primary's own request is as it was.
            assert_eq!(
                primary.seen.header("host").as_deref(),
                Some("svc.example:8080")
            );
            assert_eq!(primary.seen.header("x-envoy-internal"), None);
            // The request id is the primary's.
            assert_eq!(
                got.header("x-request-id").map(str::to_string),
                primary.seen.header("x-request-id")
            );
            assert_eq!(p.stat("cluster.m.upstream_rq_total").await, 1);
            assert_eq!(p.stat_reaching("cluster.m.upstream_rq_200", 1).await, 1);
            assert_eq!(
                p.stat_reaching("cluster.m.upstream_rq_completed", 1).await,
                1
            );
            assert_eq!(
                p.stat_falling_to("cluster.m.upstream_rq_active", 0).await,
                0
            );
            assert_eq!(p.stat("cluster.primary.upstream_rq_200").await, 1);
        }
    }
}

/// The body goes to the mirror whole, whatever the framing and the codecs.
#[tokio::test]
async fn a_mirror_gets_the_body() {
    let driver = drivers()[0];
    for h2_mirror in [false, true] {
        let primary = Backend::start("primary").await;
        let m = Recorder::start(h2_mirror, None).await;
        let extra = if h2_mirror { H2_CLUSTER } else { "" };
        let p = proxy(
            driver,
            primary.addr,
            "[{cluster: m}]",
            &[("m", m.addr)],
            extra,
        )
        .await;
        // Content-length, over HTTP/1.1.
        let body = Bytes::from(vec![b'x'; 300_000]);
        let (status, _, answer) = request(p.addr(), "POST", "/count", &[], body).await;
        assert_eq!((status, answer), (200, b"300000".to_vec()));
        // Chunked, over HTTP/1.1.
        let raw_req = b"POST /count HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let out = raw(p.addr(), raw_req, Duration::from_millis(500)).await;
        assert!(out.ends_with(b"11"), "{}", String::from_utf8_lossy(&out));
        // Over HTTP/2, in DATA frames.
        let tcp = TcpStream::connect(p.addr()).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let req = http::Request::post("http://a/count").body(()).unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        for _ in 0..4 {
            tx.reserve_capacity(50_000);
            tx.send_data(Bytes::from(vec![b'y'; 50_000]), false)
                .unwrap();
        }
        tx.send_data(Bytes::new(), true).unwrap();
        let resp = resp.await.unwrap();
        let mut rx = resp.into_body();
        let mut got = Vec::new();
        while let Some(d) = rx.data().await {
            got.extend_from_slice(&d.unwrap());
        }
        assert_eq!(&got[..], b"200000");
        let recs = m.wait(3).await;
        let mut bodies: Vec<usize> = recs.iter().map(|r| r.body).collect();
        bodies.sort();
        assert_eq!(bodies, vec![11, 200_000, 300_000], "h2 mirror: {h2_mirror}");
        assert!(recs.iter().all(|r| r.path == "/count"));
    }
}

/// The primary's answer never waits for the mirror's: the mirror here answers only once
/// the client has the primary's answer.
#[tokio::test]
async fn a_slow_mirror_never_holds_the_primary_back() {
    for driver in drivers() {
        let gate = Arc::new(Notify::new());
        let primary = Backend::start("primary").await;
        let m = Recorder::start(false, Some(gate.clone())).await;
        let p = proxy(driver, primary.addr, "[{cluster: m}]", &[("m", m.addr)], "").await;
        let body = Bytes::from_static(b"some body");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            request(p.addr(), "POST", "/count", &[], body),
        )
        .await
        .expect("the primary answer waited for the mirror");
        assert_eq!(answer.0, 200);
        m.wait(1).await;
        assert_eq!(p.stat("cluster.m.upstream_rq_active").await, 1);
        gate.notify_waiters();
        assert_eq!(p.stat_reaching("cluster.m.upstream_rq_200", 1).await, 1);
    }
}

/// `runtime_fraction`, `cluster_header`, several policies, `host_rewrite_literal` and
/// `disable_shadow_host_suffix_append`.
#[tokio::test]
async fn which_mirrors_a_request_gets() {
    let driver = drivers()[0];
    let primary = Backend::start("primary").await;
    let (m1, m2, m3) = (
        Recorder::start(false, None).await,
        Recorder::start(false, None).await,
        Recorder::start(false, None).await,
    );
    let policies = "[{cluster: m1, runtime_fraction: {default_value: {numerator: 0}}}, \
                    {cluster_header: x-mirror-to}, \
                    {cluster: m3, host_rewrite_literal: other.example, disable_shadow_host_suffix_append: true}]";
    let p = proxy(
        driver,
        primary.addr,
        policies,
        &[("m1", m1.addr), ("m2", m2.addr), ("m3", m3.addr)],
        "",
    )
    .await;
    let (s, _, _) = http_get(p.addr(), "/x", &[("x-mirror-to", "m2")]).await;
    assert_eq!(s, 200);
    let (s, _, _) = http_get(p.addr(), "/y", &[("x-mirror-to", "nowhere")]).await;
    assert_eq!(s, 200);
    let (s, _, _) = http_get(p.addr(), "/z", &[]).await;
    assert_eq!(s, 200);
    let m3_seen = m3.wait(3).await;
    assert!(m3_seen
        .iter()
        .all(|r| r.header("host") == Some("other.example")));
    let m2_seen = m2.wait(1).await;
    assert_eq!(m2_seen[0].path, "/x");
    assert_eq!(m2_seen[0].header("host"), Some("example.com-shadow"));
    assert_eq!(m1.count(), 0);
    assert_eq!(m2.count(), 1);
    assert_eq!(p.stat("cluster.primary.upstream_rq_200").await, 3);
}

/// A route without policies of its own takes its virtual host's, which takes its route
/// configuration's.
#[tokio::test]
async fn policies_are_inherited() {
    let driver = drivers()[0];
    let primary = Backend::start("primary").await;
    let (mv, mr, mo) = (
        Recorder::start(false, None).await,
        Recorder::start(false, None).await,
        Recorder::start(false, None).await,
    );
    let clusters = [
        cluster("primary", &[primary.addr], ""),
        cluster("mv", &[mv.addr], ""),
        cluster("mr", &[mr.addr], ""),
        cluster("mo", &[mo.addr], ""),
    ]
    .join(", ");
    let vhosts = "[{name: v, domains: [v.example], request_mirror_policies: [{cluster: mv}], routes: [{match: {prefix: /own}, route: {cluster: primary, request_mirror_policies: [{cluster: mo}]}}, {match: {prefix: /}, route: {cluster: primary}}]}, {name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: primary}}]}]";
    let yaml = config("", vhosts, &format!("[{clusters}]")).replace(
        "            name: local\n",
        "            name: local\n            request_mirror_policies: [{cluster: mr}]\n",
    );
    let p = Proxy::start(&yaml, &one_core(driver)).await;
    http_get(p.addr(), "/own", &[("host", "v.example")]).await;
    http_get(p.addr(), "/x", &[("host", "v.example")]).await;
    http_get(p.addr(), "/y", &[("host", "w.example")]).await;
    assert_eq!(mo.wait(1).await[0].path, "/own");
    assert_eq!(mv.wait(1).await[0].path, "/x");
    assert_eq!(mr.wait(1).await[0].path, "/y");
    assert_eq!((mo.count(), mv.count(), mr.count()), (1, 1, 1));
}

/// A mirror whose upstream takes nothing is given up once a megabyte waits for it; the
/// primary request goes through whole.
#[tokio::test]
async fn a_stalled_mirror_is_given_up() {
    let driver = drivers()[0];
    let primary = Backend::start("primary").await;
    // Reads the head and 64 KiB, then nothing more.
    let stall = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_addr = stall.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = stall.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 64 << 10];
                let _ = tcp.read_exact(&mut buf).await;
                h.lock().unwrap().push(tcp);
            });
        }
    });
    let p = proxy(
        driver,
        primary.addr,
        "[{cluster: m}]",
        &[("m", stall_addr)],
        "",
    )
    .await;
    let body = Bytes::from(vec![b'z'; 24 << 20]);
    let (status, _, answer) = request(p.addr(), "POST", "/count", &[], body).await;
    assert_eq!((status, answer), (200, (24 << 20).to_string().into_bytes()));
    assert_eq!(
        p.stat_reaching("cluster.primary.retry_or_shadow_abandoned", 1)
            .await,
        1
    );
    assert_eq!(
        p.stat_falling_to("cluster.m.upstream_rq_active", 0).await,
        0
    );
}

#[test]
fn bad_policies_are_refused_by_name() {
    let cases = [
        (
            "[{cluster: m, cluster_header: x-m}]",
            "only one of cluster 'm' or cluster_header 'x-m'",
        ),
        (
            "[{runtime_fraction: {default_value: {numerator: 1}}}]",
            "exactly one of cluster or cluster_header",
        ),
        ("[{cluster: nowhere}]", "unknown shadow cluster 'nowhere'"),
        ("[{cluster_header: 'bad header'}]", "cluster_header"),
        (
            "[{cluster: m, request_headers_mutations: [{remove: x-a}]}]",
            "request_headers_mutations",
        ),
    ];
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (policies, want) in cases {
        let vhosts = format!(
            "[{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: primary, request_mirror_policies: {policies}}}}}]}}]"
        );
        let clusters = format!(
            "[{}, {}]",
            cluster("primary", &[addr], ""),
            cluster("m", &[addr], "")
        );
        let (ok, out) = validate("mirror", &config("", &vhosts, &clusters), &[]);
        assert!(!ok, "{policies} accepted");
        assert!(out.contains(want), "{policies}: {out}");
    }
}

/// A mirror whose upstream never answers times out with the route timeout, counted as the
/// mirror cluster's `upstream_rq_timeout`; the primary answered long before.
#[tokio::test]
async fn a_mirror_times_out_with_the_route() {
    let driver = drivers()[0];
    let primary = Backend::start("primary").await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = silent.accept().await {
            h.lock().unwrap().push(tcp);
        }
    });
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: primary, timeout: 0.5s, request_mirror_policies: [{cluster: m}]}}]}]";
    let clusters = format!(
        "[{}, {}]",
        cluster("primary", &[primary.addr], ""),
        cluster("m", &[silent_addr], "")
    );
    let p = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
    let (status, _, _) = http_get(p.addr(), "/x", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(p.stat_reaching("cluster.m.upstream_rq_timeout", 1).await, 1);
    assert_eq!(
        p.stat_falling_to("cluster.m.upstream_rq_active", 0).await,
        0
    );
}

/// `auto_host_rewrite` happens once the primary has its endpoint: the mirror gets the
/// request's own host, as Envoy's copy does.
#[tokio::test]
async fn a_mirror_keeps_the_host_auto_rewrite_gives_the_primary() {
    let driver = drivers()[0];
    let primary = Backend::start("primary").await;
    let m = Recorder::start(false, None).await;
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /}, route: {cluster: primary, auto_host_rewrite: true, request_mirror_policies: [{cluster: m}]}}]}]";
    let primary_cluster = format!(
        "{{name: primary, connect_timeout: 1s, load_assignment: {{cluster_name: primary, endpoints: [{{lb_endpoints: [{{endpoint: {{hostname: primary.internal, address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]}}}}",
        primary.addr.port()
    );
    let clusters = format!("[{primary_cluster}, {}]", cluster("m", &[m.addr], ""));
    let p = Proxy::start(&config("", vhosts, &clusters), &one_core(driver)).await;
    let (status, _, _) = http_get(p.addr(), "/x", &[("host", "svc.example")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        primary.seen.header("host").as_deref(),
        Some("primary.internal")
    );
    let got = &m.wait(1).await[0];
    assert_eq!(got.header("host"), Some("svc.example-shadow"));
    assert_eq!(got.header("x-envoy-original-host"), None);
}
