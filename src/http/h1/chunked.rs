//! Chunked transfer coding (RFC 9112 §7.1), read incrementally.

/// Incremental chunked-body parser. It finds chunk boundaries, the payload and the end,
/// and checks the trailer section as header fields (a line that is not `name: value`, a
/// request line for instance, is malformed). Callers re-frame the payload themselves:
/// extensions and trailers are never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    /// Whitespace after the size (Envoy's codec allows it), before `;` or CR.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The first byte of a trailer line (or the CR of the blank line that ends them).
    TrailerStart,
    /// Like `TrailerStart`, after at least one trailer field: a continuation may follow.
    TrailerNext,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked encoding")]
pub struct ChunkError;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        }
    }
}

/// RFC 9110 `tchar`: what a header name is made of.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

impl ChunkedDecoder {
    /// True once the terminating chunk and trailers were seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes from `input` up to the end of the body; `on_data` gets each run of
    /// payload bytes. Returns how many bytes of `input` belong to the body.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        use ChunkState as S;
        let mut i = 0;
        while i < input.len() && self.state != S::Done {
            let b = input[i];
            self.state = match self.state {
                S::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                        self.size = self
                            .size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(digit))
                            .ok_or(ChunkError)?;
                        self.digits = self.digits.saturating_add(1);
                        S::Size
                    }
                    b' ' | b'\t' if self.digits > 0 => S::SizeWs,
                    b';' if self.digits > 0 => S::Ext,
                    b'\r' if self.digits > 0 => S::SizeLf,
                    _ => return Err(ChunkError),
                },
                S::SizeWs => match b {
                    b' ' | b'\t' => S::SizeWs,
                    b';' => S::Ext,
                    b'\r' => S::SizeLf,
                    _ => return Err(ChunkError),
                },
                S::Ext => match b {
                    b'\r' => S::SizeLf,
                    b'\n' => return Err(ChunkError),
                    _ => S::Ext,
                },
                S::SizeLf if b == b'\n' && self.size == 0 => S::TrailerStart,
                S::SizeLf if b == b'\n' => S::Data,
                S::Data => {
                    let n = (input.len() - i).min(self.size.min(usize::MAX as u64) as usize);
                    on_data(&input[i..i + n]);
                    self.size -= n as u64;
                    i += n;
                    if self.size == 0 {
                        self.state = S::DataCr;
                    }
                    continue;
                }
                S::DataCr if b == b'\r' => S::DataLf,
                S::DataLf if b == b'\n' => {
                    self.digits = 0;
                    S::Size
                }
                S::TrailerStart | S::TrailerNext if b == b'\r' => S::EndLf,
                S::TrailerStart | S::TrailerNext if is_tchar(b) => S::TrailerName,
                // obs-fold: continues the previous trailer field.
                S::TrailerNext if b == b' ' || b == b'\t' => S::TrailerValue,
                S::TrailerName if is_tchar(b) => S::TrailerName,
                S::TrailerName if b == b':' => S::TrailerValue,
                S::TrailerValue => match b {
                    b'\r' => S::TrailerLf,
                    b'\n' | 0 => return Err(ChunkError),
                    _ => S::TrailerValue,
                },
                S::TrailerLf if b == b'\n' => S::TrailerNext,
                S::EndLf if b == b'\n' => S::Done,
                _ => return Err(ChunkError),
            };
            i += 1;
        }
        Ok(i)
    }
}
