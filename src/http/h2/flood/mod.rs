//! HTTP/2 flood protection, as Envoy's codec bounds it: the IO under an `h2` connection
//! is seen through [`FloodGuard`], which reads the frame headers going each way (never
//! the payloads) and ends the connection when a peer makes the proxy queue more frames
//! than it reads, or sends frames that only cost the proxy work.
//!
//! - **Outbound**: frames `h2` writes are accepted into a queue of the guard's when the
//!   socket cannot take them (bounded in bytes: past that, `h2` is held back as before).
//!   More than `max_outbound_frames` queued frames (10,000), or more than
//!   `max_outbound_control_frames` queued PING and SETTINGS acknowledgements and
//!   RST_STREAMs (1,000), is a flood: the peer asks for answers it does not read.
//! - **Inbound**: more than `max_consecutive_inbound_frames_with_empty_payload` (1) DATA,
//!   HEADERS or CONTINUATION frames in a row with no payload and no END_STREAM; more
//!   PRIORITY frames than `max_inbound_priority_frames_per_stream` × (1 + streams opened)
//!   (100); more WINDOW_UPDATE frames than 5 + 2 × (streams opened +
//!   `max_inbound_window_update_frames_per_data_frame_sent` × DATA frames sent) (10).
//!
//! A flood fails the IO, so `h2` gives up the connection; the server counts Envoy's stat
//! (`http2.outbound_flood`, …) from [`FloodState::tripped`].
//!
//! When the socket takes every write (the usual case) nothing is copied: bytes go straight
//! through and only the 9-byte frame headers are looked at.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::model::FloodLimits;

/// What ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Outbound,
    OutboundControl,
    InboundEmptyFrames,
    InboundPriorityFrames,
    InboundWindowUpdateFrames,
}

impl Flood {
    /// Envoy's `http2.` stat for it.
    pub fn stat(self) -> crate::stats::Http2Stat {
        use crate::stats::Http2Stat as S;
        match self {
            Flood::Outbound => S::OutboundFlood,
            Flood::OutboundControl => S::OutboundControlFlood,
            Flood::InboundEmptyFrames => S::InboundEmptyFramesFlood,
            Flood::InboundPriorityFrames => S::InboundPriorityFramesFlood,
            Flood::InboundWindowUpdateFrames => S::InboundWindowUpdateFramesFlood,
        }
    }
}

/// The most bytes the guard queues for a socket that does not take them.
const QUEUE_BYTES: usize = 1 << 20;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const PADDED: u8 = 0x8;

/// One frame header, and where the frame ends in the byte stream.
#[derive(Debug, Clone, Copy)]
struct Frame {
    kind: u8,
    flags: u8,
    len: u32,
    stream: u32,
    end: u64,
    /// The pad length of a PADDED DATA or HEADERS frame, once its first payload byte is in.
    pad: u8,
}

/// Finds frame headers in a byte stream fed in pieces.
#[derive(Debug, Default)]
struct Scanner {
    /// Bytes still to skip: the client preface, or the rest of a frame's payload.
    skip: u64,
    header: [u8; 9],
    have: usize,
    /// Stream offset of the next byte fed.
    at: u64,
    /// A PADDED frame whose first payload byte (the pad length) is still to come.
    awaiting_pad: Option<Frame>,
}

impl Scanner {
    fn after(skip: u64) -> Self {
        Scanner {
            skip,
            ..Scanner::default()
        }
    }

    /// Feeds `bytes`; `on_frame` gets each frame whose header (and pad length, for a
    /// padded frame) is complete.
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if let Some(mut f) = self.awaiting_pad.take() {
                f.pad = bytes[0];
                on_frame(f);
            }
            if self.skip > 0 {
                let n = self.skip.min(bytes.len() as u64) as usize;
                self.skip -= n as u64;
                self.at += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            self.at += n as u64;
            bytes = &bytes[n..];
            if self.have < 9 {
                return;
            }
            self.have = 0;
            let h = self.header;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            let f = Frame {
                kind: h[3],
                flags: h[4],
                len,
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                end: self.at + u64::from(len),
                pad: 0,
            };
            self.skip = u64::from(len);
            if f.flags & PADDED != 0 && matches!(f.kind, DATA | HEADERS) && len > 0 {
                self.awaiting_pad = Some(f);
            } else {
                on_frame(f);
            }
        }
    }
}

