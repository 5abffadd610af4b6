//! Access logging: one line per request in Envoy's format, buffered per core and handed to
//! the logger thread in batches (no file I/O on a core).

use std::io::Write as _;

pub use crate::http::exchange::Entry;
use std::net::SocketAddr;

use crate::http::exchange::{Exchange, RequestHeaders};
use crate::http::h1::header_value;
use crate::model::access_log::LogFacts;

use crate::model::format::{write_start_time, Addr, Command, Context, GrpcForm, Val};

/// A request's values as access logs (and `istio.stats`' expressions) read them.
pub(crate) struct LogCtx<'a, E: ?Sized>(pub(crate) &'a E);

impl<E: Exchange + ?Sized> Context for LogCtx<'_, E> {
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val {
        write_command(self.0, cmd, out)
    }
}

/// Appends `a` in the form `how` names.
pub(crate) fn write_addr(a: SocketAddr, how: Addr, out: &mut Vec<u8>) -> Val {
    if crate::model::internal::is_synthetic(&a) && a == crate::model::internal::client_address() {
        // An internal connection's client (Envoy prints no IP for it).
        return text(out, crate::model::internal::CLIENT_ADDRESS.as_bytes());
    }
    match how {
        Addr::Full => {
            let _ = write!(out, "{a}");
            Val::Str
        }
        Addr::WithoutPort => {
            let _ = write!(out, "{}", a.ip());
            Val::Str
        }
        Addr::Port => {
            out.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
            Val::Json
        }
    }
}

fn text(out: &mut Vec<u8>, s: &[u8]) -> Val {
    out.extend_from_slice(s);
    Val::Str
}

/// Writes the value of `cmd` for the connection's current request.
pub(crate) fn write_command<E: Exchange + ?Sized>(c: &E, cmd: &Command, out: &mut Vec<u8>) -> Val {
    let e = c.log();
    let num = |out: &mut Vec<u8>, n: u64| {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        Val::Json
    };
    let opt = |out: &mut Vec<u8>, s: Option<&str>| match s.filter(|s| !s.is_empty()) {
        Some(s) => text(out, s.as_bytes()),
        None => Val::None,
    };
    match cmd {
        Command::DynamicMetadata(ns, path) => {
            let mut v = c.dynamic_metadata().and_then(|m| m.get(ns));
            for k in path {
                v = v.and_then(|v| v.as_object()).and_then(|o| o.get(k));
            }
            metadata_value(v, out)
        }
        Command::FilterState(key, plain) => {
            let v = c.filter_object(key).map(|f| f.value);
            match (v, plain) {
                (None, _) => Val::None,
                (Some(v), true) => text(out, v.as_bytes()),
                (Some(v), false) => {
                    metadata_json(&serde_json::Value::String(v.into()), out);
                    Val::Json
                }
            }
        }
        Command::StartTime(None) => {
            write_start_time(e.start, out);
            Val::Str
        }
        Command::StartTime(Some(f)) => {
            f.write(e.start, out);
            Val::Str
        }
        Command::Req(a, b) => {
            (req(c, a, out) || b.as_deref().is_some_and(|b| req(c, b, out))).into()
        }
        // The router sets it (unless Envoy's headers are suppressed): no need for the head.
        Command::Resp(a, None) if a == SERVICE_TIME => match e.service_time_ms {
            Some(ms) if !c.hcm().suppress_envoy_headers => {
                out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
                Val::Str
            }
            _ => Val::None,
        },
        Command::Resp(a, b) => {
            let head = e.extra.as_deref().map_or(&[][..], |x| &x.response_head);
            let v = response_header(head, a)
                .or_else(|| b.as_deref().and_then(|b| response_header(head, b)));
            match v {
                Some(v) => text(out, &v),
                None => Val::None,
            }
        }
        Command::Protocol => text(out, c.protocol()),
        Command::ResponseCode => num(out, u64::from(e.status)),
        Command::ResponseCodeDetails => {
            out.extend_from_slice(e.details.as_bytes());
            if let Some(arg) = &e.details_arg {
                out.extend_from_slice(arg.as_bytes());
            }
            Val::Str
        }
        // Set when a connection ends for a network filter's reason; never on a request.
        Command::ConnectionTerminationDetails => Val::None,
        Command::ResponseFlags => {
            e.flags.write(out);
            Val::Str
        }
        Command::BytesReceived => num(out, e.bytes_received),
        Command::BytesSent => num(out, e.bytes_sent),
        Command::Duration => match e.started {
            Some(s) => num(out, s.elapsed().as_millis() as u64),
            None => Val::None,
        },
        Command::UpstreamHost => match e.upstream {
            Some(a) => write_addr(a, Addr::Full, out),
            None => Val::None,
        },
        Command::UpstreamRemote(how) => match (e.upstream, upstream_local(e)) {
            (Some(a), Some(_)) => write_addr(a, *how, out),
            _ => Val::None,
        },
        Command::UpstreamLocal(how) => match upstream_local(e) {
            Some(a) => write_addr(a, *how, out),
            None => Val::None,
        },
        Command::UpstreamCluster | Command::UpstreamClusterRaw => opt(out, e.cluster.as_deref()),
        Command::UpstreamTransportFailureReason => opt(
            out,
            e.extra
                .as_deref()
                .and_then(|x| x.transport_failure.as_deref()),
        ),
        Command::UpstreamRequestAttemptCount => num(out, u64::from(e.attempts)),
        Command::RouteName => opt(out, e.route.as_deref()),
        Command::DownstreamDirectRemote(how) => write_addr(c.peer(), *how, out),
        Command::DownstreamRemote(how) => {
            let head = c.head();
            // An address from x-forwarded-for has no port (Envoy writes 0).
            let a = match crate::http::trust::forwarded_remote(c.hcm(), c.buf(), &head.headers) {
                Some(ip) => SocketAddr::new(ip, 0),
                None => c.peer(),
            };
            write_addr(a, *how, out)
        }
        Command::DownstreamLocal(how) => write_addr(c.local(), *how, out),
        Command::RequestedServerName => opt(out, c.authn().map(|a| &*a.sni)),
        Command::DownstreamPeerUriSan => match c.authn().and_then(|a| a.peer.as_ref()) {
            Some(p) if !p.uri_sans.is_empty() => text(out, p.uri_sans.join(",").as_bytes()),
            _ => Val::None,
        },
        Command::DownstreamLocalUriSan => {
            opt(out, c.authn().and_then(|a| a.local_principal.as_deref()))
        }
        Command::Hostname => text(out, c.hostname().as_bytes()),
        Command::GrpcStatus(form) => match grpc_status(c) {
            Some(code) => write_grpc_status(code, *form, out),
            None => Val::None,
        },
        // Envoy writes an unset variable as `-`, in JSON too.
        Command::Const(v) => text(out, v.as_deref().unwrap_or("-").as_bytes()),
    }
}

/// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`, in Envoy's default format.
pub const SERVICE_TIME: &str = "x-envoy-upstream-service-time";

fn upstream_local(e: &Entry) -> Option<SocketAddr> {
    e.extra.as_deref()?.upstream_local
}

/// A gRPC request's status as Envoy's access log reads it: the response's trailers, then
/// its headers, then the mapping of the HTTP status; none for a request that is not gRPC.
fn grpc_status<E: Exchange + ?Sized>(c: &E) -> Option<i32> {
    if !c.grpc() {
        return None;
    }
    call_status(c)
}

/// [`grpc_status`] without asking whether the request is gRPC (Envoy's filter does not).
fn call_status<E: Exchange + ?Sized>(c: &E) -> Option<i32> {
    let e = c.log();
    if let Some(s) = c.grpc_status_seen() {
        return Some(s);
    }
    let head = e.extra.as_deref().map_or(&[][..], |x| &x.response_head);
    if let Some(v) = response_header(head, "grpc-status") {
        let code = std::str::from_utf8(&v).ok()?.trim().parse::<u32>().ok()?;
        return Some(if code > 16 { -1 } else { code as i32 });
    }
    (e.status != 0).then(|| crate::http::local_reply::grpc_status_for(e.status) as i32)
}

const GRPC_CAMEL: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const GRPC_SNAKE: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn write_grpc_status(code: i32, form: GrpcForm, out: &mut Vec<u8>) -> Val {
    let name = |names: &[&'static str; 17]| -> &'static str {
        usize::try_from(code)
            .ok()
            .and_then(|i| names.get(i).copied())
            .unwrap_or("InvalidCode")
    };
    match form {
        GrpcForm::Number => {
            out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
            Val::Json
        }
        GrpcForm::Camel => text(out, name(&GRPC_CAMEL).as_bytes()),
        GrpcForm::Snake => text(out, name(&GRPC_SNAKE).as_bytes()),
    }
}

/// The first value of header `name` (lower-case) in an HTTP/1-form response head, as
/// Envoy's formatter reads it; `:status` is the status line's code.
fn response_header(head: &[u8], name: &str) -> Option<Vec<u8>> {
    if name == ":status" {
        let line = head.split(|&b| b == b'\n').next()?;
        return line.split(|&b| b == b' ').nth(1).map(<[u8]>::to_vec);
    }
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        return Some(line[colon + 1..].trim_ascii().to_vec());
    }
    None
}

/// A dynamic metadata value: strings as they are, anything else as JSON.
fn metadata_value(v: Option<&serde_json::Value>, out: &mut Vec<u8>) -> Val {
    match v {
        None | Some(serde_json::Value::Null) => Val::None,
        Some(serde_json::Value::String(s)) => text(out, s.as_bytes()),
        Some(v) => {
            metadata_json(v, out);
            Val::Json
        }
    }
}

