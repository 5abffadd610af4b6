use super::*;

/// A ClientHello as a TLS client writes it, with SNI and ALPN extensions.
fn hello(sni: Option<&str>, alpn: &[&str]) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let mut list = vec![0u8];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name.as_bytes());
        let mut ext = (list.len() as u16).to_be_bytes().to_vec();
        ext.extend_from_slice(&list);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&ext);
    }
    if !alpn.is_empty() {
        let mut list = Vec::new();
        for p in alpn {
            list.push(p.len() as u8);
            list.extend_from_slice(p.as_bytes());
        }
        let mut ext = (list.len() as u16).to_be_bytes().to_vec();
        ext.extend_from_slice(&list);
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        exts.extend_from_slice(&ext);
    }
    // A supported_versions extension, to have something the parser skips.
    exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    record(&hs)
}

fn record(payload: &[u8]) -> Vec<u8> {
    let mut r = vec![22, 3, 1];
    r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    r.extend_from_slice(payload);
    r
}

#[test]
fn client_hello_gives_sni_and_alpn_and_waits_for_the_rest() {
    let h = hello(Some("API.Example.com"), &["h2", "http/1.1"]);
    assert_eq!(
        client_hello(&h),
        Tls::Hello {
            server_name: Some("api.example.com".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
        }
    );
    for cut in [1, 3, 5, 20, h.len() - 1] {
        assert_eq!(client_hello(&h[..cut]), Tls::NeedMore, "cut at {cut}");
    }
    assert_eq!(
        client_hello(&hello(None, &[])),
        Tls::Hello {
            server_name: None,
            alpn: vec![]
        }
    );
}

#[test]
fn a_client_hello_over_two_records_is_reassembled() {
    let h = hello(Some("split.example"), &["istio"]);
    let hs = &h[5..];
    let mut two = record(&hs[..30]);
    two.extend_from_slice(&record(&hs[30..]));
    assert_eq!(
        client_hello(&two),
        Tls::Hello {
            server_name: Some("split.example".into()),
            alpn: vec!["istio".into()],
        }
    );
    assert_eq!(client_hello(&two[..40]), Tls::NeedMore);
}

#[test]
fn what_is_not_tls_is_known_from_the_first_bytes() {
    assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Tls::NotTls);
    assert_eq!(client_hello(b"\x16\x02"), Tls::NotTls);
    assert_eq!(client_hello(b"\x00"), Tls::NotTls);
    // A handshake record that is not a ClientHello.
    assert_eq!(client_hello(&record(&[2, 0, 0, 1, 0])), Tls::NotTls);
    // A truncated extension list inside a complete hello.
    let mut h = hello(Some("a.b"), &[]);
    let last = h.len() - 1;
    h[last - 8] = 0xff;
    assert_eq!(client_hello(&h), Tls::NotTls);
    // Larger than the inspector reads.
    assert_eq!(client_hello(&record(&[1, 0x01, 0, 0])), Tls::TooLarge);
}

#[test]
fn http_inspector_finds_versions_and_gives_up_early() {
    assert_eq!(request_line(b"GET / HTTP/1.1\r\n"), Http::Found("http/1.1"));
    assert_eq!(
        request_line(b"POST /x?y HTTP/1.0\r\nHost"),
        Http::Found("http/1.0")
    );
    assert_eq!(
        request_line(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Http::Found("h2c")
    );
    assert_eq!(request_line(b"PRI * HTT"), Http::NeedMore);
    assert_eq!(request_line(b"GE"), Http::NeedMore);
    assert_eq!(request_line(b"GET /very/long"), Http::NeedMore);
    // A server-first protocol's client bytes, or binary: decided at once.
    assert_eq!(request_line(b"\x16\x03\x01"), Http::NotHttp);
    assert_eq!(request_line(b"\x00\x00\x00\x0a"), Http::NotHttp);
    assert_eq!(request_line(b"HELLO\x00"), Http::NotHttp);
    assert_eq!(request_line(b"GET / SSH-2.0\r\n"), Http::NotHttp);
    assert_eq!(request_line(b"GET /a\x01"), Http::NotHttp);
}

#[test]
fn decide_combines_the_inspectors() {
    let h = hello(Some("x.y"), &["h2"]);
    let (found, done) = decide(&h, true, true, false);
    assert!(done);
    assert_eq!(found.unwrap().transport, "tls");
    let (found, done) = decide(b"GET / HTTP/1.1\r\n", true, true, false);
    assert!(done);
    let s = found.unwrap();
    assert_eq!(s.transport, "raw_buffer");
    assert_eq!(s.application_protocols, vec!["http/1.1".to_string()]);
    // Not enough to tell: wait, unless the peer closed.
    assert!(!decide(b"GE", false, true, false).1);
    assert!(decide(b"GE", false, true, true).1);
    // HTTP inspector only: TLS bytes are raw, not HTTP.
    let (found, _) = decide(&h, false, true, false);
    assert_eq!(found.unwrap(), Sniffed::RAW);
}
