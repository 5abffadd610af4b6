//! Tunnels (upgrades, CONNECT, opaque TCP): splice(2) between two plaintext sockets, or
//! a user-space copy when either side is TLS; both with idle and duration limits.
#![allow(unsafe_code)]

use super::*;

/// Bytes per splice: a pipe's default capacity.
const PIPE: usize = 64 * 1024;

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// The reader closed; the close was passed on.
    Closed,
    Error,
    Idle,
}

/// Moves `r` to `w` until `r` closes (then half-closes `w`), an error, or both
/// directions were quiet for `idle`. The bytes go socket → pipe → socket with splice(2),
/// never through user space. Each splice is tried at once and waits for readiness only
/// when it would block, so a busy stream costs two syscalls per 64 KiB and no io_uring
/// op; (io_uring's own SPLICE op is punted to kernel worker threads for sockets, which
/// measured 35% slower than this).
async fn pump(
    r: &monoio::net::TcpStream,
    w: &monoio::net::TcpStream,
    idle: Option<Duration>,
    last: &Cell<Instant>,
    count: impl Fn(u64),
) -> Flow {
    let Ok((pipe_r, pipe_w)) = pipe() else {
        return Flow::Error;
    };
    loop {
        let n = loop {
            match splice(r, &pipe_w, PIPE) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let ready = r.readable(false);
                    let res = match idle {
                        None => ready.await,
                        Some(t) => match monoio::time::timeout(t, ready).await {
                            Ok(r) => r,
                            // The other direction may have been busy all along.
                            Err(_) if last.get().elapsed() >= t => return Flow::Idle,
                            Err(_) => continue,
                        },
                    };
                    if res.is_err() {
                        return Flow::Error;
                    }
                }
                Err(_) => return Flow::Error,
            }
        };
        if n == 0 {
            let _ = shutdown_write(w);
            return Flow::Closed;
        }
        last.set(Instant::now());
        count(n as u64);
        let mut left = n;
        while left > 0 {
            match splice(&pipe_r, w, left) {
                Ok(0) => return Flow::Error,
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if w.writable(false).await.is_err() {
                        return Flow::Error;
                    }
                }
                Err(_) => return Flow::Error,
            }
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Done,
    Error,
    Idle,
    MaxDuration,
}

/// Moves bytes both ways between two sockets with splice(2) until both directions
/// closed (half-closes passed on), either failed, both were quiet for `idle`, or `limit`
/// passed. `a_to_b`/`b_to_a` count the bytes. The sockets are made non-blocking.
pub async fn splice_both_ways(
    (a, b): (&monoio::net::TcpStream, &monoio::net::TcpStream),
    idle: Option<Duration>,
    limit: Option<Duration>,
    a_to_b: impl Fn(u64),
    b_to_a: impl Fn(u64),
) -> Tunnel {
    if set_nonblocking(a).is_err() || set_nonblocking(b).is_err() {
        return Tunnel::Error;
    }
    let last = Cell::new(Instant::now());
    both(
        pump(a, b, idle, &last, a_to_b),
        pump(b, a, idle, &last, b_to_a),
        limit,
    )
    .await
}

/// Runs both directions until both closed, either failed or went idle, or the
/// connection's lifetime limit passed.
async fn both(
    a: impl Future<Output = Flow>,
    b: impl Future<Output = Flow>,
    limit: Option<Duration>,
) -> Tunnel {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut deadline = pin!(async move {
        match limit {
            Some(t) => monoio::time::sleep(t).await,
            None => std::future::pending::<()>().await,
        }
    });
    let (mut fa, mut fb) = (None, None);
    std::future::poll_fn(|cx| {
        if fa.is_none() {
            if let Poll::Ready(f) = a.as_mut().poll(cx) {
                fa = Some(f);
            }
        }
        if fb.is_none() {
            if let Poll::Ready(f) = b.as_mut().poll(cx) {
                fb = Some(f);
            }
        }
        for f in [fa, fb].into_iter().flatten() {
            match f {
                Flow::Error => return Poll::Ready(Tunnel::Error),
                Flow::Idle => return Poll::Ready(Tunnel::Idle),
                Flow::Closed => {}
            }
        }
        if fa.is_some() && fb.is_some() {
            return Poll::Ready(Tunnel::Done);
        }
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Tunnel::MaxDuration);
        }
        Poll::Pending
    })
    .await
}

/// Copies both ways between two connections of which at least one is TLS (decrypted
/// bytes cannot be spliced), through user space, until both directions closed, either
/// failed, both were quiet for `idle`, or `limit` passed. A plaintext side is reached
/// through a poll-style twin of its socket. Returns the bytes moved each way.
pub async fn copy_tls_tunnel<A, B>(
    a: &mut MaybeTls<monoio::net::TcpStream, A>,
    b: &mut MaybeTls<monoio::net::TcpStream, B>,
    idle: Option<Duration>,
    limit: Option<Duration>,
) -> (Tunnel, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    copy_tls_tunnel_mx(a, b, idle, limit, [None, None], [&|_| {}, &|_| {}]).await
}

