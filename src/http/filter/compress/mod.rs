//! `envoy.filters.http.compressor`, as Envoy 1.40 runs it. Each compressor filter, in the
//! decode phase, keeps the request's `Accept-Encoding` as it finds it (an earlier filter may
//! have removed it), removes it if configured, and joins the request's list of compressor
//! filters. In the encode phase (reverse order) each decides on the response head: the
//! first to consult Accept-Encoding chooses the coding for all of them (highest q-value
//! among the codings the filters whose media types match offer; `identity`, `*`, ties and
//! `choose_first` as Envoy settles them); the chosen filter removes Content-Length and
//! strong ETags, sets Content-Encoding, and compresses the body piece by piece. `Vary:
//! Accept-Encoding` is added whenever a response could have been compressed.
//!
//! What the encode phase decided lives in [`Compression`] (the request's filter state):
//! the head edits the head writers apply, and the stream the body goes through.

use std::sync::Arc;

use crate::model::compressor::{Compressor, Library};
use crate::model::filter::PerRoute;
use crate::stats::{CompressorHeaderStat, CompressorStat, Scope};

use super::FilterHost;

pub(crate) mod codec;

/// The compressor filters of one request and what they decided.
#[derive(Default)]
pub(crate) struct Compression {
    filters: Vec<Entry>,
    /// A filter removed Accept-Encoding from the request (the upstream does not see it).
    pub accept_encoding_removed: bool,
    decision: Option<Decision>,
    /// What the encode phase changes in the response head.
    pub head: HeadEdits,
    /// The response body's compression, once the encode phase chose it.
    pub stream: Option<Box<Active>>,
}

/// One compressor filter on this request.
struct Entry {
    config: Arc<Compressor>,
    /// Accept-Encoding as this filter found it.
    accept: Option<Box<[u8]>>,
    /// Response compression, after the route's override.
    enabled: bool,
    /// The library, after the route's override.
    library: Arc<Library>,
}

/// The coding chosen for the response, and how (each filter counts it).
struct Decision {
    encoding: Box<str>,
    kind: DecisionKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DecisionKind {
    Valid,
    Identity,
    Wildcard,
    NotValid,
}

/// Edits to the response head.
#[derive(Default)]
pub(crate) struct HeadEdits {
    pub compressing: bool,
    pub content_encoding: Option<&'static str>,
    /// The response's new Vary (the upstream's is dropped).
    pub vary: Option<Vec<u8>>,
    pub drop_etag: bool,
    /// `x-envoy-compression-status` values, one header each.
    pub status: Vec<String>,
}

/// A response head as the compressor filters read it.
pub(crate) struct Head<'a> {
    pub status: u16,
    pub content_type: Option<&'a [u8]>,
    pub content_length: Option<u64>,
    pub content_encoding: Option<&'a [u8]>,
    pub cache_control: Option<&'a [u8]>,
    pub etag: Option<&'a [u8]>,
    pub vary: Option<&'a [u8]>,
    /// A 101 switching protocols.
    pub upgrade: bool,
}

/// The decode phase of one compressor filter.
// Out of line: `decode_headers`, inlined on every request, stays small.
#[inline(never)]
pub(super) fn decode<E: FilterHost>(x: &mut E, config: &Arc<Compressor>, per: Option<&PerRoute>) {
    let per = match per {
        Some(PerRoute::Compressor(p)) => Some(&**p),
        _ => None,
    };
    let enabled = per
        .and_then(|p| p.response_enabled)
        .unwrap_or(config.response.enabled);
    let remove = per
        .and_then(|p| p.remove_accept_encoding_header)
        .unwrap_or(config.response.remove_accept_encoding_header);
    let library = per
        .and_then(|p| p.library.clone())
        .unwrap_or_else(|| config.library.clone());
    let removed = x
        .filter_state()
        .compression
        .as_ref()
        .is_some_and(|c| c.accept_encoding_removed);
    let accept = if removed { None } else { accept_encoding(x) };
    // No request body is compressed (request_direction_config is refused by name): every
    // request counts as not compressed, as in Envoy.
    config
        .request_stats
        .core(x.core())
        .inc(CompressorStat::NotCompressed as usize);
    let c = x
        .filter_state_mut()
        .compression
        .get_or_insert_with(Box::default);
    if enabled && remove {
        c.accept_encoding_removed = true;
    }
    c.filters.push(Entry {
        config: config.clone(),
        accept,
        enabled,
        library,
    });
}

