//! Streaming message bodies between two sockets with bounded memory.

use std::io::Write as _;
use std::time::{Duration, Instant};

use monoio::buf::IoBuf;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::http::h1::{BodyKind, ChunkError, ChunkedDecoder};

/// Bytes read per body read: the most a body holds in memory per direction.
pub const CHUNK: usize = 64 * 1024;

/// How body bytes are re-framed on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Same framing both sides: bytes pass unchanged.
    Raw,
    /// Close-delimited in, chunked out (HTTP/1.1 client, upstream without length).
    ChunkEncode,
    /// Chunked in, close-delimited out (HTTP/1.0 client).
    ChunkDecode,
    /// Chunked in, chunked out: decoded and written again by the proxy, so chunk
    /// extensions, trailers and the client's chunk boundaries never reach the other side
    /// (each read's payload goes out as one chunk). A chunked body asked for `Raw` gets
    /// this mode: chunked bytes are never passed through as they came.
    Rechunk,
}

/// The state of one body in flight.
#[derive(Debug, Clone)]
pub struct Framing {
    kind: BodyKind,
    remaining: u64,
    chunked: ChunkedDecoder,
    mode: Mode,
    done: bool,
    /// Body bytes seen so far (payload for chunked input).
    pub bytes: u64,
}

/// Why a body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("read failed: {0}")]
    Read(std::io::Error),
    #[error("write failed: {0}")]
    Write(std::io::Error),
    #[error("connection closed before the end of the body")]
    Eof,
    #[error("body timeout")]
    Timeout,
    #[error("{0}")]
    Malformed(ChunkError),
}

impl Framing {
    pub fn new(kind: BodyKind, mode: Mode) -> Self {
        let mode = match (kind, mode) {
            (BodyKind::Chunked, Mode::Raw) => Mode::Rechunk,
            _ => mode,
        };
        Framing {
            kind,
            remaining: match kind {
                BodyKind::Length(n) => n,
                _ => 0,
            },
            chunked: ChunkedDecoder::default(),
            mode,
            done: kind == BodyKind::None,
            bytes: 0,
        }
    }

