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
