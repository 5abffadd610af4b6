//! Building a snapshot (convert + validate + index) from already-parsed protos, and
//! publishing it (ArcSwap store) while a reader holds the previous one, at 10, 1,000 and
//! 10,000 routes and clusters: the control thread's cost per update.

use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringside::model::convert::bootstrap_snapshot;
use ringside::stats::Store;

mod support;

fn build_and_swap(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    let store = Store::new(1);
    for n in [10usize, 1_000, 10_000] {
        let proto = support::bootstrap(n, n);
        g.bench_with_input(BenchmarkId::new("build", n), &proto, |b, proto| {
            b.iter(|| bootstrap_snapshot(proto, &store, 2).unwrap())
        });
        let shared = ArcSwap::from_pointee(bootstrap_snapshot(&proto, &store, 1).unwrap().0);
        let next = Arc::new(bootstrap_snapshot(&proto, &store, 2).unwrap().0);
        g.bench_with_input(BenchmarkId::new("swap", n), &next, |b, next| {
            b.iter(|| {
                let held = shared.load_full();
                shared.store(next.clone());
                drop(held);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, build_and_swap);
criterion_main!(benches);
