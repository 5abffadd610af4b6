//! Querying a [`PathIndex`]: the candidate routes for a path, in configuration order.

use crate::model::route::PathIndex;

/// Candidates kept on the stack; more spill to the heap (a pathological configuration).
const STACK: usize = 64;

/// Calls `check` on each candidate route for `path`, in configuration order, and returns
/// the first `Some`.
pub fn first_match<T>(
    idx: &PathIndex,
    path: &[u8],
    mut check: impl FnMut(u32) -> Option<T>,
) -> Option<T> {
    let mut stack = [0u32; STACK];
    let mut len = 0usize;
    let mut spill: Vec<u32> = Vec::new();
    let mut push = |i: u32| {
        if len < STACK {
            stack[len] = i;
            len += 1;
        } else {
            spill.push(i);
        }
    };
    if let Some(exact) = idx.exact.get(path) {
        exact.iter().copied().for_each(&mut push);
    }
    idx.always.iter().copied().for_each(&mut push);
    let mut node = 0usize;
    idx.nodes[0].routes.iter().copied().for_each(&mut push);
    for &b in path {
        let children = &idx.nodes[node].children;
        match children.binary_search_by_key(&b, |c| c.0) {
            Ok(k) => {
                node = children[k].1 as usize;
                idx.nodes[node].routes.iter().copied().for_each(&mut push);
            }
            Err(_) => break,
        }
    }
    if spill.is_empty() {
        let cands = &mut stack[..len];
        cands.sort_unstable();
        cands.iter().find_map(|&i| check(i))
    } else {
        spill.extend_from_slice(&stack[..len]);
        spill.sort_unstable();
        spill.iter().find_map(|&i| check(i))
    }
}
