use std::borrow::Cow;

use super::*;
use crate::config::{parse_bootstrap, Source};
use crate::model::convert::bootstrap_snapshot;
use crate::model::Snapshot;
use crate::stats::Store;

struct Req {
    method: &'static str,
    path: &'static str,
    host: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

impl RequestView for Req {
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn path(&self) -> &[u8] {
        self.path.as_bytes()
    }
    fn authority(&self) -> &[u8] {
        self.host.as_bytes()
    }
    fn scheme(&self) -> &[u8] {
        b"http"
    }
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect();
        (!vals.is_empty()).then(|| Cow::Owned(vals.join(",").into_bytes()))
    }
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        let mut vals = self.headers.iter().filter(|(n, _)| *n == name).peekable();
        vals.peek()?;
        Some(vals.any(|(_, v)| f(v.as_bytes())))
    }
}

fn req(host: &'static str, path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        host,
        headers: vec![],
    }
}

fn snapshot(vhosts: &str) -> Snapshot {
    let yaml = crate::test_support::http_bootstrap(vhosts, "[]");
    let b = parse_bootstrap(&yaml, &Source::Inline).unwrap();
    bootstrap_snapshot(&b, &Store::new(1), 1).unwrap().0
}

fn route_name(s: &Snapshot, r: &Req) -> Option<String> {
    let h = s.listeners[0].hcms().next().unwrap();
    h.routes
        .inline()
        .unwrap()
        .find(r)
        .map(|m| format!("{}/{}", m.vhost.name, m.route.name))
}

fn direct(name: &str) -> String {
    format!("{{name: {name}, match: {{prefix: /}}, direct_response: {{status: 200}}}}")
}

#[test]
fn virtual_host_order_exact_suffix_prefix_default() {
    let s = snapshot(&format!(
        "[{{name: exact, domains: [api.example.com], routes: [{}]}},
          {{name: suffix, domains: ['*.example.com'], routes: [{}]}},
          {{name: longsuffix, domains: ['*.b.example.com'], routes: [{}]}},
          {{name: prefix, domains: ['api.*'], routes: [{}]}},
          {{name: any, domains: ['*'], routes: [{}]}}]",
        direct("r"),
        direct("r"),
        direct("r"),
        direct("r"),
        direct("r")
    ));
    assert_eq!(
        route_name(&s, &req("api.example.com", "/")).unwrap(),
        "exact/r"
    );
    assert_eq!(
        route_name(&s, &req("API.Example.com", "/")).unwrap(),
        "exact/r"
    );
    // Ports count, as in Envoy; strip_any_host_port removes them before routing.
    assert_eq!(
        route_name(&s, &req("api.example.com:8080", "/")).unwrap(),
        "prefix/r"
    );
    assert_eq!(
        route_name(&s, &req("x.example.com", "/")).unwrap(),
        "suffix/r"
    );
    assert_eq!(
        route_name(&s, &req("x.b.example.com", "/")).unwrap(),
        "longsuffix/r"
    );
    assert_eq!(
        route_name(&s, &req("api.other.org", "/")).unwrap(),
        "prefix/r"
    );
    assert_eq!(route_name(&s, &req("other.org", "/")).unwrap(), "any/r");
    // A wildcard never matches the empty string.
    assert_eq!(route_name(&s, &req(".example.com", "/")).unwrap(), "any/r");
}

#[test]
fn no_default_vhost_means_no_route() {
    let s = snapshot(&format!(
        "[{{name: v, domains: [a.com], routes: [{}]}}]",
        direct("r")
    ));
    assert!(route_name(&s, &req("b.com", "/")).is_none());
}

#[test]
fn path_matchers_first_match_wins() {
    let s = snapshot(
        "[{name: v, domains: ['*'], routes: [
            {name: exact, match: {path: /exact}, direct_response: {status: 200}},
            {name: sep, match: {path_separated_prefix: /api}, direct_response: {status: 200}},
            {name: re, match: {safe_regex: {regex: '/items/[0-9]+'}}, direct_response: {status: 200}},
            {name: ci, match: {prefix: /CI, case_sensitive: false}, direct_response: {status: 200}},
            {name: all, match: {prefix: /}, direct_response: {status: 200}}]}]",
    );
    let n = |p| route_name(&s, &req("h", p)).unwrap();
    assert_eq!(n("/exact?x=1"), "v/exact");
    assert_eq!(n("/exact/more"), "v/all");
    assert_eq!(n("/api"), "v/sep");
    assert_eq!(n("/api/v1"), "v/sep");
    assert_eq!(n("/apiv1"), "v/all");
    assert_eq!(n("/items/42"), "v/re");
    assert_eq!(n("/items/42x"), "v/all");
    assert_eq!(n("/ci/x"), "v/ci");
}

