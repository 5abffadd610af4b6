//! The encodings held for `/config_dump`: compressed where that pays, given back as
//! received.

use super::*;

#[test]
fn many_resources_of_a_type_are_held_compressed_against_a_dictionary() {
    let mut f = Fixture::new();
    let ports: Vec<(String, u16)> = (0..300)
        .map(|i| {
            (
                format!("outbound|80||svc-{i}.ns-{}.svc.cluster.local", i % 9),
                8000 + i,
            )
        })
        .collect();
    let cds: Vec<_> = ports.iter().map(|(n, _)| eds_cluster(n, "0s")).collect();
    f.apply(Update::sotw(Kind::Cluster, "1", cds.clone()))
        .unwrap();
    // A few load assignments (fewer than a dictionary needs): held as they came.
    let few: Vec<_> = ports[..3].iter().map(|(n, p)| cla(n, *p)).collect();
    f.apply(Update::sotw(Kind::Endpoint, "1", few.clone()))
        .unwrap();
    let s = f.snapshot();
    let dumped = s
        .dynamic
        .clusters
        .iter()
        .chain(&s.dynamic.warming_clusters)
        .chain(&s.dynamic.endpoints);
    let mut sent: HashMap<String, &prost_types::Any> = HashMap::new();
    for a in cds.iter().chain(&few) {
        let name = resource_name(&Incoming {
            name: String::new(),
            version: String::new(),
            resource: Arc::new(a.clone()),
        });
        sent.insert(format!("{}{}", a.type_url, name.unwrap()), a);
    }
    let mut n = 0;
    for e in dumped {
        let a = sent[&format!("{}{}", e.resource.type_url, e.name)];
        assert_eq!(e.resource.bytes(), a.value.as_slice(), "{}", e.name);
        let cluster = e.resource.type_url == Kind::Cluster.type_url();
        assert_eq!(e.resource.is_packed(), cluster, "{}", e.name);
        n += 1;
    }
    assert_eq!(n, 303);
    // More of them, alone in a response: compressed against the same dictionary.
    let late = "outbound|80||svc-late.ns-1.svc.cluster.local";
    let one = eds_cluster(late, "0s");
    f.apply(Update {
        full_state: false,
        ..Update::sotw(Kind::Cluster, "2", vec![one.clone()])
    })
    .unwrap();
    let late = &f.res.clusters[&Arc::<str>::from(late)].entry.resource;
    assert!(late.is_packed());
    assert_eq!(late.bytes(), one.value.as_slice());
}

#[test]
fn a_route_configuration_is_held_compressed_and_its_next_version_compared_by_digest() {
    let hosts = |changed: usize| -> Vec<serde_json::Value> {
        (0..100)
            .map(|i| {
                let cluster = match i == changed {
                    true => "changed".to_string(),
                    false => format!("outbound|80||svc-{i}.ns.svc.cluster.local"),
                };
                json!({"name": format!("svc-{i}.ns.svc.cluster.local:80"),
                       "domains": [format!("svc-{i}.ns.svc.cluster.local"), format!("svc-{i}")],
                       "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]})
            })
            .collect()
    };
    let rc = |changed| {
        any(
            Kind::Route,
            json!({"name": "80", "virtual_hosts": hosts(changed)}),
        )
    };
    let mut f = Fixture::new();
    let first = rc(usize::MAX);
    f.apply(Update::sotw(Kind::Route, "1", vec![first.clone()]))
        .unwrap();
    let held = &f.res.routes[&Arc::<str>::from("80")];
    assert!(held.entry.resource.is_packed());
    assert_eq!(held.entry.resource.bytes(), first.value.as_slice());
    let before = held.model.clone();
    let second = rc(42);
    f.apply(Update::sotw(Kind::Route, "2", vec![second.clone()]))
        .unwrap();
    let held = &f.res.routes[&Arc::<str>::from("80")];
    assert_eq!(held.entry.resource.bytes(), second.value.as_slice());
    let t = &held.model;
    for (i, (a, b)) in before
        .virtual_hosts
        .iter()
        .zip(&t.virtual_hosts)
        .enumerate()
    {
        // Only the changed one was converted again.
        assert_eq!(Arc::ptr_eq(a, b), i != 42, "virtual host {i}");
    }
    use crate::model::route::{Action, Target};
    let Action::Forward(fw) = &t.virtual_hosts[42].routes[0].action else {
        panic!("a forwarding route");
    };
    assert!(matches!(&fw.target, Target::Cluster(c) if &*c.name == "changed"));
}

#[test]
fn a_responses_resources_share_its_version_and_their_names_with_the_map() {
    let mut f = Fixture::new();
    let cds: Vec<_> = (0..100)
        .map(|i| eds_cluster(&format!("c{i}"), "0s"))
        .collect();
    f.apply(Update::sotw(Kind::Cluster, "v1", cds)).unwrap();
    let first = f
        .res
        .clusters
        .values()
        .next()
        .unwrap()
        .entry
        .version
        .clone();
    assert_eq!(&*first, "v1");
    for (name, h) in f.res.clusters.iter() {
        assert!(Arc::ptr_eq(&h.entry.version, &first), "{name}");
        assert!(Arc::ptr_eq(&h.entry.name, name), "{name}");
        assert!(Arc::ptr_eq(&h.model.name, name), "{name}");
    }
    // Built again in full nodes, the map still finds and orders every cluster.
    assert_eq!(f.res.clusters.len(), 100);
    assert!(f.res.clusters.contains_key("c57"));
    let names: Vec<&str> = f.res.clusters.keys().map(|k| &**k).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
}
