//! Series named by label values, made on the request path (Istio's `istio_*` metrics): a
//! core finds its series for a set of values in its own map (no lock, no atomic
//! read-modify-write), makes one on a miss, and publishes it on its own lock-free list,
//! which admin walks. Each series' cells are written by the one core that made it; admin
//! merges the series of every core that share their values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::histogram::{HistCells, HistValue};

/// The longest label value kept (longer ones are cut).
pub const MAX_VALUE: usize = 256;

/// The most series one core makes in one registry: past it, a new set of values is not
/// reported (and said so once), so peers cannot grow memory without bound.
pub const MAX_SERIES: usize = 20_000;

/// The separator between label values in a series' key (a value never holds it: it is
/// replaced by `_` when the key is built).
pub const SEP: u8 = 0x1f;

/// One core's cells for one set of label values: `N` counters and `H` histograms.
pub struct Series<const N: usize, const H: usize> {
    /// The label values, each followed by [`SEP`].
    pub key: Box<[u8]>,
    counters: [AtomicU64; N],
    hists: [HistCells; H],
}

impl<const N: usize, const H: usize> Series<N, H> {
    fn new(key: Box<[u8]>) -> Self {
        Series {
            key,
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            hists: std::array::from_fn(|_| HistCells::default()),
        }
    }

    /// Adds `n` to counter `i`. Only the owning core writes.
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        let c = &self.counters[i];
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Records `v` in histogram `i`. Only the owning core writes.
    #[inline]
    pub fn record(&self, i: usize, v: u64) {
        self.hists[i].record(v);
    }

    /// The label values.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        key_values(&self.key)
    }
}

/// The values of a key made by [`KeyBuilder`].
pub fn key_values(key: &[u8]) -> impl Iterator<Item = &str> {
    key.split(|&b| b == SEP)
        .take(key.iter().filter(|&&b| b == SEP).count())
        .map(|v| std::str::from_utf8(v).unwrap_or(""))
}

/// `v` as a label value: at most [`MAX_VALUE`] bytes (cut at a character boundary),
/// control characters (the separator among them) as `_`. Values kept in configuration or
/// caches are cleaned once, so the request path appends them as they are.
pub fn clean(v: &str) -> Box<str> {
    let mut end = v.len().min(MAX_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end]
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect::<String>()
        .into()
}

/// `v` itself when it is a safe label value already, else [`clean`]ed.
pub fn safe(v: &str) -> std::borrow::Cow<'_, str> {
    if v.len() <= MAX_VALUE && !v.bytes().any(|b| b < 0x20 || b == 0x7f) {
        std::borrow::Cow::Borrowed(v)
    } else {
        std::borrow::Cow::Owned(clean(v).into())
    }
}

/// Appends label values to a key.
pub struct KeyBuilder<'a>(pub &'a mut Vec<u8>);

impl KeyBuilder<'_> {
    /// Appends a value already made safe by [`clean`] (or a constant).
    #[inline]
    pub fn push_clean(&mut self, v: &str) {
        debug_assert!(v.len() <= MAX_VALUE && !v.bytes().any(|b| b < 0x20 || b == 0x7f));
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(SEP);
    }

    /// Appends one value: at most [`MAX_VALUE`] bytes of it (cut at a character
    /// boundary); control characters (the separator among them) become `_`, invalid
    /// UTF-8 the replacement character. Values may come from peers: none can forge a
    /// line of `/stats` or hold unbounded memory.
    #[inline]
    pub fn push(&mut self, v: &[u8]) {
        let plain = |b: &u8| *b >= 0x20 && *b != 0x7f;
        if v.len() <= MAX_VALUE && v.iter().all(plain) && std::str::from_utf8(v).is_ok() {
            self.0.extend_from_slice(v);
        } else {
            let s = String::from_utf8_lossy(v);
            let mut end = s.len().min(MAX_VALUE);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0
                .extend(s[..end].bytes().map(|b| if plain(&b) { b } else { b'_' }));
        }
        self.0.push(SEP);
    }
}

struct Node<const N: usize, const H: usize> {
    series: Arc<Series<N, H>>,
    next: Option<Arc<Node<N, H>>>,
}

/// Every core's series of one family of metrics.
pub struct Registry<const N: usize, const H: usize> {
    cores: Box<[super::Padded<ArcSwapOption<Node<N, H>>>]>,
}

