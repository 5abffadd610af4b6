//! `envoy.filters.http.compressor` over real sockets: every codec pairing and both drivers,
//! bodies decoded by decoders independent of the proxy's encoders (flate2's miniz_oxide for
//! gzip, brotli-decompressor for brotli). A streamed response is compressed and flushed
//! piece by piece — the client decodes the first piece while the upstream still holds the
//! second — and Istio's own 15090 listener compresses what the admin serves.
//! (Negotiation, head rules and stats are compared with Envoy in
//! tests/interop/compressor_parity.py.)

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

const FILTERS: &str = r#"          - name: gzip
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor, compressor_library: {name: g, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip}}}
          - name: br
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor, compressor_library: {name: b, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli}}}
          - name: zstd
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor, compressor_library: {name: z, typed_config: {"@type": type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd}}}
"#;

/// The two pieces of every streamed body.
fn piece(n: u8) -> Bytes {
    let line = format!("piece {n}: the quick brown fox jumps over the lazy dog. ");
    Bytes::from(line.repeat(40))
}

/// An upstream (HTTP/2 when `h2`) that answers every request with `piece(1)`, waits for
/// `go`, then sends `piece(2)` and ends (with trailers `x-t: done` over HTTP/2).
async fn streaming_upstream(h2: bool, go: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let go = go.clone();
            tokio::spawn(async move {
                if h2 {
                    serve_h2(tcp, go).await
                } else {
                    serve_h1(tcp, go).await
                }
            });
        }
    });
    addr
}

async fn serve_h1(tcp: TcpStream, go: Arc<Notify>) {
    let svc = hyper::service::service_fn(move |_req: http::Request<Incoming>| {
        let go = go.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(piece(1)))).await;
                go.notified().await;
                let _ = tx.send(Ok(Frame::data(piece(2)))).await;
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

async fn serve_h2(tcp: TcpStream, go: Arc<Notify>) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    while let Some(Ok((_req, mut respond))) = conn.accept().await {
        let go = go.clone();
        tokio::spawn(async move {
            let resp = http::Response::builder()
                .header("content-type", "text/plain")
                .body(())
                .unwrap();
            let Ok(mut tx) = respond.send_response(resp, false) else {
                return;
            };
            let _ = tx.send_data(piece(1), false);
            go.notified().await;
            let _ = tx.send_data(piece(2), false);
            let mut t = http::HeaderMap::new();
            t.insert("x-t", "done".parse().unwrap());
            let _ = tx.send_trailers(t);
        });
    }
}

/// A streaming decoder for one content coding.
#[allow(clippy::large_enum_variant)]
enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(Vec<u8>),
}

impl Decoder {
    fn new(coding: &str) -> Decoder {
        match coding {
            "gzip" => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            "br" => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096))),
            _ => Decoder::Zstd(Vec::new()),
        }
    }

    /// Feeds compressed bytes: what has been decoded so far.
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Decoder::Br(d) => {
                d.write_all(data).unwrap();
                d.flush().unwrap();
                d.get_ref().clone()
            }
            Decoder::Zstd(all) => {
                all.extend_from_slice(data);
                zstd::stream::decode_all(&all[..]).unwrap_or_default()
            }
        }
    }
}

/// A response as the client receives it: head, then body pieces and trailers.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: mpsc::Receiver<Bytes>,
    trailers: tokio::sync::oneshot::Receiver<Vec<(String, String)>>,
}

/// A GET asking for `coding`, over HTTP/2 (prior knowledge) or HTTP/1.1.
async fn get(addr: SocketAddr, h2: bool, path: &str, coding: &str) -> Response {
    let (btx, brx) = mpsc::channel(64);
    let (ttx, trx) = tokio::sync::oneshot::channel();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = http::Request::builder()
        .uri(format!("http://example.com{path}"))
        .header("accept-encoding", coding);
    if h2 {
        let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
        let resp = resp.await.unwrap();
        let (status, headers) = (resp.status().as_u16(), header_list(resp.headers()));
        let mut rx = resp.into_body();
        tokio::spawn(async move {
            while let Some(Ok(d)) = rx.data().await {
                let _ = rx.flow_control().release_capacity(d.len());
                let _ = btx.send(d).await;
            }
            let t = rx.trailers().await.ok().flatten();
            let _ = ttx.send(t.map(|t| header_list(&t)).unwrap_or_default());
        });
        return Response {
            status,
            headers,
            body: brx,
            trailers: trx,
        };
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status().as_u16(), header_list(resp.headers()));
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                let _ = btx.send(d).await;
            }
        }
        let _ = ttx.send(Vec::new());
    });
    Response {
        status,
        headers,
        body: brx,
        trailers: trx,
    }
}