fn req<E: Exchange + ?Sized>(c: &E, name: &str, out: &mut Vec<u8>) -> bool {
    let buf = c.buf();
    let (head, log) = (c.head(), c.log());
    let range = |r: &std::ops::Range<usize>| buf.get(r.clone()).filter(|s| !s.is_empty());
    let v: Option<&[u8]> = match name {
        ":method" => range(&head.method),
        ":path" => Some(c.bytes(&log.path))
            .filter(|p| !p.is_empty())
            .or_else(|| range(&head.target)),
        ":authority" => Some(c.bytes(&log.authority)).filter(|a| !a.is_empty()),
        ":scheme" => Some(b"http"),
        "x-request-id" if log.request_id.is_some() => {
            out.extend_from_slice(log.request_id.as_ref().map_or(&[][..], |r| &r[..]));
            return true;
        }
        _ => {
            return match header_value(buf, &head.headers, name.as_bytes()) {
                Some(v) => {
                    out.extend_from_slice(&v);
                    true
                }
                None => false,
            }
        }
    };
    v.is_some_and(|v| {
        out.extend_from_slice(v);
        true
    })
}

/// Writes the request's line to every configured access log whose filter passes it.
pub(crate) fn write<E: Exchange + ?Sized>(
    ctx: &crate::ctx::CoreCtx,
    c: &E,
    runtime: &crate::model::runtime::Runtime,
) {
    for log in &c.hcm().access_logs {
        if log
            .filter
            .as_ref()
            .is_some_and(|f| !f.passes(&Facts(c), runtime))
        {
            continue;
        }
        if let Some(otel) = &log.otel {
            ctx.otel_record(otel, &otel.record(&LogCtx(c), c.log().start));
            continue;
        }
        ctx.log_line(log.sink, |out| log.format.write(&LogCtx(c), b"-", out));
    }
}

/// What the filters read of a finished request.
struct Facts<'a, E: ?Sized>(&'a E);

impl<E: Exchange + ?Sized> LogFacts for Facts<'_, E> {
    fn status(&self) -> u16 {
        self.0.log().status
    }
    fn duration_ms(&self) -> u64 {
        self.0
            .log()
            .started
            .map_or(0, |s| s.elapsed().as_millis() as u64)
    }
    fn flags(&self) -> crate::model::flags::ResponseFlags {
        self.0.log().flags
    }
    fn header(&self, h: &crate::model::matcher::HeaderMatch) -> bool {
        crate::router::header_matches(h, &RequestHeaders(self.0))
    }
    fn traced(&self) -> bool {
        self.0.hcm().tracing.is_some() && traced(request_id(self.0).as_deref())
    }
    fn id_integer(&self) -> Option<u64> {
        id_integer(&request_id(self.0)?)
    }
    fn grpc_status(&self) -> i32 {
        call_status(self.0).unwrap_or(2)
    }
    fn log_type(&self) -> i32 {
        crate::model::access_log::DOWNSTREAM_END
    }
}

/// The request's `x-request-id` as it went (the proxy's, else the client's).
fn request_id<E: Exchange + ?Sized>(c: &E) -> Option<Vec<u8>> {
    match &c.log().request_id {
        Some(id) => Some(id.to_vec()),
        None => header_value(c.buf(), &c.head().headers, b"x-request-id").map(|v| v.into_owned()),
    }
}

/// A UUID request id as Envoy's `toInteger` reads it: its first 8 hex digits.
fn id_integer(id: &[u8]) -> Option<u64> {
    let prefix = std::str::from_utf8(id.get(..8)?).ok()?;
    u64::from_str_radix(prefix, 16).ok()
}

/// Whether a UUID request id carries the "forced" trace decision (`x-envoy-force-trace`),
/// the only one Envoy's traceable filter passes.
fn traced(id: Option<&[u8]>) -> bool {
    id.and_then(|id| id.get(14)).is_some_and(|&b| b == b'a')
}

/// A metadata value as Envoy prints it (protobuf JSON, compact): whole numbers without a
/// fraction, strings quoted inside structures.
fn metadata_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value as V;
    match v {
        V::Null => out.extend_from_slice(b"null"),
        V::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        V::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                out.extend_from_slice((f as i64).to_string().as_bytes())
            }
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        V::String(s) => out.extend_from_slice(V::String(s.clone()).to_string().as_bytes()),
        V::Array(a) => {
            out.push(b'[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                metadata_json(e, out);
            }
            out.push(b']');
        }
        V::Object(o) => {
            out.push(b'{');
            for (i, (k, e)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(V::String(k.clone()).to_string().as_bytes());
                out.push(b':');
                metadata_json(e, out);
            }
            out.push(b'}');
        }
    }
}
