//! The listener filters that look at a connection's first bytes: `tls_inspector` (is it
//! TLS; its SNI and ALPN from the ClientHello) and `http_inspector` (HTTP/1.0, 1.1 or h2c
//! prior knowledge). They run only when a candidate filter chain depends on the answer
//! (see `model::chain`), and decide as soon as the bytes allow: a byte that cannot start
//! a ClientHello or a request line settles it at once.
//!
//! The bytes read here are handed to the chosen filter chain in front of the stream.

use std::time::Duration;

use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::model::chain::Sniffed;

/// The most a ClientHello may take (Envoy's `max_client_hello_size` default).
const MAX_CLIENT_HELLO: usize = 16 * 1024;
/// The longest request line the HTTP inspector reads before calling it "not HTTP".
const MAX_REQUEST_LINE: usize = 8 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the TLS inspector found so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Tls {
    NeedMore,
    NotTls,
    /// The hello is larger than we read.
    TooLarge,
    Hello {
        server_name: Option<String>,
        alpn: Vec<String>,
    },
}

/// What the HTTP inspector found so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Http {
    NeedMore,
    NotHttp,
    Found(&'static str),
}

/// Why inspection ended without a decision.
#[derive(Debug, PartialEq, Eq)]
pub enum SniffError {
    /// `listener_filters_timeout` passed (without `continue_on_listener_filters_timeout`).
    Timeout,
    /// A ClientHello larger than the inspector reads.
    ClientHelloTooLarge,
    Io,
}

/// Reads until the enabled inspectors have decided. Returns what they found and the
/// bytes read.
pub async fn sniff(
    stream: &mut TcpStream,
    tls: bool,
    http: bool,
    timeout: Option<Duration>,
    continue_on_timeout: bool,
) -> Result<(Sniffed, Vec<u8>), SniffError> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut eof = false;
    loop {
        let (found, done) = decide(&buf, tls, http, eof);
        if done {
            return found.map(|s| (s, buf));
        }
        // Each read gets its own buffer, so a timeout that cancels it loses none of the
        // bytes already read.
        let read = stream.read(Vec::with_capacity(4096));
        let (res, chunk) = match deadline {
            None => read.await,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                match monoio::time::timeout(left, read).await {
                    Ok(r) => r,
                    Err(_) if continue_on_timeout => {
                        let (found, _) = decide(&buf, tls, http, true);
                        return found.map(|s| (s, buf));
                    }
                    Err(_) => return Err(SniffError::Timeout),
                }
            }
        };
        buf.extend_from_slice(&chunk);
        match res {
            Ok(0) => eof = true,
            Ok(_) => {}
            Err(_) => return Err(SniffError::Io),
        }
    }
}

/// Whether the inspectors have decided on `buf`, and what.
fn decide(buf: &[u8], tls: bool, http: bool, eof: bool) -> (Result<Sniffed, SniffError>, bool) {
    let mut out = Sniffed::RAW.clone();
    if tls {
        match client_hello(buf) {
            Tls::Hello { server_name, alpn } => {
                out.transport = "tls";
                out.server_name = server_name;
                out.application_protocols = alpn;
                return (Ok(out), true);
            }
            Tls::TooLarge => return (Err(SniffError::ClientHelloTooLarge), true),
            Tls::NeedMore if !eof => return (Ok(out), false),
            Tls::NeedMore | Tls::NotTls => {}
        }
    }
    if http {
        match request_line(buf) {
            Http::Found(v) => out.application_protocols = vec![v.to_string()],
            Http::NeedMore if !eof => return (Ok(out), false),
            Http::NeedMore | Http::NotHttp => {}
        }
    }
    (Ok(out), true)
}

/// A cursor over bytes that fails softly when they run out.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Parses a TLS ClientHello (which may span several records) for SNI and ALPN.
pub fn client_hello(buf: &[u8]) -> Tls {
    // Record header: handshake (22), version 3.x, length.
    match buf {
        [] => return Tls::NeedMore,
        [b, ..] if *b != 22 => return Tls::NotTls,
        [_, major, ..] if *major != 3 => return Tls::NotTls,
        [_, _, minor, ..] if *minor > 4 => return Tls::NotTls,
        _ => {}
    }
    // Gather the handshake bytes from consecutive handshake records.
    let mut hs = Vec::new();
    let mut rest = buf;
    let mut needed = None;
    loop {
        if rest.len() < 5 {
            break;
        }
        if rest[0] != 22 || rest[1] != 3 {
            return Tls::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > (1 << 14) + 2048 {
            return Tls::NotTls;
        }
        let avail = (rest.len() - 5).min(len);
        hs.extend_from_slice(&rest[5..5 + avail]);
        if hs.len() >= 4 && needed.is_none() {
            if hs[0] != 1 {
                return Tls::NotTls; // not a ClientHello
            }
            let n = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
            if n + 4 > MAX_CLIENT_HELLO {
                return Tls::TooLarge;
            }
            needed = Some(n + 4);
        }
        if needed.is_some_and(|n| hs.len() >= n) || avail < len {
            break;
        }
        rest = &rest[5 + len..];
    }
    let Some(total) = needed else {
        return Tls::NeedMore;
    };
    if hs.len() < total {
        return Tls::NeedMore;
    }
    parse_hello(&hs[4..total]).unwrap_or(Tls::NotTls)
}

fn parse_hello(body: &[u8]) -> Option<Tls> {
    let mut r = Rd(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut server_name = None;
    let mut alpn = Vec::new();
    if r.0.is_empty() {
        return Some(Tls::Hello { server_name, alpn });
    }
    let mut exts = Rd(r.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = Rd(exts.vec16()?);
        match ty {
            0 => {
                let mut list = Rd(data.vec16()?);
                while !list.0.is_empty() {
                    let kind = list.u8()?;
                    let name = list.vec16()?;
                    if kind == 0 && server_name.is_none() {
                        let name = std::str::from_utf8(name).ok()?;
                        server_name = Some(name.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut list = Rd(data.vec16()?);
                while !list.0.is_empty() {
                    let p = list.vec8()?;
                    alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(Tls::Hello { server_name, alpn })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Recognises an HTTP/1.x request line or the HTTP/2 connection preface.
pub fn request_line(buf: &[u8]) -> Http {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Http::Found("h2c")
        } else {
            Http::NeedMore
        };
    }
    // method SP request-target SP HTTP/1.x CRLF
    let method_end = buf.iter().position(|&b| !is_tchar(b));
    match method_end {
        None if buf.len() < 32 => return Http::NeedMore,
        None => return Http::NotHttp,
        Some(0) => return Http::NotHttp,
        Some(i) if buf[i] != b' ' => return Http::NotHttp,
        Some(_) => {}
    }
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        // Request-target bytes are visible ASCII; anything else settles it now.
        if buf.iter().any(|&b| b < 0x20 && b != b'\r' || b == 0x7f) {
            return Http::NotHttp;
        }
        return if buf.len() > MAX_REQUEST_LINE {
            Http::NotHttp
        } else {
            Http::NeedMore
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    if line.ends_with(b" HTTP/1.1") {
        Http::Found("http/1.1")
    } else if line.ends_with(b" HTTP/1.0") {
        Http::Found("http/1.0")
    } else {
        Http::NotHttp
    }
}

#[cfg(test)]
mod tests;
