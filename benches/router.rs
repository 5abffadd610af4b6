//! Route matching cost against table size: the worst case for a linear scan (the last of N
//! prefix routes matches), at 10, 1,000 and 10,000 routes. The path index keeps them within
//! a small factor of each other. A direct `RequestView` (no HTTP parsing) isolates routing.

use std::borrow::Cow;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ringside::router::RequestView;

mod support;

struct Req(String);

impl RequestView for Req {
    fn method(&self) -> &[u8] {
        b"GET"
    }
    fn path(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn authority(&self) -> &[u8] {
        b"svc.example.com"
    }
    fn scheme(&self) -> &[u8] {
        b"http"
    }
    fn header(&self, _: &str) -> Option<Cow<'_, [u8]>> {
        None
    }
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match_last_of_n");
    for n in [10usize, 1_000, 10_000] {
        let snap = support::snapshot(n, 10);
        let hcm = snap.listeners[0]
            .hcms()
            .next()
            .expect("a connection manager");
        let table = hcm.routes.inline().expect("inline routes").clone();
        let req = Req(format!("/svc/{}/items/42?x=1", n - 1));
        assert!(table.find(&req).is_some());
        g.bench_with_input(BenchmarkId::from_parameter(n), &req, |b, req| {
            b.iter(|| black_box(table.find(black_box(req)).is_some()))
        });
    }
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
