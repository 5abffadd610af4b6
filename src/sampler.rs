//! A CPU sampler for admin's profiles: `ITIMER_PROF` sends `SIGPROF` as the process spends
//! CPU time, and the signal interrupts whichever thread is running — a core, the control
//! thread — so every thread is sampled in proportion to the CPU it uses. The handler walks
//! the interrupted thread's frame pointers (every crate keeps them: `.cargo/config.toml`)
//! into a buffer allocated for this profile only and freed after it; a sample claims its
//! slot with one atomic add, so the handler never locks or allocates. Each frame's address
//! is checked readable first (a `write` of it to a pipe fails with `EFAULT` otherwise), so
//! a broken frame chain ends the walk rather than the process. Nothing is installed or
//! costs anything while no profile is being taken.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::time::Duration;

/// Frames kept per sample (the leaf first).
pub const DEPTH: usize = 64;

/// One sample as the handler writes it.
#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    tid: i32,
    len: u32,
    ips: [usize; DEPTH],
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static IN_HANDLER: AtomicUsize = AtomicUsize::new(0);
static SLOTS: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static CAPACITY: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// The pipe addresses are checked against: (write end, read end).
static PIPE_W: AtomicI32 = AtomicI32::new(-1);
static PIPE_R: AtomicI32 = AtomicI32::new(-1);

/// One sampled stack: the thread it ran on and its frames' addresses (the interrupted
/// instruction first, then return addresses).
pub struct Stack {
    pub tid: i32,
    pub ips: Vec<usize>,
}

/// What a profile took: its stacks, and the samples that found no room.
pub struct Taken {
    pub stacks: Vec<Stack>,
    pub dropped: usize,
}

/// Samples the whole process for `duration`, `hz` times a second of CPU time, keeping at
/// most `max_samples`. One at a time (the caller ensures it).
pub fn sample(duration: Duration, hz: u32, max_samples: usize) -> Result<Taken, String> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Err("CPU profiles need x86_64 or aarch64".into());
    }
    let mut slots: Vec<Slot> = vec![
        Slot {
            tid: 0,
            len: 0,
            ips: [0; DEPTH],
        };
        max_samples
    ];
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    PIPE_R.store(fds[0], Ordering::Relaxed);
    PIPE_W.store(fds[1], Ordering::Relaxed);
    SLOTS.store(slots.as_mut_ptr(), Ordering::Relaxed);
    CAPACITY.store(max_samples, Ordering::Relaxed);
    NEXT.store(0, Ordering::Relaxed);
    ACTIVE.store(true, Ordering::Release);
    let installed = install(handler as *const () as usize).and_then(|()| timer(hz));
    if installed.is_ok() {
        // A blocking-pool thread of the control runtime, never a core.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(duration);
    }
    // Stop: no new timer signals, handlers that start now return at once, and the buffer
    // is read (and freed) only once no handler is inside. The flag and the count are a
    // two-variable handshake (this side stores one and loads the other, the handler the
    // reverse): sequentially consistent on both sides, or a store could pass a load.
    let _ = timer(0);
    ACTIVE.store(false, Ordering::SeqCst);
    while IN_HANDLER.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
    }
    // A SIGPROF still pending must not take its default action (termination): ignoring
    // the signal discards it. Then the default again, which programs this process starts
    // (iptables) inherit.
    let _ = install(libc::SIG_IGN);
    let _ = install(libc::SIG_DFL);
    SLOTS.store(std::ptr::null_mut(), Ordering::Relaxed);
    CAPACITY.store(0, Ordering::Relaxed);
    // SAFETY: the descriptors are this profile's pipe, no longer used by any handler.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    installed?;
    let taken = NEXT.load(Ordering::Relaxed);
    let stacks = slots[..taken.min(max_samples)]
        .iter()
        .filter(|s| s.len > 0)
        .map(|s| Stack {
            tid: s.tid,
            ips: s.ips[..s.len as usize].to_vec(),
        })
        .collect();
    Ok(Taken {
        stacks,
        dropped: taken.saturating_sub(max_samples),
    })
}

