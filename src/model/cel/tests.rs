use super::*;

/// A finished request as an access log would see it.
struct Fake;

impl Context for Fake {
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val {
        let s = match cmd {
            Command::Req(h, _) => match h.as_str() {
                ":authority" => "reviews:9080",
                ":path" => "/api/v1?x=1",
                ":method" => "GET",
                "x-user" => "jason",
                _ => return Val::None,
            },
            Command::Resp(h, _) if h == "x-cache" => "hit",
            Command::ResponseCode => "503",
            Command::DownstreamLocal(Addr::Port) => "9080",
            Command::DownstreamLocal(Addr::Full) => "10.0.0.2:9080",
            Command::UpstreamHost => "10.0.0.9:8080",
            Command::FilterState(k, _) if k == "my.key" => "v1",
            Command::DownstreamPeerUriSan => "spiffe://cluster.local/ns/default/sa/a,spiffe://x/y",
            _ => return Val::None,
        };
        out.extend_from_slice(s.as_bytes());
        Val::Str
    }
}

fn eval(src: &str) -> String {
    let down = Peer {
        app: "productpage".into(),
        namespace: "default".into(),
        ..Default::default()
    };
    let e = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let mut out = String::new();
    let peers = Peers {
        downstream: Some(&down),
        upstream: None,
    };
    e.eval(&Fake, peers, &mut out);
    out
}

#[test]
fn attributes_read_as_an_access_log_reads_them() {
    assert_eq!(eval("request.host"), "reviews:9080");
    assert_eq!(eval("string(destination.port)"), "9080");
    assert_eq!(eval("destination.port"), "9080");
    assert_eq!(eval("destination.port + 1"), "9081");
    assert_eq!(eval("request.url_path"), "/api/v1");
    assert_eq!(eval("request.query"), "x=1");
    assert_eq!(eval("request.headers['x-user']"), "jason");
    assert_eq!(eval("request.headers['X-User']"), "jason");
    assert_eq!(eval("response.headers['x-cache']"), "hit");
    assert_eq!(eval("response.code >= 500"), "true");
    assert_eq!(eval("upstream.port"), "8080");
    // A certificate's first URI SAN.
    assert_eq!(
        eval("connection.uri_san_peer_certificate"),
        "spiffe://cluster.local/ns/default/sa/a"
    );
    assert_eq!(eval("filter_state['my.key']"), "v1");
    assert_eq!(eval("filter_state.downstream_peer.app"), "productpage");
    assert_eq!(eval("filter_state['downstream_peer'].namespace"), "default");
    assert_eq!(eval("request.method == 'GET' ? 'read' : 'write'"), "read");
}

#[test]
fn a_missing_attribute_is_unknown_and_has_tests_it() {
    assert_eq!(eval("request.headers['x-none']"), "unknown");
    assert_eq!(eval("filter_state.upstream_peer.app"), "unknown");
    assert_eq!(eval("request.referer"), "unknown");
    assert_eq!(
        eval("has(request.referer) ? request.referer : 'none'"),
        "none"
    );
    assert_eq!(
        eval("has(request.host) ? request.host : 'none'"),
        "reviews:9080"
    );
    assert_eq!(eval("'x-user' in request.headers"), "true");
    assert_eq!(eval("'x-none' in request.headers"), "false");
    // A root tested or indexed is bound as one map; the rest by qualified names.
    assert_eq!(
        eval("has(request.referer) || request.headers['x-user'] == 'jason'"),
        "true"
    );
    assert_eq!(
        eval("has(filter_state.downstream_peer.app) ? filter_state.downstream_peer.app : 'none'"),
        "productpage"
    );
    assert_eq!(
        eval("has(filter_state.upstream_peer.app) ? 'yes' : 'no'"),
        "unknown"
    );
    assert_eq!(
        eval("filter_state['downstream_peer'].app + '/' + request.host"),
        "productpage/reviews:9080"
    );
    assert_eq!(eval("1/0"), "unknown");
}

#[test]
fn values_print_as_istio_proxy_prints_them() {
    assert_eq!(eval("1.5"), "1.5");
    assert_eq!(eval("2.0/3.0"), "0.666667");
    assert_eq!(eval("1e7"), "1e+07");
    assert_eq!(eval("123456.0"), "123456");
    assert_eq!(eval("0.0001"), "0.0001");
    for (f, s) in [
        (42.0, "42"),
        (3.5, "3.5"),
        (1234567.0, "1.23457e+06"),
        (999999.5, "1e+06"),
        (0.00001234, "1.234e-05"),
        (-2.25, "-2.25"),
        (100000.0, "100000"),
    ] {
        assert_eq!(six_digits(f), s);
    }
    assert_eq!(eval("42u"), "42");
    assert_eq!(eval("null"), "NULL");
    assert_eq!(eval("[1]"), "CelList value");
    assert_eq!(eval("{'a': 1}"), "CelMap value");
    assert_eq!(eval("b'ab'"), "ab");
}

#[test]
fn what_is_not_provided_is_refused_by_name() {
    for (src, words) in [
        (
            "request.time",
            "`request.time`, an attribute Ringside does not provide",
        ),
        ("response.flags", "`response.flags`"),
        ("node.id", "`node`, which is not one of Envoy's attributes"),
        ("request", "reads `request` whole"),
        (
            "request.headers[request.host]",
            "other than by a literal key",
        ),
        (
            "filter_state.upstream_peer.labels",
            "Ringside knows a peer's app",
        ),
        ("request.host ==", "is not a valid CEL expression"),
    ] {
        let e = Expr::parse(src).map(|_| ()).unwrap_err();
        assert!(e.contains(words), "{src}: {e}");
    }
    // A comprehension's own variables are not attributes.
    assert_eq!(eval("[1, 2].exists(x, x == 2)"), "true");
}
