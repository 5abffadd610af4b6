use super::*;

fn tags(t: &Tagged) -> Vec<(&str, &str)> {
    t.tags
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect()
}

#[test]
fn envoy_defaults_name_and_label_common_stats() {
    let p = TagProducer::envoy_defaults();
    let t = p.produce("cluster.backend.upstream_rq_200");
    assert_eq!(t.name, "cluster.upstream_rq");
    assert_eq!(
        tags(&t),
        [
            ("envoy.response_code", "200"),
            ("envoy.cluster_name", "backend")
        ]
    );
    let t = p.produce("http.ingress.downstream_rq_2xx");
    assert_eq!(t.name, "http.downstream_rq_xx");
    assert_eq!(
        tags(&t),
        [
            ("envoy.response_code_class", "2"),
            ("envoy.http_conn_manager_prefix", "ingress")
        ]
    );
    let t = p.produce("listener.127.0.0.1_8080.worker_0.downstream_cx_total");
    assert_eq!(t.name, "listener.worker_downstream_cx_total");
    assert_eq!(
        tags(&t),
        [
            ("envoy.worker_id", "0"),
            ("envoy.listener_address", "127.0.0.1_8080")
        ]
    );
    let t = p.produce("listener.[__1]_80.downstream_cx_total");
    assert_eq!(t.name, "listener.downstream_cx_total");
    assert_eq!(tags(&t), [("envoy.listener_address", "[__1]_80")]);
    // The negative match: admin's listener keeps its name.
    let t = p.produce("listener.admin.downstream_cx_total");
    assert_eq!(t.name, "listener.admin.downstream_cx_total");
    assert!(t.tags.is_empty());
    let t = p.produce("tcp.db.downstream_cx_total");
    assert_eq!(t.name, "tcp.downstream_cx_total");
    assert_eq!(tags(&t), [("envoy.tcp_prefix", "db")]);
    // A trailing `**` needs a token: `cluster.x` is no cluster stat.
    assert!(p.produce("cluster.x").tags.is_empty());
    assert!(p.produce("server.uptime").tags.is_empty());
}

#[test]
fn istio_stats_tags_replace_the_defaults() {
    let spec = |n: &str, r: &str| TagSpec {
        name: n.into(),
        value: TagValue::Regex(r.into()),
    };
    let p = TagProducer::new(
        false,
        &[
            spec("cluster_name", r"^cluster(\.(.+);)"),
            spec("response_code", r"_rq(_(\d{3}))$"),
            spec(
                "http_conn_manager_listener_prefix",
                r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
            ),
            spec(
                "listener_address",
                r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)",
            ),
            spec("one_group", r"^server\.(\w+\.)"),
            TagSpec {
                name: "fixed".into(),
                value: TagValue::Fixed("v".into()),
            },
        ],
    )
    .unwrap();
    let t = p.produce("cluster.outbound|80||a.b.svc;.upstream_rq_503");
    assert_eq!(t.name, "cluster.upstream_rq");
    assert_eq!(
        tags(&t),
        [
            ("cluster_name", "outbound|80||a.b.svc"),
            ("response_code", "503"),
            ("fixed", "v")
        ]
    );
    // One capture group: it is both what goes and the value, dot included.
    let t = p.produce("server.memory.allocated");
    assert_eq!(t.name, "server.allocated");
    assert_eq!(tags(&t), [("fixed", "v"), ("one_group", "memory.")]);
    let t = p.produce("listener.0.0.0.0_15006.downstream_cx_total");
    assert_eq!(t.name, "listener.downstream_cx_total");
    assert_eq!(
        tags(&t),
        [("fixed", "v"), ("listener_address", "0.0.0.0_15006")]
    );
}

