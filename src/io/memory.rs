//! The allocator's side of memory: its tuning, giving freed memory back to the OS, and
//! what admin's `/memory` reports; and dropping the code start-up ran from the resident set.

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
/// not. Twice: the cores drop the snapshot they served once they take the new one, often
/// after the first collection, and what they free of it returns to this thread's pages
/// (10,000 services: RSS 1 s after a push 103-111 MB with one collection, 103 MB in
/// every run with both). Runs on the caller's thread (a current-thread runtime's task).
pub fn release_freed_soon() {
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release_free_memory();
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        release_free_memory();
        page_out_cold_code();
    });
}

/// Where the code the request path runs ends: build.rs lays that code out first in
/// `.text`, in perf/hot-code.txt's order, and this function right after it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn ringside_hot_code_end() {}

/// Drops the executable's code after the request path's (see [`ringside_hot_code_end`])
/// from the resident set: what applying a big xDS response or answering a big admin
/// request ran (decoding, checking and converting configuration, compressing it, dumping
/// stats) is otherwise resident until the process ends — 7-8 MB of a sidecar holding
/// 10,000 services. The pages stay in the page cache, so the next update maps them again
/// without reading the disk (a minor fault each). Only in builds whose code is laid out
/// so; elsewhere the request path's code is mixed with the rest, and left alone.
pub fn page_out_cold_code() {
    if cfg!(ringside_code_layout) {
        page_out_code_after(ringside_hot_code_end as *const () as usize);
    }
}

/// Drops the pages of the executable's code mapping that lie wholly after `boundary`,
/// unless some page of it is a private copy (a debugger's breakpoint). Returns the bytes
/// of the range given back.
fn page_out_code_after(boundary: usize) -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    // SAFETY: sysconf only reads a constant of the system.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let Some(m) = read_only_file_mappings(&smaps)
        .into_iter()
        .find(|m| m.start <= boundary && boundary < m.end && !m.private_copies)
    else {
        return 0;
    };
    let start = boundary.div_ceil(page) * page;
    if start >= m.end {
        return 0;
    }
    // SAFETY: the range lies in one of our own read-only private file mappings that holds
    // no private page, as listed by the kernel: MADV_DONTNEED only unmaps its pages, and a
    // later touch maps the same page-cache page again.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            m.end - start,
            libc::MADV_DONTNEED,
        );
    }
    m.end - start
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

/// Drops the pages of the executable and its libraries that start-up touched from this
/// process's resident set. They stay in the page cache; the request path faults back in the
/// few it uses. Start-up code (configuration parsing, descriptor pools, YAML; the dynamic
/// loader, locale set-up) is most of what was resident.
///
/// A file mapping that holds only the file's pages (code, read-only data) is unmapped with
/// MADV_DONTNEED, which is lossless there: a later touch maps the same page-cache page
/// again. The executable's relocated read-only data, whose pages are private copies, gets
/// MADV_PAGEOUT, which drops only clean pages. PAGEOUT is not used for the rest because it
/// skips every page another process maps too — and every sidecar of a node that runs the
/// same image maps the same binary and libraries, so it would drop next to nothing.
pub fn page_out_startup_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let exe = exe.to_string_lossy();
    for m in read_only_file_mappings(&smaps) {
        let how = if !m.private_copies {
            libc::MADV_DONTNEED
        } else if m.path == exe {
            libc::MADV_PAGEOUT
        } else {
            continue;
        };
        // SAFETY: the range is one of our own read-only private file mappings, as listed by
        // the kernel. MADV_DONTNEED is given only to a mapping with no private (written)
        // page, so each page maps again from the unchanged file; MADV_PAGEOUT only drops
        // clean pages, which fault back in on use.
        unsafe {
            libc::madvise(m.start as *mut libc::c_void, m.end - m.start, how);
        }
    }
}

/// A read-only private mapping of a file, from `/proc/self/smaps`.
#[derive(Debug, PartialEq)]
struct FileMapping<'a> {
    start: usize,
    end: usize,
    path: &'a str,
    /// Some page is this process's own copy (`Anonymous:` above 0 kB): relocations were
    /// written there before it was made read-only.
    private_copies: bool,
}

