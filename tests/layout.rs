//! The layout ARCHITECTURE.md asks for, checked on every test run: no source file over
//! 600 lines, and no two sibling modules that import each other (a module imports only
//! from layers below it). Test code (`tests.rs` files, `#[cfg(test)] mod tests`) is not
//! counted: tests may reach across.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const MAX_LINES: usize = 600;

/// Every module of `src/` (path like `http::conn`) and its source, tests stripped.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        if parts.last().map(String::as_str) == Some("tests")
            || parts.first().map(String::as_str) == Some("proto")
        {
            continue;
        }
        let mut src = std::fs::read_to_string(&f).unwrap();
        if let Some(i) = src.find("#[cfg(test)]\nmod tests {") {
            src.truncate(i);
        }
        out.insert(parts.join("::"), src);
    }
    out
}

#[test]
fn no_source_file_is_over_600_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut long = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let n = std::fs::read_to_string(&p).unwrap().lines().count();
                if n > MAX_LINES {
                    long.push(format!("{} ({n} lines)", p.display()));
                }
            }
        }
    }
    assert!(long.is_empty(), "split these by concept: {long:#?}");
}

/// The module a `crate::…`/`super::…`/`self::…` path in `from` refers to.
fn resolve(mods: &BTreeMap<String, String>, from: &str, path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = Vec::new();
    match segs[0] {
        "crate" => {
            segs.remove(0);
        }
        "super" | "self" => {
            base = from.split("::").filter(|s| !s.is_empty()).collect();
            while let Some(&s) = segs.first() {
                match s {
                    "super" => {
                        base.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segs.remove(0);
            }
        }
        _ => return None,
    }
    let full: Vec<&str> = base.into_iter().chain(segs).collect();
    (1..=full.len())
        .rev()
        .map(|k| full[..k].join("::"))
        .find(|m| mods.contains_key(m))
}

#[test]
fn no_two_sibling_modules_import_each_other() {
    let mods = modules();
    let path = regex::Regex::new(r"\b(?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+").unwrap();
    // Edges between siblings: the children of the common parent each path leads into.
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for (m, src) in &mods {
        for p in path.find_iter(src) {
            let Some(t) = resolve(&mods, m, p.as_str()) else {
                continue;
            };
            let (a, b): (Vec<&str>, Vec<&str>) = (m.split("::").collect(), t.split("::").collect());
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if common < a.len() && common < b.len() {
                edges.insert((a[..=common].join("::"), b[..=common].join("::")));
            }
        }
    }
    // Any cycle, however long: an edge a -> b where b leads back to a.
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n.clone()) {
                stack.extend(
                    edges
                        .iter()
                        .filter(|(x, _)| *x == n)
                        .map(|(_, y)| y.clone()),
                );
            }
        }
        false
    };
    let cycles: Vec<_> = edges.iter().filter(|(a, b)| reaches(b, a)).collect();
    assert!(
        cycles.is_empty(),
        "modules whose imports form a cycle: {cycles:?}"
    );
}
