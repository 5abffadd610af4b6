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
        100,
        &mut head,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.body(false), BodyKind::Length(5));
    assert_eq!(head.body(true), BodyKind::None);
    parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", 1000, 100, &mut head)
        .unwrap()
        .unwrap();
    assert_eq!(head.body(false), BodyKind::None);
    parse_response(b"HTTP/1.1 200 OK\r\n\r\n", 1000, 100, &mut head)
        .unwrap()
        .unwrap();
    assert_eq!(head.body(false), BodyKind::UntilClose);
    parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        1000,
        100,
        &mut head,
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.body(false), BodyKind::Chunked);
}

/// More header lines than `max_headers` is an error, on the stack's slots and past them.
#[test]
fn response_header_count_is_bounded() {
    let mut head = ResponseHead::default();
    let with = |n: usize| {
        let lines: String = (0..n).map(|i| format!("x-{i}: v\r\n")).collect();
        format!("HTTP/1.1 200 OK\r\n{lines}\r\n").into_bytes()
    };
    assert!(parse_response(&with(3), 1 << 16, 3, &mut head).is_ok());
    assert_eq!(head.headers.len(), 3);
    assert!(parse_response(&with(4), 1 << 16, 3, &mut head).is_err());
    assert!(parse_response(&with(300), 1 << 16, 300, &mut head).is_ok());
    assert_eq!(head.headers.len(), 300);
    assert!(parse_response(&with(301), 1 << 16, 300, &mut head).is_err());
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
        let _ = parse_response(&input, 1024, 100, &mut resp);
        let mut d = ChunkedDecoder::default();
        let _ = d.feed(&input, |_| {});
    }
}

#[test]
fn repair_unfolds_obs_fold_and_trims_the_request_line() {
    let mut b = b"GET / HTTP/1.1\r\nX-A: 1 \r\n \t 2\r\nHost: h\r\n\r\nbody".to_vec();
    assert!(repair(&mut b));
    assert_eq!(b, b"GET / HTTP/1.1\r\nX-A: 1 2\r\nHost: h\r\n\r\nbody");
    let mut b = b"GET / HTTP/1.1 \t\r\n\r\nnext".to_vec();
    assert!(repair(&mut b));
    assert_eq!(b, b"GET / HTTP/1.1\r\n\r\nnext");
    // A continuation of nothing stays malformed; a clean head needs no repair.
    let mut b = b"GET / HTTP/1.1\r\n X-A: 1\r\n\r\n".to_vec();
    assert!(!repair(&mut b));
    let mut b = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
    assert!(!repair(&mut b));
}

#[test]
fn strict_framing_and_validation() {
    let err = |t: &[u8]| req(t).unwrap_err();
    // Content-Length: one header, one decimal value.
    for cl in ["5, 5", "+5", "5 5", "0x5", "", "99999999999999999999"] {
        let t = format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(err(t.as_bytes()), HeadError::BadContentLength, "{cl}");
    }
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
        HeadError::BadContentLength
    );
    let head = req(b"POST / HTTP/1.1\r\nContent-Length: 005\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(head.body, BodyKind::Length(5));
    // With a Content-Length, any Transfer-Encoding is a 400 (not a 501).
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n"),
        HeadError::LengthAndChunked
    );
    assert_eq!(
        err(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
        HeadError::BadTransferEncoding
    );
    assert_eq!(err(b"get / HTTP/1.1\r\n\r\n"), HeadError::BadMethod);
    assert_eq!(err(b"QUERY / HTTP/1.1\r\n\r\n"), HeadError::BadMethod);
    assert!(req(b"PROPFIND / HTTP/1.1\r\n\r\n").unwrap().is_some());
    // A fragment passes the codec (the connection manager refuses it, as Envoy does).
    assert!(req(b"GET /a#b HTTP/1.1\r\n\r\n").unwrap().is_some());
    assert_eq!(err(b"GET /\xc3\xa4 HTTP/1.1\r\n\r\n"), HeadError::BadTarget);
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        HeadError::BadHost
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        HeadError::BadHost
    );
    assert!(req(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n")
        .unwrap()
        .is_some());
    assert_eq!(
        err(b"GET / HTTP/1.2\r\n\r\n"),
        HeadError::UnsupportedVersion
    );
    assert_eq!(err(b"GET /\r\n\r\n"), HeadError::UnsupportedVersion);
    assert_eq!(err(b"GET / http/1.1\r\n\r\n"), HeadError::Malformed);
    assert_eq!(err(b"GET /a b HTTP/1.1\r\n\r\n"), HeadError::Malformed);
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nConnection: Host\r\n\r\n"),
        HeadError::BadConnection
    );
    assert_eq!(
        err(b"GET / HTTP/1.1\r\nConnection: a,b,c,d,e,f,g,h,i,j\r\n\r\n"),
        HeadError::BadConnection
    );
    assert!(
        req(b"GET / HTTP/1.1\r\nConnection: a,b,c,d,e,f,g,h,i\r\n\r\n")
            .unwrap()
            .is_some()
    );
}