/// The read-only private file mappings listed in `smaps` (writable ones are data; shared
/// ones, special ones like `[vdso]` and anonymous ones are left out).
fn read_only_file_mappings(smaps: &str) -> Vec<FileMapping<'_>> {
    let mut out = Vec::new();
    let mut current: Option<FileMapping> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else {
            continue;
        };
        if first == "Anonymous:" {
            if let Some(m) = current.as_mut() {
                m.private_copies = f.next() != Some("0");
            }
            continue;
        }
        let Some((a, b)) = first.split_once('-') else {
            continue; // another field of the mapping
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        out.extend(current.take());
        let perms = f.next().unwrap_or("");
        // The path is what follows the range, permissions, offset, device and inode (it
        // may hold spaces).
        let path = (0..5)
            .fold(line, |rest, _| {
                let rest = rest.trim_start();
                rest.find(char::is_whitespace).map_or("", |i| &rest[i..])
            })
            .trim();
        if path.starts_with('/')
            && perms.starts_with('r')
            && perms.ends_with('p')
            && !perms.contains('w')
        {
            current = Some(FileMapping {
                start,
                end,
                path,
                // Until the field says otherwise, the safe assumption.
                private_copies: true,
            });
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    /// How many of the `n` pages from the one holding `addr` this process maps (bit 63 of
    /// their pagemap entries).
    fn mapped(addr: usize, n: usize, page: usize) -> usize {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open("/proc/self/pagemap").unwrap();
        f.seek(SeekFrom::Start((addr / page * 8) as u64)).unwrap();
        let mut entries = vec![0u8; n * 8];
        f.read_exact(&mut entries).unwrap();
        entries.chunks(8).filter(|e| e[7] >> 7 == 1).count()
    }

    #[test]
    fn code_after_a_boundary_leaves_the_resident_set() {
        // SAFETY: sysconf only reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        // The test binary's code from the page of this function on: the harness and std
        // ran much of it.
        let here =
            code_after_a_boundary_leaves_the_resident_set as *const () as usize / page * page;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let code = super::read_only_file_mappings(&smaps)
            .into_iter()
            .find(|m| m.start <= here && here < m.end)
            .expect("the mapping of this test's code");
        let n = (code.end - here) / page;
        let before = mapped(here, n, page);
        assert!(before > 8, "{before} pages mapped");
        assert!(super::page_out_code_after(here) > 0);
        // Other tests' threads map some again at once, and this one its own page.
        let after = mapped(here, n, page);
        assert!(
            after * 2 < before,
            "{before} pages mapped before, {after} after"
        );
        // No mapping holds address 0: nothing is dropped.
        assert_eq!(super::page_out_code_after(0), 0);
    }

    #[test]
    fn read_only_file_mappings_and_which_hold_private_copies() {
        let smaps = "\
55d0a0000000-55d0a0442000 r--p 00000000 00:2e 1234                       /opt/my bin/ringside
Size:               4360 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
55d0a0442000-55d0a1150000 r-xp 00441000 00:2e 1234                       /opt/my bin/ringside
Size:              13368 kB
Anonymous:             0 kB
55d0a1150000-55d0a11da000 r--p 0114e000 00:2e 1234                       /opt/my bin/ringside
Anonymous:           552 kB
55d0a11da000-55d0a11e1000 rw-p 011d7000 00:2e 1234                       /opt/my bin/ringside
Anonymous:            28 kB
7f0000000000-7f0000001000 r-xp 00000000 00:2e 99                         /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000002000-7f0000003000 r--p 00000000 00:00 0 
Anonymous:             4 kB
7f0000004000-7f0000005000 r--s 00000000 00:2e 77                         /usr/lib/gconv/gconv-modules.cache
Anonymous:             0 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        let m = super::read_only_file_mappings(smaps);
        let got: Vec<_> = m
            .iter()
            .map(|m| (m.start, m.end, m.path, m.private_copies))
            .collect();
        let exe = "/opt/my bin/ringside";
        assert_eq!(
            got,
            [
                (0x55d0a0000000, 0x55d0a0442000, exe, false),
                (0x55d0a0442000, 0x55d0a1150000, exe, false),
                (0x55d0a1150000, 0x55d0a11da000, exe, true),
                (0x7f0000000000, 0x7f0000001000, "/usr/lib/libc.so.6", false),
            ]
        );
        // A mapping whose smaps entry never says: assumed to hold copies.
        let m = super::read_only_file_mappings("1000-2000 r-xp 00000000 00:01 5 /x\n");
        assert!(m[0].private_copies);
    }
}
