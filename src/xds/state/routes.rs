//! RDS route configurations converted from their encoding one virtual host at a time.
//!
//! istiod sends a sidecar one route configuration per port with a virtual host per
//! service, and sends it whole whenever any service changes. Decoding and converting all
//! of it for a one-route change took 135-215 ms at 10,000 services (Envoy: 274 ms). So a
//! new version's virtual hosts are taken from its encoding: one whose bytes have the
//! digest of a virtual host's in the version held now keeps that converted virtual host
//! (it passed every check then, and nothing outside its bytes and the configuration's own
//! fields goes into it); only the others are checked, decoded and converted. The digest
//! is XXH3's 128 bits with a seed drawn at start (0.4 ms for 5.8 MB): Envoy itself skips
//! a resource whose unseeded 64-bit xxHash equals its previous version's. Decoding one
//! virtual host at a time also keeps the full push from holding the whole configuration
//! decoded at once (48 MB at 10,000 services).

use std::sync::Arc;

use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use rustc_hash::FxHashMap;

use crate::model::convert::{self, ConvertError, Ctx, TableBuilder};
use crate::model::route::{RouteTable, SourceDigests};
use crate::proto::envoy::config::route::v3::{RouteConfiguration, VirtualHost};

const ROUTE_CONFIGURATION: &str = "envoy.config.route.v3.RouteConfiguration";
const VIRTUAL_HOST: &str = "envoy.config.route.v3.VirtualHost";

/// The digest of one part of an encoding.
fn digest(bytes: &[u8]) -> u128 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), "ringside routes")
    });
    xxhash_rust::xxh3::xxh3_128_with_seed(bytes, seed)
}

/// A route configuration from its encoding `bytes`; `previous` is the version held now,
/// whose unchanged virtual hosts are kept. `what` names the resource in errors.
pub(super) fn route_table(
    bytes: &[u8],
    previous: Option<&RouteTable>,
    what: &str,
    ctx: &mut Ctx<'_>,
) -> Result<RouteTable, ConvertError> {
    let decode_err = |e: prost::DecodeError| {
        convert::err(
            what,
            "",
            format!("cannot decode {ROUTE_CONFIGURATION}: {e}"),
        )
    };
    let Some((hosts, rest)) = split(bytes) else {
        // Its top level does not split (bad framing, or groups): decoded whole, as any
        // other resource, which says what is wrong.
        crate::xds::unknown::check(ROUTE_CONFIGURATION, bytes)
            .map_err(|(path, reason)| convert::err(what, path, reason))?;
        let rc = RouteConfiguration::decode(bytes).map_err(decode_err)?;
        return convert::route_resource(&rc, ctx);
    };
    crate::xds::unknown::check(ROUTE_CONFIGURATION, &rest)
        .map_err(|(path, reason)| convert::err(what, path, reason))?;
    let rc = RouteConfiguration::decode(rest.as_slice()).map_err(decode_err)?;
    let res = format!("route configuration '{}'", rc.name);
    if rc.name.is_empty() {
        return Err(convert::err(&res, "name", "name is required"));
    }
    let mut b = TableBuilder::new(&rc, &res, "", ctx)?;
    let source = SourceDigests {
        rest: digest(&rest),
        hosts: hosts.iter().map(|h| digest(h)).collect(),
    };
    let previous = previous.and_then(|table| {
        let old = table.source.as_ref()?;
        (old.rest == source.rest && old.hosts.len() == table.virtual_hosts.len())
            .then_some((&old.hosts, table))
    });
    let convert = |b: &TableBuilder, h: &[u8], vi: usize, ctx: &mut Ctx<'_>| {
        crate::xds::unknown::check(VIRTUAL_HOST, h).map_err(|(path, reason)| {
            let at = match path.as_str() {
                "" => format!("virtual_hosts[{vi}]"),
                p => format!("virtual_hosts[{vi}].{p}"),
            };
            convert::err(what, at, reason)
        })?;
        let pb = VirtualHost::decode(h).map_err(decode_err)?;
        Ok::<_, ConvertError>(Arc::new(b.virtual_host(&pb, vi, ctx)?))
    };
    // Most versions change a few virtual hosts in place (istiod orders them): the
    // previous table is taken whole and those few replaced, their domains re-indexed.
    if let Some((old_hosts, table)) = &previous {
        if old_hosts.len() == hosts.len() {
            let changed: Vec<usize> = (0..hosts.len())
                .filter(|&i| source.hosts[i] != old_hosts[i])
                .collect();
            if changed.len() * 4 <= hosts.len().max(4) {
                #[cfg(test)]
                REUSED.with(|n| n.set(n.get() + 1));
                b.reuse(table);
                for vi in changed {
                    let vh = convert(&b, hosts[vi], vi, ctx)?;
                    b.replace(vh, vi)?;
                }
                return Ok(b.finish_from(source));
            }
        }
    }
    // Otherwise (virtual hosts added, removed or moved) each keeps its converted form
    // wherever it is now, and the table is indexed again.
    b.reserve(hosts.len());
    let kept = previous.map(|(hosts, table)| {
        let mut by_digest: FxHashMap<u128, usize> = Default::default();
        by_digest.reserve(hosts.len());
        by_digest.extend(hosts.iter().enumerate().map(|(i, h)| (*h, i)));
        (by_digest, table)
    });
    for (vi, h) in hosts.iter().enumerate() {
        let same = kept.as_ref().and_then(|(by_digest, table)| {
            Some(table.virtual_hosts[*by_digest.get(&source.hosts[vi])?].clone())
        });
        let vh = match same {
            Some(vh) => vh,
            None => convert(&b, h, vi, ctx)?,
        };
        b.push(vh, vi)?;
    }
    Ok(b.finish_from(source))
}

