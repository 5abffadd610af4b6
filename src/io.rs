//! Low-level socket helpers. The only module allowed `unsafe`, each use with a `SAFETY:`
//! note.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Liveness of an idle pooled connection, learned without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleState {
    /// Nothing to read: the peer has not closed it.
    Open,
    /// The peer closed it, reset it, or sent bytes nobody asked for: do not reuse.
    Unusable,
}

/// Checks an idle connection with one non-blocking `recv(MSG_PEEK)`.
pub fn idle_state(sock: &impl AsRawFd) -> IdleState {
    let mut byte = 0u8;
    // SAFETY: `sock` is a live socket owned by the caller for the duration of this call, and
    // the buffer is one valid, writable byte on our stack.
    let n = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
        IdleState::Open
    } else {
        IdleState::Unusable
    }
}

/// Turns an accepted monoio stream into a std one, to hand it to another core.
pub fn into_std(stream: monoio::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up the only owner of this open socket; std takes it over.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}

/// A non-blocking listening socket with SO_REUSEPORT, so every core binds the same address.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Makes mimalloc return freed memory to the OS at once rather than after a delay: a
/// sidecar's idle footprint matters more than re-using freshly freed pages. (Lazy arena
/// commit is a build-time default, set in `.cargo/config.toml`, because mimalloc reads it
/// before `main`.) Call first thing in `main`.
pub fn tune_allocator() {
    // mimalloc v3's option number (include/mimalloc.h): purge_delay = 15 (milliseconds).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only stores an integer option; no other thread exists yet.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Returns memory freed during start-up (configuration parsing) to the OS.
pub fn release_free_memory() {
    // SAFETY: mi_collect only walks this thread's heap and purges free pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Drops the executable's pages that start-up touched from this process's resident set
/// (MADV_PAGEOUT on its own file-backed mappings). They stay in the page cache; the
/// request path faults back in the few it uses. Start-up code (configuration parsing,
/// descriptor pools, YAML) is most of what was resident.
pub fn page_out_startup_code() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = exe.to_string_lossy();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).unwrap_or("");
        if path != exe || perms.contains('w') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        // SAFETY: the range is one of our own read-only file mappings, as listed by the
        // kernel; MADV_PAGEOUT only drops clean pages, which fault back in on use.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
        }
    }
}

/// Heap allocations made so far (only counted with the `count-allocs` feature).
pub static HEAP_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// mimalloc with an allocation counter, for measuring allocations per request.
#[cfg(feature = "count-allocs")]
pub struct CountingAlloc;

#[cfg(feature = "count-allocs")]
// SAFETY: every call is forwarded unchanged to mimalloc; counting has no effect on memory.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        HEAP_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        HEAP_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}
