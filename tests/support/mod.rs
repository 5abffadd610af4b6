//! Shared peers for the integration tests: the real `ringside` binary on ephemeral ports, a
//! hyper upstream that counts its connections, and raw-socket helpers.
#![allow(dead_code)]
// Test peers run on tokio threads, not on proxy cores.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The io drivers a test runs on: legacy always, io_uring when this kernel allows it.
pub mod ads;
pub mod pki;

pub fn drivers() -> Vec<&'static str> {
    let mut d = vec!["legacy"];
    if io_uring_available() {
        d.push("io-uring");
    } else {
        eprintln!("io_uring unavailable here: testing the legacy driver only");
    }
    d
}

fn io_uring_available() -> bool {
    monoio::utils::detect_uring()
}

/// A running proxy.
pub struct Proxy {
    pub child: Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    pub dir: PathBuf,
    pub stdout_path: PathBuf,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Runs `ringside --mode validate` on `yaml` (written to a file named `name` in a new temp
/// dir) with `args`: whether it passed, and its standard error.
pub fn validate(name: &str, yaml: &str, args: &[&str]) -> (bool, String) {
    let cfg = temp_dir().join(name);
    std::fs::write(&cfg, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(["--mode", "validate", "-c", cfg.to_str().unwrap()])
        .args(args)
        .output()
        .expect("ringside runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits (up to 5 s) until the file at `path` holds at least `n` lines; its lines.
pub async fn wait_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    text.lines().map(str::to_owned).collect()
}

/// A fresh, empty directory for one test. Process ids repeat across runs (a CI container
/// starts its pids from the same place), so whatever an earlier run left under the same name
/// is removed first: a stale `admin` address file would otherwise send the test to a port
/// nobody listens on.
pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringside-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Proxy {
    /// Starts `ringside -c <yaml>` with an admin listener on port 0.
    pub async fn start(yaml: &str, args: &[&str]) -> Proxy {
        let dir = temp_dir();
        let cfg = dir.join("config.yaml");
        let yaml = format!(
            "admin:\n  address:\n    socket_address: {{address: 127.0.0.1, port_value: 0}}\n{yaml}"
        );
        std::fs::write(&cfg, yaml).unwrap();
        let admin_path = dir.join("admin");
        let stdout_path = dir.join("stdout");
        let child = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(args)
            .stdout(Stdio::from(std::fs::File::create(&stdout_path).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("stderr")).unwrap(),
            ))
            .spawn()
            .expect("ringside starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let admin: SocketAddr = loop {
            if let Ok(s) = std::fs::read_to_string(&admin_path) {
                if let Ok(a) = s.trim().parse() {
                    break a;
                }
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not start: {}",
                std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut proxy = Proxy {
            child,
            admin,
            listeners: HashMap::new(),
            dir,
            stdout_path,
        };
        let body = proxy.admin_get("/listeners?format=json").await.1;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for l in v["listener_statuses"].as_array().unwrap() {
            let sa = &l["local_address"]["socket_address"];
            if sa.is_null() {
                // An internal listener: no address.
                continue;
            }
            let addr = SocketAddr::new(
                sa["address"].as_str().unwrap().parse().unwrap(),
                sa["port_value"].as_u64().unwrap() as u16,
            );
            let addr = if addr.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            proxy
                .listeners
                .insert(l["name"].as_str().unwrap().to_string(), addr);
        }
        proxy
    }

    /// The address of listener `name` once it is bound (LDS adds listeners later), within
    /// 10 s.
    pub async fn wait_listener(&self, name: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = self.admin_get("/listeners?format=json").await.1;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            for l in v["listener_statuses"].as_array().unwrap() {
                if l["name"] == name {
                    let sa = &l["local_address"]["socket_address"];
                    return SocketAddr::new(
                        sa["address"].as_str().unwrap().parse().unwrap(),
                        sa["port_value"].as_u64().unwrap() as u16,
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "listener {name} not bound: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `check` holds for the parsed `/config_dump`, within 10 s.
    pub async fn wait_config(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        self.wait_json("/config_dump?include_eds", what, check)
            .await
    }

    /// Waits until `check` holds for the JSON the admin `path` answers, within 10 s.
    pub async fn wait_json(
        &self,
        path: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: serde_json::Value = serde_json::from_str(&self.admin_get(path).await.1).unwrap();
            if check(&v) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {v:#}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address of the only (or named) listener.
    pub fn addr(&self) -> SocketAddr {
        *self.listeners.values().next().expect("a listener")
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = http_get(self.admin, path, &[]).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A stat by exact name (0 when absent).
    /// Stat `name` once it reaches `want` (the proxy counts some events just after the
    /// client sees their effect: a failed handshake, a completed exchange), or its value
    /// after 3 s.
    pub async fn stat_reaching(&self, name: &str, want: i64) -> i64 {
        self.stat_reaching_within(name, want, 3).await
    }

    /// As [`Proxy::stat_reaching`], waiting up to `secs`.
    pub async fn stat_reaching_within(&self, name: &str, want: i64, secs: u64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.stat(name).await;
            if v >= want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stat `name` once it has fallen to `want` (a gauge the proxy lowers just after the
    /// client sees the response), or its value after 3 s.
    pub async fn stat_falling_to(&self, name: &str, want: i64) -> i64 {
        self.stat_falling_to_within(name, want, 3).await
    }

    /// As [`Proxy::stat_falling_to`], waiting up to `secs`.
    pub async fn stat_falling_to_within(&self, name: &str, want: i64, secs: u64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.stat(name).await;
            if v <= want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stat(&self, name: &str) -> i64 {
        let (_, body) = self.admin_get("/stats").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(": "))
                    .map(|v| v.parse().unwrap())
            })
            .unwrap_or(0)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Resident anonymous memory (heap, stacks): RSS less the binary's code pages, which a
    /// path run for the first time faults in whatever memory it holds.
    pub fn rss_anon_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    /// Resident file pages: the binary's code and read-only data, and the libraries'.
    pub fn rss_file_kib(&self) -> u64 {
        self.status_kib("RssFile:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap())
            .unwrap()
    }

    pub fn terminate(&self) {
        unsafe_kill(self.child.id(), "TERM");
    }

    #[allow(clippy::disallowed_methods)] // a test thread, not a core
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Kept when the test failed, for its config and the proxy's stderr.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    pub last_headers: Mutex<Vec<(String, String)>>,
    pub last_uri: Mutex<String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.last_headers
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    pub fn headers_named(&self, name: &str) -> Vec<String> {
        self.last_headers
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A hyper HTTP/1.1 upstream:
/// - `/bytes/N`: N bytes of body (content-length), `/chunked/N`: N bytes chunked
/// - `/count`: reads the request body, answers its length
/// - `/sleep/MS`: answers after MS milliseconds
/// - `/status/N`: answers status N
/// - anything else: 200 with body "upstream <name> <path>"
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    pub name: &'static str,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::serve(name, listener)
    }

    /// A backend on a socket bound elsewhere (another network namespace).
    pub fn start_on(name: &'static str, socket: std::net::TcpListener) -> Backend {
        socket.set_nonblocking(true).unwrap();
        Backend::serve(name, TcpListener::from_std(socket).unwrap())
    }

    fn serve(name: &'static str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, s.clone(), name));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, seen, name }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    name: &'static str,
) -> Result<Response<Body>, Infallible> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    *seen.last_headers.lock().unwrap() = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    *seen.last_uri.lock().unwrap() = req.uri().to_string();
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (cmd, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let n: u64 = arg.parse().unwrap_or(0);
    Ok(match cmd {
        "bytes" => Response::builder()
            .header("content-length", n)
            .body(stream_bytes(n))
            .unwrap(),
        "chunked" => Response::new(stream_bytes(n)),
        "count" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.unwrap().into_data() {
                    total += d.len() as u64;
                }
            }
            Response::new(full(total.to_string()))
        }
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(n)).await;
            Response::new(full("slept"))
        }
        "status" => Response::builder().status(n as u16).body(full("")).unwrap(),
        _ => Response::new(full(format!("upstream {name} {path}"))),
    })
}

fn stream_bytes(n: u64) -> Body {
    const CHUNK: u64 = 256 * 1024;
    let block = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_stream(n, CHUNK, block);
    StreamBody::new(stream).boxed()
}

fn futures_stream(
    n: u64,
    chunk: u64,
    block: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let mut left = n;
    futures_util::stream::poll_fn(move |_| {
        if left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = left.min(chunk);
        left -= take;
        std::task::Poll::Ready(Some(Ok(Frame::data(block.slice(..take as usize)))))
    })
}

/// One request over a new connection with hyper's client: (status, headers, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    request(addr, "GET", path, headers, Bytes::new()).await
}

pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        b = b.header("host", "example.com");
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = sender
        .send_request(b.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let hdrs = header_list(resp.headers());
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, hdrs, body)
}

/// A header map as (name, value) pairs, values read lossily as text.
pub fn header_list(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Sends raw bytes and reads until the peer closes or `idle` passes without data.
pub async fn raw(addr: SocketAddr, bytes: &[u8], idle: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s, idle).await
}

/// What a keep-alive connection that turns cold after 100 ms quiet must still serve (the
/// plaintext and the TLS tests share it): a lone request after quiet gaps around the
/// 100 ms edge, then a pipelined pair after a longer one. `upstream` is the backend's
/// name (its answers read `upstream NAME PATH`).
pub async fn serves_across_quiet_gaps<S>(s: &mut S, host: &str, upstream: &str, driver: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
    s.write_all(&get("/first")).await.unwrap();
    assert_eq!(
        one_response(s).await.1,
        format!("upstream {upstream} /first"),
        "{driver}"
    );
    for quiet in [300, 95, 100, 105, 110, 0, 250] {
        tokio::time::sleep(Duration::from_millis(quiet)).await;
        s.write_all(&get(&format!("/after/{quiet}"))).await.unwrap();
        let (status, body) = one_response(s).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{driver} {quiet}");
        assert_eq!(
            body,
            format!("upstream {upstream} /after/{quiet}"),
            "{driver}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&[get("/p1"), get("/p2")].concat())
        .await
        .unwrap();
    let mut carry = Vec::new();
    let p1 = next_response(s, &mut carry).await.1;
    let p2 = next_response(s, &mut carry).await.1;
    assert_eq!(
        (p1, p2),
        (
            format!("upstream {upstream} /p1"),
            format!("upstream {upstream} /p2")
        ),
        "{driver}"
    );
    assert!(carry.is_empty(), "{driver}: {carry:?}");
}

/// After [`serves_across_quiet_gaps`]: a request head, a quiet, then its 5,000-byte body
/// (the backend's `/count` answers the body's length).
pub async fn serves_a_body_after_a_quiet<S>(s: &mut S, host: &str, driver: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::sleep(Duration::from_millis(300)).await;
    let head = format!("POST /count/0 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5000\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&[b'x'; 5000]).await.unwrap();
    assert_eq!(one_response(s).await.1, "5000", "{driver}");
}

/// Reads one response framed by Content-Length from `s`: (status line, body). Bytes
/// read past it (a pipelined response) wait in `carry` for the next call.
pub async fn next_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    carry: &mut Vec<u8>,
) -> (String, String) {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = carry.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&carry[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if carry.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&carry[end + 4..end + 4 + len]).to_string();
                carry.drain(..end + 4 + len);
                return (head.lines().next().unwrap().to_string(), body);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {carry:?}");
        carry.extend_from_slice(&buf[..n]);
    }
}

/// One response, and nothing after it.
pub async fn one_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, String) {
    let mut carry = Vec::new();
    let r = next_response(s, &mut carry).await;
    assert!(carry.is_empty(), "bytes after the response: {carry:?}");
    r
}

pub async fn read_all(s: &mut TcpStream, idle: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(idle, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A bootstrap with one HTTP listener and the given clusters/routes.
pub fn config(hcm_extra: &str, vhosts: &str, clusters: &str) -> String {
    config_with_filters(hcm_extra, "", vhosts, clusters)
}

/// As [`config`], with HTTP filters (YAML list items, indented for `http_filters`) before
/// the router.
pub fn config_with_filters(hcm_extra: &str, filters: &str, vhosts: &str, clusters: &str) -> String {
    // Flow collections spanning lines must sit deeper than their key.
    let vhosts = vhosts.replace('\n', "\n                ");
    format!(
        r#"static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
{hcm_extra}
          route_config:
            name: local
            virtual_hosts: {vhosts}
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters: {clusters}
"#
    )
}

/// A listener list item (at `listeners:` indentation) on 127.0.0.1, port 0, whose
/// connection manager (stat prefix = `name`) routes everything to `cluster`; `extra` holds
/// more listener fields, each line indented by four spaces.
pub fn http_listener(name: &str, extra: &str, cluster: &str) -> String {
    format!(
        r#"  - name: {name}
{extra}    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config: {{virtual_hosts: [{{name: a, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
"#
    )
}

/// A STATIC cluster YAML flow item.
pub fn cluster(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        "{{name: {name}, connect_timeout: 1s, {extra} load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{}]}}]}}}}",
        eps.join(", ")
    )
}

/// A catch-all virtual host routing everything to `cluster`.
pub fn all_to(cluster: &str) -> String {
    format!("[{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: {cluster}}}}}]}}]")
}

/// Arguments for one worker core on `driver`, with a short drain.
pub fn one_core(driver: &str) -> Vec<&str> {
    vec![
        "--concurrency",
        "1",
        "--io-driver",
        driver,
        "--drain-time-s",
        "1",
    ]
}

/// A proxy routing everything to one cluster `name` at `addr`.
pub async fn proxy_to(hcm_extra: &str, name: &str, addr: SocketAddr, args: &[&str]) -> Proxy {
    Proxy::start(
        &config(
            hcm_extra,
            &all_to(name),
            &format!("[{}]", cluster(name, &[addr], "")),
        ),
        args,
    )
    .await
}

/// The most common set-up: one backend `a` and a proxy routing everything to it.
pub async fn proxy_to_one_backend(hcm_extra: &str, args: &[&str]) -> (Backend, Proxy) {
    let b = Backend::start("a").await;
    let p = Proxy::start(
        &config(
            hcm_extra,
            &all_to("a"),
            &format!("[{}]", cluster("a", &[b.addr], "")),
        ),
        args,
    )
    .await;
    (b, p)
}

/// A TCP server that echoes what it reads, then (after the client half-closes) writes
/// `bye` and closes. Returns its address and a count of connections.
pub fn echo_server(socket: std::net::TcpListener) -> (SocketAddr, Arc<AtomicUsize>) {
    socket.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(socket).unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(b"bye").await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

/// A server-speaks-first TCP server: greets every connection at once (like MySQL or
/// SMTP), then echoes.
pub fn greeting_server(socket: std::net::TcpListener, greeting: &'static [u8]) -> SocketAddr {
    socket.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(socket).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(greeting).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP server that records the first bytes of each connection and closes it.
pub fn capture_server(socket: std::net::TcpListener) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    socket.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(socket).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await
                {
                    seen.lock().unwrap().push(buf[..n].to_vec());
                }
            });
        }
    });
    (addr, out)
}

/// A std listener on loopback, port 0.
pub fn local_socket() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

/// The payload of a complete chunked body (a test-side reading, independent of the
/// proxy's decoder): sizes, data and CRLFs must be exact, and nothing may follow.
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").expect("size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap(), 16).unwrap();
        b = &b[line + 2..];
        if size == 0 {
            assert_eq!(b, b"\r\n");
            return out;
        }
        out.extend_from_slice(&b[..size]);
        assert_eq!(&b[size..size + 2], b"\r\n");
        b = &b[size + 2..];
    }
}

/// One request over HTTP/2 (prior knowledge): status, headers, body.
pub async fn h2_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://example.com{path}"));
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let (resp, _) = send.send_request(b.body(()).unwrap(), true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let hdrs = header_list(resp.headers());
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, hdrs, out)
}

/// The same request over HTTP/1.1 (hyper) or HTTP/2.
pub async fn send(
    addr: SocketAddr,
    h2: bool,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    if h2 {
        h2_request(addr, method, path, headers).await
    } else {
        request(addr, method, path, headers, Bytes::new()).await
    }
}

/// An address that refuses connections for as long as the returned socket lives: bound but
/// never listening, so no other test can take the port meanwhile (a closed port can be
/// reused by a parallel test's listener).
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

/// A raw HTTP/1.1 upstream that answers every request `status` with a one-byte body and
/// counts the requests; with `hold`, it counts them and never answers (each stays in
/// flight).
pub async fn counting_upstream(status: u16, hold: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = Vec::new();
                loop {
                    let Ok(n) = tcp.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        have.drain(..end + 4);
                        c.fetch_add(1, Ordering::SeqCst);
                        if hold {
                            continue;
                        }
                        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 1\r\n\r\nx");
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}