#[test]
fn chunked_trailers_are_header_fields() {
    let decode = |body: &[u8]| {
        let mut d = ChunkedDecoder::default();
        let mut data = Vec::new();
        d.feed(body, |b| data.extend_from_slice(b))
            .map(|n| (n, d.done(), data))
    };
    assert_eq!(
        decode(b"5;ext=\"x\"\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\nGET"),
        Ok((35, true, b"hello".to_vec()))
    );
    assert_eq!(
        decode(b"5 \t\r\nhello\r\n0000\r\n\r\n").map(|r| r.1),
        Ok(true)
    );
    for bad in [
        &b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
        b"0\r\n: v\r\n\r\n",
        b"0\r\n x: continuation of nothing\r\n\r\n",
        b"0\r\nX-T: 1\nY: 2\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"fffffffffffffffff\r\n",
        b"3\r\nhello\r\n",
    ] {
        assert_eq!(decode(bad).map(|r| r.1), Err(ChunkError), "{bad:?}");
    }
}

/// A second, independent reading of a request's framing, written from RFC 9112 and the
/// rules Ringside follows (one Content-Length of digits; Transfer-Encoding exactly
/// `chunked`, once, without Content-Length): `(head length, framing)`, or `None` where
/// the message must be refused.
fn independent_framing(b: &[u8]) -> Option<(usize, BodyKind)> {
    // Lines end at LF (a CR before it is part of the ending, as httparse and Envoy read
    // them); the head ends at the first empty line after the request line.
    let mut at = 0;
    let mut lines = Vec::new();
    let end = loop {
        let nl = at + b[at..].iter().position(|&c| c == b'\n')?;
        let line = &b[at..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at = nl + 1;
        match (line.is_empty(), lines.is_empty()) {
            // Empty lines before the request line are skipped (RFC 9112 §2.2).
            (true, true) => continue,
            (true, false) => break at,
            _ => lines.push(line),
        }
    };
    let mut lines = lines.into_iter();
    let first = lines.next()?;
    if first.split(|&c| c == b' ').count() != 3 {
        return None;
    }
    let (mut cl, mut te) = (Vec::new(), Vec::new());
    for line in lines {
        if line.contains(&b'\r') {
            return None;
        }
        let colon = line.iter().position(|&c| c == b':')?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            return None;
        }
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl.push(value.to_vec());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te.push(value.to_vec());
        }
    }
    let body = match (cl.as_slice(), te.as_slice()) {
        ([], []) => BodyKind::None,
        ([], [t]) if t.eq_ignore_ascii_case(b"chunked") => BodyKind::Chunked,
        ([n], []) if !n.is_empty() && n.iter().all(u8::is_ascii_digit) => {
            match std::str::from_utf8(n).ok()?.parse::<u64>().ok()? {
                0 => BodyKind::None,
                n => BodyKind::Length(n),
            }
        }
        _ => return None,
    };
    Some((end, body))
}

/// The independent reading of a chunked body: `(bytes it spans, payload)`.
fn independent_dechunk(mut b: &[u8]) -> Option<(usize, Vec<u8>)> {
    let total = b.len();
    let mut payload = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let line = &b[..nl];
        let size_end = line
            .iter()
            .position(|c| !c.is_ascii_hexdigit())
            .unwrap_or(line.len());
        let rest = &line[size_end..];
        let rest = rest.trim_ascii_start();
        if size_end == 0 || !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\n') {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..size_end]).ok()?, 16).ok()?;
        b = &b[nl + 2..];
        if size == 0 {
            // Trailer fields, each `name:value` (or a continuation), then a blank line.
            let mut first = true;
            loop {
                let nl = b.windows(2).position(|w| w == b"\r\n")?;
                let line = &b[..nl];
                b = &b[nl + 2..];
                if line.is_empty() {
                    return Some((total - b.len(), payload));
                }
                if line.contains(&b'\n') || line.contains(&b'\r') || line.contains(&0) {
                    return None;
                }
                let continuation = !first && matches!(line[0], b' ' | b'\t');
                let colon = line.iter().position(|&c| c == b':');
                let named = colon.is_some_and(|c| c > 0 && line[..c].iter().all(|&x| is_tchar(x)));
                if !continuation && !named {
                    return None;
                }
                first = false;
            }
        }
        let size = usize::try_from(size).ok()?;
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return None;
        }
        payload.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A seeded, bounded fuzzer on the stable toolchain: requests built from hostile pieces
