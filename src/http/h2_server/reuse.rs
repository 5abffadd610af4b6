//! What a core's HTTP/2 streams write their heads in, reused. A stream is a task of its
//! own, made and dropped per request, so its buffers and header slots would come from
//! the allocator every time (five allocations a request on h2c → HTTP/1.1); they come
//! from the core's free lists instead, kept short and of modest buffers only.

use std::cell::RefCell;
use std::ops::Range;
use std::thread::LocalKey;

/// Header slots, as `h1`'s heads keep them.
type Slots = Vec<(Range<usize>, Range<usize>)>;

/// How many of each a core keeps.
const KEPT: usize = 64;
/// A buffer grown past this (a large head) goes back to the allocator.
const MAX_BYTES: usize = 16 << 10;

thread_local! {
    static BYTES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SLOTS: RefCell<Vec<Slots>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `cap` bytes.
pub(super) fn bytes(cap: usize) -> Vec<u8> {
    match BYTES.with(|f| f.borrow_mut().pop()) {
        Some(mut b) => {
            b.reserve(cap);
            b
        }
        None => Vec::with_capacity(cap),
    }
}

/// Returns a buffer from [`bytes`].
pub(super) fn give_bytes(b: Vec<u8>) {
    give(&BYTES, b, MAX_BYTES);
}

/// Header slots, empty (a head's parse sizes them).
pub(super) fn slots() -> Slots {
    SLOTS.with(|f| f.borrow_mut().pop()).unwrap_or_default()
}

/// Returns slots from [`slots`].
pub(super) fn give_slots(s: Slots) {
    give(&SLOTS, s, usize::MAX);
}

/// Keeps `v`, emptied, on `list` unless it holds nothing or more than `max` elements' room,
/// or the list is full.
fn give<T>(list: &'static LocalKey<RefCell<Vec<Vec<T>>>>, mut v: Vec<T>, max: usize) {
    if v.capacity() == 0 || v.capacity() > max {
        return;
    }
    v.clear();
    list.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < KEPT {
            f.push(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_emptied_and_large_ones_are_not_kept() {
        let mut b = bytes(100);
        b.extend_from_slice(b"head");
        let at = b.as_ptr();
        give_bytes(b);
        let again = bytes(10);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the same buffer, not a new one");
        give_bytes(again);
        give_bytes(Vec::with_capacity(MAX_BYTES + 1));
        assert!(bytes(0).capacity() <= MAX_BYTES);
        let mut s = slots();
        s.push((0..1, 2..3));
        give_slots(s);
        let s = slots();
        assert!(s.is_empty() && s.capacity() >= 1);
    }
}
