//! Choosing the upstream of a forwarded request: the cluster, the endpoint and the
//! request's place under the cluster's `max_requests`.

use crate::ctx::{CoreCtx, Downstream};
use crate::http::error::HttpError;
use crate::model::route::{Forward, Target};
use crate::model::{Discovery, Endpoint, Snapshot};
use crate::stats::ClusterStat;

/// The route's cluster (and weighted entry) and the endpoint to send to: this core's load
/// balancer, or the connection's original destination for an ORIGINAL_DST cluster.
/// The permit holds the request's place under the cluster's `max_requests`: the caller
/// keeps it until the exchange ends.
/// `key`: the request's hash for a consistent-hash cluster ([`request_hash`]).
/// The cluster a route sends to (its weighted pick, if any), where it exists: logs and
/// spans name it also when its endpoints failed.
pub(crate) fn chosen_cluster(
    snapshot: &Snapshot,
    f: &Forward,
    weighted: Option<&crate::model::route::WeightedTarget>,
) -> Option<std::sync::Arc<str>> {
    let name = match (&f.target, weighted) {
        (_, Some(w)) => &w.cluster.name,
        (Target::Cluster(c), None) => &c.name,
        (Target::Weighted { .. }, None) => return None,
    };
    snapshot.cluster(name).map(|c| c.name.clone())
}

pub(crate) fn pick_upstream<'s>(
    ctx: &CoreCtx,
    snapshot: &'s Snapshot,
    f: &'s Forward,
    weighted: Option<&'s crate::model::route::WeightedTarget>,
    down: &Downstream,
    key: Option<u64>,
) -> Result<Picked<'s>, HttpError> {
    let cref = match (&f.target, weighted) {
        (_, Some(w)) => &w.cluster,
        (Target::Cluster(c), None) => c,
        (Target::Weighted { .. }, None) => {
            return Err(HttpError::ClusterNotFound(f.cluster_not_found_status))
        }
    };
    let cluster = cref
        .index
        .and_then(|i| snapshot.clusters.get(i))
        .filter(|c| c.name == cref.name)
        .or_else(|| snapshot.cluster(&cref.name))
        .ok_or(HttpError::ClusterNotFound(f.cluster_not_found_status))?;
    // The cluster's max_requests: held until the exchange ends (the caller keeps it).
    let permit = cluster.breakers.acquire_request().map_err(|()| {
        cluster
            .stats
            .core(ctx.core)
            .inc(ClusterStat::UpstreamRqActiveOverflow as usize);
        let e = HttpError::Overflow;
        crate::http::local_reply::charge_abort(cluster.stats.core(ctx.core), &e);
        e
    })?;
    let none_healthy = || {
        let cells = cluster.stats.core(ctx.core);
        cells.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
        let e = HttpError::NoHealthyUpstream;
        crate::http::local_reply::charge_abort(cells, &e);
        e
    };
    let ep = if cluster.discovery == Discovery::OriginalDst {
        // The connection's destination (restored from the capture) is the upstream.
        let target = down.original_dst_target(&cluster.original_dst);
        // Not redirected: the destination is this listener itself (a loop).
        if down.loops_back() && target == down.dst {
            return Err(none_healthy());
        }
        std::borrow::Cow::Owned(Endpoint::at(target))
    } else {
        let picked = ctx.upstreams.borrow_mut().pick_hashed(cluster, key);
        std::borrow::Cow::Borrowed(picked.ok_or_else(none_healthy)?)
    };
    Ok((weighted, cluster, ep, permit))
}

/// The upstream a terminated CONNECT connects to (either codec): the route's cluster
/// and an endpoint, noted in the request's log.
pub(crate) fn connect_target<'s, E: crate::http::filter::FilterHost>(
    x: &mut E,
    snapshot: &'s Snapshot,
    f: &'s Forward,
) -> Result<Picked<'s>, HttpError> {
    let key = request_hash(x, &f.more().hash_policy);
    let picked = pick_upstream(
        x.core_ctx(),
        snapshot,
        f,
        f.target.pick(fastrand::u32(..)),
        x.down(),
        key,
    )?;
    if x.hcm().timed() {
        x.log_mut().cluster = Some(picked.1.name.clone());
    }
    x.log_mut().upstream = Some(picked.2.address);
    Ok(picked)
}

/// What [`pick_upstream`] chose: the weighted target, the cluster, the endpoint and the
/// request's circuit-breaker permit.
pub(crate) type Picked<'s> = (
    Option<&'s crate::model::route::WeightedTarget>,
    &'s crate::model::Cluster,
    std::borrow::Cow<'s, Endpoint>,
    Option<crate::model::breakers::RequestPermit<'s>>,
);

/// The weighted cluster a forwarding route sends this request to (drawn once, with the
/// route), or `None` for a single-cluster route or another action.
pub(crate) fn forward_target<'a>(
    m: Option<&crate::router::Matched<'a>>,
) -> Option<&'a crate::model::route::WeightedTarget> {
    match &m?.route.action {
        crate::model::route::Action::Forward(f) => f.target.pick(fastrand::u32(..)),
        _ => None,
    }
}

