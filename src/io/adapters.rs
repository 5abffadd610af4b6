//! Poll-style streams (TLS, h2) beside monoio's owned-buffer ones: replaying sniffed
//! bytes (`Rewind`), poll-style streams as owned-buffer IO (`RentIo`), and a plain-or-TLS
//! stream (`MaybeTls`) that sends at once when it can.
#![allow(unsafe_code)]

use super::*;

// ---- Poll-style streams (TLS, h2) beside the owned-buffer ones ----

/// Bytes already read from the socket (what the listener filters sniffed), then the
/// socket itself: a TLS handshake or an h2 connection starts from the first byte.
pub struct Rewind<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Writes of a wrapper that only changes reads go straight to its `inner` stream.
macro_rules! writes_pass_through {
    ($wrapper:ident) => {
        impl<T: AsyncWrite + Unpin> AsyncWrite for $wrapper<T> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}

writes_pass_through!(Rewind);

/// The socket under a TLS stream, read in large gulps. rustls asks for 4 KB at a time, so
/// a connection with 20 KB waiting took five reads (and the sixth that finds the socket
/// empty); Envoy reads 16 KB slices. A read for less than [`READ_AHEAD`] reads that much
/// into the core's buffer; what the reader did not ask for is kept in one that lives only
/// while it holds bytes, so an idle connection holds none.
pub struct ReadAhead<T> {
    inner: T,
    buf: Vec<u8>,
    pos: usize,
}

/// What one read of a TLS socket asks for: a full TLS record and some.
pub const READ_AHEAD: usize = 32 * 1024;

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes read from the socket that the reader above has not taken yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

impl<T: AsyncRead + Unpin> ReadAhead<T> {
    /// Waits until the socket has bytes and keeps what one read takes for the reader above:
    /// how a quiet connection waits for its next request with no read through the layers
    /// above (TLS) in progress, and so none of their buffers. The bytes kept (0: the peer
    /// closed).
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buffered() > 0 {
            return Ok(self.buffered());
        }
        let Self { inner, buf, pos } = self;
        std::future::poll_fn(|cx| {
            gulp(inner, cx, |got| {
                *buf = got.to_vec();
                *pos = 0;
                got.len()
            })
        })
        .await
    }
}

impl<T: AsRawFd> AsRawFd for ReadAhead<T> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.buf.len() {
            if out.remaining() >= READ_AHEAD {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // What the reader asked for goes to it; only the rest (or none: end of stream)
            // is kept, in a buffer of the connection's own.
            let (buf, pos) = (&mut this.buf, &mut this.pos);
            return gulp(&mut this.inner, cx, |got| {
                let n = out.remaining().min(got.len());
                out.put_slice(&got[..n]);
                if n < got.len() {
                    *buf = got[n..].to_vec();
                    *pos = 0;
                }
            });
        }
        let n = out.remaining().min(this.buf.len() - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.buf.len() {
            this.buf = Vec::new();
            this.pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// One read of `inner` into the core's buffer, its bytes handed to `took` (none: the end
/// of the stream).
fn gulp<T: AsyncRead + Unpin, R>(
    inner: &mut T,
    cx: &mut Context<'_>,
    took: impl FnOnce(&[u8]) -> R,
) -> Poll<io::Result<R>> {
    GULP.with(|gulp| {
        let mut gulp = gulp.borrow_mut();
        gulp.clear();
        gulp.reserve_exact(READ_AHEAD);
        let mut rb = ReadBuf::uninit(&mut gulp.spare_capacity_mut()[..READ_AHEAD]);
        std::task::ready!(Pin::new(inner).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(took(rb.filled())))
    })
}

thread_local! {
    /// The core's read buffer: a read fills it, the reader takes what it asked for, and
    /// only a rest moves to the connection. A read that finds nothing, or bytes that
    /// fit what was asked (a small request), allocates nothing.
    static GULP: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

writes_pass_through!(ReadAhead);

/// A poll-style stream (tokio's `AsyncRead`/`AsyncWrite`: a TLS stream over monoio's
/// poll-io bridge) seen through monoio's owned-buffer traits, so the HTTP/1.1 path runs
/// over it unchanged. The buffer is owned by the call for its whole duration, so it cannot
/// move or be freed while the poll writes into it.
pub struct RentIo<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> monoio::io::AsyncReadRent for RentIo<T> {
    async fn read<B: monoio::buf::IoBufMut>(&mut self, mut buf: B) -> monoio::BufResult<usize, B> {
        let ptr = buf.write_ptr();
        let len = buf.bytes_total();
        // SAFETY: `write_ptr` points at `bytes_total` writable bytes of a buffer this call
        // owns until it returns; the slice lives only inside this call and is viewed as
        // uninitialised, so nothing reads bytes the poll did not write.
        let slice =
            unsafe { std::slice::from_raw_parts_mut(ptr.cast::<std::mem::MaybeUninit<u8>>(), len) };
        let mut rb = tokio::io::ReadBuf::uninit(slice);
        let res =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.0).poll_read(cx, &mut rb)).await;
        let n = rb.filled().len();
        // SAFETY: the poll initialised the first `n` bytes (ReadBuf's filled part).
        unsafe { buf.set_init(n) };
        (res.map(|()| n), buf)
    }

    async fn readv<B: monoio::buf::IoVecBufMut>(
        &mut self,
        mut buf: B,
    ) -> monoio::BufResult<usize, B> {
        // SAFETY: the iovecs come from a buffer this call owns until it returns.
        let Some(raw) = (unsafe { monoio::buf::RawBuf::new_from_iovec_mut(&mut buf) }) else {
            return (Ok(0), buf);
        };
        let (res, _) = self.read(raw).await;
        if let Ok(n) = res {
            // SAFETY: `n` bytes were written at the start of the first iovec.
            unsafe { buf.set_init(n) };
        }
        (res, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> monoio::io::AsyncWriteRent for RentIo<T> {
    async fn write<B: monoio::buf::IoBuf>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        // SAFETY: `read_ptr` points at `bytes_init` initialised bytes of a buffer this
        // call owns until it returns.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_write(cx, data)).await;
        // The owned-buffer callers never flush: what TLS buffered goes to the socket now,
        // so a response is never left sitting in the record layer.
        if res.is_ok() {
            if let Err(e) = std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_flush(cx)).await {
                return (Err(e), buf);
            }
        }
        (res, buf)
    }

    async fn writev<B: monoio::buf::IoVecBuf>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        // SAFETY: the iovecs come from a buffer this call owns until it returns.
        let Some(raw) = (unsafe { monoio::buf::RawBuf::new_from_iovec(&buf) }) else {
            return (Ok(0), buf);
        };
        let (res, _) = self.write(raw).await;
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.0).poll_flush(cx)).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.0).poll_shutdown(cx)).await
    }
}