    /// True once the whole body went through.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Consumes body bytes from the front of `input`, appending what goes out to `out`.
    /// Returns how many input bytes belonged to the body.
    pub fn consume_into(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        if self.done {
            return Ok(0);
        }
        match self.kind {
            BodyKind::None => Ok(0),
            BodyKind::Length(_) => {
                let n = (self.remaining.min(input.len() as u64)) as usize;
                out.extend_from_slice(&input[..n]);
                self.remaining -= n as u64;
                self.bytes += n as u64;
                self.done = self.remaining == 0;
                Ok(n)
            }
            BodyKind::Chunked => {
                let mut payload = 0u64;
                let mark = out.len();
                let n = self.chunked.feed(input, |d| {
                    payload += d.len() as u64;
                    out.extend_from_slice(d);
                })?;
                self.bytes += payload;
                self.done = self.chunked.done();
                if self.mode == Mode::Rechunk {
                    if payload > 0 {
                        // The size line goes before the payload just written; built on
                        // the stack, so a chunked body costs no allocation per read.
                        let mut line = [0u8; 18];
                        let n = hex_line(&mut line, payload);
                        out.splice(mark..mark, line[..n].iter().copied());
                        out.extend_from_slice(b"\r\n");
                    }
                    if self.done {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                Ok(n)
            }
            BodyKind::UntilClose => {
                if self.mode == Mode::ChunkEncode && !input.is_empty() {
                    chunk_header(out, input.len());
                    out.extend_from_slice(input);
                    out.extend_from_slice(b"\r\n");
                } else {
                    out.extend_from_slice(input);
                }
                self.bytes += input.len() as u64;
                Ok(input.len())
            }
        }
    }

    /// Whether the body is chunked (its payload is decoded from the framing).
    pub(crate) fn is_chunked(&self) -> bool {
        self.kind == BodyKind::Chunked
    }

    /// The connection closed: the end of a close-delimited body, else an error (false).
    pub(crate) fn end_on_eof(&mut self) -> bool {
        if self.kind == BodyKind::UntilClose {
            self.done = true;
        }
        self.done
    }

    /// Consumes without copying (raw mode); returns (body bytes, done).
    pub(crate) fn consume_raw(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        match self.kind {
            BodyKind::Length(_) => {
                let n = (self.remaining.min(input.len() as u64)) as usize;
                self.remaining -= n as u64;
                self.bytes += n as u64;
                self.done = self.remaining == 0;
                Ok(n)
            }
            // Chunked bodies are always re-framed (`Framing::new`), never passed raw.
            BodyKind::Chunked => Err(ChunkError),
            BodyKind::UntilClose => {
                self.bytes += input.len() as u64;
                Ok(input.len())
            }
            BodyKind::None => Ok(0),
        }
    }

    /// The end of a close-delimited body: what must still be written.
    fn finish_on_eof(&mut self, out: &mut Vec<u8>) -> bool {
        if self.kind == BodyKind::UntilClose {
            if self.mode == Mode::ChunkEncode {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            self.done = true;
            true
        } else {
            false
        }
    }
}

/// Writes `n` in hex and CRLF into `line`; returns the length.
fn hex_line(line: &mut [u8; 18], n: u64) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, slot) in line[..digits].iter_mut().enumerate() {
        *slot = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    digits + 2
}

pub(crate) fn chunk_header(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

/// How long the next wait may last: the idle timeout, cut short by the deadline.
pub(crate) fn wait_limit(idle: Option<Duration>, deadline: Option<Instant>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (idle, left) {
        (Some(i), Some(l)) => Some(i.min(l)),
        (i, l) => i.or(l),
    }
}

/// Replaces `out` with `data` as one chunk of a chunked body, or as is when not `chunked`.
pub(crate) fn frame_into(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    out.clear();
    if chunked {
        chunk_header(out, data.len());
    }
    out.extend_from_slice(data);
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
}

/// Copies the rest of a body from `src` to `dst`. `pending` holds bytes already read from
/// `src`; on return it holds what `src` sent after the body (the next message).
pub async fn forward_body<S: AsyncReadRent, D: AsyncWriteRent>(
    src: &mut S,
    dst: &mut D,
    pending: &mut Vec<u8>,
    framing: &mut Framing,
    idle: Option<Duration>,
    deadline: Option<Instant>,
) -> Result<(), BodyError> {
    let mut scratch = Vec::new();
    loop {
        if !pending.is_empty() && !framing.done {
            if framing.mode == Mode::Raw {
                let n = framing.consume_raw(pending).map_err(BodyError::Malformed)?;
                if n > 0 {
                    let (res, slice) = dst.write_all(std::mem::take(pending).slice(..n)).await;
                    *pending = slice.into_inner();
                    res.map_err(BodyError::Write)?;
                    pending.drain(..n);
                }
            } else {
                scratch.clear();
                let n = framing
                    .consume_into(pending, &mut scratch)
                    .map_err(BodyError::Malformed)?;
                pending.drain(..n);
                if !scratch.is_empty() {
                    let (res, s) = dst.write_all(std::mem::take(&mut scratch)).await;
                    scratch = s;
                    res.map_err(BodyError::Write)?;
                }
            }
        }
        if framing.done {
            return Ok(());
        }
        // Need more: read at most CHUNK.
        if pending.capacity() - pending.len() < CHUNK / 4 {
            pending.reserve(CHUNK - pending.len());
        }
        let limit = wait_limit(idle, deadline);
        let read = crate::io::read_more(src, std::mem::take(pending));
        let (res, buf) = match limit {
            None => read.await,
            Some(t) => monoio::time::timeout(t, read)
                .await
                .map_err(|_| BodyError::Timeout)?,
        };
        *pending = buf;
        match res {
            Ok(0) => {
                scratch.clear();
                if framing.finish_on_eof(&mut scratch) {
                    if !scratch.is_empty() {
                        let (res, _) = dst.write_all(scratch).await;
                        res.map_err(BodyError::Write)?;
                    }
                    return Ok(());
                }
                return Err(BodyError::Eof);
            }
            Ok(_) => {}
            Err(e) => return Err(BodyError::Read(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_lines() {
        for n in [1u64, 9, 10, 15, 16, 255, 256, 65_535, 1 << 40, u64::MAX] {
            let mut line = [0u8; 18];
            let len = super::hex_line(&mut line, n);
            assert_eq!(&line[..len], format!("{n:x}\r\n").as_bytes(), "{n}");
        }
    }
}