#[test]
fn configured_tags_are_checked_as_envoy_checks_them() {
    let bad = |value| {
        TagProducer::new(
            false,
            &[TagSpec {
                name: "x".into(),
                value,
            }],
        )
        .err()
        .unwrap()
        .message
    };
    assert!(bad(TagValue::Regex("(".into())).starts_with("Invalid regex '('"));
    assert_eq!(
        bad(TagValue::Default),
        "No regex specified for tag specifier and no default regex for name: 'x'"
    );
    // A default named by its tag alone comes back even with the defaults off.
    let p = TagProducer::new(
        false,
        &[TagSpec {
            name: "envoy.cluster_name".into(),
            value: TagValue::Default,
        }],
    )
    .unwrap();
    assert_eq!(
        p.produce("cluster.c.upstream_rq_200").name,
        "cluster.upstream_rq_200"
    );
    let empty = TagProducer::new(
        true,
        &[TagSpec {
            name: String::new(),
            value: TagValue::Fixed("v".into()),
        }],
    );
    assert_eq!(empty.err().unwrap().message, "tag_name cannot be empty");
}

#[test]
fn of_two_extractors_with_one_name_the_first_match_wins() {
    let p = TagProducer::new(
        true,
        &[TagSpec {
            name: "envoy.cluster_name".into(),
            value: TagValue::Regex(r"^cluster\.((\w)\w*\.)".into()),
        }],
    )
    .unwrap();
    let t = p.produce("cluster.backend.upstream_cx_total");
    assert_eq!(t.name, "cluster.upstream_cx_total");
    assert_eq!(tags(&t), [("envoy.cluster_name", "backend")]);
}

#[test]
fn regex_prefixes_and_token_patterns() {
    assert_eq!(regex_prefix(r"^prefix\.foo"), "prefix");
    assert_eq!(regex_prefix(r"^prefix_optional(?=\.)"), "prefix_optional");
    assert_eq!(regex_prefix("^onlyToken$"), "onlyToken");
    assert_eq!(regex_prefix("^prefix(foo)."), "");
    assert_eq!(regex_prefix("^(prefix)"), "");
    assert_eq!(regex_prefix(r"cluster\."), "");
    let pat = parse_tokens("mongo.*.collection.$.**.query.*");
    let name: Vec<&str> = "mongo.p.collection.c.a.b.query.q".split('.').collect();
    assert_eq!(match_tokens(&pat, &name, 0), Some(Some(3)));
    let name: Vec<&str> = "mongo.p.collection.c.query.q".split('.').collect();
    assert_eq!(match_tokens(&pat, &name, 0), Some(Some(3)));
    let last = Extractor {
        name: "t".into(),
        rule: Rule::Tokens(parse_tokens("a.*.$")),
        shared: false,
    };
    let (v, r) = last.extract("a.b.c").unwrap();
    assert_eq!((v.as_ref(), r), ("c", 3..5));
}

#[test]
fn every_built_in_regex_compiles_with_two_groups() {
    for (name, regex, _, _) in RE2_DEFAULTS {
        let r = regex::Regex::new(regex).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.captures_len() >= 3, "{name} needs two groups");
    }
}

#[test]
fn the_tag_cache_keeps_a_bounded_number_of_names() {
    let p = TagProducer::envoy_defaults();
    let mut cache = TagCache::default();
    let name = |i: usize| format!("cluster.c{i}.upstream_rq_200");
    for i in 0..TagCache::KEPT + 100 {
        let t = cache.get(&name(i), &p);
        assert_eq!(t.name, "cluster.upstream_rq");
        assert_eq!(
            tags(&t)[1],
            ("envoy.cluster_name", format!("c{i}").as_str())
        );
    }
    assert_eq!(cache.len(), TagCache::KEPT);
    // Past the bound, names are still answered, extracted again on each read.
    let late = cache.get(&name(TagCache::KEPT + 50), &p);
    assert_eq!(tags(&late)[0], ("envoy.response_code", "200"));
    assert_eq!(cache.len(), TagCache::KEPT);
    // A kept name is answered from the cache.
    assert!(std::sync::Arc::ptr_eq(
        &cache.get(&name(7), &p),
        &cache.get(&name(7), &p)
    ));
}
