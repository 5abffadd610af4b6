//! An HTTP/2 stream as a byte stream: the tunnel of a CONNECT (Istio's HBONE), whichever
//! side opened it. Reads take DATA frames and give their window back once the bytes went
//! on; writes send as much as the peer's window allows; shutting down ends the stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// A DATA frame read in part.
    pending: Bytes,
    /// The peer ended its side.
    eof: bool,
}

impl H2Io {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Io {
        H2Io {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
        }
    }

    /// Resets the stream (the tunnel failed or was cut short).
    pub(crate) fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

fn io_error(e: h2::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                let _ = self.recv.flow_control().release_capacity(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.pending = chunk,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Ready(None) => self.eof = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        let n = match self.send.capacity() {
            0 => match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(n))) => n,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
                }
                Poll::Pending => return Poll::Pending,
            },
            n => n,
        };
        if n == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = n.min(buf.len());
        match self
            .send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
        {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // END_STREAM: this side is done (a half-close, as a TCP FIN).
        let r = self.send.send_data(Bytes::new(), true);
        Poll::Ready(r.or_else(|e| match e.is_io() {
            true => Err(io_error(e)),
            // Already ended or reset: nothing more to say.
            false => Ok(()),
        }))
    }
}