#[cfg(test)]
thread_local! {
    /// Tables built from the previous one with only changed virtual hosts replaced
    /// (tests tell the two ways apart).
    static REUSED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An encoded route configuration's virtual hosts (field 2), and its other fields as
/// they are (`None`: the framing does not read).
fn split(mut buf: &[u8]) -> Option<(Vec<&[u8]>, Vec<u8>)> {
    let mut hosts = Vec::new();
    let mut rest = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let (tag, wire) = decode_key(&mut buf).ok()?;
        let len = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut buf).ok()?).ok()?,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        if len > buf.len() {
            return None;
        }
        let (body, after) = buf.split_at(len);
        if tag == 2 && wire == WireType::LengthDelimited {
            hosts.push(body);
        } else {
            rest.extend_from_slice(&start[..start.len() - after.len()]);
        }
        buf = after;
    }
    Some((hosts, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::{Action, Target};
    use serde_json::json;

    fn encoded(v: serde_json::Value) -> Vec<u8> {
        let desc = crate::proto::pool()
            .get_message_by_name(ROUTE_CONFIGURATION)
            .unwrap();
        prost_reflect::DynamicMessage::deserialize(desc, v)
            .unwrap()
            .encode_to_vec()
    }

    fn config(b_cluster: &str, b_extra: serde_json::Value, ignore_port: bool) -> Vec<u8> {
        let vh = |name: &str, cluster: &str| {
            json!({"name": name, "domains": [format!("{name}.svc")], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]})
        };
        let mut b = vh("b", b_cluster);
        for (k, v) in b_extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        encoded(
            json!({"name": "80", "ignore_port_in_host_matching": ignore_port,
                       "virtual_hosts": [vh("a", "ca"), b, vh("c", "cc")]}),
        )
    }

    fn cluster_of(t: &RouteTable, vi: usize) -> String {
        match &t.virtual_hosts[vi].routes[0].action {
            Action::Forward(f) => match &f.target {
                Target::Cluster(c) => c.name.to_string(),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        }
    }

    #[test]
    fn unchanged_virtual_hosts_are_kept_and_the_others_converted() {
        let store = crate::stats::Store::new(1);
        let mut ctx = Ctx::dynamic(&store);
        let one = config("cb", json!({}), false);
        let t1 = route_table(&one, None, "rc", &mut ctx).unwrap();
        assert_eq!(t1.exact.len(), 3);
        // One virtual host changed: the two others are the same objects.
        let two = config("cb2", json!({}), false);
        let t2 = route_table(&two, Some(&t1), "rc", &mut ctx).unwrap();
        assert!(Arc::ptr_eq(&t1.virtual_hosts[0], &t2.virtual_hosts[0]));
        assert!(Arc::ptr_eq(&t1.virtual_hosts[2], &t2.virtual_hosts[2]));
        assert!(!Arc::ptr_eq(&t1.virtual_hosts[1], &t2.virtual_hosts[1]));
        assert_eq!(cluster_of(&t2, 1), "cb2");
        assert_eq!(t2.vhost_index(b"c.svc"), Some(2));
        // The configuration's own fields changed: every virtual host is converted again.
        let three = config("cb2", json!({}), true);
        let t3 = route_table(&three, Some(&t2), "rc", &mut ctx).unwrap();
        assert!(t3.ignore_port);
        assert!((0..3).all(|i| !Arc::ptr_eq(&t2.virtual_hosts[i], &t3.virtual_hosts[i])));
        // A changed virtual host is checked as a whole configuration would be: a field
        // Ringside does not implement is named with its path; a domain another (kept)
        // virtual host has is refused.
        // Virtual host b with its (unimplemented) `metadata`, field 24, set and empty.
        let (hosts, rest) = split(&three).unwrap();
        let mut unknown = rest.clone();
        for (i, h) in hosts.iter().enumerate() {
            let mut h = h.to_vec();
            if i == 1 {
                h.extend_from_slice(&[0xc2, 0x01, 0x00]);
            }
            prost::encoding::bytes::encode(2, &h, &mut unknown);
        }
        let e = route_table(&unknown, Some(&t3), "rc", &mut ctx)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("virtual_hosts[1]: 'metadata' (field 24)"), "{e}");
        let dup = config("cb", json!({"domains": ["a.svc"]}), true);
        let e = route_table(&dup, Some(&t3), "rc", &mut ctx)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("virtual_hosts[1].domains[0]: domain 'a.svc' is already used"),
            "{e}"
        );
    }

    #[test]
    fn a_virtual_host_changed_in_place_takes_its_new_domains_and_leaves_its_old_ones() {
        let store = crate::stats::Store::new(1);
        let mut ctx = Ctx::dynamic(&store);
        let one = config("cb", json!({}), false);
        let t1 = route_table(&one, None, "rc", &mut ctx).unwrap();
        let two = config(
            "cb",
            json!({"domains": ["B2.svc", "*.wild", "pre*", "*"]}),
            false,
        );
        let before = REUSED.with(|n| n.get());
        let t2 = route_table(&two, Some(&t1), "rc", &mut ctx).unwrap();
        assert_eq!(REUSED.with(|n| n.get()), before + 1, "b replaced in place");
        assert!(Arc::ptr_eq(&t1.virtual_hosts[0], &t2.virtual_hosts[0]));
        let at = |t: &RouteTable, h: &str| t.vhost_index(h.as_bytes());
        assert_eq!(at(&t2, "a.svc"), Some(0));
        assert_eq!(at(&t2, "c.svc"), Some(2));
        assert_eq!(at(&t2, "b2.svc"), Some(1));
        assert_eq!(at(&t2, "x.wild"), Some(1));
        assert_eq!(at(&t2, "prefix"), Some(1));
        assert_eq!(at(&t2, "b.svc"), Some(1), "only through `*` now");
        // And back: the wildcards and `*` go with the domains that named them.
        let t3 = route_table(&one, Some(&t2), "rc", &mut ctx).unwrap();
        assert_eq!(at(&t3, "b.svc"), Some(1));
        assert_eq!(
            (at(&t3, "b2.svc"), at(&t3, "x.wild"), at(&t3, "prefix")),
            (None, None, None)
        );
        assert_eq!(t3.exact.len(), 3);
    }

    #[test]
    fn virtual_hosts_that_moved_are_kept_where_they_are_now() {
        let store = crate::stats::Store::new(1);
        let mut ctx = Ctx::dynamic(&store);
        let one = config("cb", json!({}), false);
        let t1 = route_table(&one, None, "rc", &mut ctx).unwrap();
        // A virtual host added in front: the three others each move down one.
        let (hosts, rest) = split(&one).unwrap();
        let mut two = rest.clone();
        let new = encoded(json!({"name": "80", "virtual_hosts": [{"name": "n",
            "domains": ["n.svc"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "cn"}}]}]}));
        let (new_host, _) = split(&new).unwrap();
        for h in new_host.iter().chain(hosts.iter()) {
            prost::encoding::bytes::encode(2, &h.to_vec(), &mut two);
        }
        let before = REUSED.with(|n| n.get());
        let t2 = route_table(&two, Some(&t1), "rc", &mut ctx).unwrap();
        assert_eq!(REUSED.with(|n| n.get()), before, "indexed again");
        assert!((0..3).all(|i| Arc::ptr_eq(&t1.virtual_hosts[i], &t2.virtual_hosts[i + 1])));
        let at = |h: &str| t2.vhost_index(h.as_bytes());
        assert_eq!(
            (at("n.svc"), at("a.svc"), at("c.svc")),
            (Some(0), Some(1), Some(3))
        );
    }

    #[test]
    fn split_keeps_other_fields_and_finds_every_virtual_host() {
        let mut rc = RouteConfiguration {
            name: "80".into(),
            ..Default::default()
        };
        for i in 0..3 {
            rc.virtual_hosts.push(VirtualHost {
                name: format!("v{i}"),
                domains: vec![format!("h{i}")],
                ..Default::default()
            });
        }
        rc.validate_clusters = Some(false);
        let bytes = rc.encode_to_vec();
        let (hosts, rest) = split(&bytes).unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(VirtualHost::decode(hosts[2]).unwrap().name, "v2");
        let back = RouteConfiguration::decode(rest.as_slice()).unwrap();
        assert_eq!(back.name, "80");
        assert_eq!(back.validate_clusters, Some(false));
        assert!(back.virtual_hosts.is_empty());
        assert!(split(&bytes[..bytes.len() - 1]).is_none());
    }
}
