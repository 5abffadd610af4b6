//! Consistent hashing as Envoy's `RING_HASH` and `MAGLEV` load balancers do it, so a
//! request key picks the same endpoint in Ringside as in Envoy: the same xxHash64 of
//! `"<address>_<i>"` ring entries and Ketama lookup, the same Maglev permutations and
//! table fill. A table is built per core the first time a cluster's endpoint set is used,
//! and kept until that set changes.

use std::sync::Arc;

use crate::model::{Endpoint, LbPolicy};

/// A built ring or Maglev table over one endpoint set: indices into it.
pub(super) struct HashTable {
    /// The endpoint set it was built for (held, so its address cannot be reused).
    pub endpoints: Arc<[Endpoint]>,
    kind: Table,
}

enum Table {
    /// Sorted (hash, endpoint) entries.
    Ring(Vec<(u64, u32)>),
    Maglev(Vec<u32>),
    Empty,
}

impl HashTable {
    /// The table of `policy` over the endpoints of `endpoints` that may take traffic.
    pub fn build(
        policy: LbPolicy,
        endpoints: &Arc<[Endpoint]>,
        usable: impl Fn(&Endpoint) -> bool,
    ) -> HashTable {
        let hosts: Vec<(u32, &Endpoint)> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| usable(e))
            .map(|(i, e)| (i as u32, e))
            .collect();
        let kind = if hosts.is_empty() {
            Table::Empty
        } else {
            match policy {
                LbPolicy::RingHash { min, max } => Table::Ring(ring(&hosts, min, max)),
                LbPolicy::Maglev { table_size } => Table::Maglev(maglev(&hosts, table_size)),
                _ => Table::Empty,
            }
        };
        HashTable {
            endpoints: endpoints.clone(),
            kind,
        }
    }

    /// The endpoint (index) for a request hash.
    pub fn choose(&self, h: u64) -> Option<usize> {
        match &self.kind {
            Table::Ring(r) => ketama(r, h).map(|i| r[i].1 as usize),
            Table::Maglev(t) => t.get((h % t.len() as u64) as usize).map(|&i| i as usize),
            Table::Empty => None,
        }
    }
}

/// Each host's weight over their sum, with the smallest and largest.
fn normalized(hosts: &[(u32, &Endpoint)]) -> (Vec<f64>, f64, f64) {
    let sum: u64 = hosts.iter().map(|(_, e)| u64::from(e.weight)).sum();
    let weights: Vec<f64> = hosts
        .iter()
        .map(|(_, e)| f64::from(e.weight) * 1.0 / sum as f64)
        .collect();
    let min = weights.iter().copied().fold(1.0, f64::min);
    let max = weights.iter().copied().fold(0.0, f64::max);
    (weights, min, max)
}

/// Envoy's ring: the least-weighted host gets a whole number of entries, about
/// `min` in all (at most `max`); entries are spread by running sums.
fn ring(hosts: &[(u32, &Endpoint)], min: u64, max: u64) -> Vec<(u64, u32)> {
    let (weights, min_weight, _) = normalized(hosts);
    let scale = ((min_weight * min as f64).ceil() / min_weight).min(max as f64);
    let mut out = Vec::with_capacity(scale.ceil() as usize);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    let mut key = Vec::with_capacity(64);
    for ((index, e), w) in hosts.iter().zip(&weights) {
        key.clear();
        key.extend_from_slice(e.address.to_string().as_bytes());
        key.push(b'_');
        let base = key.len();
        target += scale * w;
        let mut i = 0u64;
        while current < target {
            key.truncate(base);
            key.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
            out.push((xxhash_rust::xxh64::xxh64(&key, 0), *index));
            i += 1;
            current += 1.0;
        }
    }
    out.sort_by_key(|&(h, _)| h);
    out
}

/// The first ring entry at or after `h`, wrapping (Ketama's search, as Envoy ports it).
fn ketama(ring: &[(u64, u32)], h: u64) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let (mut low, mut high) = (0i64, ring.len() as i64);
    loop {
        let mid = (low + high) / 2;
        if mid == ring.len() as i64 {
            return Some(0);
        }
        let midval = ring[mid as usize].0;
        let before = if mid == 0 {
            0
        } else {
            ring[mid as usize - 1].0
        };
        if h <= midval && h > before {
            return Some(mid as usize);
        }
        if midval < h {
            low = mid + 1;
        } else {
            high = mid - 1;
        }
        if low > high {
            return Some(0);
        }
    }
}

