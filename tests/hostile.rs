//! Hostile HTTP/1.1 input, on both io drivers: request smuggling, framing, validation and
//! the trust boundary. Every case asserts what the client saw and what a raw recording
//! upstream received, byte for byte (the upstream records bytes; it does not parse them
//! for the assertions). `tests/interop/hostile_parity.py` sends the same classes of input
//! to Envoy 1.40 and compares.

// Test peers run on tokio threads, not on proxy cores.
#![allow(clippy::disallowed_types)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw TCP upstream: keeps every byte of every connection, and answers each request its
/// own plain reading can frame (Content-Length or chunked) with a 200 whose body is the
/// request target, the way a real server glued to a smuggled prefix would.
struct Recorder {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Bytes>>>,
}

/// The bytes one upstream connection received.
type Bytes = Arc<Mutex<Vec<u8>>>;

impl Recorder {
    async fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let seen = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(seen.clone());
                tokio::spawn(serve(s, seen));
            }
        });
        Recorder { addr, conns }
    }

    /// Everything received, all connections in accept order.
    fn received(&self) -> Vec<u8> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .flat_map(|c| c.lock().unwrap().clone())
            .collect()
    }

    fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn clear(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.lock().unwrap().clear();
        }
    }
}

async fn serve(mut s: TcpStream, seen: Bytes) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        while let Some((target, used)) = frame(&buf) {
            buf.drain(..used);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                target.len(),
                target
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// One request from the front of `buf` as a plain server reads it: its target and length.
fn frame(buf: &[u8]) -> Option<(String, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let target = head.split(' ').nth(1).unwrap_or("?").to_string();
    let mut at = end + 4;
    let lower = head.to_ascii_lowercase();
    if lower.contains("\r\ntransfer-encoding: chunked") {
        loop {
            let line = find(&buf[at..], b"\r\n")?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[at..at + line])
                    .ok()?
                    .split(';')
                    .next()?,
                16,
            )
            .ok()?;
            at += line + 2;
            if size == 0 {
                // Trailer fields up to the blank line.
                loop {
                    let line = find(&buf[at..], b"\r\n")?;
                    at += line + 2;
                    if line == 0 {
                        return Some((target, at));
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            at += size + 2;
        }
    }
    let len = lower
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= at + len).then(|| (target, at + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` on a new connection; returns what came back and whether the proxy closed
/// the connection (rather than leaving it idle).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    // The first answer may be slow on a loaded machine; after it, 700 ms of silence means
    // the proxy has said all it will (and kept the connection open).
    let closed = loop {
        let wait = if out.is_empty() { 5000 } else { 700 };
        match tokio::time::timeout(Duration::from_millis(wait), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Err(_) => break false,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn statuses(out: &str) -> Vec<&str> {
    out.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect()
}

/// No request id and a fixed route timeout: the upstream head is fully determined.
const DETERMINISTIC: &str = "          generate_request_id: false";

/// What the proxy adds to every request forwarded by `DETERMINISTIC` (not at the edge).
const TAIL: &str = "x-forwarded-proto: http\r\nx-envoy-expected-rq-timeout-ms: 15000\r\n\r\n";

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: smuggled.example\r\nX-Ignore: ";

/// The attack from the issue: the client nominates Content-Length as hop-by-hop. Before
/// the fix the header was dropped and the 58 body bytes went upstream unframed, so the
/// next client's request on the pooled connection completed the smuggled one and got its
/// response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nominated_content_length_cannot_glue_two_clients_requests() {
    for driver in drivers() {
        let up = Recorder::start().await;
        let p = proxy_to(DETERMINISTIC, "up", up.addr, &one_core(driver)).await;
        let attack = format!(
            "POST / HTTP/1.1\r\nHost: t.example\r\nConnection: keep-alive, Content-Length\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
            SMUGGLED.len()
        );
        let (out, _) = exchange(p.addr(), attack.as_bytes()).await;
        assert_eq!(statuses(&out), ["200"], "{driver}: {out}");
        assert!(out.ends_with("\r\n\r\n/"), "{driver}: {out}");
        // The victim, on another client connection, over the same pooled upstream one.
        let (out, _) = exchange(
            p.addr(),
            b"GET /victim HTTP/1.1\r\nHost: t.example\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(out.ends_with("\r\n\r\n/victim"), "{driver}: {out}");
        assert_eq!(up.connections(), 1, "{driver}: one pooled connection");
        let expected = format!(
            "POST / HTTP/1.1\r\nhost: t.example\r\ncontent-length: 58\r\n{TAIL}{SMUGGLED}\
             GET /victim HTTP/1.1\r\nhost: t.example\r\n{TAIL}"
        );
        assert_eq!(
            String::from_utf8_lossy(&up.received()),
            expected,
            "{driver}"
        );
    }
}

/// Framing the proxy writes itself: the client's framing bytes never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_is_decided_once_and_written_by_the_proxy() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "nominated transfer-encoding keeps chunked framing",
            "POST /t HTTP/1.1\r\nHost: h\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "POST /t HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nTAIL5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunk extensions and trailers are dropped",
            "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;name=\"v\"\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n",
            "POST /t HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nTAIL5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "chunks arriving together go out as one",
            "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n",
            "POST /t HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\nTAIL5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "content-length with leading zeros is written as its value",
            "POST /t HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\n\r\nhello",
            "POST /t HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nTAILhello",
        ),
        (
            "a bodiless POST says so",
            "POST /t HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST /t HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\nTAIL",
        ),
        (
            "a GET does not",
            "GET /t HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /t HTTP/1.1\r\nhost: h\r\nTAIL",
        ),
        (
            "obs-fold is unfolded to a space",
            "GET /t HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n   2\r\n\r\n",
            "GET /t HTTP/1.1\r\nhost: h\r\nx-a: 1 2\r\nTAIL",
        ),
        (
            "nominated headers are dropped but x-request-id stays",
            "GET /t HTTP/1.1\r\nHost: h\r\nConnection: x-foo, x-request-id\r\nX-Foo: 1\r\nX-Request-Id: abc\r\nTE: gzip, trailers\r\n\r\n",
            "GET /t HTTP/1.1\r\nhost: h\r\nx-request-id: abc\r\nte: trailers\r\nTAIL",
        ),
        (
            "userinfo is not part of the authority",
            "GET http://user:pw@a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "GET /x HTTP/1.1\r\nhost: a.example\r\nTAIL",
        ),
    ];
    for driver in drivers() {
        let up = Recorder::start().await;
        let p = proxy_to(DETERMINISTIC, "up", up.addr, &one_core(driver)).await;
        for (what, request, expected) in cases {
            up.clear();
            let (out, _) = exchange(p.addr(), request.as_bytes()).await;
            assert_eq!(statuses(&out), ["200"], "{driver}: {what}: {out}");
            assert_eq!(
                String::from_utf8_lossy(&up.received()),
                expected.replace("TAIL", TAIL),
                "{driver}: {what}"
            );
        }
        // 100,000 one-byte chunks arrive upstream as one body of about their payload,
        // not six times its size.
        up.clear();
        let mut big =
            b"POST /big HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100_000 {
            big.extend_from_slice(b"1\r\na\r\n");
        }
        big.extend_from_slice(b"0\r\n\r\n");
        let (out, _) = exchange(p.addr(), &big).await;
        assert_eq!(statuses(&out), ["200"], "{driver}: {out}");
        let got = up.received();
        let body_at = find(&got, b"\r\n\r\n").unwrap() + 4;
        let body = &got[body_at..];
        assert!(
            body.len() < 101_000,
            "{driver}: {} bytes upstream for 100,000 bytes of payload",
            body.len()
        );
        assert_eq!(dechunk(body), vec![b'a'; 100_000], "{driver}");
    }
}

/// Input Envoy refuses: the same status, nothing reaches the upstream, and the connection
/// ends with the reply, so no byte after it is read as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_input_reaches_no_upstream_and_ends_the_connection() {
    const NEXT: &str = "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    let post = |headers: &str, body: &str| {
        format!("POST / HTTP/1.1\r\nHost: h\r\n{headers}\r\n{body}{NEXT}")
    };
    let chunked = |body: &str| post("Transfer-Encoding: chunked\r\n", body);
    let get = |line: &str, headers: &str| format!("{line}\r\nHost: h\r\n{headers}\r\n{NEXT}");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "content-length list",
            post("Content-Length: 5, 5\r\n", "hello"),
            "400",
        ),
        (
            "content-length repeated",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            "400",
        ),
        (
            "content-length sign",
            post("Content-Length: +5\r\n", "hello"),
            "400",
        ),
        (
            "content-length inner space",
            post("Content-Length: 5 5\r\n", "hello"),
            "400",
        ),
        (
            "content-length overflow",
            post("Content-Length: 99999999999999999999\r\n", "hello"),
            "400",
        ),
        (
            "content-length and chunked",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            "400",
        ),
        (
            "unknown transfer-encoding",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            "501",
        ),
        (
            "chunk size with 0x",
            chunked("0x5\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "chunk size overflow",
            chunked("fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "chunk size with nul",
            chunked("5\0\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        (
            "chunk data longer than its size",
            chunked("3\r\nhello\r\n0\r\n\r\n"),
            "400",
        ),
        ("chunk without crlf", chunked("5\r\nhello0\r\n\r\n"), "400"),
        (
            "request line in the trailers",
            chunked(&format!("5\r\nhello\r\n0\r\n{SMUGGLED}x\r\n\r\n")),
            "400",
        ),
        (
            "nominated host",
            get("GET / HTTP/1.1", "Connection: host\r\n"),
            "400",
        ),
        (
            "nominated x-forwarded-for",
            get("GET / HTTP/1.1", "Connection: X-Forwarded-For\r\n"),
            "400",
        ),
        (
            "ten nominated headers",
            get("GET / HTTP/1.1", "Connection: a,b,c,d,e,f,g,h,i,j\r\n"),
            "400",
        ),
        (
            "fragment in the target",
            get("GET /a#b HTTP/1.1", ""),
            "400",
        ),
        ("non-ascii target", get("GET /\u{e4} HTTP/1.1", ""), "400"),
        ("lower-case method", get("get / HTTP/1.1", ""), "400"),
        ("unknown method", get("QUERY / HTTP/1.1", ""), "400"),
        ("HTTP/1.2", get("GET / HTTP/1.2", ""), "426"),
        (
            "host with a space",
            format!("GET / HTTP/1.1\r\nHost: a b\r\n\r\n{NEXT}"),
            "400",
        ),
        (
            "host with a slash",
            format!("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n{NEXT}"),
            "400",
        ),
        (
            "obs-fold on the first field",
            format!("GET / HTTP/1.1\r\n X-A: 1\r\nHost: h\r\n\r\n{NEXT}"),
            "400",
        ),
        (
            "refused upgrade",
            get(
                "GET / HTTP/1.1",
                "Connection: upgrade\r\nUpgrade: h2c-x\r\n",
            ),
            "403",
        ),
        (
            "transfer-encoding in HTTP/1.0",
            post("Transfer-Encoding: chunked\r\n", "0\r\n\r\n").replace("HTTP/1.1", "HTTP/1.0"),
            "426",
        ),
    ];
    for driver in drivers() {
        let up = Recorder::start().await;
        let p = proxy_to(DETERMINISTIC, "up", up.addr, &one_core(driver)).await;
        for (what, request, status) in &cases {
            let (out, closed) = exchange(p.addr(), request.as_bytes()).await;
            assert_eq!(statuses(&out), [*status], "{driver}: {what}: {out}");
            assert!(closed, "{driver}: {what}: the connection stays open");
            assert!(
                out.contains("connection: close\r\n"),
                "{driver}: {what}: {out}"
            );
        }
        assert_eq!(
            String::from_utf8_lossy(&up.received()),
            "",
            "{driver}: refused input reached the upstream"
        );
    }
}

/// The trust boundary at the edge, as Envoy 1.40 draws it by default: no address is
/// internal, so the client cannot steer the proxy with x-envoy-* headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_proxy_strips_what_external_clients_may_not_say() {
    let host = ringside::io::host_address(false)
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    for driver in drivers() {
        let up = Recorder::start().await;
        let extra = format!("{DETERMINISTIC}\n          use_remote_address: true");
        let p = proxy_to(&extra, "up", up.addr, &one_core(driver)).await;
        let request = "GET / HTTP/1.1\r\nHost: h\r\n\
            x-envoy-internal: true\r\nx-envoy-retry-on: 5xx\r\nx-envoy-max-retries: 9\r\n\
            x-envoy-upstream-rq-timeout-ms: 1\r\nx-envoy-upstream-rq-per-try-timeout-ms: 1\r\n\
            x-envoy-force-trace: 1\r\nx-envoy-original-path: /admin\r\n\
            x-envoy-decorator-operation: op\r\nx-envoy-external-address: 9.9.9.9\r\n\
            x-envoy-attempt-count: 3\r\nx-envoy-foo: kept\r\n\
            x-forwarded-for: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nx-forwarded-proto: https\r\n\r\n";
        let (out, _) = exchange(p.addr(), request.as_bytes()).await;
        assert_eq!(statuses(&out), ["200"], "{driver}: {out}");
        let expected = format!(
            "GET / HTTP/1.1\r\nhost: h\r\nx-envoy-attempt-count: 3\r\nx-envoy-foo: kept\r\n\
             x-forwarded-for: 1.1.1.1,2.2.2.2,{host}\r\nx-forwarded-proto: http\r\n\
             x-envoy-external-address: 127.0.0.1\r\nx-envoy-expected-rq-timeout-ms: 15000\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&up.received()),
            expected,
            "{driver}"
        );
    }
}
