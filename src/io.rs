//! Low-level socket helpers. The only module allowed `unsafe`, each use with a `SAFETY:`
//! note.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// Reads into the spare capacity of `buf`, after the bytes it already holds. (monoio's
/// `read` of a `Vec` writes from its start, over whatever it held.) The caller reserves
/// room first: with none, this reads nothing and returns `Ok(0)`.
pub async fn read_more<R: monoio::io::AsyncReadRent>(
    r: &mut R,
    buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    use monoio::buf::IoBufMut;
    let len = buf.len();
    let (res, slice) = r.read(buf.slice_mut(len..)).await;
    (res, slice.into_inner())
}

/// Turns an accepted monoio stream into a std one, to hand it to another core.
pub fn into_std(stream: monoio::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up the only owner of this open socket; std takes it over.
    unsafe { std::net::TcpStream::from_raw_fd(fd) }
}

/// The destination a connection had before iptables REDIRECTed it (`SO_ORIGINAL_DST`,
/// IPv4 and IPv6), or `None` when netfilter knows no translation for it (not redirected:
/// with TPROXY the local address already is the original destination).
pub fn original_dst(sock: &impl AsRawFd, local: SocketAddr) -> io::Result<Option<SocketAddr>> {
    // SAFETY: the caller's socket stays open for this whole call (it is borrowed), and
    // neither BorrowedFd nor SockRef closes the descriptor.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let s = socket2::SockRef::from(&fd);
    let found = if local.is_ipv4() {
        s.original_dst()
    } else {
        s.original_dst_ipv6()
    };
    match found {
        Ok(a) => Ok(a.as_socket()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOPROTOOPT)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Starts a non-blocking connect to `dst`, from `source` when given (Istio's inbound
/// passthrough leaves from 127.0.0.6). The caller waits for writability.
pub fn start_connect(
    dst: SocketAddr,
    source: Option<SocketAddr>,
) -> io::Result<std::net::TcpStream> {
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(src) = source {
        // The port is the kernel's choice; several connections share the source address.
        socket.set_reuse_address(true)?;
        socket.bind(&src.into())?;
    }
    match socket.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// A connected pair of stream sockets for an internal connection (both ends on the calling
/// core): AF_UNIX, non-blocking, close-on-exec, carried as `TcpStream`s so that every
/// path serving TCP serves it unchanged (reads, writes, half-closes, splice, TLS). It has
/// no IP addresses: ask [`ip_local_addr`], never monoio's `local_addr`/`peer_addr`
/// (which expect an IP socket).
pub fn socket_pair() -> io::Result<(std::net::TcpStream, std::net::TcpStream)> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let (a, b) = Socket::pair(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
    // SAFETY: each descriptor is an open stream socket that `Socket` owned and gives up
    // here (into_raw_fd), so the new owner is its only one; `TcpStream` only issues
    // stream-socket calls on it (read, write, shutdown, splice), which AF_UNIX supports.
    Ok(unsafe {
        (
            std::net::TcpStream::from_raw_fd(a.into_raw_fd()),
            std::net::TcpStream::from_raw_fd(b.into_raw_fd()),
        )
    })
}

/// The local IP address of a socket; `None` for an internal connection's socket pair.
pub fn ip_local_addr(sock: &impl AsRawFd) -> Option<SocketAddr> {
    // SAFETY: the caller's socket stays open for this whole call (it is borrowed), and
    // neither BorrowedFd nor SockRef closes the descriptor.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).local_addr().ok()?.as_socket()
}

/// A pipe for splice(2): (read end, write end), non-blocking.
pub fn pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// One non-blocking splice(2) of up to `len` bytes from `from` to `to` (one of them a
/// pipe). `WouldBlock` when nothing can move now; `Ok(0)` at end of stream.
pub fn splice(from: &impl AsRawFd, to: &impl AsRawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed); null
    // offsets are valid for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Puts a socket in non-blocking mode (splice(2) on a socket blocks on the socket's own
/// mode, whatever its flags say).
/// The host's first non-loopback IPv4 address (IPv6 with `v6`), as Envoy picks its local
/// address for `x-forwarded-for`; `None` when it has none.
pub fn host_address(v6: bool) -> Option<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() && found.is_none() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = match family {
            libc::AF_INET if !v6 => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 if v6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        if !ip.is_loopback() {
            found = Some(ip);
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The calling thread's kernel id (`%t` in log lines, as Envoy prints it).
pub fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    i64::from(unsafe { libc::gettid() })
}

/// Allows core dumps: the soft core-size limit raised to the hard one, and the process
/// marked dumpable (`--enable-core-dump`).
pub fn enable_core_dump() -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit, read above.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn set_nonblocking(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: as in `original_dst`: borrowed for this call only, never closed here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).set_nonblocking(true)
}

/// One accept(2) on a non-blocking listening socket, the new socket close-on-exec and
/// non-blocking when asked; `WouldBlock` when no connection waits.
pub fn accept_now(
    listener: &impl AsRawFd,
    nonblocking: bool,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::FromRawFd;
    let fd = listener.as_raw_fd();
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: the listener stays open for the call (borrowed); accept4 writes at most
    // `*len` bytes of address into the zeroed storage socket2 lends it and sets `*len` to
    // what it wrote; the descriptor it returns is new, and std takes it over alone.
    let (stream, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let r = libc::accept4(fd, storage.cast(), len, flags);
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(std::net::TcpStream::from_raw_fd(r))
            }
        })
    }?;
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection that is not TCP/IP"))?;
    Ok((stream, peer))
}

/// Whether a socket is in non-blocking mode.
pub fn is_nonblocking(sock: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: as in `original_dst`: borrowed for this call only, never closed here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).nonblocking()
}