/// A downstream connection as the HTTP/1.1 path reads and writes it: a plain socket with
/// owned-buffer I/O (io_uring where it runs), or a TLS stream (`T`) through [`RentIo`].
pub enum MaybeTls<P, T> {
    Plain(P),
    Tls(Box<RentIo<T>>),
}

impl<P, T> monoio::io::AsyncReadRent for MaybeTls<P, T>
where
    P: monoio::io::AsyncReadRent,
    T: AsyncRead + Unpin,
{
    async fn read<B: monoio::buf::IoBufMut>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        match self {
            MaybeTls::Plain(p) => p.read(buf).await,
            MaybeTls::Tls(t) => t.read(buf).await,
        }
    }

    async fn readv<B: monoio::buf::IoVecBufMut>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        match self {
            MaybeTls::Plain(p) => p.readv(buf).await,
            MaybeTls::Tls(t) => t.readv(buf).await,
        }
    }
}

impl<P, T> MaybeTls<P, T>
where
    P: monoio::io::AsyncWriteRent + AsRawFd,
    T: AsyncWrite + Unpin,
{
    /// Writes all of `buf`. With `now`, a plain socket first gets one non-blocking send(2)
    /// from this thread, and only what it did not take goes through the driver.
    ///
    /// On io_uring a send op is submitted at the core's next park, and since it completes
    /// at once its completion ends that park: a request alone on its core pays one
    /// `io_uring_enter` for each of its two writes, plus the op's bookkeeping and a wake of
    /// its task, before the enter that sleeps for the answer. A direct send costs the same
    /// one syscall without the rest. Under load the driver's way wins (one enter submits
    /// many connections' sends), so the caller asks for `now` only when nothing else runs.
    pub async fn write_all_now(
        &mut self,
        buf: Vec<u8>,
        now: bool,
    ) -> monoio::BufResult<usize, Vec<u8>> {
        use monoio::buf::IoBuf;
        use monoio::io::AsyncWriteRentExt;
        if let (MaybeTls::Plain(p), true) = (&mut *self, now) {
            match send_now(p, &buf) {
                Some(Ok(n)) if n == buf.len() => return (Ok(n), buf),
                Some(Ok(n)) => {
                    let (res, rest) = p.write_all(buf.slice(n..)).await;
                    return (res.map(|m| n + m), rest.into_inner());
                }
                Some(Err(e)) => return (Err(e), buf),
                None => {}
            }
        }
        self.write_all(buf).await
    }
}

/// One non-blocking send(2) of `buf`: `None` when the socket buffer is full (nothing
/// was sent; the caller waits through the driver).
pub(super) fn send_now(sock: &impl AsRawFd, buf: &[u8]) -> Option<io::Result<usize>> {
    // SAFETY: the socket stays open for the call (borrowed), and `buf` is a valid slice of
    // `buf.len()` initialised bytes. MSG_NOSIGNAL: a closed peer is an EPIPE error, not a
    // signal.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        return Some(Ok(n as usize));
    }
    let e = io::Error::last_os_error();
    (e.kind() != io::ErrorKind::WouldBlock).then_some(Err(e))
}

