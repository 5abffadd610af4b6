//! Route selection: `RouteTable::find`. Pure: no I/O, no runtime, no allocation on the
//! common path.

use std::borrow::Cow;

use crate::model::route::{
    HeaderMatch, HeaderMatchKind, PathMatch, QueryMatch, Route, RouteTable, StringMatcher, Target,
    VirtualHost, WeightedTarget,
};

/// What routing needs to see of a request.
pub trait RequestView {
    fn method(&self) -> &[u8];
    /// The request target as sent, query included.
    fn path(&self) -> &[u8];
    fn authority(&self) -> &[u8];
    fn scheme(&self) -> &[u8];
    /// All values of header `name` (lower-case), joined with `,` as Envoy does.
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>>;
    /// Whether one value of header `name` satisfies `f` (`None`: no such header). Envoy
    /// 1.40 matches a header sent more than once value by value, not the joined list.
    fn header_any(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Option<bool> {
        self.header(name).map(|v| f(&v))
    }
}

/// [`RequestView::header_any`] over a parsed head's header lines.
pub fn any_header_value(
    buf: &[u8],
    headers: &[(std::ops::Range<usize>, std::ops::Range<usize>)],
    name: &[u8],
    f: &mut dyn FnMut(&[u8]) -> bool,
) -> Option<bool> {
    let mut seen = false;
    for (n, v) in headers {
        if buf[n.clone()].eq_ignore_ascii_case(name) {
            seen = true;
            if f(&buf[v.clone()]) {
                return Some(true);
            }
        }
    }
    seen.then_some(false)
}

/// The result of routing: the virtual host and route that matched.
pub struct Matched<'a> {
    pub vhost: &'a VirtualHost,
    pub route: &'a Route,
}

impl RouteTable {
    /// The first route of the selected virtual host that matches, or `None` (404).
    pub fn find<R: RequestView + ?Sized>(&self, req: &R) -> Option<Matched<'_>> {
        let vhost = &self.virtual_hosts[self.vhost_index(req.authority())?];
        let path = req.path();
        let (path_only, query) = match path.iter().position(|&b| b == b'?') {
            Some(i) => (&path[..i], Some(&path[i + 1..])),
            None => (path, None),
        };
        let route = match &vhost.index {
            None => vhost
                .routes
                .iter()
                .find(|r| route_matches(r, req, path_only, query)),
            Some(index) => index::first_match(index, path_only, |i| {
                let r = &vhost.routes[i as usize];
                route_matches(r, req, path_only, query).then_some(r)
            }),
        };
        route.map(|route| Matched { vhost, route })
    }

    /// Selects the virtual host for `authority` (compared with its port, as Envoy does; the
    /// connection manager strips ports first when configured to): exact, then `*.suffix`
    /// (longest), then `prefix*` (longest), then `*`.
    pub fn vhost_index(&self, authority: &[u8]) -> Option<usize> {
        // `ignore_port_in_host_matching`: the port plays no part in choosing.
        let authority = if self.ignore_port {
            strip_port(authority)
        } else {
            authority
        };
        let mut buf = [0u8; 256];
        let Some(host) = lower(authority, &mut buf) else {
            return self.default;
        };
        if let Some(i) = self.exact.get(host, &self.virtual_hosts) {
            return Some(i);
        }
        // Wildcards never match the empty string.
        for (suffix, i) in &self.suffixes {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*i);
            }
        }
        for (prefix, i) in &self.prefixes {
            if host.len() > prefix.len() && host.starts_with(prefix.as_str()) {
                return Some(*i);
            }
        }
        self.default
    }
}

/// A host without its port (`host:80`, `[::1]:80`; a bare IPv6 address keeps its colons).
pub fn strip_port(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|&b| b == b':') {
        Some(i)
            if host[i + 1..].iter().all(u8::is_ascii_digit) && !host[..i].contains(&b':')
                || host.first() == Some(&b'[') && i > 0 && host[i - 1] == b']' =>
        {
            &host[..i]
        }
        _ => host,
    }
}