/// Half-closes a socket: no more writes (the peer reads end of stream).
pub fn shutdown_write(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: as in `original_dst`: borrowed for this call only, never closed here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
}

/// The pending error of a socket (`SO_ERROR`): how a non-blocking connect ended.
pub fn take_error(sock: &impl AsRawFd) -> io::Result<Option<io::Error>> {
    // SAFETY: as in `original_dst`: borrowed for this call only, never closed here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).take_error()
}

/// Turns TCP keepalive on for a socket, with these probe settings.
pub fn set_keepalive(sock: &impl AsRawFd, k: &socket2::TcpKeepalive) -> io::Result<()> {
    // SAFETY: as in `take_error`: borrowed for this call only, never closed here.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    socket2::SockRef::from(&fd).set_tcp_keepalive(k)
}

/// A non-blocking listening socket with SO_REUSEPORT, so every core binds the same address.
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    bind_listener_socket(addr, backlog, false)
}

/// [`bind_reuseport`], optionally with IP_TRANSPARENT (TPROXY interception: accept
/// connections addressed anywhere).
pub fn bind_listener_socket(
    addr: SocketAddr,
    backlog: i32,
    transparent: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if transparent {
        if addr.is_ipv4() {
            socket.set_ip_transparent(true)?;
        } else {
            set_ipv6_transparent(&socket)?;
        }
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted connections inherit it (Envoy sets it on each): one setsockopt per
    // listener instead of one per connection.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

fn set_ipv6_transparent(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to an int that lives across the call
    // with its exact size passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

mod adapters;
mod memory;
pub use memory::*;
pub mod cork;
pub mod exchange;
mod tunnel;

pub use adapters::*;
pub use tunnel::*;

#[cfg(test)]
mod tests {
    use super::adapters::send_now;
    use super::*;
    use std::io::Read;

    type Plain = MaybeTls<monoio::net::TcpStream, tokio::io::DuplexStream>;

    /// `write_all_now` into a socket that cannot take it all at once (the direct send is
    /// partial, the driver sends the rest), then into one that is full while its reader
    /// is paused (the direct send finds no room, the write waits on the driver): the reader
    /// gets every byte, in order, on either driver.
    async fn partial_and_full_sends_arrive_whole() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        socket2::SockRef::from(&std_stream)
            .set_send_buffer_size(4096)
            .unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let mut stream: Plain =
            MaybeTls::Plain(monoio::net::TcpStream::from_std(std_stream).unwrap());
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let first = big.len();
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        // Reads the first write whole, then waits until told, then reads to the end.
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; first];
            peer.read_exact(&mut got).unwrap();
            wait.recv().unwrap();
            peer.read_to_end(&mut got).unwrap();
            got
        });

        // 3 MB cannot fit a 4 KB send buffer: the first send is partial.
        let (res, mut sent) = stream.write_all_now(big, true).await;
        assert_eq!(res.unwrap(), first);

        // The reader is paused: fill the socket until a send finds no room.
        let MaybeTls::Plain(p) = &stream else {
            unreachable!()
        };
        let chunk: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        while let Some(r) = send_now(p, &chunk) {
            sent.extend_from_slice(&chunk[..r.unwrap()]);
        }
        // Its direct send finds no room and it waits through the driver; only then is the
        // reader let go.
        let (res, tail) = {
            let mut write = pin!(stream.write_all_now(b"tail".repeat(50_000), true));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let first = write.as_mut().poll(&mut cx);
            assert!(first.is_pending(), "a full socket took the write");
            go_on.send(()).unwrap();
            write.await
        };
        assert_eq!(res.unwrap(), tail.len());
        sent.extend_from_slice(&tail);
        // The driver may close the descriptor only at its next park: end the stream now.
        let MaybeTls::Plain(p) = &stream else {
            unreachable!()
        };
        shutdown_write(p).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes arrived out of order or changed");
    }

    #[test]
    fn write_all_now_on_both_drivers() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(partial_and_full_sends_arrive_whole());
        if monoio::utils::detect_uring() {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(partial_and_full_sends_arrive_whole());
        }
    }

    /// On io_uring a driver write is only queued when first polled (the ring submits it at
    /// the next park); with `now` the bytes are sent before the first poll returns.
    #[test]
    fn write_all_now_sends_before_the_first_poll_returns_on_io_uring() {
        if !monoio::utils::detect_uring() {
            eprintln!("io_uring unavailable here: nothing to compare");
            return;
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            let mut stream: Plain =
                MaybeTls::Plain(monoio::net::TcpStream::from_std(std_stream).unwrap());
            let mut cx = Context::from_waker(std::task::Waker::noop());
            for (now, first_poll_done) in [(true, true), (false, false)] {
                let mut write = pin!(stream.write_all_now(b"ping".to_vec(), now));
                let first = write.as_mut().poll(&mut cx);
                assert_eq!(first.is_ready(), first_poll_done, "now = {now}");
                let (res, _) = match first {
                    Poll::Ready(done) => done,
                    Poll::Pending => write.await,
                };
                assert_eq!(res.unwrap(), 4);
                let mut got = [0u8; 4];
                peer.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"ping");
            }
        });
    }

    /// A write to a peer that has gone fails with the error, not a signal or a hang.
    #[test]
    fn a_direct_send_to_a_closed_peer_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        // RST on close: unread data makes the close abortive.
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        let mut last = None;
        for _ in 0..100 {
            match send_now(&std_stream, b"x") {
                Some(Ok(_)) => continue,
                other => {
                    last = other;
                    break;
                }
            }
        }
        let e = last.expect("a send reported the reset").unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
    }
}