#[test]
fn header_and_query_matchers() {
    let s = snapshot(
        "[{name: v, domains: ['*'], routes: [
            {name: h, match: {prefix: /, headers: [{name: X-Env, string_match: {exact: canary}}]}, direct_response: {status: 200}},
            {name: inv, match: {prefix: /, headers: [{name: x-debug, present_match: true, invert_match: true}, {name: ':method', exact_match: POST}]}, direct_response: {status: 200}},
            {name: q, match: {prefix: /, query_parameters: [{name: v, string_match: {prefix: '2'}}]}, direct_response: {status: 200}},
            {name: re, match: {prefix: /, headers: [{name: x-id, safe_regex_match: {regex: '[a-f]+'}}]}, direct_response: {status: 200}}]}]",
    );
    let mut r = req("h", "/");
    r.headers = vec![("x-env", "canary")];
    assert_eq!(route_name(&s, &r).unwrap(), "v/h");
    let mut r = req("h", "/");
    r.method = "POST";
    assert_eq!(route_name(&s, &r).unwrap(), "v/inv");
    r.headers = vec![("x-debug", "1")];
    assert!(route_name(&s, &r).is_none());
    assert_eq!(route_name(&s, &req("h", "/p?a=1&v=2.1")).unwrap(), "v/q");
    assert!(route_name(&s, &req("h", "/p?v=1")).is_none());
    let mut r = req("h", "/");
    r.headers = vec![("x-id", "abc")];
    assert_eq!(route_name(&s, &r).unwrap(), "v/re");
    r.headers = vec![("x-id", "abcz")];
    assert!(route_name(&s, &r).is_none());
}

#[test]
fn the_path_index_gives_the_same_first_match_as_a_scan() {
    let mut rng = fastrand::Rng::with_seed(11);
    let segs = ["a", "b", "api", "v1", "x"];
    let rand_path = |rng: &mut fastrand::Rng| -> String {
        (0..rng.usize(0..4))
            .map(|_| format!("/{}", segs[rng.usize(..segs.len())]))
            .collect::<String>()
    };
    let mut routes = Vec::new();
    for i in 0..60 {
        let p = rand_path(&mut rng);
        let p = if p.is_empty() { "/".to_string() } else { p };
        let m = match rng.u8(..6) {
            0 => format!("{{path: '{p}'}}"),
            1 => format!(
                "{{path_separated_prefix: '{}'}}",
                if p == "/" { "/a" } else { &p }
            ),
            2 => format!("{{safe_regex: {{regex: '{p}.*'}}}}"),
            3 => format!("{{prefix: '{}', case_sensitive: false}}", p.to_uppercase()),
            4 => format!("{{prefix: '{p}', headers: [{{name: x-h, present_match: true}}]}}"),
            _ => format!("{{prefix: '{p}'}}"),
        };
        routes.push(format!(
            "{{name: r{i}, match: {m}, direct_response: {{status: 200}}}}"
        ));
    }
    let s = snapshot(&format!(
        "[{{name: v, domains: ['*'], routes: [{}]}}]",
        routes.join(", ")
    ));
    let h = s.listeners[0].hcms().next().unwrap();
    let vh = &h.routes.inline().unwrap().virtual_hosts[0];
    assert!(vh.index.is_some());
    for _ in 0..2000 {
        let path: &'static str = Box::leak(
            format!(
                "{}{}",
                rand_path(&mut rng),
                ["", "/", "?q=1"][rng.usize(..3)]
            )
            .into_boxed_str(),
        );
        let path = if path.is_empty() || path.starts_with('?') {
            "/"
        } else {
            path
        };
        let mut r = req("h", path);
        if rng.bool() {
            r.headers = vec![("x-h", "1")];
        }
        let via_index = h
            .routes
            .inline()
            .unwrap()
            .find(&r)
            .map(|m| m.route.name.to_string());
        let (p, q) = match path.find('?') {
            Some(i) => (&path[..i], Some(&path.as_bytes()[i + 1..])),
            None => (path, None),
        };
        let via_scan = vh
            .routes
            .iter()
            .find(|rt| super::route_matches(rt, &r, p.as_bytes(), q))
            .map(|m| m.name.to_string());
        assert_eq!(via_index, via_scan, "path {path}");
    }
}

#[test]
fn ignore_port_in_host_matching_chooses_by_host_alone() {
    let vhosts = format!(
        "[{{name: api, domains: [api.example.com], routes: [{}]}}, {{name: v6, domains: ['[::1]'], routes: [{}]}}]",
        direct("a"),
        direct("6")
    );
    let hosts = [
        "api.example.com:8080",
        "api.example.com",
        "[::1]:80",
        "API.example.com:1",
    ];
    let names = |s: &Snapshot| -> Vec<Option<String>> {
        hosts.iter().map(|h| route_name(s, &req(h, "/"))).collect()
    };
    // By default the port is part of the host.
    assert_eq!(
        names(&snapshot(&vhosts)),
        [None, Some("api/a".into()), None, None]
    );
    let yaml = crate::test_support::http_bootstrap(&vhosts, "[]").replace(
        "            virtual_hosts:",
        "            ignore_port_in_host_matching: true\n            virtual_hosts:",
    );
    let b = parse_bootstrap(&yaml, &Source::Inline).unwrap();
    let s = bootstrap_snapshot(&b, &Store::new(1), 1).unwrap().0;
    assert_eq!(
        names(&s),
        [
            Some("api/a".into()),
            Some("api/a".into()),
            Some("v6/6".into()),
            Some("api/a".into())
        ]
    );
}
