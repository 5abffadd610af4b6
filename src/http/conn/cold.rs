//! A keep-alive connection that goes quiet turns cold: after [`COLD_AFTER`] without a
//! byte, its wait for the next request is cancelled (any bytes that read already took
//! are kept), its buffers and request-path futures are let go, and it waits for
//! readiness holding only itself. Bytes arriving make it hot again. This is allocation
//! on readiness, not io_uring's provided-buffer rings: monoio 0.2 does not expose them,
//! and a ring would still leave each connection's request-path futures resident.
//!
//! Over TLS the wait for the next request is a poll of the TLS stream, which takes bytes
//! from the caller's buffer only when it returns: dropping it loses nothing. A cold TLS
//! connection waits on its socket beneath the TLS layer, and the bytes that end the wait
//! are kept there for TLS to read. What it still holds is the TLS session (rustls keeps
//! a 4 KB record buffer), not the request path's buffers.

use std::io;

use monoio::buf::IoBufMut;
use monoio::io::CancelableAsyncReadRent;

use super::{Connection, COLD_AFTER};
use crate::io::MaybeTls;
use crate::stats::HttpStat;

/// `ECANCELED`: the read was cancelled before it took any byte.
const CANCELED: i32 = 125;

impl Connection {
    /// Waits hot for the next request's first bytes, reading into `buf` (empty, with room
    /// reserved). The read's outcome and the buffer; `None` when the connection ends here:
    /// the client closed, the drain signal came, or it turned cold (`self.cold`).
    pub(super) async fn wait_hot(&mut self, buf: Vec<u8>) -> Option<(io::Result<usize>, Vec<u8>)> {
        let tcp = match &mut self.stream {
            MaybeTls::Plain(tcp) => tcp,
            MaybeTls::Tls(_) => return self.wait_hot_tls(buf).await,
        };
        let canceller = self
            .canceller
            .get_or_insert_with(monoio::io::Canceller::new);
        let len = buf.len();
        let read = tcp.cancelable_read(buf.slice_mut(len..), canceller.handle());
        let (res, buf) = {
            let mut read = std::pin::pin!(read);
            let quiet = monoio::select! {
                r = &mut read => Some(r),
                _ = monoio::time::sleep(COLD_AFTER) => None,
                _ = self.drain.turn() => {
                    self.hcm.stats.core(self.ctx.core).inc(HttpStat::DownstreamCxDrainClose as usize);
                    return None;
                }
            };
            let (res, slice) = match quiet {
                Some(r) => r,
                None => {
                    // Cancelled, the read still ends: with the bytes it took, if any.
                    if let Some(c) = self.canceller.take() {
                        self.canceller = Some(c.cancel());
                    }
                    read.await
                }
            };
            (res, slice.into_inner())
        };
        if matches!(&res, Err(e) if e.raw_os_error() == Some(CANCELED)) {
            self.go_cold();
            return None;
        }
        Some((res, buf))
    }

    /// As [`Self::wait_hot`], over TLS. The read polls the TLS stream, which hands over
    /// bytes only when it returns them: dropped while it waits, it took none, and what TLS
    /// read from the socket (a partial record) stays in the stream.
    async fn wait_hot_tls(&mut self, buf: Vec<u8>) -> Option<(io::Result<usize>, Vec<u8>)> {
        let read = crate::io::read_more(&mut self.stream, buf);
        let quiet = monoio::select! {
            r = read => return Some(r),
            _ = monoio::time::sleep(COLD_AFTER) => true,
            _ = self.drain.turn() => false,
        };
        if quiet {
            self.go_cold();
        } else {
            self.stat(HttpStat::DownstreamCxDrainClose);
        }
        None
    }

    /// Lets go of what only a hot connection needs.
    fn go_cold(&mut self) {
        self.cold = true;
        self.ctx.freed.note();
        self.canceller = None;
        for b in [
            &mut self.buf,
            &mut self.out,
            &mut self.pending,
            &mut self.synth,
        ] {
            *b = Vec::new();
        }
        // What the request path keeps from request to request: the upstream request's
        // buffer (up to 256 KB once a body went through it), the heads' header slots, the
        // access log's extra part.
        self.fwd.release();
        self.head.headers = Vec::new();
        self.resp_head.headers = Vec::new();
        self.log.extra = None;
    }

    /// Waits cold until the client sends again (true) or the connection ends: the idle
    /// timeout (counted from when it went quiet), the drain signal, an error.
    pub(super) async fn wait_cold(&mut self) -> bool {
        if self.drain.should_close() {
            self.stat(HttpStat::DownstreamCxDrainClose);
            return false;
        }
        let limit = self.hcm.idle_timeout.map(|t| t.saturating_sub(COLD_AFTER));
        // The core's deadlines, not a timer each: a cold connection holds this future.
        let deadlines = &self.ctx.deadlines;
        let stream = &mut self.stream;
        let end = monoio::select! {
            r = readable(stream) => return r.is_ok(),
            _ = deadlines.after(limit) => HttpStat::DownstreamCxIdleTimeout,
            _ = self.drain.wait() => HttpStat::DownstreamCxDrainClose,
        };
        if end == HttpStat::DownstreamCxDrainClose {
            if let Some(left) = self.drain.turn_left() {
                // A gradual drain: the client may still send before this connection's turn.
                monoio::select! {
                    r = readable(stream) => return r.is_ok(),
                    _ = deadlines.after(Some(left)) => {}
                }
            }
        }
        self.stat(end);
        false
    }
}

/// Waits until the client sends (or closes). A TLS stream's socket is read underneath it,
/// and the bytes are kept for the TLS layer's next read: waiting through TLS would keep a
/// read, and the record layer's buffers, in progress.
async fn readable(stream: &mut crate::tls::DownIo) -> io::Result<()> {
    match stream {
        MaybeTls::Plain(tcp) => tcp.readable(false).await,
        MaybeTls::Tls(tls) => tls.0.get_mut().0.fill().await.map(drop),
    }
}
