//! Upstream pool checkout/checkin of a live loopback connection on one core, with and
//! without the liveness peek (one non-blocking recv) used for non-replayable requests.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ringside::model::Snapshot;
use ringside::upstream::{connect, Upstreams};

mod support;

fn pool(c: &mut Criterion) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            keep.push(s);
        }
    });
    let mut snap: Snapshot = support::snapshot(1, 1);
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    let mut ups = Upstreams::new(0);
    rt.block_on(async {
        let cluster = std::sync::Arc::get_mut(&mut snap.clusters[0]).unwrap();
        // Envoy's default, which every checkout checks.
        cluster.idle_timeout = Some(Duration::from_secs(3600));
        let mut ep = cluster.endpoints[0].clone();
        ep.address = addr;
        let conn = connect(0, cluster, &ep).await.unwrap();
        ups.checkin(conn, std::time::Instant::now());
    });
    c.bench_function("pool_checkout_checkin", |b| {
        b.iter(|| {
            let conn = ups.checkout(addr, 0, false, None).unwrap();
            ups.checkin(conn, std::time::Instant::now());
        })
    });
    c.bench_function("pool_checkout_checkin_with_peek", |b| {
        b.iter(|| {
            let conn = ups.checkout(addr, 0, true, None).unwrap();
            ups.checkin(conn, std::time::Instant::now());
        })
    });
}

criterion_group!(benches, pool);
criterion_main!(benches);