/// Reads body pieces into `dec` until the decoded text is `want` (within 5 s).
async fn decode_until(r: &mut Response, dec: &mut Decoder, want: &[u8], case: &str) {
    let mut got = Vec::new();
    while got != want {
        let next = tokio::time::timeout(Duration::from_secs(5), r.body.recv()).await;
        match next {
            Ok(Some(data)) => got = dec.feed(&data),
            _ => panic!(
                "{case}: decoded {} of {} bytes before the body stalled or ended",
                got.len(),
                want.len()
            ),
        }
    }
}

async fn proxy(upstream: SocketAddr, h2_up: bool, driver: &str) -> Proxy {
    let extra = if h2_up {
        "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}},"
    } else {
        ""
    };
    let vhosts = "[{name: all, domains: ['*'], routes: [{match: {prefix: /direct}, direct_response: {status: 503, body: {inline_string: 'the service is down for maintenance; the service is down for maintenance'}}}, {match: {prefix: /}, route: {cluster: up}}]}]";
    let clusters = format!("[{}]", cluster("up", &[upstream], extra));
    Proxy::start(
        &config_with_filters("", FILTERS, vhosts, &clusters),
        &one_core(driver),
    )
    .await
}

const PAIRINGS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_flushed_piece_by_piece_on_every_codec_pairing() {
    for driver in drivers() {
        for (h2_down, h2_up) in PAIRINGS {
            let go = Arc::new(Notify::new());
            let up = streaming_upstream(h2_up, go.clone()).await;
            let p = proxy(up, h2_up, driver).await;
            for coding in ["gzip", "br"] {
                let case = format!("{driver}, client h2 {h2_down}, upstream h2 {h2_up}, {coding}");
                let mut r = get(p.addr(), h2_down, "/", coding).await;
                assert_eq!(r.status, 200, "{case}");
                assert_eq!(
                    header(&r.headers, "content-encoding"),
                    Some(coding),
                    "{case}"
                );
                assert_eq!(
                    header(&r.headers, "vary"),
                    Some("Accept-Encoding"),
                    "{case}"
                );
                assert_eq!(header(&r.headers, "content-length"), None, "{case}");
                let mut dec = Decoder::new(coding);
                // The first piece decodes whole while the upstream holds the second.
                decode_until(&mut r, &mut dec, &piece(1), &case).await;
                go.notify_one();
                let whole = [piece(1), piece(2)].concat();
                decode_until(&mut r, &mut dec, &whole, &case).await;
                let trailers = r.trailers.await.unwrap();
                if h2_down && h2_up {
                    assert_eq!(
                        header(&trailers, "x-t"),
                        Some("done"),
                        "{case}: trailers follow"
                    );
                }
            }
            let prefix = "http.ingress.compressor";
            assert_eq!(p.stat(&format!("{prefix}.g.gzip.compressed")).await, 1);
            assert_eq!(p.stat(&format!("{prefix}.b.brotli.compressed")).await, 1);
            assert_eq!(
                p.stat(&format!("{prefix}.g.gzip.total_uncompressed_bytes"))
                    .await,
                (piece(1).len() + piece(2).len()) as i64
            );
            assert!(
                p.stat(&format!("{prefix}.g.gzip.total_compressed_bytes"))
                    .await
                    > 0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_holds_its_output_until_the_body_ends() {
    for (h2_down, h2_up) in PAIRINGS {
        let case = format!("client h2 {h2_down}, upstream h2 {h2_up}");
        let go = Arc::new(Notify::new());
        let up = streaming_upstream(h2_up, go.clone()).await;
        let p = proxy(up, h2_up, "legacy").await;
        let mut r = get(p.addr(), h2_down, "/", "zstd").await;
        assert_eq!(
            header(&r.headers, "content-encoding"),
            Some("zstd"),
            "{case}"
        );
        // As Envoy drives zstd: nothing is flushed before the end.
        let early = tokio::time::timeout(Duration::from_millis(300), r.body.recv()).await;
        assert!(
            early.is_err()
                || early
                    .as_ref()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|d| d.is_empty()),
            "{case}: {early:?}"
        );
        go.notify_one();
        let mut dec = Decoder::new("zstd");
        decode_until(&mut r, &mut dec, &[piece(1), piece(2)].concat(), &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_are_compressed_too() {
    let go = Arc::new(Notify::new());
    let up = streaming_upstream(false, go).await;
    let p = proxy(up, false, "legacy").await;
    let want = b"the service is down for maintenance; the service is down for maintenance";
    for h2 in [false, true] {
        for coding in ["gzip", "br", "zstd"] {
            let case = format!("client h2 {h2}, {coding}");
            let mut r = get(p.addr(), h2, "/direct", coding).await;
            assert_eq!(r.status, 503, "{case}");
            assert_eq!(
                header(&r.headers, "content-encoding"),
                Some(coding),
                "{case}"
            );
            let mut dec = Decoder::new(coding);
            decode_until(&mut r, &mut dec, want, &case).await;
        }
    }
    // Without Accept-Encoding: as it is, with its length.
    let (status, headers, body) = http_get(p.addr(), "/direct", &[]).await;
    assert_eq!((status, body.as_slice()), (503, &want[..]));
    let len = want.len().to_string();
    assert_eq!(header(&headers, "content-length"), Some(len.as_str()));
    assert_eq!(header(&headers, "vary"), Some("Accept-Encoding"));
}

/// Istio's prometheus listener (15090), taken from pilot-agent's bootstrap in
/// ../shared/compat, with its ports moved: `/stats/prometheus` comes from the admin through
/// the listener, compressed as the scraper asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_prometheus_listener_compresses_the_admin_stats() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/compat/istio-bootstrap-default.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: {} is not here", path.display());
        return;
    };
    let boot: serde_json::Value = serde_json::from_str(&text).unwrap();
    let statics = &boot["static_resources"];
    let mut listener = statics["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "0.0.0.0_15090")
        .expect("the 15090 listener")
        .clone();
    listener["address"]["socket_address"]["address"] = "127.0.0.1".into();
    listener["address"]["socket_address"]["port_value"] = 0.into();
    let mut cluster = statics["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "prometheus_stats")
        .expect("the prometheus_stats cluster")
        .clone();
    // The admin listens on a port chosen now (the cluster must name it).
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    ep["port_value"] = admin_port.into();
    let dir = temp_dir();
    let cfg = dir.join("config.json");
    let config = serde_json::json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["-c", cfg.to_str().unwrap(), "--concurrency", "1"])
        .stderr(std::process::Stdio::from(
            std::fs::File::create(dir.join("stderr")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let listeners = loop {
        if let Ok(tcp) = TcpStream::connect(admin).await {
            drop(tcp);
            let (_, _, body) = http_get(admin, "/listeners?format=json", &[]).await;
            break serde_json::from_slice::<serde_json::Value>(&body).unwrap();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(dir.join("stderr")).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap() as u16;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for coding in ["gzip", "br", "zstd"] {
        let mut r = get(addr, false, "/stats/prometheus", coding).await;
        assert_eq!(r.status, 200, "{coding}");
        assert_eq!(header(&r.headers, "content-encoding"), Some(coding));
        let mut dec = Decoder::new(coding);
        let mut text = Vec::new();
        while let Some(data) = r.body.recv().await {
            text = dec.feed(&data);
        }
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("# TYPE envoy_server_live gauge"),
            "{coding}: {}",
            &text[..text.len().min(300)]
        );
    }
    // The scraper that asks for nothing gets plain text.
    let (status, headers, body) = http_get(addr, "/stats/prometheus", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), None);
    assert!(String::from_utf8_lossy(&body).contains("envoy_server_live"));
    let _ = child.kill();
}