/// The request's key under the route's `hash_policy`, as Envoy's `HashPolicyImpl` makes
/// it: each policy that finds its value hashes it (xxHash64) into the key; a terminal one
/// that found one ends the list. `None`: no policy found a value. A cookie policy with a
/// `ttl` makes up the value when the request has none: its `Set-Cookie` goes on the
/// response.
pub(crate) fn request_hash<E: crate::http::filter::FilterHost + ?Sized>(
    x: &mut E,
    policies: &[crate::model::route::HashPolicy],
) -> Option<u64> {
    use crate::model::route::HashKey;
    use crate::upstream::hash::{combine, xxh64_parts};
    let mut key = None;
    for p in policies {
        let h = match &p.key {
            HashKey::Header(name) => header_hash(x, name, None),
            HashKey::HeaderRewritten(name, rw) => header_hash(x, name, Some(&rw.0)),
            HashKey::Cookie { name, generate } => match cookie(x, name) {
                Some(v) => Some(xxh64_parts(&[v])),
                None => generate.as_ref().map(|g| {
                    let (value, set) = new_cookie(&*x, name, g);
                    x.filter_state_mut()
                        .response_added
                        .push(("set-cookie".into(), set));
                    xxh64_parts(&[value.as_bytes()])
                }),
            },
            HashKey::SourceIp => Some(xxh64_parts(&[x.peer().ip().to_string().as_bytes()])),
            HashKey::QueryParameter(name) => {
                query(x.bytes(&x.log().path), name.as_bytes()).map(|v| xxh64_parts(&[v]))
            }
            HashKey::FilterState(key) => x.filter_object(key).and_then(|f| f.hash()),
        };
        if let Some(h) = h {
            key = Some(combine(key, h));
        }
        if p.terminal && key.is_some() {
            break;
        }
    }
    key
}

/// A sticky-session cookie as Envoy's router makes one: the value is the hex of the
/// xxHash64 of the connection's remote and local addresses (the same for every request
/// of the connection), and its `Set-Cookie` line (`Max-Age`, `Path`, attributes,
/// `HttpOnly`).
fn new_cookie<E: crate::http::exchange::Exchange + ?Sized>(
    x: &E,
    name: &str,
    g: &crate::model::route::CookieGen,
) -> (String, Vec<u8>) {
    use std::fmt::Write as _;
    let addrs = format!("{}{}", x.peer(), x.local());
    let value = format!("{:016x}", xxhash_rust::xxh64::xxh64(addrs.as_bytes(), 0));
    let mut set = format!("{name}=\"{value}\"");
    if g.ttl_secs > 0 {
        let _ = write!(set, "; Max-Age={}", g.ttl_secs);
    }
    if !g.path.is_empty() {
        let _ = write!(set, "; Path={}", g.path);
    }
    for (n, v) in g.attributes.iter() {
        if v.is_empty() {
            let _ = write!(set, "; {n}");
        } else {
            let _ = write!(set, "; {n}={v}");
        }
    }
    set.push_str("; HttpOnly");
    (value, set.into_bytes())
}

/// A header's values, sorted, hashed together (pseudo-headers as the router sees them).
fn header_hash<E: crate::http::exchange::Exchange + ?Sized>(
    x: &E,
    name: &str,
    rewrite: Option<&(regex::Regex, String)>,
) -> Option<u64> {
    use crate::upstream::hash::xxh64_parts;
    let buf = x.buf();
    let mut values: Vec<&[u8]> = match name {
        ":authority" | "host" => vec![x.bytes(&x.log().authority)],
        ":path" => vec![x.bytes(&x.log().path)],
        ":method" => vec![x.bytes(&x.head().method)],
        _ => x
            .head()
            .headers
            .iter()
            .filter(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &buf[v.clone()])
            .collect(),
    };
    if values.is_empty() {
        return None;
    }
    // `regex_rewrite` applies to each value, before they are sorted (Envoy's order).
    let rewritten: Vec<Vec<u8>>;
    if let Some((re, sub)) = rewrite {
        rewritten = values
            .iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v);
                re.replace_all(&v, sub.as_str()).into_owned().into_bytes()
            })
            .collect();
        values = rewritten.iter().map(|v| &v[..]).collect();
    }
    values.sort_unstable();
    Some(xxh64_parts(&values))
}

/// The first value of cookie `name` in the request's `cookie` headers, without the
/// double quotes around it (Envoy's `parseCookieValue`); an empty value is none.
fn cookie<'a, E: crate::http::exchange::Exchange + ?Sized>(
    x: &'a E,
    name: &str,
) -> Option<&'a [u8]> {
    let buf = x.buf();
    for (n, v) in &x.head().headers {
        if !buf[n.clone()].eq_ignore_ascii_case(b"cookie") {
            continue;
        }
        for pair in buf[v.clone()].split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] == name.as_bytes() {
                let mut value = &pair[eq + 1..];
                if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                    value = &value[1..value.len() - 1];
                }
                if value.is_empty() {
                    return None;
                }
                return Some(value);
            }
        }
    }
    None
}

/// The first value of query parameter `name` in `path`, as sent (not decoded).
fn query<'a>(path: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let q = path.iter().position(|&b| b == b'?')?;
    let query = &path[q + 1..];
    let query = query.split(|&b| b == b'#').next().unwrap_or_default();
    query.split(|&b| b == b'&').find_map(|p| {
        let (k, v) = match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &p[p.len()..]),
        };
        (k == name).then_some(v)
    })
}
