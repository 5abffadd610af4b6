//! HTTP/1 head parsing: a typical browser-ish request (12 headers) and a minimal one,
//! parsed into ranges over the buffer (no copies, no allocation once warm).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringside::http::h1::{parse_request, parse_response, RequestHead, ResponseHead};

const TYPICAL: &[u8] = b"GET /api/v1/items/42?expand=true HTTP/1.1\r\nHost: svc.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: session=0123456789abcdef; theme=dark\r\nx-request-id: 0b7c1c4e-5d2b-4a8f-9d0e-1f2a3b4c5d6e\r\nx-forwarded-for: 10.0.0.1\r\nx-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7\r\nCache-Control: no-cache\r\nContent-Length: 0\r\n\r\n";
const MINIMAL: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 24 Nov 2026 23:59:59 GMT\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n\r\n";

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("h1_parse");
    let mut head = RequestHead::default();
    for (name, input) in [("request_typical", TYPICAL), ("request_minimal", MINIMAL)] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| parse_request(black_box(input), 100, 60 * 1024, &mut head).unwrap())
        });
    }
    let mut resp = ResponseHead::default();
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    g.bench_function("response", |b| {
        b.iter(|| parse_response(black_box(RESPONSE), 65536, 100, &mut resp).unwrap())
    });
    g.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);