/// The request's Accept-Encoding lines, joined with commas.
fn accept_encoding<E: FilterHost>(x: &E) -> Option<Box<[u8]>> {
    let buf = x.buf();
    let mut out: Option<Vec<u8>> = None;
    for (n, v) in &x.head().headers {
        if buf[n.clone()].eq_ignore_ascii_case(b"accept-encoding") {
            let o = out.get_or_insert_with(Vec::new);
            if !o.is_empty() {
                o.push(b',');
            }
            o.extend_from_slice(&buf[v.clone()]);
        }
    }
    out.map(Vec::into_boxed_slice)
}

/// The encode phase of the compressor filters on a response head (`end`: the response has
/// no body). True: the body is compressed (the stream is in the filter state).
pub(crate) fn encode_head<E: FilterHost + ?Sized>(x: &mut E, head: &Head<'_>, end: bool) -> bool {
    let core = x.core();
    let Some(c) = x.filter_state_mut().compression.as_mut() else {
        return false;
    };
    // What earlier (closer to the upstream) filters changed, as later ones see it.
    let mut content_length = head.content_length;
    let mut content_encoding: Option<&[u8]> = head.content_encoding;
    let mut etag = head.etag;
    let mut vary: Option<Vec<u8>> = None;
    let media = head.content_type.map(media_type);
    for i in (0..c.filters.len()).rev() {
        let config = c.filters[i].config.clone();
        let library = c.filters[i].library.clone();
        let enabled = c.filters[i].enabled;
        let cfg = &config.response;
        let stats = cfg.stats.core(core);
        let hstats = config.header_stats.core(core);
        let enc = library.encoding();
        let min_ok = |content_length: Option<u64>| match content_length {
            Some(n) if n < cfg.min_content_length => {
                stats.inc(CompressorStat::ContentLengthTooSmall as usize);
                false
            }
            _ => true,
        };
        let type_ok = media.as_deref().is_none_or(|m| cfg.content_types.allows(m));
        let no_transform = head.cache_control.is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
        });
        let etag_ok = !(cfg.disable_on_etag_header && etag.is_some());
        let code_ok = !cfg.uncompressible.contains(&head.status);
        let compress;
        let compressible;
        if cfg.status_header {
            let base = enabled && !head.upgrade && !no_transform && content_encoding.is_none();
            compressible = base && min_ok(content_length) && type_ok && etag_ok && code_ok;
            let mut status = None;
            compress = if end || !base {
                false
            } else if !min_ok(content_length) {
                status = Some("ContentLengthTooSmall");
                false
            } else if !type_ok {
                status = Some("ContentTypeNotAllowed");
                false
            } else if !etag_ok {
                hstats.inc(CompressorHeaderStat::NotCompressedEtag as usize);
                status = Some("EtagNotAllowed");
                false
            } else if !code_ok {
                status = Some("StatusCodeNotAllowed");
                false
            } else {
                accept_allowed(c, i, media.as_deref(), hstats)
            };
            if let Some(s) = status {
                c.head.status.push(format!("{enc};{s}"));
            } else if compress {
                let original = content_length.map(|n| n.to_string()).unwrap_or_default();
                c.head
                    .status
                    .push(format!("{enc};Compressed;OriginalLength={original}"));
            }
        } else {
            let big = enabled && min_ok(content_length);
            let etag_allowed = || {
                if !etag_ok {
                    hstats.inc(CompressorHeaderStat::NotCompressedEtag as usize);
                }
                etag_ok
            };
            compressible = big
                && !head.upgrade
                && type_ok
                && !no_transform
                && etag_allowed()
                && content_encoding.is_none()
                && code_ok;
            compress =
                !end && big && accept_allowed(c, i, media.as_deref(), hstats) && compressible;
        }
        let stream = if compress {
            codec::Stream::new(&library).ok()
        } else {
            None
        };
        match stream {
            Some(stream) => {
                stats.inc(CompressorStat::Compressed as usize);
                if etag.is_some_and(|t| !weak(t)) {
                    etag = None;
                    c.head.drop_etag = true;
                }
                content_length = None;
                content_encoding = Some(enc.as_bytes());
                c.head.compressing = true;
                c.head.content_encoding = Some(enc);
                c.stream = Some(Box::new(Active {
                    stream,
                    stats: cfg.stats.clone(),
                    core,
                    done: false,
                    out: Vec::new(),
                }));
            }
            None => stats.inc(CompressorStat::NotCompressed as usize),
        }
        if compressible {
            let current = vary.as_deref().or(head.vary);
            vary = Some(match current {
                None => b"Accept-Encoding".to_vec(),
                Some(v)
                    if v.split(|&b| b == b',')
                        .any(|t| t.trim_ascii() == b"Accept-Encoding") =>
                {
                    v.to_vec()
                }
                Some(v) => [v, b", Accept-Encoding"].concat(),
            });
        }
    }
    if vary.is_some() {
        c.head.vary = vary;
    }
    c.head.compressing
}