/// Installs `action` (a handler's address, or `SIG_IGN`) for SIGPROF.
fn install(action: usize) -> Result<(), String> {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C"` function with
    // the SA_SIGINFO signature, and only async-signal-safe work happens in it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = action;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Arms the CPU-time timer at `hz` (0 disarms it).
fn timer(hz: u32) -> Result<(), String> {
    let usec = if hz == 0 {
        0
    } else {
        (1_000_000 / hz.max(1)).max(1) as i64
    };
    let tv = libc::timeval {
        tv_sec: (usec / 1_000_000) as libc::time_t,
        tv_usec: (usec % 1_000_000) as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: setitimer reads the value it is given.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &it, std::ptr::null_mut()) } != 0 {
        return Err(format!("setitimer: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `len` bytes at `addr` can be read: the kernel copies them into the pipe, or
/// fails with EFAULT. What went in is read back out, so the pipe never fills.
fn readable(addr: usize, len: usize) -> bool {
    let (w, r) = (
        PIPE_W.load(Ordering::Relaxed),
        PIPE_R.load(Ordering::Relaxed),
    );
    // SAFETY: write only reads `len` bytes at `addr` in the kernel, which reports an
    // unreadable address instead of faulting; read fills a local buffer.
    unsafe {
        if libc::write(w, addr as *const libc::c_void, len) != len as isize {
            return false;
        }
        let mut sink = [0u8; 16];
        libc::read(r, sink.as_mut_ptr().cast(), len.min(16));
    }
    true
}

/// The interrupted instruction, frame pointer and stack pointer.
#[cfg(target_arch = "x86_64")]
fn registers(uc: *const libc::ucontext_t) -> (usize, usize, usize) {
    // SAFETY: the kernel passes the interrupted context to a SA_SIGINFO handler.
    unsafe {
        let g = &(*uc).uc_mcontext.gregs;
        (
            g[libc::REG_RIP as usize] as usize,
            g[libc::REG_RBP as usize] as usize,
            g[libc::REG_RSP as usize] as usize,
        )
    }
}

#[cfg(target_arch = "aarch64")]
fn registers(uc: *const libc::ucontext_t) -> (usize, usize, usize) {
    // SAFETY: the kernel passes the interrupted context to a SA_SIGINFO handler.
    unsafe {
        let m = &(*uc).uc_mcontext;
        (m.pc as usize, m.regs[29] as usize, m.sp as usize)
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn registers(_: *const libc::ucontext_t) -> (usize, usize, usize) {
    (0, 0, 0)
}

/// How far above the interrupted stack pointer a frame record may be: one outside the
/// thread's own stack (code without frame pointers leaves anything in the register) is
/// not followed.
const STACK_SPAN: usize = 8 << 20;

extern "C" fn handler(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    // The other half of the stop handshake (see `sample`): count in, then look again.
    IN_HANDLER.fetch_add(1, Ordering::SeqCst);
    // SAFETY: errno is this thread's; it is put back as it was.
    let errno = unsafe { *libc::__errno_location() };
    if ACTIVE.load(Ordering::SeqCst) && !uc.is_null() {
        let slots = SLOTS.load(Ordering::Acquire);
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        if !slots.is_null() && i < CAPACITY.load(Ordering::Relaxed) {
            // SAFETY: slot `i` is this handler's alone (claimed by the atomic add) and the
            // buffer outlives every handler (freed only once IN_HANDLER is 0).
            let slot = unsafe { &mut *slots.add(i) };
            let (pc, mut fp, sp) = registers(uc as *const libc::ucontext_t);
            slot.ips[0] = pc;
            let mut len = 1;
            // Each frame record, 16-byte aligned on the thread's stack above the stack
            // pointer: [fp] = the caller's fp, [fp + 8] = the return address.
            let on_stack = |fp: usize| fp >= sp && fp - sp < STACK_SPAN && fp % 16 == 0;
            while len < DEPTH && on_stack(fp) && readable(fp, 16) {
                // SAFETY: the 16 bytes at fp are on this thread's stack and were just
                // found readable.
                let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
                if ret == 0 {
                    break;
                }
                slot.ips[len] = ret;
                len += 1;
                // Stacks grow down: a caller's frame is above its callee's.
                if next <= fp {
                    break;
                }
                fp = next;
            }
            // SAFETY: gettid has no arguments and cannot fail.
            slot.tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            slot.len = len as u32;
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    IN_HANDLER.fetch_sub(1, Ordering::Release);
}
