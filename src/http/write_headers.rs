//! Serialising heads on the way out: hop-by-hop headers dropped, Envoy's `x-forwarded-*`,
//! `x-request-id` and `x-envoy-*` handling, and the configured header mutations.

use std::io::Write as _;
use std::ops::Range;

use crate::http::exchange::Exchange;
use crate::http::fields::{header, header_lower, write_adds};
use crate::http::filter::FilterHost;
use crate::http::h1::{bodyless_method, header_value, BodyKind, ResponseHead};
use crate::http::trust;
use crate::http::xfcc::Action;
use crate::model::headers::{is_hop_by_hop, HeaderMods};
use crate::model::route::Forward;
use crate::model::{ServerHeader, UnderscoreAction};

/// True when a `Connection` header of the message nominates `name` as hop-by-hop.
fn nominated(buf: &[u8], headers: &[(Range<usize>, Range<usize>)], name: &[u8]) -> bool {
    headers.iter().any(|(n, v)| {
        buf[n.clone()].eq_ignore_ascii_case(b"connection")
            && buf[v.clone()]
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}

fn dropped_by(mods: &[&HeaderMods], name: &[u8]) -> bool {
    mods.iter().any(|m| m.drops(name))
}

pub(crate) use crate::http::exchange::forwarded_proto;

/// The request head sent upstream. Framing (`content-length`, `transfer-encoding`) is
/// written from the parsed head's decision, never copied from the client's bytes, and a
/// `Connection` nomination cannot remove it (nor `x-request-id`). The trust boundary is
/// Envoy's: see [`crate::http::trust`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn request_head<E: Exchange + ?Sized>(
    out: &mut Vec<u8>,
    conn: &E,
    f: &Forward,
    authority: Range<usize>,
    path: &[u8],
    // The path before a route's rewrite, if it rewrote it (`x-envoy-original-path`).
    original_path: Option<&[u8]>,
    host_rewrite: Option<&[u8]>,
    mods: &[&HeaderMods],
    request_id: Option<&[u8]>,
    // The attempt (from 1), the route timeout and the `grpc-timeout` to send.
    (attempt, timeout, grpc_timeout): (
        u32,
        Option<std::time::Duration>,
        Option<std::time::Duration>,
    ),
) {
    let buf = conn.buf();
    let head = conn.head();
    let hcm = conn.hcm();
    let peer = conn.peer();
    let method = &buf[head.method.clone()];
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header(out, b"host", host_rewrite.unwrap_or(conn.bytes(&authority)));
    if host_rewrite.is_some() && !hcm.suppress_envoy_headers {
        header(out, b"x-envoy-original-host", conn.bytes(&authority));
    }
    let edge = hcm.use_remote_address;
    let internal = conn.internal();
    let append_xff = edge && !hcm.skip_xff_append;
    let xff_hop = trust::forwarded_for_address(peer.ip(), conn.local_ip());
    let mut xff_written = false;
    let mut have_xfp = false;
    let xfcc = crate::http::xfcc::action(hcm.xfcc.0, conn.client_cert());
    let mut xfcc_written = false;
    for (n, v) in &head.headers {
        let name = &buf[n.clone()];
        let value = &buf[v.clone()];
        if is_hop_by_hop(name) {
            // `te: trailers` survives, as in Envoy.
            if name.eq_ignore_ascii_case(b"te") && has_token(value, b"trailers") {
                header(out, b"te", b"trailers");
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect") && head.expect_continue
            || name.eq_ignore_ascii_case(b"x-request-id") && request_id.is_some()
            // Set below for internal requests only.
            || name.eq_ignore_ascii_case(b"x-envoy-internal")
            || (!internal && trust::stripped_from_external(name, edge))
            || (edge && name.eq_ignore_ascii_case(b"x-forwarded-proto"))
            || name.eq_ignore_ascii_case(b"x-envoy-expected-rq-timeout-ms")
                && timeout.is_some()
                && !hcm.suppress_envoy_headers
            // The router consumes these (Envoy's `RetryStateImpl::create`, `finalTimeout`).
            || consumed_by_router(name)
            || (conn.accept_encoding_removed() && name.eq_ignore_ascii_case(b"accept-encoding"))
            || grpc_timeout.is_some() && name.eq_ignore_ascii_case(b"grpc-timeout")
            || name.eq_ignore_ascii_case(b"x-envoy-original-path") && original_path.is_some()
            || name.eq_ignore_ascii_case(b"x-envoy-original-host") && host_rewrite.is_some()
            || f.attempt_count.0 && name.eq_ignore_ascii_case(b"x-envoy-attempt-count")
            || (head.nominates
                && !name.eq_ignore_ascii_case(b"x-request-id")
                && nominated(buf, &head.headers, name))
            || (head.underscore
                && hcm.headers_with_underscores == UnderscoreAction::DropHeader
                && name.contains(&b'_'))
            || dropped_by(mods, name)
            || crate::http::trace::replaces(conn, name)
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-client-cert") {
            // One line: the client's values (when kept) and this hop's element.
            if !xfcc_written && matches!(xfcc, Action::Keep | Action::Append(_)) {
                joined_lines(out, buf, &head.headers, b"x-forwarded-client-cert");
                if let Action::Append(e) = xfcc {
                    out.push(b',');
                    out.extend_from_slice(e.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            xfcc_written = true;
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // Every x-forwarded-for line as one list, then this hop at the edge.
            if !xff_written {
                joined_lines(out, buf, &head.headers, b"x-forwarded-for");
                if append_xff {
                    let _ = write!(out, ",{xff_hop}");
                }
                out.extend_from_slice(b"\r\n");
                xff_written = true;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
            have_xfp = true;
        }
        header_lower(out, name, value);
    }
    match head.body {
        BodyKind::Length(n) => header(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        BodyKind::Chunked => header(out, b"transfer-encoding", b"chunked"),
        BodyKind::None
            if conn.upgrade().is_none()
                && (head.content_length.is_some() || !bodyless_method(method)) =>
        {
            header(out, b"content-length", b"0");
        }
        _ => {}
    }
    // A configured upgrade keeps its hop-by-hop headers for the next hop.
    if let Some(u) = conn.upgrade() {
        header(out, b"connection", b"upgrade");
        header(out, b"upgrade", &buf[u.clone()]);
    }
    if append_xff && !xff_written {
        let _ = write!(out, "x-forwarded-for: {xff_hop}\r\n");
    }
    match xfcc {
        Action::Set(e) => header(out, b"x-forwarded-client-cert", e.as_bytes()),
        Action::Append(e) if !xfcc_written => header(out, b"x-forwarded-client-cert", e.as_bytes()),
        _ => {}
    }
    if !have_xfp {
        header(out, b"x-forwarded-proto", forwarded_proto(conn));
    }
    if internal {
        header(out, b"x-envoy-internal", b"true");
    } else if edge {
        let _ = write!(out, "x-envoy-external-address: {}\r\n", peer.ip());
    }
    if let Some(id) = request_id {
        header(out, b"x-request-id", id);
    }
    if f.attempt_count.0 {
        header(
            out,
            b"x-envoy-attempt-count",
            itoa::Buffer::new().format(attempt).as_bytes(),
        );
    }
    if let Some(original) = original_path.filter(|_| !hcm.suppress_envoy_headers) {
        header(out, b"x-envoy-original-path", original);
    }
    if let (Some(t), false) = (timeout, hcm.suppress_envoy_headers) {
        header(
            out,
            b"x-envoy-expected-rq-timeout-ms",
            // u64: itoa's u128 path divides in 128 bits.
            itoa::Buffer::new()
                .format(t.as_millis().min(u64::MAX as u128) as u64)
                .as_bytes(),
        );
    }
    if let Some(t) = grpc_timeout {
        grpc_timeout_header(out, t);
    }
    if let Some(via) = &hcm.via {
        header(out, b"via", via.as_bytes());
    }
    let present = |name: &[u8]| {
        head.headers
            .iter()
            .any(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(name))
    };
    if let Some(node) = conn.peer_exchange() {
        header(out, b"x-envoy-peer-metadata", node.exchange.as_bytes());
        header(out, b"x-envoy-peer-metadata-id", node.id.as_bytes());
    }
    for (name, value) in conn.added_headers() {
        // Never a value that would end the header line (filters check too).
        let safe = !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
        if safe && !dropped_by(mods, name.as_bytes()) {
            header(out, name.as_bytes(), value);
        }
    }
    write_adds(out, mods, conn, &present);
    if hcm.tracing.is_some() {
        crate::http::trace::write_upstream(conn, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// `grpc-timeout` as Envoy writes it (`toGrpcTimeout`): milliseconds, or the first larger
/// unit that fits eight digits.
fn grpc_timeout_header(out: &mut Vec<u8>, t: std::time::Duration) {
    let ms = t.as_millis().min(u64::MAX as u128) as u64;
    const MAX: u64 = 99_999_999;
    let (n, unit) = if ms <= MAX {
        (ms, b'm')
    } else if ms / 1000 <= MAX {
        (ms / 1000, b'S')
    } else if ms / 60_000 <= MAX {
        (ms / 60_000, b'M')
    } else {
        ((ms / 3_600_000).min(MAX), b'H')
    };
    let mut v = itoa::Buffer::new().format(n).as_bytes().to_vec();
    v.push(unit);
    header(out, b"grpc-timeout", &v);
}

/// Request headers the router acts on and never forwards.
fn consumed_by_router(name: &[u8]) -> bool {
    name.len() > 9
        && name[..9].eq_ignore_ascii_case(b"x-envoy-r")
        && [
            &b"x-envoy-retry-on"[..],
            b"x-envoy-retry-grpc-on",
            b"x-envoy-max-retries",
            b"x-envoy-retriable-status-codes",
            b"x-envoy-retriable-header-names",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
        || name.eq_ignore_ascii_case(b"x-envoy-upstream-rq-timeout-ms")
        || name.eq_ignore_ascii_case(b"x-envoy-upstream-rq-timeout-alt-response")
        || name.eq_ignore_ascii_case(b"x-envoy-upstream-rq-per-try-timeout-ms")
}

/// Whether a comma list holds `token` (case-insensitive).
fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The response head sent downstream for an upstream response.
#[allow(clippy::too_many_arguments)]
pub(crate) fn response_head<E: FilterHost + ?Sized>(
    out: &mut Vec<u8>,
    conn: &E,
    up: &[u8],
    resp: &ResponseHead,
    mods: &[&HeaderMods],
    chunked_out: bool,
    close: bool,
    service_time_ms: Option<u64>,
    // `include_attempt_count_in_response`: the attempts made.
    attempt_count: Option<u32>,
) {
    let hcm = conn.hcm();
    // `always_set_request_id_in_response`: the id the proxy generated, else the client's.
    let echoed;
    let request_id: Option<&[u8]> = if hcm.always_set_request_id_in_response {
        match &conn.log().request_id {
            Some(id) => Some(&id[..]),
            None => {
                echoed = header_value(conn.buf(), &conn.head().headers, b"x-request-id");
                echoed.as_deref()
            }
        }
    } else {
        None
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(resp.status).as_bytes());
    out.push(b' ');
    let reason = crate::http::local_reply::reason(resp.status);
    if reason == "Unknown" {
        out.extend_from_slice(&up[resp.reason.clone()]);
    } else {
        out.extend_from_slice(reason.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let filters = conn.filter_state();
    let encodes = filters.encodes();
    // Istio's metadata exchange reads (and drops) the upstream's peer headers.
    let discovers = filters
        .istio
        .as_deref()
        .filter(|t| t.upstream_discovery || t.propagated_down);
    let mut has_server = false;
    for (n, v) in &resp.headers {
        let name = &up[n.clone()];
        if let Some(call) = &filters.grpc {
            if name.eq_ignore_ascii_case(b"grpc-status") {
                call.charge(&up[v.clone()]);
            } else if name.eq_ignore_ascii_case(b"grpc-message") {
                call.note_message(&up[v.clone()]);
            }
        }
        if let Some(t) = discovers {
            let core = &conn.core_ctx().istio;
            if crate::http::filter::istio::upstream_header(t, core, name, &up[v.clone()]) {
                continue;
            }
        }
        if is_hop_by_hop(name)
            || (encodes && crate::http::filter::overrides(conn, name))
            // Framing is written below from the parsed head, never copied.
            || name.eq_ignore_ascii_case(b"content-length")
            || dropped_by(mods, name)
            || (resp.nominates && nominated(up, &resp.headers, name))
        {
            continue;
        }
        if attempt_count.is_some() && name.eq_ignore_ascii_case(b"x-envoy-attempt-count") {
            continue;
        }
        if crate::http::trace::drops_response_header(conn, name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"server") {
            if hcm.server_header == ServerHeader::Overwrite {
                continue;
            }
            has_server = true;
        }
        if name.eq_ignore_ascii_case(b"x-envoy-upstream-service-time") && service_time_ms.is_some()
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") && request_id.is_some() {
            continue;
        }
        header_lower(out, name, &up[v.clone()]);
    }
    if chunked_out {
        header(out, b"transfer-encoding", b"chunked");
    } else if let Some(n) = resp.content_length.filter(|_| !filters.compressing()) {
        header(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    if hcm.server_header != ServerHeader::PassThrough && !has_server {
        header(out, b"server", hcm.server_name.as_bytes());
    }
    if let Some(ms) = service_time_ms {
        header(
            out,
            b"x-envoy-upstream-service-time",
            itoa::Buffer::new().format(ms).as_bytes(),
        );
    }
    if let Some(n) = attempt_count {
        header(
            out,
            b"x-envoy-attempt-count",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    if let Some(id) = request_id {
        header(out, b"x-request-id", id);
    }
    if let Some(via) = &hcm.via {
        header(out, b"via", via.as_bytes());
    }
    if let Some(op) = crate::http::trace::response_decorator(conn) {
        header(out, b"x-envoy-decorator-operation", op);
    }
    let present = |name: &[u8]| {
        resp.headers
            .iter()
            .any(|(n, _)| up[n.clone()].eq_ignore_ascii_case(name))
    };
    write_adds(out, mods, conn, &present);
    if encodes {
        crate::http::filter::encode_headers(conn, out);
    }
    let switching = resp.status == 101 && conn.upgrade().is_some();
    if switching {
        // The upstream accepted the upgrade: its Upgrade header goes back with it.
        header(out, b"connection", b"upgrade");
        if let Some((_, v)) = resp
            .headers
            .iter()
            .find(|(n, _)| up[n.clone()].eq_ignore_ascii_case(b"upgrade"))
        {
            header(out, b"upgrade", &up[v.clone()]);
        }
    } else if close {
        header(out, b"connection", b"close");
    } else if conn.head().minor == 0 {
        header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the proxy answers a gRPC request instead of an HTTP status and body: HTTP 200,
/// `grpc-status` and the body as `grpc-message` (Envoy's gRPC-shaped local reply).
pub(crate) struct GrpcAnswer<'a> {
    pub status: u32,
    pub message: &'a [u8],
}

/// Writes `name: ` and the values of every `name` line, joined with commas (no line end:
/// the caller may append to the list).
fn joined_lines(
    out: &mut Vec<u8>,
    buf: &[u8],
    headers: &[(Range<usize>, Range<usize>)],
    name: &[u8],
) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    let mut first = true;
    for (n, v) in headers {
        if buf[n.clone()].eq_ignore_ascii_case(name) {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(&buf[v.clone()]);
            first = false;
        }
    }
}

/// What a local answer becomes: for a gRPC request, HTTP 200 with no body and a
/// [`GrpcAnswer`] (`grpc_status`, or the mapping of `status`, with the body as message);
/// otherwise the status and body as they are.
pub(crate) fn local_answer<'a>(
    grpc: bool,
    status: u16,
    body: &'a [u8],
    grpc_status: Option<u32>,
) -> (u16, &'a [u8], Option<GrpcAnswer<'a>>) {
    if !grpc {
        return (status, body, None);
    }
    let answer = GrpcAnswer {
        status: grpc_status.unwrap_or_else(|| crate::http::local_reply::grpc_status_for(status)),
        message: body,
    };
    (200, b"", Some(answer))
}

/// The head of a response the proxy makes itself (a text body of `body_len` bytes, a
/// redirect's `location`), up to but not including the blank line: the codec adds its own
/// connection headers. With `grpc`, the answer is gRPC-shaped and has no body.
pub(crate) fn local_head<E: FilterHost + ?Sized>(
    out: &mut Vec<u8>,
    conn: &E,
    status: u16,
    body_len: usize,
    location: Option<&[u8]>,
    mods: &[&HeaderMods],
    grpc: Option<GrpcAnswer<'_>>,
) {
    let (status, body_len) = if grpc.is_some() {
        (200, 0)
    } else {
        (status, body_len)
    };
    crate::http::local_reply::status_line(out, status);
    if let Some(l) = location {
        header(out, b"location", l);
    }
    if let Some(g) = grpc {
        let code = itoa::Buffer::new().format(g.status).to_owned();
        header(out, b"content-type", b"application/grpc");
        header(out, b"grpc-status", code.as_bytes());
        let message =
            (!g.message.is_empty()).then(|| crate::http::local_reply::grpc_message(g.message));
        if let Some(m) = &message {
            header(out, b"grpc-message", m.as_bytes());
        }
        if let Some(call) = &conn.filter_state().grpc {
            call.charge(code.as_bytes());
            if let Some(m) = &message {
                call.note_message(m.as_bytes());
            }
        }
    } else if body_len > 0 && !crate::http::filter::replaces(conn, b"content-type") {
        header(out, b"content-type", b"text/plain");
    }
    // RFC 9110 §8.6: no content-length on a 1xx or 204; Envoy sends none on a 304 either.
    // A compressed body's length is not known in advance (the codec frames it).
    if status >= 200 && status != 204 && status != 304 && !conn.filter_state().compressing() {
        header(
            out,
            b"content-length",
            itoa::Buffer::new().format(body_len).as_bytes(),
        );
    }
    let log = conn.log();
    if log.attempt_count_in_response && log.attempts > 0 {
        header(
            out,
            b"x-envoy-attempt-count",
            itoa::Buffer::new().format(log.attempts).as_bytes(),
        );
    }
    header(out, b"server", conn.hcm().server_name.as_bytes());
    if let Some(op) = crate::http::trace::response_decorator(conn) {
        header(out, b"x-envoy-decorator-operation", op);
    }
    write_adds(out, mods, conn, &|_| false);
    if conn.filter_state().encodes() {
        crate::http::filter::encode_headers(conn, out);
    }
}
