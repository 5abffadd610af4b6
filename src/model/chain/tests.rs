use super::*;

fn chains(matches: Vec<ChainMatch>, default: bool) -> Chains {
    // The filters are never looked at by selection; any will do.
    let filter = crate::test_support::any_network_filter();
    let mut matches = matches;
    let mut chains: Vec<FilterChain> = (0..matches.len())
        .map(|i| FilterChain {
            name: format!("c{i}").into(),
            filter: filter.clone(),
            tls: None,
            rbac: Box::default(),
            istio_authn: Default::default(),
            objects: None,
        })
        .collect();
    let default = default.then(|| {
        chains.push(FilterChain {
            name: "default".into(),
            filter: filter.clone(),
            tls: None,
            rbac: Box::default(),
            istio_authn: Default::default(),
            objects: None,
        });
        matches.push(ChainMatch::default());
        chains.len() - 1
    });
    Chains {
        chains,
        select: Selector::Match(matches.into()),
        default,
    }
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

fn conn<'a>(local: &str, peer: &str, sniffed: Option<&'a Sniffed>) -> ConnInfo<'a> {
    ConnInfo {
        local: local.parse().unwrap(),
        peer: peer.parse().unwrap(),
        sniffed,
    }
}

fn sniffed(transport: &'static str, sni: Option<&str>, alpn: &[&str]) -> Sniffed {
    Sniffed {
        transport,
        server_name: sni.map(str::to_string),
        application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn cidr_contains_v4_v6_and_mapped() {
    assert!(cidr("10.0.0.0/8").contains("10.1.2.3".parse().unwrap()));
    assert!(!cidr("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
    assert!(cidr("0.0.0.0/0").contains("1.2.3.4".parse().unwrap()));
    assert!(cidr("10.0.0.0/8").contains("::ffff:10.9.9.9".parse().unwrap()));
    assert!(cidr("fd00::/8").contains("fd12::1".parse().unwrap()));
    assert!(!cidr("fd00::/8").contains("10.0.0.1".parse().unwrap()));
    assert!(cidr("::/0").contains("::1".parse().unwrap()));
}

#[test]
fn destination_port_is_most_specific_and_there_is_no_backtracking() {
    let c = chains(
        vec![
            ChainMatch {
                destination_port: Some(8080),
                source_ports: vec![1],
                ..Default::default()
            },
            ChainMatch {
                prefix_ranges: vec![cidr("10.0.0.0/8")],
                ..Default::default()
            },
            ChainMatch {
                prefix_ranges: vec![cidr("10.1.0.0/16")],
                ..Default::default()
            },
        ],
        true,
    );
    // Port 8080 selects chain 0's level; its source port does not match, and Envoy does
    // not fall back to the port-less chains: the default serves.
    assert_eq!(
        c.choose(&conn("10.1.0.1:8080", "1.1.1.1:2", None)),
        Choice::Chain(3)
    );
    assert_eq!(
        c.choose(&conn("10.1.0.1:8080", "1.1.1.1:1", None)),
        Choice::Chain(0)
    );
    // The longest prefix wins.
    assert_eq!(
        c.choose(&conn("10.1.0.1:80", "1.1.1.1:1", None)),
        Choice::Chain(2)
    );
    assert_eq!(
        c.choose(&conn("10.2.0.1:80", "1.1.1.1:1", None)),
        Choice::Chain(1)
    );
    assert_eq!(
        c.choose(&conn("192.168.0.1:80", "1.1.1.1:1", None)),
        Choice::Chain(3)
    );
    let no_default = chains(
        vec![ChainMatch {
            destination_port: Some(1),
            ..Default::default()
        }],
        false,
    );
    assert_eq!(
        no_default.choose(&conn("10.0.0.1:2", "1.1.1.1:1", None)),
        Choice::NoMatch
    );
}

#[test]
fn inspection_is_asked_for_only_when_a_candidate_depends_on_it() {
    // Istio's virtualInbound shape: a TCP chain for port 3306, TLS and plaintext HTTP
    // chains for everything else.
    let c = chains(
        vec![
            ChainMatch {
                destination_port: Some(3306),
                ..Default::default()
            },
            ChainMatch {
                transport_protocol: Some("tls".into()),
                application_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
                ..Default::default()
            },
            ChainMatch {
                transport_protocol: Some("raw_buffer".into()),
                application_protocols: vec!["http/1.1".into(), "h2c".into()],
                ..Default::default()
            },
        ],
        true,
    );
    // A server-first protocol's port: decided without a byte read.
    assert_eq!(
        c.choose(&conn("10.0.0.5:3306", "10.0.0.9:4000", None)),
        Choice::Chain(0)
    );
    assert_eq!(
        c.choose(&conn("10.0.0.5:8080", "10.0.0.9:4000", None)),
        Choice::NeedSniff
    );
    let http = sniffed("raw_buffer", None, &["http/1.1"]);
    assert_eq!(
        c.choose(&conn("10.0.0.5:8080", "10.0.0.9:4000", Some(&http))),
        Choice::Chain(2)
    );
    let mtls = sniffed(
        "tls",
        Some("outbound_.80_._.a"),
        &["istio-peer-exchange", "h2"],
    );
    assert_eq!(
        c.choose(&conn("10.0.0.5:8080", "10.0.0.9:4000", Some(&mtls))),
        Choice::Chain(1)
    );
    let opaque = Sniffed::RAW;
    assert_eq!(
        c.choose(&conn("10.0.0.5:8080", "10.0.0.9:4000", Some(&opaque))),
        Choice::Chain(3)
    );
}

#[test]
fn server_names_exact_beats_wildcard_and_source_type() {
    let c = chains(
        vec![
            ChainMatch {
                server_names: vec!["*.example.com".into()],
                ..Default::default()
            },
            ChainMatch {
                server_names: vec!["api.example.com".into()],
                ..Default::default()
            },
            ChainMatch {
                server_names: vec!["*.b.example.com".into()],
                source_type: SourceType::SameIpOrLoopback,
                ..Default::default()
            },
        ],
        true,
    );
    let s = |n| sniffed("tls", Some(n), &[]);
    let api = s("api.example.com");
    assert_eq!(
        c.choose(&conn("1.1.1.1:443", "2.2.2.2:1", Some(&api))),
        Choice::Chain(1)
    );
    let other = s("www.example.com");
    assert_eq!(
        c.choose(&conn("1.1.1.1:443", "2.2.2.2:1", Some(&other))),
        Choice::Chain(0)
    );
    let deep = s("x.b.example.com");
    assert_eq!(
        c.choose(&conn("1.1.1.1:443", "127.0.0.1:1", Some(&deep))),
        Choice::Chain(2)
    );
    // The longer wildcard is chosen at the server-name level; its source type then does
    // not match an external peer, and there is no backtracking.
    assert_eq!(
        c.choose(&conn("1.1.1.1:443", "2.2.2.2:1", Some(&deep))),
        Choice::Chain(3)
    );
    let bare = s("example.com");
    assert_eq!(
        c.choose(&conn("1.1.1.1:443", "2.2.2.2:1", Some(&bare))),
        Choice::Chain(3)
    );
}

#[test]
fn unified_matcher_on_ip_then_port_and_application_protocol() {
    let mut ports = FxHashMap::default();
    ports.insert("8000".into(), OnMatch::Chain(0));
    ports.insert("8100".into(), OnMatch::Chain(1));
    let by_port = Matcher {
        input: Input::DestinationPort,
        tree: Tree::Exact(ports),
        on_no_match: None,
    };
    let mut alpn = FxHashMap::default();
    alpn.insert("'h2c'".into(), OnMatch::Chain(2));
    let m = Matcher {
        input: Input::DestinationIp,
        tree: Tree::Ip(vec![
            IpRange {
                ranges: vec![cidr("10.104.171.68/32")],
                on_match: OnMatch::Matcher(Box::new(by_port)),
                exclusive: false,
            },
            IpRange {
                ranges: vec![cidr("10.0.0.0/8")],
                on_match: OnMatch::Matcher(Box::new(Matcher {
                    input: Input::ApplicationProtocol,
                    tree: Tree::Exact(alpn),
                    on_no_match: None,
                })),
                exclusive: false,
            },
        ]),
        on_no_match: Some(OnMatch::Chain(3)),
    };
    let mut c = chains(vec![ChainMatch::default(); 4], false);
    c.select = Selector::Matcher(Arc::new(m));
    assert_eq!(
        c.choose(&conn("10.104.171.68:8000", "1.1.1.1:1", None)),
        Choice::Chain(0)
    );
    assert_eq!(
        c.choose(&conn("10.104.171.68:8100", "1.1.1.1:1", None)),
        Choice::Chain(1)
    );
    // No port match under the /32: the /8 range is tried next, which needs ALPN.
    assert_eq!(
        c.choose(&conn("10.104.171.68:9", "1.1.1.1:1", None)),
        Choice::NeedSniff
    );
    let h2c = sniffed("raw_buffer", None, &["h2c"]);
    assert_eq!(
        c.choose(&conn("10.104.171.68:9", "1.1.1.1:1", Some(&h2c))),
        Choice::Chain(2)
    );
    let none = Sniffed::RAW;
    assert_eq!(
        c.choose(&conn("10.9.9.9:9", "1.1.1.1:1", Some(&none))),
        Choice::Chain(3)
    );
    assert_eq!(
        c.choose(&conn("192.168.1.1:9", "1.1.1.1:1", None)),
        Choice::Chain(3)
    );
}
