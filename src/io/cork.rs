//! One write per wake-up for an `h2` connection, as Envoy writes a connection's output
//! buffer once per event-loop iteration.
//!
//! `h2` flushes its codec whenever it has buffered a DATA frame it does not copy (any of
//! 256 bytes or more), so a connection that several streams answer in one poll wrote one
//! syscall per stream (and one TLS record each, on mutual TLS). Under [`Corked::poll`] the
//! connection's writes and flushes only gather bytes, in its core's gather buffer; when
//! its poll returns they go to the stream in one write (one TLS record of up to 16 KB, one
//! send). A write outside a corked poll (the handshake) goes through at once.
//!
//! The connection's frames are held only for the rest of the poll that made them, so
//! nothing waits for a later wake-up: what the socket does not take moves to the
//! connection's own buffer, the task is registered for the socket's room, and `h2` is held
//! back (`Pending`) once [`HELD_BYTES`] are waiting.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Unsent bytes past which a corked connection's writes wait for the socket.
pub const HELD_BYTES: usize = 64 * 1024;

/// A core's gather buffer larger than this is freed once sent.
const KEEP_GATHER: usize = 256 * 1024;

thread_local! {
    /// The core's gather buffer. One corked poll runs at a time on a core and what it
    /// gathered goes out when the poll returns, so the core's connections share it; only
    /// what the socket leaves moves into the connection's own buffer. An idle connection
    /// holds no buffer of its own.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Shared<IO> {
    io: IO,
    /// Bytes the stream has not taken yet (only while it is full), in order.
    out: Vec<u8>,
    corked: bool,
    /// This poll gathers into the core's buffer (nothing of this connection was waiting).
    gathering: bool,
    /// A write that failed after its poll returned: `h2` sees it on its next call.
    failed: Option<io::ErrorKind>,
}

impl<IO: AsyncWrite + Unpin> Shared<IO> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                // Only under backpressure: the rest moves to the front.
                Poll::Ready(Ok(n)) => drop(self.out.drain(..n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.out = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Sends what this poll gathered in the core's buffer; what the socket does not take
    /// moves to the connection's own.
    fn send_gathered(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.gathering = false;
        GATHER.with(|g| {
            let mut g = g.borrow_mut();
            let mut sent = 0;
            let mut res = Ok(());
            while sent < g.len() {
                match Pin::new(&mut self.io).poll_write(cx, &g[sent..]) {
                    Poll::Ready(Ok(0)) => res = Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => {
                        sent += n;
                        continue;
                    }
                    Poll::Ready(Err(e)) => res = Err(e),
                    Poll::Pending => self.out.extend_from_slice(&g[sent..]),
                }
                break;
            }
            g.clear();
            if g.capacity() > KEEP_GATHER {
                *g = Vec::new();
            }
            res
        })
    }

    /// Moves what this poll gathered so far to the connection's own buffer: a burst past
    /// [`HELD_BYTES`], or a shutdown inside the poll.
    fn ungather(&mut self) {
        if self.gathering {
            self.gathering = false;
            GATHER.with(|g| {
                let mut g = g.borrow_mut();
                self.out.extend_from_slice(&g);
                g.clear();
            });
        }
    }

    /// What the connection wrote, sent and flushed below: a layer under this one (the
    /// flood guard's queue, TLS) may hold bytes of its own until it is flushed.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

impl<IO> Shared<IO> {
    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(k) => Err(io::Error::new(k, "HTTP/2 connection write failed")),
            None => Ok(()),
        }
    }
}

/// The stream an `h2` connection is given: see the module docs.
pub struct Cork<IO>(Rc<RefCell<Shared<IO>>>);

/// What polls the connection with its writes gathered.
pub struct Corked<IO>(Rc<RefCell<Shared<IO>>>);

/// `io` as the connection's stream, and the handle that polls the connection over it.
pub fn cork<IO>(io: IO) -> (Cork<IO>, Corked<IO>) {
    let shared = Rc::new(RefCell::new(Shared {
        io,
        out: Vec::new(),
        corked: false,
        gathering: false,
        failed: None,
    }));
    (Cork(shared.clone()), Corked(shared))
}