/// Envoy's Maglev table: each host's permutation (offset and skip from xxHash64 of its
/// address, seeds 0 and 1) fills free slots in turn, as often as its weight allows.
fn maglev(hosts: &[(u32, &Endpoint)], size: u64) -> Vec<u32> {
    let (weights, _, max_weight) = normalized(hosts);
    struct Entry {
        index: u32,
        offset: u64,
        skip: u64,
        weight: f64,
        target: f64,
        next: u64,
    }
    // Filled in the order of the hosts' addresses, whatever order they came in.
    let mut order: Vec<(String, usize)> = hosts
        .iter()
        .enumerate()
        .map(|(i, (_, e))| (e.address.to_string(), i))
        .collect();
    order.sort();
    let mut entries: Vec<Entry> = order
        .iter()
        .map(|(key, i)| {
            let (index, weight) = (&hosts[*i].0, weights[*i]);
            Entry {
                index: *index,
                offset: xxhash_rust::xxh64::xxh64(key.as_bytes(), 0) % size,
                skip: xxhash_rust::xxh64::xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                weight,
                target: 0.0,
                next: 0,
            }
        })
        .collect();
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    let mut iteration = 1u64;
    while filled < size {
        for e in entries.iter_mut() {
            if filled >= size {
                break;
            }
            if (iteration as f64) * e.weight < e.target {
                continue;
            }
            e.target += max_weight;
            let mut c = (e.offset + e.skip * e.next) % size;
            while table[c as usize] != u32::MAX {
                e.next += 1;
                c = (e.offset + e.skip * e.next) % size;
            }
            table[c as usize] = e.index;
            e.next += 1;
            filled += 1;
        }
        iteration += 1;
    }
    table
}

/// Folds one more policy's hash into the request's, as Envoy's `HashPolicyImpl` does
/// (rotating the old value, so equal rules do not cancel out).
pub fn combine(acc: Option<u64>, h: u64) -> u64 {
    match acc {
        Some(a) => a.rotate_left(1) ^ h,
        None => h,
    }
}

/// xxHash64 of `parts`, each hashed with the previous one's hash as its seed (Envoy's
/// `HashUtil::xxHash64` of a span: a multi-valued header, its values sorted first).
pub fn xxh64_parts(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .fold(0, |seed, p| xxhash_rust::xxh64::xxh64(p, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Arc<[Endpoint]> {
        (0..n)
            .map(|i| Endpoint::at(format!("10.0.0.{}:80", i + 1).parse().unwrap()))
            .collect()
    }

    #[test]
    fn the_ring_has_whole_entries_per_host_and_wraps() {
        let e = eps(3);
        let t = HashTable::build(
            LbPolicy::RingHash {
                min: 1024,
                max: 8 << 20,
            },
            &e,
            |e| e.healthy,
        );
        let Table::Ring(r) = &t.kind else { panic!() };
        // 1/3 each: ceil(1024/3) = 342 entries per host.
        assert_eq!(r.len(), 3 * 342);
        assert!(r.windows(2).all(|w| w[0].0 <= w[1].0));
        // Past the last entry, the first one.
        assert_eq!(t.choose(u64::MAX), Some(r[0].1 as usize));
        assert_eq!(t.choose(r[5].0), Some(r[5].1 as usize));
        assert_eq!(t.choose(r[5].0 - 1), Some(r[5].1 as usize));
    }

    #[test]
    fn maglev_fills_the_table_evenly() {
        let e = eps(3);
        let t = HashTable::build(LbPolicy::Maglev { table_size: 65537 }, &e, |e| e.healthy);
        let Table::Maglev(m) = &t.kind else { panic!() };
        let mut counts = [0usize; 3];
        for &i in m {
            counts[i as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| c == 21845 || c == 21846),
            "{counts:?}"
        );
    }

    #[test]
    fn hashes_combine_as_envoy_s() {
        assert_eq!(combine(None, 7), 7);
        assert_eq!(combine(Some(1 << 63 | 1), 0), 0b11);
        let a = xxhash_rust::xxh64::xxh64(b"a", 0);
        assert_eq!(
            xxh64_parts(&[b"a", b"b"]),
            xxhash_rust::xxh64::xxh64(b"b", a)
        );
    }
}
