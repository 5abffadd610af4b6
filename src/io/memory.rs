//! The allocator's side of memory: its tuning, giving freed memory back to the OS, and
//! what admin's `/memory` reports.

/// Makes mimalloc return freed memory to the OS after a short delay (mimalloc's default
/// is 10 ms; 0 returned it at once). With 0, every page a burst of HTTP/2 streams left
/// empty was returned and faulted in again by the next burst: in the sidecar-pair gRPC
/// profile, page faults and purges were a fifth of the proxy's CPU. A quarter second lets
/// a loaded core reuse its pages. mimalloc purges only when the thread next calls into
/// it, which an idle core does not: after freeing in bulk a core collects once the delay
/// has passed ([`crate::wake::Freed`]). (Lazy arena commit is a build-time default, set in
/// `.cargo/config.toml`, because mimalloc reads it before `main`.) Call first thing in
/// `main`.
pub fn tune_allocator() {
    // mimalloc v3's option number (include/mimalloc.h): purge_delay = 15 (milliseconds).
    const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only stores an integer option; no other thread exists yet.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY.as_millis() as _);
    }
}

/// How long mimalloc keeps freed pages before returning them to the OS.
pub const PURGE_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Returns what this thread freed, and what is past its purge delay, to the OS (without
/// forcing: caches still in use stay).
pub fn collect_freed() {
    // SAFETY: mi_collect only walks this thread's heap and purges free pages.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// Returns memory freed during start-up (configuration parsing) to the OS.
pub fn release_free_memory() {
    // SAFETY: mi_collect only walks this thread's heap and purges free pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// After this thread freed a lot at once (a big xDS response applied, a big admin
/// response sent), returns it to the OS a little later: mimalloc would otherwise keep
/// those pages resident until this thread allocates again, and an idle control thread does
/// not. Runs on the caller's thread (a current-thread runtime's task).
pub fn release_freed_soon() {
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release_free_memory();
    });
}

/// The process's memory as mimalloc sees it: (bytes committed now, the most committed,
/// resident bytes). For admin's `/memory`.
pub fn memory_info() -> (usize, usize, usize) {
    let (mut elapsed, mut user, mut system) = (0usize, 0usize, 0usize);
    let (mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    // SAFETY: mi_process_info only writes the eight counters it is given pointers to,
    // all valid locals here.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut user,
            &mut system,
            &mut rss,
            &mut peak_rss,
            &mut commit,
            &mut peak_commit,
            &mut faults,
        )
    };
    (commit, peak_commit, rss)
}