/// A weak entity tag (`W/` or `w/`).
fn weak(etag: &[u8]) -> bool {
    etag.len() >= 2 && (etag[0] == b'W' || etag[0] == b'w') && etag[1] == b'/'
}

/// A Content-Type's media type: parameters cropped, trimmed, lowercase.
fn media_type(v: &[u8]) -> String {
    let t = v.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    String::from_utf8_lossy(t).to_ascii_lowercase()
}

/// Whether filter `i` is the one Accept-Encoding chooses, counting how it was decided.
fn accept_allowed(
    c: &mut Compression,
    i: usize,
    media: Option<&str>,
    hstats: &crate::stats::CoreCells,
) -> bool {
    let Some(accept) = c.filters[i].accept.as_deref() else {
        hstats.inc(CompressorHeaderStat::NoAcceptHeader as usize);
        return false;
    };
    if c.decision.is_none() {
        c.decision = Some(choose(&c.filters, i, accept, media));
    }
    let Some(d) = &c.decision else { return false };
    let mine = c.filters[i].library.encoding();
    let chosen = d.encoding.eq_ignore_ascii_case(mine);
    hstats.inc(match d.kind {
        DecisionKind::Valid if chosen => CompressorHeaderStat::HeaderCompressorUsed,
        DecisionKind::Valid => CompressorHeaderStat::HeaderCompressorOvershadowed,
        DecisionKind::Identity => CompressorHeaderStat::HeaderIdentity,
        DecisionKind::Wildcard => CompressorHeaderStat::HeaderWildcard,
        DecisionKind::NotValid => CompressorHeaderStat::HeaderNotValid,
    } as usize);
    chosen
}

/// A coding Envoy's choice weighs: its registration order and `choose_first`, in a map
/// ordered by name (as Envoy's `std::map`, whose lookups insert).
struct Allowed {
    name: Box<str>,
    order: u32,
    choose_first: bool,
}