impl<IO: AsyncWrite + Unpin> Corked<IO> {
    /// Runs `f` (a future that polls the connection), each of its polls with the writes
    /// gathered and sent when it returns.
    pub async fn poll<F: Future>(&self, f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            {
                let mut s = self.0.borrow_mut();
                s.corked = true;
                // The core's buffer, unless bytes of this connection wait (they go first)
                // or another poll's are there (never, with one corked poll at a time).
                s.gathering = s.out.is_empty() && GATHER.with(|g| g.borrow().is_empty());
            }
            let res = f.as_mut().poll(cx);
            let mut s = self.0.borrow_mut();
            s.corked = false;
            let sent = if s.gathering {
                s.send_gathered(cx)
            } else {
                Ok(())
            };
            let sent = sent.and_then(|()| match s.poll_send(cx) {
                Poll::Ready(Err(e)) => Err(e),
                _ => Ok(()),
            });
            if let Err(e) = sent {
                // The connection learns of it on its next call, so it is polled again.
                s.failed = Some(e.kind());
                cx.waker().wake_by_ref();
            }
            res
        })
        .await
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Cork<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        s.check()?;
        Pin::new(&mut s.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Cork<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut s = self.0.borrow_mut();
        s.check()?;
        if !s.corked && s.out.is_empty() {
            return Pin::new(&mut s.io).poll_write_vectored(cx, bufs);
        }
        let n = bufs.iter().map(|b| b.len()).sum();
        if s.gathering {
            let held = GATHER.with(|g| {
                let mut g = g.borrow_mut();
                bufs.iter().for_each(|b| g.extend_from_slice(b));
                g.len()
            });
            if held >= HELD_BYTES {
                s.ungather();
            }
            return Poll::Ready(Ok(n));
        }
        if s.out.len() >= HELD_BYTES {
            std::task::ready!(s.poll_drain(cx))?;
        }
        bufs.iter().for_each(|b| s.out.extend_from_slice(b));
        Poll::Ready(Ok(n))
    }

    /// Bytes are copied here either way; vectored, `h2` does not copy small DATA frames
    /// into its own buffer first.
    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        s.check()?;
        if s.corked {
            return Poll::Ready(Ok(()));
        }
        s.poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.0.borrow_mut();
        s.ungather();
        if s.failed.is_none() {
            std::task::ready!(s.poll_drain(cx))?;
        }
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes `room` more bytes per write call, counting the calls.
    struct Socket {
        got: Vec<u8>,
        room: usize,
        writes: usize,
        flushes: usize,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.room == 0 {
                return Poll::Pending;
            }
            this.writes += 1;
            let n = buf.len().min(this.room);
            this.got.extend_from_slice(&buf[..n]);
            this.room -= n;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn socket(room: usize) -> Socket {
        Socket {
            got: Vec::new(),
            room,
            writes: 0,
            flushes: 0,
        }
    }

    fn write(c: &mut Cork<Socket>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(c).poll_write(cx, b)
    }

    fn flush(c: &mut Cork<Socket>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(c).poll_flush(cx)
    }

    /// Polls `step` once under the cork, as `Corked::poll` does each time it is woken.
    fn corked_poll(
        corked: &Corked<Socket>,
        cx: &mut Context<'_>,
        step: impl FnOnce(&mut Context<'_>),
    ) {
        let mut once = Some(step);
        let mut fut = std::pin::pin!(corked.poll(std::future::poll_fn(move |cx| {
            (once.take().expect("polled once"))(cx);
            Poll::Ready(())
        })));
        assert!(fut.as_mut().poll(cx).is_ready());
    }

    #[test]
    fn a_poll_writes_once_whatever_the_connection_flushed() {
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let (mut c, corked) = cork(socket(usize::MAX));
        corked_poll(&corked, cx, |cx| {
            for frame in [&b"headers"[..], b"data-1", b"data-2", b"trailers"] {
                assert!(matches!(write(&mut c, cx, frame), Poll::Ready(Ok(n)) if n == frame.len()));
                assert!(matches!(flush(&mut c, cx), Poll::Ready(Ok(()))));
            }
            assert_eq!(
                c.0.borrow().io.writes,
                0,
                "nothing is written inside the poll"
            );
        });
        let s = c.0.borrow();
        assert_eq!(s.io.got, b"headersdata-1data-2trailers");
        assert_eq!(s.io.writes, 1, "one write when the poll returned");
        // Then the layer below is flushed once: the flood guard's queue and TLS hold
        // bytes of their own until they are.
        assert_eq!(s.io.flushes, 1);
    }

    #[test]
    fn outside_a_poll_writes_go_through() {
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let (mut c, _corked) = cork(socket(usize::MAX));
        assert!(matches!(write(&mut c, cx, b"preface"), Poll::Ready(Ok(7))));
        assert!(matches!(flush(&mut c, cx), Poll::Ready(Ok(()))));
        let s = c.0.borrow();
        assert_eq!(
            (s.io.got.as_slice(), s.io.writes, s.io.flushes),
            (&b"preface"[..], 1, 1)
        );
    }

    #[test]
    fn a_full_socket_keeps_the_rest_and_holds_the_connection_back() {
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let (mut c, corked) = cork(socket(10));
        let big = vec![7u8; HELD_BYTES + 100];
        corked_poll(&corked, cx, |cx| {
            assert!(matches!(write(&mut c, cx, &big), Poll::Ready(Ok(_))));
        });
        // The socket took 10 bytes; the rest is held, and past HELD_BYTES the connection
        // waits (its task registered for the socket's room) instead of gathering more.
        assert_eq!(c.0.borrow().io.got.len(), 10);
        corked_poll(&corked, cx, |cx| {
            assert!(write(&mut c, cx, b"more").is_pending());
            // A flush under the cork still answers at once: the bytes are accounted for.
            assert!(matches!(flush(&mut c, cx), Poll::Ready(Ok(()))));
        });
        c.0.borrow_mut().io.room = usize::MAX;
        corked_poll(&corked, cx, |cx| {
            assert!(matches!(write(&mut c, cx, b"more"), Poll::Ready(Ok(4))));
        });
        let s = c.0.borrow();
        assert_eq!(
            s.io.got.len(),
            big.len() + 4,
            "everything arrives, in order"
        );
        assert_eq!(&s.io.got[big.len()..], b"more");
        assert!(s.out.capacity() < 64, "a burst's buffer is not kept");
    }

    #[test]
    fn a_slow_socket_holds_the_connection_back_without_growing_the_buffer() {
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let (mut c, corked) = cork(socket(0));
        let mut wrote = Vec::new();
        for round in 0..200u32 {
            // The socket takes 1 KB a wake-up; the connection offers 4 KB.
            c.0.borrow_mut().io.room = 1024;
            corked_poll(&corked, cx, |cx| {
                let chunk = vec![(round % 251) as u8; 4096];
                if let Poll::Ready(Ok(n)) = write(&mut c, cx, &chunk) {
                    wrote.extend_from_slice(&chunk[..n]);
                }
            });
            let s = c.0.borrow();
            assert!(
                s.out.len() <= HELD_BYTES + 4096,
                "round {round}: {}",
                s.out.len()
            );
            assert!(s.out.capacity() <= 2 * (HELD_BYTES + 4096), "round {round}");
        }
        let mut s = c.0.borrow_mut();
        s.io.room = usize::MAX / 2;
        assert!(s.poll_drain(cx).is_ready());
        assert_eq!(
            s.io.got, wrote,
            "what was accepted arrives whole and in order"
        );
        assert!(wrote.len() < 200 * 4096, "the connection was held back");
    }

    #[test]
    fn a_failed_write_fails_the_connection_next_time() {
        struct Broken;
        impl AsyncWrite for Broken {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let cx = &mut Context::from_waker(std::task::Waker::noop());
        let (mut c, corked) = cork(Broken);
        {
            let mut fut = std::pin::pin!(corked.poll(std::future::poll_fn(|cx| {
                let _ = Pin::new(&mut c).poll_write(cx, b"frame");
                Poll::Ready(())
            })));
            assert!(fut.as_mut().poll(cx).is_ready());
        }
        let err = match Pin::new(&mut c).poll_flush(cx) {
            Poll::Ready(Err(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
