//! Istio's TCP metadata exchange on the wire (ALPN `istio-peer-exchange`): each side sends
//! one frame — magic `0x3D230467`, a length, then that many bytes (a protobuf `Any`) —
//! before its own bytes, and reads the peer's from the start of what it receives. A
//! stream that does not start with the magic is passed through untouched (the peer does
//! not exchange).
//!
//! When a side sends follows istio-proxy, whose filter both reads and writes: before its
//! first write, or as the peer's first bytes arrive, whichever comes first — the same for
//! the client (the upstream side) and the server (the downstream side).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The frame's magic number.
pub const MAGIC: u32 = 0x3D23_0467;

/// The largest frame accepted (a workload's metadata is a few hundred bytes).
pub const MAX_FRAME: u32 = 64 * 1024;

/// One side's part in an exchange.
pub struct MxSide {
    /// This side's whole frame (header included).
    pub frame: Arc<[u8]>,
    /// The frame was already written (before bytes the listener sniffed).
    pub sent: bool,
    /// The peer's frame payload, once read.
    pub found: Rc<RefCell<Option<Vec<u8>>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Send {
    NotYet,
    Sending(usize),
    /// Written; flushed next (rustls holds the ciphertext until then).
    Flushing,
    Done,
}

enum Read {
    /// The first bytes, until the header is complete.
    Header(Vec<u8>),
    /// A frame's payload: its length and what has come of it.
    Payload(usize, Vec<u8>),
    Done,
}

/// A stream with the exchange on it: the peer's frame is taken off what is read, this
/// side's is put before what is written.
pub struct Mx<'a, S: ?Sized> {
    inner: &'a mut S,
    side: MxSide,
    send: Send,
    read: Read,
    /// Bytes read past the frame (or a stream without one), still to be handed out.
    pending: Vec<u8>,
    pos: usize,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin + ?Sized> Mx<'a, S> {
    pub fn new(inner: &'a mut S, side: MxSide) -> Self {
        let send = if side.sent { Send::Done } else { Send::NotYet };
        Mx {
            inner,
            side,
            send,
            read: Read::Header(Vec::new()),
            pending: Vec::new(),
            pos: 0,
        }
    }

    /// Sends (and flushes) what is left of this side's frame; `Ready` once it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.send {
                Send::NotYet | Send::Done => return Poll::Ready(Ok(())),
                Send::Sending(n) if n == self.side.frame.len() => self.send = Send::Flushing,
                Send::Sending(n) => {
                    let rest = &self.side.frame[n..];
                    match ready!(Pin::new(&mut *self.inner).poll_write(cx, rest)) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(k) => self.send = Send::Sending(n + k),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Send::Flushing => {
                    ready!(Pin::new(&mut *self.inner).poll_flush(cx))?;
                    self.send = Send::Done;
                }
            }
        }
    }

    /// Takes in bytes read while the frame is being looked for.
    fn absorb(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.read {
            Read::Header(h) => {
                h.extend_from_slice(data);
                if h.len() < 8 {
                    return Ok(());
                }
                let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                if magic != MAGIC {
                    self.pending = std::mem::take(h);
                    self.read = Read::Done;
                    return Ok(());
                }
                let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if len > MAX_FRAME {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "metadata exchange frame too large",
                    ));
                }
                let rest = h.split_off(8);
                self.read = Read::Payload(len as usize, Vec::with_capacity(len as usize));
                self.absorb(&rest)
            }
            Read::Payload(need, got) => {
                let take = (*need - got.len()).min(data.len());
                got.extend_from_slice(&data[..take]);
                if got.len() == *need {
                    let mut frame = std::mem::take(got);
                    frame.shrink_to_fit();
                    *self.side.found.borrow_mut() = Some(frame);
                    self.pending.extend_from_slice(&data[take..]);
                    self.read = Read::Done;
                }
                Ok(())
            }
            Read::Done => {
                self.pending.extend_from_slice(data);
                Ok(())
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + ?Sized> AsyncRead for Mx<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // A frame started as the peer's first bytes came goes on whenever it can.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if this.pos < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.pos);
                buf.put_slice(&this.pending[this.pos..this.pos + n]);
                this.pos += n;
                if this.pos == this.pending.len() {
                    this.pending = Vec::new();
                    this.pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.read, Read::Done) {
                return Pin::new(&mut *this.inner).poll_read(cx, buf);
            }
            let mut tmp = [0u8; 4096];
            let mut rb = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut rb))?;
            let data = rb.filled();
            if data.is_empty() {
                // The peer closed before a whole header (or frame): what came passes on.
                if let Read::Header(h) = &mut this.read {
                    this.pending = std::mem::take(h);
                }
                this.read = Read::Done;
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.send == Send::NotYet {
                this.send = Send::Sending(0);
            }
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            this.absorb(data)?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + ?Sized> AsyncWrite for Mx<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.send == Send::NotYet {
            this.send = Send::Sending(0);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut *this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut *this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut *this.inner).poll_shutdown(cx)
    }
}
