//! `envoy.filters.http.compressor` and `CompressorPerRoute` → [`Compressor`] and
//! [`CompressorPerRoute`], with Envoy's defaults and range checks for the three libraries.

use std::sync::Arc;

use crate::model::compressor::*;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::compression::brotli::compressor::v3 as br_pb;
use crate::proto::envoy::extensions::compression::gzip::compressor::v3 as gzip_pb;
use crate::proto::envoy::extensions::compression::zstd::compressor::v3 as zstd_pb;
use crate::proto::envoy::extensions::filters::http::compressor::v3 as pb;
use crate::stats::{CompressorHeaderStat, CompressorStat};

use super::{any_type, decode_any, err, ConvertError, Ctx};

pub(super) const COMPRESSOR: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
pub(super) const PER_ROUTE: &str = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const GZIP: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// A connection manager's compressor filter (`path`: its `typed_config`).
pub(super) fn compressor(
    m: &pb::Compressor,
    stat_prefix: &str,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Compressor, ConvertError> {
    let p = |f: &str| format!("{path}.{f}");
    let Some(lib) = &m.compressor_library else {
        return Err(err(res, p("compressor_library"), "is required"));
    };
    let library = Arc::new(library(lib, res, &p("compressor_library"))?);
    if m.request_direction_config.is_some() {
        return Err(err(
            res,
            p("request_direction_config"),
            "request body compression is not implemented (response compression is)",
        ));
    }
    let base = format!(
        "http.{stat_prefix}.compressor.{}.{}.",
        lib.name,
        library.stats_name()
    );
    // Without response_direction_config, the deprecated top-level fields configure the
    // response direction and its stats have no `response.` segment (as in Envoy).
    let response = match &m.response_direction_config {
        Some(r) => {
            let common = r.common_config.clone().unwrap_or_default();
            let rp = |f: &str| format!("{path}.response_direction_config.{f}");
            let mut uncompressible = Vec::with_capacity(r.uncompressible_response_codes.len());
            for (i, &c) in r.uncompressible_response_codes.iter().enumerate() {
                if !(200..600).contains(&c) || uncompressible.contains(&(c as u16)) {
                    return Err(err(
                        res,
                        rp(&format!("uncompressible_response_codes[{i}]")),
                        format!("{c}: codes must be unique and in [200, 600)"),
                    ));
                }
                uncompressible.push(c as u16);
            }
            ResponseDirection {
                enabled: feature_flag(common.enabled.as_ref()),
                min_content_length: min_length(common.min_content_length),
                content_types: content_types(&common.content_type),
                disable_on_etag_header: r.disable_on_etag_header,
                remove_accept_encoding_header: r.remove_accept_encoding_header,
                uncompressible: uncompressible.into_boxed_slice(),
                status_header: r.status_header_enabled,
                stats: ctx
                    .stats
                    .scope::<CompressorStat>(&format!("{base}response.")),
            }
        }
        #[allow(deprecated)]
        None => ResponseDirection {
            enabled: feature_flag(m.runtime_enabled.as_ref()),
            min_content_length: min_length(m.content_length),
            content_types: content_types(&m.content_type),
            disable_on_etag_header: m.disable_on_etag_header,
            remove_accept_encoding_header: m.remove_accept_encoding_header,
            uncompressible: Box::default(),
            status_header: false,
            stats: ctx.stats.scope::<CompressorStat>(&base),
        },
    };
    Ok(Compressor {
        library,
        choose_first: m.choose_first,
        response,
        request_stats: ctx
            .stats
            .scope::<CompressorStat>(&format!("{base}request.")),
        header_stats: ctx.stats.scope::<CompressorHeaderStat>(&base),
    })
}

/// A `RuntimeFeatureFlag`'s default value (unset: true, as Envoy reads it).
fn feature_flag(f: Option<&core::RuntimeFeatureFlag>) -> bool {
    f.and_then(|f| f.default_value).unwrap_or(true)
}

fn min_length(v: Option<u32>) -> u64 {
    match v {
        Some(n) if n > 0 => u64::from(n),
        _ => 30,
    }
}

fn content_types(types: &[String]) -> ContentTypes {
    if types.is_empty() {
        return ContentTypes::Default;
    }
    ContentTypes::List(
        types
            .iter()
            .map(|t| t.trim().to_ascii_lowercase().into_boxed_str())
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// A `compressor_library` extension.
fn library(
    ext: &core::TypedExtensionConfig,
    res: &str,
    path: &str,
) -> Result<Library, ConvertError> {
    let Some(any) = &ext.typed_config else {
        return Err(err(res, format!("{path}.typed_config"), "is required"));
    };
    let tp = format!("{path}.typed_config");
    let range = |v: Option<u32>, default: u32, lo: u32, hi: u32, field: &str| {
        let v = v.unwrap_or(default);
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(err(
                res,
                format!("{tp}.{field}"),
                format!("{v} is not in [{lo}, {hi}]"),
            ))
        }
    };
    Ok(match any_type(any) {
        GZIP => {
            let m: gzip_pb::Gzip = decode_any(any, GZIP, res, path)?;
            use gzip_pb::gzip::{CompressionLevel as L, CompressionStrategy as S};
            let level = match L::try_from(m.compression_level) {
                Ok(L::DefaultCompression) => -1,
                Ok(l) => l as i32,
                Err(_) => {
                    return Err(err(
                        res,
                        format!("{tp}.compression_level"),
                        format!("unknown level {}", m.compression_level),
                    ))
                }
            };
            let strategy = match S::try_from(m.compression_strategy) {
                Ok(S::DefaultStrategy) => GzipStrategy::Default,
                Ok(S::Filtered) => GzipStrategy::Filtered,
                Ok(S::HuffmanOnly) => GzipStrategy::HuffmanOnly,
                Ok(S::Rle) => GzipStrategy::Rle,
                Ok(S::Fixed) => GzipStrategy::Fixed,
                Err(_) => {
                    return Err(err(
                        res,
                        format!("{tp}.compression_strategy"),
                        format!("unknown strategy {}", m.compression_strategy),
                    ))
                }
            };
            Library::Gzip(Gzip {
                level,
                memory_level: range(m.memory_level, 5, 1, 9, "memory_level")? as u8,
                window_bits: range(m.window_bits, 12, 9, 15, "window_bits")? as u8,
                strategy,
                chunk_size: range(m.chunk_size, 4096, 4096, 65536, "chunk_size")? as usize,
            })
        }
        BROTLI => {
            let m: br_pb::Brotli = decode_any(any, BROTLI, res, path)?;
            use br_pb::brotli::EncoderMode as M;
            let mode = match M::try_from(m.encoder_mode) {
                Ok(M::Default | M::Generic) => BrotliMode::Generic,
                Ok(M::Text) => BrotliMode::Text,
                Ok(M::Font) => BrotliMode::Font,
                Err(_) => {
                    return Err(err(
                        res,
                        format!("{tp}.encoder_mode"),
                        format!("unknown mode {}", m.encoder_mode),
                    ))
                }
            };
            Library::Brotli(Brotli {
                quality: range(m.quality, 3, 0, 11, "quality")?,
                window_bits: range(m.window_bits, 18, 10, 24, "window_bits")?,
                input_block_bits: range(m.input_block_bits, 24, 16, 24, "input_block_bits")?,
                mode,
                disable_literal_context_modeling: m.disable_literal_context_modeling,
                chunk_size: range(m.chunk_size, 4096, 4096, 65536, "chunk_size")? as usize,
            })
        }
        ZSTD => {
            let m: zstd_pb::Zstd = decode_any(any, ZSTD, res, path)?;
            let dictionary = match &m.dictionary {
                Some(d) => Some(Arc::<[u8]>::from(
                    &super::data_source(d, res, &format!("{tp}.dictionary"))?[..],
                )),
                None => None,
            };
            // zstd takes levels above its maximum as the maximum.
            let max = zstd::zstd_safe::max_c_level() as u32;
            Library::Zstd(Zstd {
                level: m.compression_level.unwrap_or(3).min(max) as i32,
                checksum: m.enable_checksum,
                strategy: match zstd_pb::zstd::Strategy::try_from(m.strategy) {
                    Ok(s) => s as u32,
                    Err(_) => {
                        return Err(err(
                            res,
                            format!("{tp}.strategy"),
                            format!("unknown strategy {}", m.strategy),
                        ))
                    }
                },
                dictionary,
                // Envoy's zstd writes output in pieces of ZSTD_CStreamOutSize() unless
                // chunk_size says otherwise.
                chunk_size: match m.chunk_size {
                    None => zstd::zstd_safe::CCtx::out_size(),
                    Some(_) => range(m.chunk_size, 4096, 4096, 65536, "chunk_size")? as usize,
                },
            })
        }
        t => {
            return Err(err(
                res,
                tp,
                format!(
                    "compressor library of type {t} is not supported (gzip, brotli and zstd are)"
                ),
            ))
        }
    })
}

/// A `CompressorPerRoute`.
pub(super) fn per_route(
    m: &pb::CompressorPerRoute,
    res: &str,
    path: &str,
) -> Result<CompressorPerRoute, ConvertError> {
    use pb::compressor_per_route::Override;
    match &m.r#override {
        Some(Override::Disabled(true)) => Ok(CompressorPerRoute {
            response_enabled: Some(false),
            remove_accept_encoding_header: None,
            library: None,
        }),
        Some(Override::Disabled(false)) => Err(err(
            res,
            format!("{path}.disabled"),
            "must be true when set",
        )),
        Some(Override::Overrides(o)) => Ok(CompressorPerRoute {
            response_enabled: o.response_direction_config.as_ref().map(|_| true),
            remove_accept_encoding_header: o
                .response_direction_config
                .as_ref()
                .and_then(|r| r.remove_accept_encoding_header),
            library: match &o.compressor_library {
                Some(l) => Some(Arc::new(library(
                    l,
                    res,
                    &format!("{path}.overrides.compressor_library"),
                )?)),
                None => None,
            },
        }),
        None => Err(err(res, path, "disabled or overrides is required")),
    }
}