/// What a core keeps to find its series: owned by the core (not `Sync`).
pub struct CoreMap<const N: usize, const H: usize> {
    map: std::cell::RefCell<rustc_hash::FxHashMap<Box<[u8]>, Arc<Series<N, H>>>>,
    /// The key being built for the request at hand (reused).
    pub scratch: std::cell::RefCell<Vec<u8>>,
    /// [`MAX_SERIES`] was reached (warned once).
    full: std::cell::Cell<bool>,
}

impl<const N: usize, const H: usize> Default for CoreMap<N, H> {
    fn default() -> Self {
        CoreMap {
            map: Default::default(),
            scratch: Default::default(),
            full: Default::default(),
        }
    }
}

impl<const N: usize, const H: usize> Registry<N, H> {
    pub fn new(cores: usize) -> Self {
        Registry {
            cores: (0..cores).map(|_| Default::default()).collect(),
        }
    }

    /// Core `core`'s series for `key`, made and published on first use; `None` once the
    /// core has [`MAX_SERIES`] of them.
    pub fn series(
        &self,
        core: usize,
        map: &CoreMap<N, H>,
        key: &[u8],
    ) -> Option<Arc<Series<N, H>>> {
        if let Some(s) = map.map.borrow().get(key) {
            return Some(s.clone());
        }
        if map.map.borrow().len() >= MAX_SERIES {
            if !map.full.replace(true) {
                tracing::warn!(
                    "core {core}: {MAX_SERIES} istio_* series made; requests with new label values are no longer reported"
                );
            }
            return None;
        }
        let series = Arc::new(Series::new(key.into()));
        map.map.borrow_mut().insert(key.into(), series.clone());
        // Only this core pushes onto its list: a load and a store publish the new head.
        let list = &self.cores[core].0;
        let next = list.load_full();
        list.store(Some(Arc::new(Node {
            series: series.clone(),
            next,
        })));
        Some(series)
    }

    /// Every series with its counters and histograms merged over cores, by key.
    pub fn merged(&self) -> std::collections::BTreeMap<Box<[u8]>, Merged> {
        let mut out =
            std::collections::BTreeMap::<Box<[u8]>, (Vec<u64>, Vec<Vec<&HistCells>>)>::new();
        let heads: Vec<_> = self.cores.iter().map(|c| c.0.load_full()).collect();
        for head in &heads {
            let mut node = head.as_deref();
            while let Some(n) = node {
                let (counters, hists) = out
                    .entry(n.series.key.clone())
                    .or_insert_with(|| (vec![0; N], vec![Vec::new(); H]));
                for (t, c) in counters.iter_mut().zip(&n.series.counters) {
                    *t = t.wrapping_add(c.load(Ordering::Relaxed));
                }
                for (t, h) in hists.iter_mut().zip(&n.series.hists) {
                    t.push(h);
                }
                node = n.next.as_deref();
            }
        }
        out.into_iter()
            .map(|(k, (counters, hists))| {
                let hists = hists
                    .into_iter()
                    .map(|cells| HistValue::merge(String::new(), cells.into_iter()))
                    .collect();
                (k, Merged { counters, hists })
            })
            .collect()
    }
}

/// A series' values summed over cores.
#[derive(Debug, Clone)]
pub struct Merged {
    pub counters: Vec<u64>,
    pub hists: Vec<HistValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_series_merge_by_values() {
        let r = Registry::<2, 1>::new(2);
        let (m0, m1) = (CoreMap::default(), CoreMap::default());
        let key = |vals: &[&[u8]]| {
            let mut k = Vec::new();
            let mut b = KeyBuilder(&mut k);
            for v in vals {
                b.push(v);
            }
            k
        };
        let a = key(&[b"x", b"200"]);
        let b = key(&[b"x", b"503"]);
        r.series(0, &m0, &a).unwrap().add(0, 1);
        r.series(0, &m0, &a).unwrap().add(0, 1);
        r.series(1, &m1, &a).unwrap().add(0, 5);
        r.series(1, &m1, &a).unwrap().record(0, 7);
        r.series(1, &m1, &b).unwrap().add(1, 3);
        let m = r.merged();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&a[..]].counters, vec![7, 0]);
        assert_eq!(m[&a[..]].hists[0].count, 1);
        assert_eq!(m[&b[..]].counters, vec![0, 3]);
        assert_eq!(key_values(&b).collect::<Vec<_>>(), vec!["x", "503"]);
        // Values with the separator or invalid UTF-8 are made safe.
        let odd = key(&[b"a\x1fb", b"\xff", b""]);
        assert_eq!(
            key_values(&odd).collect::<Vec<_>>(),
            vec!["a_b", "\u{fffd}", ""]
        );
    }
}