/// (framing headers in every spelling, nominations, folds, chunked bodies with extensions
/// and trailers), then mutated byte by byte. The parser must not panic, and whenever it
/// accepts a head (and the decoder a body), the independent reading above must agree on
/// where the head and body end and what the payload is; the re-chunked output must carry
/// the same payload in valid framing.
#[test]
fn mutated_requests_agree_with_an_independent_reading() {
    const METHODS: [&str; 5] = ["GET", "POST", "get", "PUT", "G T"];
    const TARGETS: [&str; 5] = ["/", "/a?b=c", "/a#f", "http://h/x", "*"];
    const FIELDS: [&str; 24] = [
        "Host: h",
        "Host: a b",
        "Content-Length: 5",
        "Content-Length: 005",
        "Content-Length: 5, 5",
        "Content-Length: +5",
        "Content-Length:  5 ",
        "Content-Length: 5 5",
        "Content-Length: 18446744073709551616",
        "Content-Length: 0",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: Chunked",
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding:\tchunked ",
        "Transfer-Encoding : chunked",
        " Transfer-Encoding: chunked",
        "Connection: keep-alive, Content-Length",
        "Connection: Transfer-Encoding, x-a",
        "Connection: close",
        "X-A: 1\r\n 2",
        "X-B: a\rb",
        "X-C: \x00",
        "Expect: 100-continue",
    ];
    let mut rng = fastrand::Rng::with_seed(19);
    let mut head = RequestHead::default();
    let (mut accepted, mut bodies) = (0, 0);
    for _ in 0..60_000 {
        let mut msg = format!(
            "{} {} HTTP/1.{}\r\n",
            METHODS[rng.usize(..METHODS.len())],
            TARGETS[rng.usize(..TARGETS.len())],
            rng.u8(0..2)
        )
        .into_bytes();
        let chunked_body = rng.bool();
        if chunked_body && rng.u8(..10) < 7 {
            msg.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        for _ in 0..rng.usize(0..5) {
            msg.extend_from_slice(FIELDS[rng.usize(..FIELDS.len())].as_bytes());
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"\r\n");
        // A body: chunked pieces, sometimes with extensions and trailers, or raw bytes.
        if chunked_body {
            for _ in 0..rng.usize(0..4) {
                let n = rng.usize(0..12);
                let ext = if rng.u8(..4) == 0 { ";e=\"v\"" } else { "" };
                msg.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                msg.extend((0..n).map(|_| rng.alphanumeric() as u8));
                msg.extend_from_slice(b"\r\n");
            }
            msg.extend_from_slice(b"0\r\n");
            if rng.u8(..3) == 0 {
                msg.extend_from_slice(b"T: 1\r\n");
            }
            msg.extend_from_slice(b"\r\nGET /next HTTP/1.1\r\n\r\n");
        } else {
            msg.extend_from_slice(b"hello world");
        }
        for _ in 0..rng.usize(0..3) {
            let at = rng.usize(..msg.len());
            match rng.u8(..3) {
                0 => msg[at] = b" \r\n\t:,;0a\x00"[rng.usize(..9)],
                1 => {
                    msg.remove(at);
                }
                _ => msg.insert(at, b" \r\n\t:,;0a"[rng.usize(..9)]),
            }
        }
        let Ok(Some(())) = parse_request(&msg, 100, 64 * 1024, &mut head) else {
            continue;
        };
        accepted += 1;
        let shown = String::from_utf8_lossy(&msg).into_owned();
        assert_eq!(
            independent_framing(&msg),
            Some((head.len, head.body)),
            "the readings disagree on {shown:?}"
        );
        if head.body != BodyKind::Chunked {
            continue;
        }
        let body = &msg[head.len..];
        let mut d = ChunkedDecoder::default();
        let mut payload = Vec::new();
        let Ok(n) = d.feed(body, |b| payload.extend_from_slice(b)) else {
            continue;
        };
        if !d.done() {
            continue;
        }
        bodies += 1;
        assert_eq!(
            independent_dechunk(body),
            Some((n, payload.clone())),
            "the chunked readings disagree on {shown:?}"
        );
        // Re-chunked in random pieces: valid framing, the same payload, nothing more.
        let mut f =
            crate::http::body::Framing::new(BodyKind::Chunked, crate::http::body::Mode::Raw);
        let mut out = Vec::new();
        let mut at = 0;
        while !f.done() {
            let cut = (at + rng.usize(1..8)).min(body.len());
            at += f.consume_into(&body[at..cut], &mut out).unwrap();
        }
        assert_eq!(at, n);
        assert_eq!(
            independent_dechunk(&out),
            Some((out.len(), payload)),
            "{shown:?}"
        );
    }
    // The generator reaches both verdicts, and real bodies.
    assert!(
        accepted > 4_000 && bodies > 500,
        "{accepted} heads, {bodies} bodies"
    );
}
