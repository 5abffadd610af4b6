//! `envoy.filters.http.compressor`, compiled: which responses a filter compresses, with
//! which library, and its per-route overrides. The filter runs in
//! `http::filter::compress`; the libraries' streams in `http::filter::compress::codec`.

use std::sync::Arc;

use crate::stats::Scope;

/// One compressor filter.
pub struct Compressor {
    pub library: Arc<Library>,
    /// `choose_first`: wins a tie of q-values in Accept-Encoding.
    pub choose_first: bool,
    pub response: ResponseDirection,
    /// `request_direction_config` is refused by name; the stats exist (and count every
    /// request as not compressed), as in Envoy.
    pub request_stats: Arc<Scope>,
    /// `no_accept_header`, `header_*`, `not_compressed_etag`.
    pub header_stats: Arc<Scope>,
}

/// What the response direction compresses.
pub struct ResponseDirection {
    /// `common_config.enabled` (its default value; a runtime key is not read, as elsewhere).
    pub enabled: bool,
    /// `min_content_length` (unset or 0: 30): a response whose Content-Length is smaller
    /// (or unparsable) is not compressed; one without Content-Length may be.
    pub min_content_length: u64,
    pub content_types: ContentTypes,
    pub disable_on_etag_header: bool,
    pub remove_accept_encoding_header: bool,
    /// `uncompressible_response_codes` (empty: every status may be compressed).
    pub uncompressible: Box<[u16]>,
    /// `status_header_enabled`: `x-envoy-compression-status` says why a response was or was
    /// not compressed.
    pub status_header: bool,
    /// `http.<prefix>.compressor.<name>.<library>.response.` (without `response.` when the
    /// filter has no `response_direction_config`).
    pub stats: Arc<Scope>,
}

/// The media types a direction compresses: lowercase, without parameters.
pub enum ContentTypes {
    /// Envoy's default list (none configured).
    Default,
    List(Box<[Box<str>]>),
}

/// Envoy's default list of compressible media types.
pub const DEFAULT_CONTENT_TYPES: [&str; 20] = [
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
    "application/grpc-web",
    "application/grpc-web+proto",
];

impl ContentTypes {
    /// Whether `media_type` (lowercase, parameters cropped) is listed.
    pub fn allows(&self, media_type: &str) -> bool {
        match self {
            ContentTypes::Default => DEFAULT_CONTENT_TYPES.contains(&media_type),
            ContentTypes::List(l) => l.iter().any(|t| &**t == media_type),
        }
    }
}

/// A compressor library (`compressor_library`) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Library {
    Gzip(Gzip),
    Brotli(Brotli),
    Zstd(Zstd),
}

impl Library {
    /// The content coding it produces.
    pub fn encoding(&self) -> &'static str {
        match self {
            Library::Gzip(_) => "gzip",
            Library::Brotli(_) => "br",
            Library::Zstd(_) => "zstd",
        }
    }

    /// The library's segment of the stat prefix.
    pub fn stats_name(&self) -> &'static str {
        match self {
            Library::Gzip(_) => "gzip",
            Library::Brotli(_) => "brotli",
            Library::Zstd(_) => "zstd",
        }
    }
}

/// `envoy.compression.gzip.compressor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gzip {
    /// zlib's level: 1 to 9, or -1 (zlib's default, 6).
    pub level: i32,
    /// 9 to 15 (default 12): the history window is 2^window_bits bytes.
    pub window_bits: u8,
    /// 1 to 9 (default 5).
    pub memory_level: u8,
    pub strategy: GzipStrategy,
    /// `chunk_size`: the size of each output piece (4096 to 65536, default 4096).
    pub chunk_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GzipStrategy {
    Default,
    Filtered,
    HuffmanOnly,
    Rle,
    Fixed,
}

/// `envoy.compression.brotli.compressor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brotli {
    /// 0 to 11 (default 3).
    pub quality: u32,
    /// 10 to 24 (default 18).
    pub window_bits: u32,
    /// 16 to 24 (default 24).
    pub input_block_bits: u32,
    pub mode: BrotliMode,
    pub disable_literal_context_modeling: bool,
    pub chunk_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrotliMode {
    Generic,
    Text,
    Font,
}

/// `envoy.compression.zstd.compressor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zstd {
    /// Default 3 (zstd's default level).
    pub level: i32,
    pub checksum: bool,
    /// 0: zstd's default for the level; 1 to 9 as zstd numbers its strategies.
    pub strategy: u32,
    /// `dictionary`, read when the configuration is converted.
    pub dictionary: Option<Arc<[u8]>>,
    pub chunk_size: usize,
}

/// A compressor's `CompressorPerRoute`.
#[derive(Clone)]
pub struct CompressorPerRoute {
    /// `disabled`: off; `overrides.response_direction_config` present: on (whatever
    /// `enabled` says); absent: the filter's own setting.
    pub response_enabled: Option<bool>,
    pub remove_accept_encoding_header: Option<bool>,
    /// `overrides.compressor_library`: this route's library (and content coding).
    pub library: Option<Arc<Library>>,
}
