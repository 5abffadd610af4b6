//! CPU profiles on demand: admin's `/debug/pprof/profile` (pprof's protobuf) and
//! `/debug/pprof/flamegraph` (SVG) sample every thread of the running proxy while it serves
//! traffic, one profile at a time, within bounds.

mod support;

use std::time::{Duration, Instant};

use prost::Message;
use ringside::proto::perftools::profiles::Profile;
use support::*;

/// Keeps the proxy busy for `d`: four clients, each sending requests one after another.
fn load(addr: std::net::SocketAddr, d: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let end = Instant::now() + d;
        let clients = (0..4).map(|_| {
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < end {
                    let (s, _, _) = http_get(addr, "/", &[]).await;
                    assert_eq!(s, 200);
                    n += 1;
                }
                n
            })
        });
        let mut total = 0;
        for c in clients.collect::<Vec<_>>() {
            total += c.await.unwrap();
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_of_a_busy_proxy_names_its_functions_and_threads() {
    let (_b, p) = proxy_to_one_backend("", &["--concurrency", "1"]).await;
    let busy = load(p.addr(), Duration::from_millis(2500));
    let (s, headers, body) = http_get(p.admin, "/debug/pprof/profile?seconds=2&hz=499", &[]).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/octet-stream")
    );
    assert!(busy.await.unwrap() > 0);
    let profile = Profile::decode(&body[..]).expect("pprof's protobuf");
    let st = &profile.string_table;
    let name = |i: i64| st[i as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (name(t.r#type), name(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(profile.period, 1_000_000_000 / 499);
    assert!(
        profile.duration_nanos >= 1_900_000_000,
        "{}",
        profile.duration_nanos
    );
    assert!(!profile.sample.is_empty());
    // Symbolized: the proxy's own functions, and samples from the serving core.
    assert!(
        profile
            .function
            .iter()
            .any(|f| name(f.name).contains("ringside::")),
        "no ringside function among {} functions",
        profile.function.len()
    );
    let threads: std::collections::BTreeSet<&str> = profile
        .sample
        .iter()
        .flat_map(|s| &s.label)
        .map(|l| name(l.str))
        .collect();
    assert!(threads.contains("ringside-core-0"), "{threads:?}");
    for s in &profile.sample {
        assert_eq!(s.value[1], s.value[0] * profile.period);
        for id in &s.location_id {
            let loc = &profile.location[*id as usize - 1];
            assert_eq!(loc.id, *id);
            let f = loc.line[0].function_id;
            assert_eq!(profile.function[f as usize - 1].id, f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flame_graph_one_profile_at_a_time_and_bounds() {
    let (_b, p) = proxy_to_one_backend("", &["--concurrency", "1"]).await;
    let busy = load(p.addr(), Duration::from_millis(2500));
    let admin = p.admin;
    let first = tokio::spawn(async move {
        http_get(admin, "/debug/pprof/flamegraph?seconds=2&hz=999", &[]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second profile while the first is taken.
    let (s, _, body) = http_get(p.admin, "/debug/pprof/profile?seconds=1", &[]).await;
    assert_eq!(
        (s, &body[..]),
        (409, &b"a profile is already being taken\n"[..])
    );
    let (s, headers, svg) = first.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(header(&headers, "content-type"), Some("image/svg+xml"));
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("ringside"),
        "{}",
        &svg[..svg.len().min(300)]
    );
    busy.await.unwrap();
    // Admin answers on meanwhile, and the next profile may start.
    let (s, _) = p.admin_get("/ready").await;
    assert_eq!(s, 200);
    for (q, want) in [
        ("seconds=0", "seconds must be a whole number from 1 to 60\n"),
        (
            "seconds=61",
            "seconds must be a whole number from 1 to 60\n",
        ),
        (
            "seconds=1&hz=5000",
            "hz must be a whole number from 1 to 1000\n",
        ),
        ("hz=x", "hz must be a whole number from 1 to 1000\n"),
    ] {
        let (s, body) = p.admin_get(&format!("/debug/pprof/profile?{q}")).await;
        assert_eq!((s, body.as_str()), (400, want), "{q}");
    }
    let (s, _, body) = http_get(p.admin, "/debug/pprof/profile?seconds=1", &[]).await;
    assert_eq!(s, 200);
    assert!(Profile::decode(&body[..]).is_ok());
    // The slowest rate: one sample a second of CPU time (a whole-second timer interval).
    let (s, _, body) = http_get(p.admin, "/debug/pprof/profile?seconds=1&hz=1", &[]).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    // The proxy goes on serving, SIGPROF back to its default.
    let (s, _, _) = http_get(p.addr(), "/", &[]).await;
    assert_eq!(s, 200);
}
