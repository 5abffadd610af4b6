//! Access logging: one line per request in Envoy's format, buffered per core and handed to
//! the logger thread in batches (no file I/O on a core).

use std::io::Write as _;

pub use crate::http::exchange::Entry;
use crate::http::exchange::Exchange;
use crate::http::h1::header_value;
use crate::model::format::{write_start_time, Command, Context};

struct LogCtx<'a, E: ?Sized>(&'a E);

impl<E: Exchange + ?Sized> Context for LogCtx<'_, E> {
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> bool {
        write_command(self.0, cmd, out)
    }
}

/// Writes the value of `cmd` for the connection's current request.
pub(crate) fn write_command<E: Exchange + ?Sized>(c: &E, cmd: &Command, out: &mut Vec<u8>) -> bool {
    let e = c.log();
    let num = |out: &mut Vec<u8>, n: u64| {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        true
    };
    match cmd {
        Command::DynamicMetadata(ns, path) => {
            let mut v = c.dynamic_metadata().and_then(|m| m.get(ns));
            for k in path {
                v = v.and_then(|v| v.as_object()).and_then(|o| o.get(k));
            }
            match v {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::String(s)) => {
                    out.extend_from_slice(s.as_bytes());
                    true
                }
                Some(v) => {
                    metadata_json(v, out);
                    true
                }
            }
        }
        Command::StartTime => {
            write_start_time(e.start, out);
            true
        }
        Command::Req(a, b) => req(c, a, out) || b.as_deref().is_some_and(|b| req(c, b, out)),
        Command::Resp(a, _) => match (a.as_str(), e.service_time_ms) {
            ("x-envoy-upstream-service-time", Some(ms)) => num(out, ms),
            _ => false,
        },
        Command::Protocol => {
            out.extend_from_slice(c.protocol());
            true
        }
        Command::ResponseCode => num(out, u64::from(e.status)),
        Command::ResponseCodeDetails => {
            out.extend_from_slice(e.details.as_bytes());
            if let Some(arg) = &e.details_arg {
                out.extend_from_slice(arg.as_bytes());
            }
            true
        }
        Command::ResponseFlags => {
            e.flags.write(out);
            true
        }
        Command::BytesReceived => num(out, e.bytes_received),
        Command::BytesSent => num(out, e.bytes_sent),
        Command::Duration => match e.started {
            Some(s) => num(out, s.elapsed().as_millis() as u64),
            None => false,
        },
        Command::UpstreamHost => e.upstream.is_some_and(|a| {
            let _ = write!(out, "{}", a);
            true
        }),
        Command::UpstreamCluster => e.cluster.as_ref().is_some_and(|n| {
            out.extend_from_slice(n.as_bytes());
            true
        }),
        Command::RouteName => e.route.as_ref().is_some_and(|n| {
            out.extend_from_slice(n.as_bytes());
            !n.is_empty()
        }),
        Command::DownstreamRemoteAddress => {
            let _ = write!(out, "{}", c.peer());
            true
        }
        Command::DownstreamRemoteAddressWithoutPort => {
            let _ = write!(out, "{}", c.peer().ip());
            true
        }
        Command::DownstreamLocalAddress => {
            let _ = write!(out, "{}", c.local());
            true
        }
        Command::DownstreamLocalAddressWithoutPort => {
            let _ = write!(out, "{}", c.local().ip());
            true
        }
        Command::Hostname => {
            out.extend_from_slice(c.hostname().as_bytes());
            true
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

/// Writes the request's line to every configured access log.
pub(crate) fn write<E: Exchange + ?Sized>(ctx: &crate::ctx::CoreCtx, c: &E) {
    for log in &c.hcm().access_logs {
        ctx.log_line(log.sink, |out| log.format.write(&LogCtx(c), b"-", out));
    }
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