/// Envoy's `chooseEncoding`, made by filter `me` (whose coding may be its route's).
fn choose(filters: &[Entry], me: usize, accept: &[u8], media: Option<&str>) -> Decision {
    let mut allowed: Vec<Allowed> = Vec::new();
    let mut order = 0;
    for (i, f) in filters.iter().enumerate() {
        if media.is_some_and(|m| !m.is_empty() && !f.config.response.content_types.allows(m)) {
            continue;
        }
        let enc = if i == me {
            f.library.encoding()
        } else {
            f.config.library.encoding()
        };
        if !allowed.iter().any(|a| &*a.name == enc) {
            allowed.push(Allowed {
                name: enc.into(),
                order,
                choose_first: f.config.choose_first,
            });
            order += 1;
        }
    }
    let mut pairs: Vec<(&str, f32)> = Vec::new();
    let accept = String::from_utf8_lossy(accept);
    for token in accept.split(',').filter(|t| !t.is_empty()) {
        let (name, params) = match token.split_once(';') {
            Some((n, p)) => (n.trim(), Some(p)),
            None => (token.trim(), None),
        };
        let mut q = 1f32;
        if let Some((k, v)) = params.and_then(|p| p.split_once('=')) {
            if k.trim().eq_ignore_ascii_case("q") {
                match v.trim().parse::<f32>() {
                    Ok(v) => q = v,
                    // An unparsable q-value drops the coding.
                    Err(_) => continue,
                }
            }
        }
        pairs.push((name, q));
        if q == 0.0 {
            allowed.retain(|a| &*a.name != name);
        }
    }
    let not_valid = || Decision {
        encoding: "identity".into(),
        kind: DecisionKind::NotValid,
    };
    if pairs.is_empty() || allowed.is_empty() {
        return not_valid();
    }
    let mut choice: (&str, f32) = ("identity", 0.0);
    for &(name, q) in &pairs {
        let known = allowed.iter().any(|a| &*a.name == name);
        if known || name == "identity" || name == "*" {
            if q > choice.1 {
                choice = (name, q);
            } else if q == choice.1 {
                // Envoy reads `allowed_compressors[name]`: a missing name is inserted.
                let first = match allowed.iter().find(|a| &*a.name == name) {
                    Some(a) => a.choose_first,
                    None => {
                        allowed.push(Allowed {
                            name: name.into(),
                            order: 0,
                            choose_first: false,
                        });
                        false
                    }
                };
                if first {
                    choice = (name, q);
                }
            }
        }
    }
    if choice.1 == 0.0 {
        return not_valid();
    }
    if choice.0 == "identity" {
        return Decision {
            encoding: "identity".into(),
            kind: DecisionKind::Identity,
        };
    }
    if choice.0 == "*" {
        // The first registered; equal orders go to the first name (the map's order).
        let first = allowed
            .iter()
            .min_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)))
            .map_or("identity".into(), |a| a.name.clone());
        return Decision {
            encoding: first,
            kind: DecisionKind::Wildcard,
        };
    }
    Decision {
        encoding: choice.0.into(),
        kind: DecisionKind::Valid,
    }
}

/// A response body being compressed.
pub(crate) struct Active {
    stream: codec::Stream,
    stats: Arc<Scope>,
    core: usize,
    done: bool,
    /// What the last call produced (the caller sends it and clears it).
    pub out: Vec<u8>,
}

impl Active {
    /// Compresses a piece of the body (`finish`: the last; later calls do nothing).
    pub fn compress(&mut self, input: &[u8], finish: bool) -> Result<(), codec::Failed> {
        if self.done {
            return Ok(());
        }
        let before = self.out.len();
        self.stream.compress(input, finish, &mut self.out)?;
        self.done = finish;
        let c = self.stats.core(self.core);
        c.add(
            CompressorStat::TotalUncompressedBytes as usize,
            input.len() as u64,
        );
        c.add(
            CompressorStat::TotalCompressedBytes as usize,
            (self.out.len() - before) as u64,
        );
        Ok(())
    }

    pub fn finished(&self) -> bool {
        self.done
    }
}

/// A body that failed to compress goes as it is: the head edits that announced it
/// compressed are dropped.
pub(crate) fn forget_head<E: FilterHost + ?Sized>(x: &mut E) {
    if let Some(c) = x.filter_state_mut().compression.as_mut() {
        c.head = HeadEdits::default();
    }
}