/// Counters and the verdict, shared with the server loop.
#[derive(Debug, Default)]
pub struct FloodState {
    tripped: Cell<Option<Flood>>,
}

impl FloodState {
    pub fn tripped(&self) -> Option<Flood> {
        self.tripped.get()
    }
}

struct Inbound {
    scanner: Scanner,
    empty_in_a_row: u32,
    priority: u64,
    window_updates: u64,
    streams_opened: u64,
    last_stream: u32,
}

struct Outbound {
    scanner: Scanner,
    /// Bytes accepted from `h2` that the socket has not taken yet.
    queue: VecDeque<u8>,
    /// Stream offset of the first queued byte.
    flushed: u64,
    /// Queued frames (those ending past `flushed`): end offset, and whether it is a
    /// control frame.
    pending: VecDeque<(u64, bool)>,
    pending_control: u32,
    data_frames: u64,
}

/// The IO of one HTTP/2 connection, with its frames counted (see the module docs).
pub struct FloodGuard<IO> {
    inner: IO,
    limits: FloodLimits,
    state: Rc<FloodState>,
    inbound: Inbound,
    outbound: Outbound,
}

impl<IO> FloodGuard<IO> {
    /// For the server side: the peer's bytes open with the client preface.
    pub fn server(inner: IO, limits: FloodLimits) -> (Self, Rc<FloodState>) {
        let state = Rc::new(FloodState::default());
        let guard = FloodGuard {
            inner,
            limits,
            state: state.clone(),
            inbound: Inbound {
                scanner: Scanner::after(crate::http::h2::PREFACE.len() as u64),
                empty_in_a_row: 0,
                priority: 0,
                window_updates: 0,
                streams_opened: 0,
                last_stream: 0,
            },
            outbound: Outbound {
                scanner: Scanner::default(),
                queue: VecDeque::new(),
                flushed: 0,
                pending: VecDeque::new(),
                pending_control: 0,
                data_frames: 0,
            },
        };
        (guard, state)
    }

    fn trip(&self, f: Flood) -> io::Error {
        if self.state.tripped.get().is_none() {
            self.state.tripped.set(Some(f));
        }
        io::Error::other("HTTP/2 flood")
    }

    fn check(&self) -> io::Result<()> {
        match self.state.tripped.get() {
            Some(f) => Err(self.trip(f)),
            None => Ok(()),
        }
    }

    /// Counts inbound frames in `bytes` (just read).
    fn scan_inbound(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut verdict = None;
        let l = self.limits;
        let data_frames = self.outbound.data_frames;
        let i = &mut self.inbound;
        let Inbound {
            scanner,
            empty_in_a_row,
            priority,
            window_updates,
            streams_opened,
            last_stream,
        } = i;
        scanner.feed(bytes, |f| match f.kind {
            DATA | HEADERS | CONTINUATION => {
                let payload = if f.flags & PADDED != 0 && f.kind != CONTINUATION {
                    f.len.saturating_sub(u32::from(f.pad) + 1)
                } else {
                    f.len
                };
                if payload == 0 && f.flags & END_STREAM == 0 {
                    *empty_in_a_row += 1;
                    if *empty_in_a_row > l.max_consecutive_empty_frames {
                        verdict = Some(Flood::InboundEmptyFrames);
                    }
                } else {
                    *empty_in_a_row = 0;
                }
                if f.kind == HEADERS && f.stream > *last_stream {
                    *last_stream = f.stream;
                    *streams_opened += 1;
                }
            }
            PRIORITY => {
                *priority += 1;
                let limit = u64::from(l.max_priority_frames_per_stream) * (1 + *streams_opened);
                if *priority > limit {
                    verdict = Some(Flood::InboundPriorityFrames);
                }
            }
            WINDOW_UPDATE => {
                *window_updates += 1;
                let per_data = u64::from(l.max_window_updates_per_data_frame_sent);
                if *window_updates > 5 + 2 * (*streams_opened + per_data * data_frames) {
                    verdict = Some(Flood::InboundWindowUpdateFrames);
                }
            }
            _ => {}
        });
        match verdict {
            Some(f) => Err(self.trip(f)),
            None => Ok(()),
        }
    }

