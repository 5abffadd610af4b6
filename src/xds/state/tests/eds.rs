//! Endpoints: held with their clusters, patched into the snapshot, pruned, waited for.

use super::*;

#[test]
fn an_eds_cluster_is_held_once_with_its_endpoints_and_loses_them_with_its_assignment() {
    let mut f = Fixture::new();
    f.eds("0.05s", &[("a", 8080), ("b", 9090)]);
    let s1 = f.snapshot();
    let a1 = s1.cluster("a").unwrap().clone();
    assert_eq!(a1.endpoints[0].address.port(), 8080);
    assert!(
        Arc::ptr_eq(&a1, &f.res.clusters["a"].model),
        "one Cluster, shared"
    );
    // b's endpoints change: a is taken as it is, b copied once with its new ones.
    f.apply(Update::sotw(Kind::Endpoint, "2", vec![cla("b", 9091)]))
        .unwrap();
    let s2 = f.snapshot();
    assert!(Arc::ptr_eq(s2.cluster("a").unwrap(), &a1));
    assert_eq!(s2.cluster("b").unwrap().endpoints[0].address.port(), 9091);
    // a's assignment goes: past its fetch timeout it serves with none, not its last ones.
    let mut gone = Update::sotw(Kind::Endpoint, "3", vec![]);
    gone.removed = vec!["a".into()];
    f.apply(gone).unwrap();
    #[allow(clippy::disallowed_methods)] // a unit test on the test thread, not a core
    std::thread::sleep(Duration::from_millis(60));
    let s3 = f.snapshot();
    assert!(s3.cluster("a").unwrap().endpoints.is_empty());
    assert_eq!(s3.cluster("b").unwrap().endpoints[0].address.port(), 9091);
}

#[test]
fn an_eds_update_patches_the_snapshot_as_a_full_assembly_would() {
    let mut f = Fixture::new();
    f.apply(Update::sotw(
        Kind::Cluster,
        "1",
        vec![
            eds_cluster("a", "0s"),
            eds_cluster("b", "0s"),
            eds_cluster("d", "0s"),
        ],
    ))
    .unwrap();
    f.apply(Update::sotw(
        Kind::Endpoint,
        "1",
        vec![cla("a", 1), cla("b", 2)],
    ))
    .unwrap();
    let s1 = f.snapshot();
    assert_eq!(names(&s1), ["fixed", "a", "b"], "d waits for its endpoints");
    // b's endpoints change: patched in place, everything else as it was.
    f.apply(Update::sotw(Kind::Endpoint, "2", vec![cla("b", 3)]))
        .unwrap();
    let s2 = f.snapshot();
    assert_eq!(f.res.patched, 1, "b's assignment patched in");
    assert_eq!(names(&s2), ["fixed", "a", "b"]);
    assert!(Arc::ptr_eq(
        s2.cluster("a").unwrap(),
        s1.cluster("a").unwrap()
    ));
    assert_eq!(s2.cluster("b").unwrap().endpoints[0].address.port(), 3);
    assert!(Arc::ptr_eq(
        s2.cluster("b").unwrap(),
        &f.res.clusters["b"].model
    ));
    let dumped = |s: &Snapshot| {
        s.dynamic
            .endpoints
            .iter()
            .map(|e| format!("{}@{}", e.name, e.version))
            .collect::<Vec<_>>()
    };
    assert_eq!(dumped(&s2), ["a@1", "b@2"]);
    assert_eq!(s2.dynamic.warming_clusters.len(), 1);
    // d's endpoints arrive: d starts serving (a full assembly decides that).
    f.apply(Update::sotw(Kind::Endpoint, "3", vec![cla("d", 4)]))
        .unwrap();
    let s3 = f.snapshot();
    assert_eq!(f.res.patched, 1, "assembled in full");
    assert_eq!(names(&s3), ["fixed", "a", "b", "d"]);
    assert_eq!(dumped(&s3), ["a@1", "b@2", "d@3"]);
    assert!(s3.dynamic.warming_clusters.is_empty());
    assert_eq!(s3.cluster_index.len(), 4);
}

#[test]
fn the_warming_deadline_is_asked_again_only_after_a_change() {
    let mut f = Fixture::new();
    assert_eq!(f.res.next_deadline(), None);
    f.apply(Update::sotw(
        Kind::Cluster,
        "1",
        vec![eds_cluster("a", "5s")],
    ))
    .unwrap();
    let at = f.res.next_deadline().expect("a waits for its endpoints");
    assert_eq!(f.res.next_deadline(), Some(at), "the same answer, kept");
    f.apply(Update::sotw(Kind::Endpoint, "1", vec![cla("a", 8080)]))
        .unwrap();
    assert_eq!(f.res.next_deadline(), None, "nothing waits any more");
    f.apply(Update::sotw(
        Kind::Cluster,
        "2",
        vec![eds_cluster("b", "5s")],
    ))
    .unwrap();
    assert!(f.res.next_deadline().is_some_and(|t| t > at), "b waits now");
}

#[test]
fn an_eds_response_keeps_only_the_assignments_some_cluster_wants() {
    let mut f = Fixture::new();
    f.apply(Update::sotw(
        Kind::Cluster,
        "1",
        vec![eds_cluster("a", "0s"), eds_cluster("b", "0s")],
    ))
    .unwrap();
    // A few names are looked up one by one, many through a set: both ways.
    for (v, extra) in [("1", 1), ("2", 12)] {
        let mut clas = vec![cla("a", 1)];
        let mut received = BTreeSet::from(["a".to_string()]);
        for i in 0..extra {
            clas.push(cla(&format!("nobody-{i}"), 2));
            received.insert(format!("nobody-{i}"));
        }
        f.apply(Update::sotw(Kind::Endpoint, v, clas)).unwrap();
        f.res.prune(&f.statics, Kind::Endpoint, &received);
        assert_eq!(
            f.res.versions_of(Kind::Endpoint).keys().collect::<Vec<_>>(),
            ["a"],
            "{extra} unwanted"
        );
    }
}
