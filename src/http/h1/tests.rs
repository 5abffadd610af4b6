use super::*;

fn req(text: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut head = RequestHead::default();
    parse_request(text, 100, 60 * 1024, &mut head).map(|o| o.map(|_| head))
}

#[test]
fn parses_a_keepalive_request_and_needs_more_bytes_when_partial() {
    let text = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    let head = req(text).unwrap().unwrap();
    assert_eq!(&text[head.target.clone()], b"/a?b=1");
    assert_eq!(head.body, BodyKind::Length(3));
    assert_eq!(head.len, text.len() - 3);
    assert!(!head.close);
    // Any prefix of the head is "need more", never an error.
    for cut in 0..head.len {
        assert!(req(&text[..cut]).unwrap().is_none(), "cut at {cut}");
    }
}

#[test]
fn framing_errors() {
    assert_eq!(
        req(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap_err(),
        HeadError::LengthAndChunked
    );
    assert_eq!(
        req(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap_err(),
        HeadError::BadContentLength
    );
    assert_eq!(
        req(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap_err(),
        HeadError::BadContentLength
    );
    assert_eq!(
        req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").unwrap_err(),
        HeadError::BadTransferEncoding
    );
    assert_eq!(
        req(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err(),
        HeadError::Malformed
    );
    assert_eq!(
        req(b"G\x01T / HTTP/1.1\r\n\r\n").unwrap_err(),
        HeadError::Malformed
    );
}

#[test]
fn limits() {
    let mut head = RequestHead::default();
    let big = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(200));
    assert_eq!(
        parse_request(big.as_bytes(), 100, 100, &mut head).unwrap_err(),
        HeadError::TooLarge
    );
    let many: String = (0..5).map(|i| format!("h{i}: v\r\n")).collect();
    let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(
        parse_request(text.as_bytes(), 4, 1000, &mut head).unwrap_err(),
        HeadError::TooManyHeaders
    );
    // Above the on-stack slot count the slots come from the heap: the limit still holds
    // exactly, and every header parsed is kept.
    let many: String = (0..300).map(|i| format!("h{i}: v{i}\r\n")).collect();
    let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
    parse_request(text.as_bytes(), 300, 1 << 20, &mut head)
        .unwrap()
        .unwrap();
    assert_eq!(head.headers.len(), 300);
    let (n, v) = head.headers[299].clone();
    assert_eq!(&text.as_bytes()[n], b"h299");
    assert_eq!(&text.as_bytes()[v], b"v299");
    assert_eq!(
        parse_request(text.as_bytes(), 299, 1 << 20, &mut head).unwrap_err(),
        HeadError::TooManyHeaders
    );
}

#[test]
fn http10_defaults_to_close() {
    assert!(req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().close);
    assert!(
        !req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap()
            .close
    );
}

#[test]
fn response_framing() {
    let mut head = ResponseHead::default();
    parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        1000,
        &mut head,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.body(false), BodyKind::Length(5));
    assert_eq!(head.body(true), BodyKind::None);
    parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 1000, &mut head)
        .unwrap()
        .unwrap();
    assert_eq!(head.body(false), BodyKind::None);
    parse_response(b"HTTP/1.1 200 OK\r\n\r\n", 1000, &mut head)
        .unwrap()
        .unwrap();
    assert_eq!(head.body(false), BodyKind::UntilClose);
    parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        1000,
        &mut head,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.body(false), BodyKind::Chunked);
}

#[test]
fn chunked_any_split_gives_the_same_result() {
    let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let end = body.len() - 4;
    for split in 0..body.len() {
        let mut d = ChunkedDecoder::default();
        let mut data = Vec::new();
        let a = d
            .feed(&body[..split], |b| data.extend_from_slice(b))
            .unwrap();
        assert_eq!(a, split.min(end));
        let b = d.feed(&body[a..], |b| data.extend_from_slice(b)).unwrap();
        assert_eq!(a + b, end, "split {split}");
        assert!(d.done());
        assert_eq!(data, b"hello0123456789abcdef");
    }
}

#[test]
fn chunked_errors() {
    for bad in [
        &b"x\r\n"[..],
        b"5\r\nhelloX",
        b"\r\n",
        b"fffffffffffffffff\r\n",
    ] {
        let mut d = ChunkedDecoder::default();
        assert!(
            d.feed(bad, |_| {}).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let valid = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut head = RequestHead::default();
    let mut resp = ResponseHead::default();
    for i in 0..50_000 {
        let input: Vec<u8> = if i % 2 == 0 {
            (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect()
        } else {
            let mut v = valid.clone();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..v.len());
                match rng.u8(..3) {
                    0 => v[at] = rng.u8(..),
                    1 => {
                        v.remove(at);
                    }
                    _ => v.insert(at, rng.u8(..)),
                }
            }
            v
        };
        let _ = parse_request(&input, 16, 1024, &mut head);
        let _ = parse_response(&input, 1024, &mut resp);
        let mut d = ChunkedDecoder::default();
        let _ = d.feed(&input, |_| {});
    }
}