impl<P, T> monoio::io::AsyncWriteRent for MaybeTls<P, T>
where
    P: monoio::io::AsyncWriteRent,
    T: AsyncWrite + Unpin,
{
    async fn write<B: monoio::buf::IoBuf>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        match self {
            MaybeTls::Plain(p) => p.write(buf).await,
            MaybeTls::Tls(t) => t.write(buf).await,
        }
    }

    async fn writev<B: monoio::buf::IoVecBuf>(&mut self, buf: B) -> monoio::BufResult<usize, B> {
        match self {
            MaybeTls::Plain(p) => p.writev(buf).await,
            MaybeTls::Tls(t) => t.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(p) => p.flush().await,
            MaybeTls::Tls(t) => t.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(p) => p.shutdown().await,
            MaybeTls::Tls(t) => t.shutdown().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket with `chunks` waiting (each one arrival), counting the reads it serves.
    struct Socket {
        chunks: std::collections::VecDeque<Vec<u8>>,
        reads: usize,
    }

    impl AsyncRead for Socket {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            let Some(mut c) = self.chunks.pop_front() else {
                return Poll::Pending;
            };
            if c.is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            let n = c.len().min(buf.remaining());
            buf.put_slice(&c[..n]);
            if n < c.len() {
                self.chunks.push_front(c.split_off(n));
            }
            Poll::Ready(Ok(()))
        }
    }

    fn read(r: &mut ReadAhead<Socket>, want: usize) -> Poll<io::Result<Vec<u8>>> {
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let mut space = vec![0u8; want];
        let mut rb = ReadBuf::new(&mut space);
        match Pin::new(r).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().to_vec())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    #[test]
    fn small_reads_are_served_from_one_socket_read_then_the_buffer_goes() {
        let wire: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        let mut r = ReadAhead::new(Socket {
            chunks: [wire.clone(), Vec::new()].into(),
            reads: 0,
        });
        let mut got = Vec::new();
        while got.len() < wire.len() {
            let Poll::Ready(Ok(part)) = read(&mut r, 4096) else {
                panic!("bytes are waiting");
            };
            assert!(!part.is_empty() && part.len() <= 4096);
            got.extend(part);
            assert_eq!(r.buffered(), wire.len() - got.len());
        }
        assert_eq!(got, wire, "in order, nothing lost");
        assert_eq!(r.inner.reads, 1, "five 4 KB reads, one socket read");
        assert_eq!(r.buf.capacity(), 0, "drained, the buffer is freed");
        // The end of the stream comes through as a read of nothing.
        assert!(matches!(read(&mut r, 4096), Poll::Ready(Ok(b)) if b.is_empty()));
        assert!(read(&mut r, 4096).is_pending());
        assert_eq!(r.buf.capacity(), 0, "no buffer kept while nothing arrives");
    }

    #[test]
    fn an_arrival_that_fits_the_read_keeps_no_buffer() {
        let mut r = ReadAhead::new(Socket {
            chunks: [vec![5u8; 1100], vec![6u8; 300]].into(),
            reads: 0,
        });
        assert!(matches!(read(&mut r, 4096), Poll::Ready(Ok(b)) if b == [5u8; 1100]));
        assert_eq!((r.buffered(), r.buf.capacity()), (0, 0));
        assert!(matches!(read(&mut r, 4096), Poll::Ready(Ok(b)) if b == [6u8; 300]));
        assert!(read(&mut r, 4096).is_pending());
        assert_eq!((r.inner.reads, r.buf.capacity()), (3, 0));
    }

    #[test]
    fn a_fill_waits_for_bytes_and_keeps_them_for_the_reader() {
        let mut r = ReadAhead::new(Socket {
            chunks: [vec![7u8; 5000], Vec::new()].into(),
            reads: 0,
        });
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let fill =
            |r: &mut ReadAhead<Socket>, cx: &mut Context<'_>| std::pin::pin!(r.fill()).poll(cx);
        assert!(matches!(fill(&mut r, cx), Poll::Ready(Ok(5000))));
        // Kept, not read again: a second fill and the reads see the same bytes.
        assert!(matches!(fill(&mut r, cx), Poll::Ready(Ok(5000))));
        assert_eq!(r.inner.reads, 1);
        assert!(matches!(read(&mut r, 4096), Poll::Ready(Ok(b)) if b == [7u8; 4096]));
        assert!(matches!(read(&mut r, 4096), Poll::Ready(Ok(b)) if b == [7u8; 904]));
        assert_eq!(r.buf.capacity(), 0);
        // The end of the stream: nothing kept.
        assert!(matches!(fill(&mut r, cx), Poll::Ready(Ok(0))));
        assert!(fill(&mut r, cx).is_pending());
        assert_eq!(r.buf.capacity(), 0);
    }

    #[test]
    fn a_large_read_goes_straight_to_the_socket() {
        let mut r = ReadAhead::new(Socket {
            chunks: [vec![9u8; 100]].into(),
            reads: 0,
        });
        assert!(matches!(read(&mut r, READ_AHEAD), Poll::Ready(Ok(b)) if b == [9u8; 100]));
        assert_eq!((r.inner.reads, r.buf.capacity()), (1, 0));
    }
}
