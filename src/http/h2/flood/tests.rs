//! The frame scanner and the outbound queue, without sockets.

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A socket that takes `room` more bytes (vectored or not), then is full.
struct Socket {
    got: Vec<u8>,
    room: usize,
    writes: usize,
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.room == 0 {
            return Poll::Pending;
        }
        this.writes += 1;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(this.room - n);
            this.got.extend_from_slice(&b[..take]);
            n += take;
        }
        this.room -= n;
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[test]
fn vectored_writes_go_out_whole_and_queue_what_the_socket_leaves() {
    let (head, body) = (frame(HEADERS, 0x4, 1, b"hdrs"), vec![b'x'; 40]);
    let mut data = frame(DATA, 0, 1, &[]);
    data[2] = 40;
    let ping_ack = frame(PING, ACK, 0, &[0; 8]);
    let wire: Vec<u8> = [&head[..], &data, &body, &ping_ack].concat();
    let cx = &mut Context::from_waker(std::task::Waker::noop());
    for room in [0, 5, 13, 30, 60, wire.len()] {
        let sock = Socket {
            got: Vec::new(),
            room,
            writes: 0,
        };
        let (mut g, state) = FloodGuard::server(sock, FloodLimits::default());
        g.outbound.scanner = Scanner::default();
        assert!(g.is_write_vectored());
        let bufs = [&head[..], &data, &body, &ping_ack].map(io::IoSlice::new);
        let Poll::Ready(Ok(n)) = Pin::new(&mut g).poll_write_vectored(cx, &bufs) else {
            panic!("room {room}: not accepted");
        };
        assert_eq!(n, wire.len(), "room {room}: the guard takes it all");
        assert_eq!(
            g.inner.writes,
            usize::from(room > 0),
            "room {room}: one write"
        );
        assert_eq!(g.inner.got, wire[..room], "room {room}");
        let queued: Vec<u8> = g.outbound.queue.iter().copied().collect();
        assert_eq!(
            queued,
            wire[room..],
            "room {room}: the rest is queued in order"
        );
        // The frames not wholly written are pending; the PING ACK is a control frame.
        let ends = [13, 22 + 40, wire.len()];
        let pending = ends.iter().filter(|&&e| e > room).count();
        assert_eq!(g.outbound.pending.len(), pending, "room {room}");
        assert_eq!(g.outbound.pending_control, u32::from(room < wire.len()));
        // The socket gets room for the rest: a flush sends it and nothing stays pending.
        g.inner.room = usize::MAX / 2;
        assert!(matches!(
            Pin::new(&mut g).poll_flush(cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(g.inner.got, wire, "room {room}");
        assert!(g.outbound.pending.is_empty() && g.outbound.pending_control == 0);
        assert!(state.tripped().is_none());
    }
}

#[test]
fn the_scanner_finds_frames_across_any_split() {
    let mut bytes = crate::http::h2::PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes.extend(frame(DATA, PADDED, 1, &[3, b'a', 0, 0, 0]));
    bytes.extend(frame(PING, 0, 0, &[0; 8]));
    for split in 0..bytes.len() {
        let mut s = Scanner::after(24);
        let mut seen = Vec::new();
        s.feed(&bytes[..split], |f| seen.push((f.kind, f.pad, f.end)));
        s.feed(&bytes[split..], |f| seen.push((f.kind, f.pad, f.end)));
        assert_eq!(
            seen,
            [(SETTINGS, 0, 33), (DATA, 3, 47), (PING, 0, 64)],
            "split {split}"
        );
    }
}