    /// Counts the frames in `bytes`, just accepted from `h2`: those that end past what the
    /// socket has taken are queued.
    fn scan_outbound(&mut self, bytes: &[u8]) -> io::Result<()> {
        let o = &mut self.outbound;
        let flushed = o.flushed;
        let mut control = 0;
        let Outbound {
            scanner,
            pending,
            data_frames,
            ..
        } = o;
        scanner.feed(bytes, |f| {
            let is_control =
                f.kind == RST_STREAM || (matches!(f.kind, PING | SETTINGS) && f.flags & ACK != 0);
            if f.kind == DATA {
                *data_frames += 1;
            }
            if f.end > flushed {
                pending.push_back((f.end, is_control));
                control += u32::from(is_control);
            }
        });
        o.pending_control += control;
        if o.pending.len() > self.limits.max_outbound_frames as usize {
            return Err(self.trip(Flood::Outbound));
        }
        if o.pending_control > self.limits.max_outbound_control_frames {
            return Err(self.trip(Flood::OutboundControl));
        }
        Ok(())
    }

    /// `n` more bytes reached the socket: frames wholly written leave the queue count.
    fn flushed(&mut self, n: usize) {
        let o = &mut self.outbound;
        o.flushed += n as u64;
        while let Some(&(end, control)) = o.pending.front() {
            if end > o.flushed {
                break;
            }
            o.pending.pop_front();
            o.pending_control -= u32::from(control);
        }
    }
}

impl<IO: AsyncWrite + Unpin> FloodGuard<IO> {
    /// Writes queued bytes to the socket until it is empty or the socket is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outbound.queue.is_empty() {
            let (front, _) = self.outbound.queue.as_slices();
            match Pin::new(&mut self.inner).poll_write(cx, front) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.outbound.queue.drain(..n);
                    self.flushed(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.outbound.queue.capacity() > 64 * 1024 {
            self.outbound.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FloodGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.scan_inbound(&buf.filled()[before..])?;
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FloodGuard<IO> {
    /// One write is a vectored write of one slice: accepted whole or in part, what the
    /// socket does not take queued, and every frame counted.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// All of `bufs` at once: `h2` hands a vectored stream every
    /// frame it has buffered (headers, and DATA payloads it does not copy), which then
    /// costs one writev(2) per flush instead of a send(2) per chunk.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        // Older bytes first; `Pending` here still lets new bytes join the queue.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        let mut direct = 0;
        if this.outbound.queue.is_empty() {
            match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
                Poll::Ready(Ok(n)) => direct = n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let room = QUEUE_BYTES.saturating_sub(this.outbound.queue.len());
        let accepted = direct + (total - direct).min(room);
        if accepted == 0 {
            return Poll::Pending;
        }
        this.flushed(direct);
        // The accepted bytes in order: scanned all, queued past `direct`.
        let mut offset = 0;
        for b in bufs {
            if offset >= accepted {
                break;
            }
            let part = &b[..b.len().min(accepted - offset)];
            let skip = direct.saturating_sub(offset).min(part.len());
            this.outbound.queue.extend(&part[skip..]);
            offset += part.len();
            this.scan_outbound(part)?;
        }
        Poll::Ready(Ok(accepted))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// Ready once the queue is handed on, or, when the socket is full, with the queue kept
    /// and this task registered for the socket's room: `h2` flushes on every wake-up, so
    /// the queue drains, and meanwhile it goes on reading (and counting) the peer's frames
    /// instead of stalling, as Envoy's codec does with its output buffer.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.tripped.get().is_none() {
            std::task::ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