/// [`copy_tls_tunnel`] with Istio's TCP metadata exchange on either side (`mx[0]` for
/// `a`, `mx[1]` for `b`): the peers' frames are taken off the stream, this side's put on.
/// `read` is told of the bytes read from each side as they pass (a connection's stats are
/// current by the time its peer sees it end; Istio's periodic TCP reports read them).
pub async fn copy_tls_tunnel_mx<A, B>(
    a: &mut MaybeTls<monoio::net::TcpStream, A>,
    b: &mut MaybeTls<monoio::net::TcpStream, B>,
    idle: Option<Duration>,
    limit: Option<Duration>,
    mx: [Option<super::exchange::MxSide>; 2],
    read: [&dyn Fn(u64); 2],
) -> (Tunnel, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let [mx_a, mx_b] = mx;
    let (mut ta, mut tb) = (None, None);
    let (Some(x), Some(y)) = (pollable(a, &mut ta), pollable(b, &mut tb)) else {
        return (Tunnel::Error, 0, 0);
    };
    let (mut xa, mut yb);
    let x: &mut (dyn Pollable + Unpin) = match mx_a {
        Some(side) => {
            xa = super::exchange::Mx::new(x, side);
            &mut xa
        }
        None => x,
    };
    let y: &mut (dyn Pollable + Unpin) = match mx_b {
        Some(side) => {
            yb = super::exchange::Mx::new(y, side);
            &mut yb
        }
        None => y,
    };
    copy_pollables(x, y, idle, limit, read).await
}

/// Copies both ways between a connection and any poll-style stream (an HTTP/2 stream
/// carrying a tunnel), as [`copy_tls_tunnel`] does. `read[0]` is told of the bytes read
/// from `a` as they pass, `read[1]` of those from `b`.
pub async fn copy_to_stream<A>(
    a: &mut MaybeTls<monoio::net::TcpStream, A>,
    b: &mut (dyn Pollable + Unpin),
    idle: Option<Duration>,
    limit: Option<Duration>,
    read: [&dyn Fn(u64); 2],
) -> (Tunnel, u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
{
    let mut ta = None;
    let Some(x) = pollable(a, &mut ta) else {
        return (Tunnel::Error, 0, 0);
    };
    copy_pollables(x, b, idle, limit, read).await
}

/// A connection as a poll-style stream: a TLS stream as it is, a plaintext socket through
/// its twin (kept in `twin`); `None` when the twin cannot be made.
fn pollable<'a, A: AsyncRead + AsyncWrite + Unpin + 'a>(
    a: &'a mut MaybeTls<monoio::net::TcpStream, A>,
    twin: &'a mut Option<monoio::net::tcp::stream_poll::TcpStreamPoll>,
) -> Option<&'a mut (dyn Pollable + Unpin + 'a)> {
    match a {
        MaybeTls::Plain(p) => Some(twin.insert(poll_twin(p).ok()?)),
        MaybeTls::Tls(t) => Some(&mut t.0),
    }
}

async fn copy_pollables(
    x: &mut (dyn Pollable + Unpin),
    y: &mut (dyn Pollable + Unpin),
    idle: Option<Duration>,
    limit: Option<Duration>,
    read: [&dyn Fn(u64); 2],
) -> (Tunnel, u64, u64) {
    let last = Cell::new(Instant::now());
    // Bytes read from each side, counted as they pass: an error or a limit still knows
    // how much moved.
    let [on_a, on_b] = read;
    let (read_a, read_b) = (Cell::new(0), Cell::new(0));
    let mut x = Active {
        inner: x,
        last: &last,
        read: &read_a,
        on_read: on_a,
    };
    let mut y = Active {
        inner: y,
        last: &last,
        read: &read_b,
        on_read: on_b,
    };
    let copy = tokio::io::copy_bidirectional(&mut x, &mut y);
    let quiet = async {
        let Some(t) = idle else {
            return std::future::pending().await;
        };
        loop {
            let since = last.get().elapsed();
            if since >= t {
                return;
            }
            monoio::time::sleep(t - since).await;
        }
    };
    let limit = async {
        match limit {
            Some(t) => monoio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let ended = monoio::select! {
        r = copy => match r {
            Ok(_) => Tunnel::Done,
            Err(_) => Tunnel::Error,
        },
        () = quiet => Tunnel::Idle,
        () = limit => Tunnel::MaxDuration,
    };
    (ended, read_a.get(), read_b.get())
}

/// A poll-style stream, as a trait object (a TLS stream, a plain socket's twin, an
/// HTTP/2 stream).
pub trait Pollable: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> Pollable for T {}

/// A stream that notes when bytes last moved through it (a tunnel's idle timeout).
struct Active<'a, S: ?Sized> {
    inner: &'a mut S,
    last: &'a Cell<Instant>,
    /// Bytes read from it so far.
    read: &'a Cell<u64>,
    /// Told of each read's bytes.
    on_read: &'a dyn Fn(u64),
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Active<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.last.set(Instant::now());
            self.read.set(self.read.get() + n as u64);
            (self.on_read)(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Active<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// A poll-style handle on the same socket as `s` (a duplicated descriptor), for a tunnel
/// that copies through user space because its other side is TLS. `s` stays open and
/// owned by its pool entry; the socket closes once both are dropped.
pub fn poll_twin(
    s: &monoio::net::TcpStream,
) -> io::Result<monoio::net::tcp::stream_poll::TcpStreamPoll> {
    // SAFETY: `s` is a live socket for this whole call (it is borrowed), and the borrowed
    // descriptor is only duplicated, never closed.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(s.as_raw_fd()) };
    let std = std::net::TcpStream::from(fd.try_clone_to_owned()?);
    std.set_nonblocking(true)?;
    monoio::net::TcpStream::from_std(std)?
        .try_into_poll_io()
        .map_err(|(e, _)| e)
}