fn lower<'b>(s: &[u8], buf: &'b mut [u8; 256]) -> Option<&'b str> {
    if s.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..s.len()];
    for (o, c) in out.iter_mut().zip(s) {
        *o = c.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

fn route_matches<R: RequestView + ?Sized>(
    r: &Route,
    req: &R,
    path: &[u8],
    query: Option<&[u8]>,
) -> bool {
    conditions_match(
        (&r.path, r.case_sensitive, &r.headers, &r.query),
        req,
        path,
        query,
    )
}

/// Whether a request meets a `RouteMatch`'s conditions (routes, `jwt_authn`'s rules);
/// `path` without its query, `query` after the `?`.
pub fn conditions_match<R: RequestView + ?Sized>(
    (path_match, case_sensitive, headers, queries): (
        &PathMatch,
        bool,
        &[HeaderMatch],
        &[QueryMatch],
    ),
    req: &R,
    path: &[u8],
    query: Option<&[u8]>,
) -> bool {
    let path_ok = match path_match {
        PathMatch::Prefix(p) => starts_with(path, p.as_bytes(), case_sensitive),
        PathMatch::Exact(p) => {
            path.len() == p.len() && starts_with(path, p.as_bytes(), case_sensitive)
        }
        PathMatch::Separated(p) => {
            starts_with(path, p.as_bytes(), case_sensitive)
                && (path.len() == p.len() || path[p.len()] == b'/')
        }
        PathMatch::Regex(re) => std::str::from_utf8(path).is_ok_and(|s| re.is_match(s)),
        PathMatch::Connect => req.method() == b"CONNECT",
    };
    path_ok
        && headers.iter().all(|h| header_matches(h, req))
        && queries.iter().all(|q| query_matches(q, query))
}

fn starts_with(s: &[u8], prefix: &[u8], case_sensitive: bool) -> bool {
    s.len() >= prefix.len()
        && if case_sensitive {
            &s[..prefix.len()] == prefix
        } else {
            s[..prefix.len()].eq_ignore_ascii_case(prefix)
        }
}

pub fn header_matches<R: RequestView + ?Sized>(h: &HeaderMatch, req: &R) -> bool {
    // A string matcher on a regular header: any of its values (Envoy 1.40).
    if let (HeaderMatchKind::String(m), false) = (&h.kind, h.name.starts_with(':')) {
        if let Some(any) = req.header_any(&h.name, &mut |v| string_matches(m, v)) {
            return any != h.invert;
        }
    }
    let value: Option<Cow<'_, [u8]>> = match h.name.as_str() {
        ":method" => Some(Cow::Borrowed(req.method())),
        ":path" => Some(Cow::Borrowed(req.path())),
        ":authority" => Some(Cow::Borrowed(req.authority())),
        ":scheme" => Some(Cow::Borrowed(req.scheme())),
        name => req.header(name),
    };
    let value = match value {
        Some(v) => Some(v),
        None if h.treat_missing_as_empty => Some(Cow::Borrowed(&b""[..])),
        None => None,
    };
    let matched = match (&h.kind, value) {
        (HeaderMatchKind::Present(want), v) => v.is_some() == *want,
        (HeaderMatchKind::String(_), None) => return false,
        (HeaderMatchKind::String(m), Some(v)) => string_matches(m, &v),
    };
    matched != h.invert
}

fn query_matches(q: &QueryMatch, query: Option<&[u8]>) -> bool {
    let Some(query) = query else { return false };
    let found = query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (k == q.name.as_bytes()).then_some(v)
    });
    match (found, &q.value) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(v), Some(m)) => string_matches(m, v),
    }
}

/// Applies an Envoy `StringMatcher` to `value`.
pub fn string_matches(m: &StringMatcher, value: &[u8]) -> bool {
    m.matches(value)
}

impl Target {
    /// The weighted entry for a random draw `r` (any u32), or `None` for a single cluster.
    pub fn pick(&self, r: u32) -> Option<&WeightedTarget> {
        match self {
            Target::Cluster(_) => None,
            Target::Weighted { targets, total } => {
                let mut x = r % (*total).max(1);
                for t in targets {
                    if x < t.weight {
                        return Some(t);
                    }
                    x -= t.weight;
                }
                targets.last()
            }
        }
    }
}

mod index;

#[cfg(test)]
mod tests;
