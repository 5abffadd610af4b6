//! The three compressor libraries as streams: each piece of a body is compressed and
//! flushed as it passes (Envoy's `Flush`), the last one finishes the stream (`Finish`).
//! gzip through zlib-rs and brotli through the `brotli` crate flush every piece; zstd, as
//! Envoy drives it, only continues until the end (its output may wait for it).

use std::io::Write;

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Method, Status, Strategy};
use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

use crate::model::compressor::{BrotliMode, GzipStrategy, Library};

/// A compression stream for one body.
pub(crate) enum Stream {
    Gzip(Box<Deflate>, usize),
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
    Zstd(Box<Encoder<'static>>, usize),
}

/// The library failed (the response is then reset).
#[derive(Debug)]
pub(crate) struct Failed;

impl Stream {
    pub fn new(lib: &Library) -> Result<Stream, Failed> {
        Ok(match lib {
            Library::Gzip(g) => Stream::Gzip(
                Box::new(Deflate::new_with_config(DeflateConfig {
                    level: g.level,
                    method: Method::Deflated,
                    // Plus 16: a gzip header and trailer, not zlib's.
                    window_bits: i32::from(g.window_bits) + 16,
                    mem_level: i32::from(g.memory_level),
                    strategy: match g.strategy {
                        GzipStrategy::Default => Strategy::Default,
                        GzipStrategy::Filtered => Strategy::Filtered,
                        GzipStrategy::HuffmanOnly => Strategy::HuffmanOnly,
                        GzipStrategy::Rle => Strategy::Rle,
                        GzipStrategy::Fixed => Strategy::Fixed,
                    },
                })),
                g.chunk_size,
            ),
            Library::Brotli(b) => {
                let mut params = brotli::enc::BrotliEncoderInitParams();
                params.quality = b.quality as i32;
                params.lgwin = b.window_bits as i32;
                params.lgblock = b.input_block_bits as i32;
                params.mode = match b.mode {
                    BrotliMode::Generic => {
                        brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_GENERIC
                    }
                    BrotliMode::Text => {
                        brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_TEXT
                    }
                    BrotliMode::Font => {
                        brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_FONT
                    }
                };
                params.disable_literal_context_modeling =
                    i32::from(b.disable_literal_context_modeling);
                Stream::Brotli(Some(Box::new(brotli::CompressorWriter::with_params(
                    Vec::new(),
                    b.chunk_size,
                    &params,
                ))))
            }
            Library::Zstd(z) => {
                let mut e = match &z.dictionary {
                    Some(d) => Encoder::with_dictionary(z.level, d),
                    None => Encoder::new(z.level),
                }
                .map_err(|_| Failed)?;
                if z.checksum {
                    e.set_parameter(CParameter::ChecksumFlag(true))
                        .map_err(|_| Failed)?;
                }
                if z.strategy != 0 {
                    let s = zstd_strategy(z.strategy);
                    e.set_parameter(CParameter::Strategy(s))
                        .map_err(|_| Failed)?;
                }
                Stream::Zstd(Box::new(e), z.chunk_size)
            }
        })
    }

    /// Compresses `input`, appending what the library gives to `out`; `finish` ends the
    /// stream (a stream is finished once).
    pub fn compress(
        &mut self,
        input: &[u8],
        finish: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), Failed> {
        match self {
            Stream::Gzip(d, chunk) => {
                gzip(d, input, DeflateFlush::NoFlush, out, *chunk)?;
                let flush = if finish {
                    DeflateFlush::Finish
                } else {
                    DeflateFlush::SyncFlush
                };
                gzip(d, &[], flush, out, *chunk)
            }
            Stream::Brotli(w) => {
                let Some(writer) = w.as_mut() else {
                    return Err(Failed);
                };
                writer.write_all(input).map_err(|_| Failed)?;
                if finish {
                    let inner = w.take().ok_or(Failed)?.into_inner();
                    out.extend_from_slice(&inner);
                } else {
                    writer.flush().map_err(|_| Failed)?;
                    out.extend_from_slice(writer.get_ref());
                    writer.get_mut().clear();
                }
                Ok(())
            }
            Stream::Zstd(e, chunk) => {
                let mut inp = InBuffer::around(input);
                while inp.pos() < input.len() {
                    out.reserve(*chunk);
                    let mut ob = OutBuffer::around_pos(out, out.len());
                    e.run(&mut inp, &mut ob).map_err(|_| Failed)?;
                    let pos = ob.pos();
                    out.truncate(pos);
                }
                if finish {
                    loop {
                        out.reserve(*chunk);
                        let mut ob = OutBuffer::around_pos(out, out.len());
                        let left = e.finish(&mut ob, true).map_err(|_| Failed)?;
                        let pos = ob.pos();
                        out.truncate(pos);
                        if left == 0 {
                            break;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// One deflate call sequence: all of `input` consumed, then (for a flush or finish) all the
/// output drained.
fn gzip(
    d: &mut Deflate,
    mut input: &[u8],
    flush: DeflateFlush,
    out: &mut Vec<u8>,
    chunk: usize,
) -> Result<(), Failed> {
    loop {
        let start = out.len();
        out.resize(start + chunk, 0);
        let (in0, out0) = (d.total_in(), d.total_out());
        let r = d.compress(input, &mut out[start..], flush);
        let used = (d.total_in() - in0) as usize;
        let made = (d.total_out() - out0) as usize;
        out.truncate(start + made);
        input = &input[used..];
        match r {
            Ok(Status::StreamEnd) => return Ok(()),
            // No progress possible: nothing more to give.
            Ok(Status::BufError) => return Ok(()),
            Ok(Status::Ok) => {}
            Err(_) => return Err(Failed),
        }
        // The output had room to spare: everything asked for is out.
        if input.is_empty() && made < chunk && flush != DeflateFlush::Finish {
            return Ok(());
        }
    }
}

fn zstd_strategy(n: u32) -> zstd::zstd_safe::Strategy {
    use zstd::zstd_safe::Strategy as S;
    match n {
        1 => S::ZSTD_fast,
        2 => S::ZSTD_dfast,
        3 => S::ZSTD_greedy,
        4 => S::ZSTD_lazy,
        5 => S::ZSTD_lazy2,
        6 => S::ZSTD_btlazy2,
        7 => S::ZSTD_btopt,
        8 => S::ZSTD_btultra,
        _ => S::ZSTD_btultra2,
    }
}
