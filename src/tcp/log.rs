//! The TCP proxy's access log: one line when a connection ends, in the same formats as
//! HTTP's, with Envoy's values for a connection (no request: `REQ(...)` and the protocol
//! are missing, the response code is 0).

use crate::ctx::{CoreCtx, Downstream};
use crate::http::log::write_addr;
use crate::model::access_log::{LogFacts, TCP_CONNECTION_END};
use crate::model::flags::ResponseFlags;
use crate::model::format::{write_start_time, Addr, Command, Context, Val};
use crate::model::TcpProxy;

use super::Outcome;

struct Line<'a> {
    istio_authn: bool,
    conn: &'a Downstream,
    out: &'a Outcome,
    hostname: &'a str,
}

impl Line<'_> {
    fn duration_ms(&self) -> Option<u64> {
        self.out.start.map(|(_, s)| s.elapsed().as_millis() as u64)
    }
}

fn text(out: &mut Vec<u8>, s: &str) -> Val {
    if s.is_empty() {
        return Val::None;
    }
    out.extend_from_slice(s.as_bytes());
    Val::Str
}

fn num(out: &mut Vec<u8>, n: u64) -> Val {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    Val::Json
}

impl Context for Line<'_> {
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val {
        let o = self.out;
        let authn = self.conn.authn.as_deref();
        match cmd {
            Command::StartTime(f) => match (o.start, f) {
                (Some((t, _)), None) => {
                    write_start_time(t, out);
                    Val::Str
                }
                (Some((t, _)), Some(f)) => {
                    f.write(t, out);
                    Val::Str
                }
                (None, _) => Val::None,
            },
            Command::ResponseCode => num(out, 0),
            Command::ResponseFlags => text(out, o.flags),
            Command::BytesReceived => num(out, o.received),
            Command::BytesSent => num(out, o.sent),
            Command::Duration => self.duration_ms().map_or(Val::None, |ms| num(out, ms)),
            Command::UpstreamHost => o
                .upstream
                .map_or(Val::None, |a| write_addr(a, Addr::Full, out)),
            Command::UpstreamRemote(how) => match (o.upstream, o.upstream_local) {
                (Some(a), Some(_)) => write_addr(a, *how, out),
                _ => Val::None,
            },
            Command::UpstreamLocal(how) => o
                .upstream_local
                .map_or(Val::None, |a| write_addr(a, *how, out)),
            Command::UpstreamCluster | Command::UpstreamClusterRaw => {
                o.cluster.as_ref().map_or(Val::None, |c| text(out, &c.name))
            }
            Command::UpstreamTransportFailureReason => {
                text(out, o.transport_failure.as_deref().unwrap_or(""))
            }
            Command::DownstreamRemote(how) | Command::DownstreamDirectRemote(how) => {
                write_addr(self.conn.peer, *how, out)
            }
            Command::DownstreamLocal(how) => write_addr(self.conn.dst, *how, out),
            Command::RequestedServerName => text(out, authn.map_or("", |a| &a.sni)),
            Command::DownstreamPeerUriSan => match authn.and_then(|a| a.peer.as_ref()) {
                Some(p) => text(out, &p.uri_sans.join(",")),
                None => Val::None,
            },
            Command::DownstreamLocalUriSan => text(
                out,
                authn
                    .and_then(|a| a.local_principal.as_deref())
                    .unwrap_or(""),
            ),
            Command::FilterState(key, plain) => {
                match self
                    .conn
                    .filter_object(key, self.istio_authn)
                    .map(|f| f.value)
                {
                    None => Val::None,
                    Some(v) if *plain => text(out, v),
                    Some(v) => {
                        out.extend_from_slice(serde_json::Value::from(v).to_string().as_bytes());
                        Val::Json
                    }
                }
            }
            Command::Hostname => text(out, self.hostname),
            Command::ConnectionTerminationDetails => {
                text(out, o.termination.as_deref().unwrap_or(""))
            }
            Command::Const(v) => text(out, v.as_deref().unwrap_or("-")),
            // No request on a TCP connection.
            Command::Req(..)
            | Command::Resp(..)
            | Command::Protocol
            | Command::ResponseCodeDetails
            | Command::RouteName
            | Command::UpstreamRequestAttemptCount
            | Command::GrpcStatus(_)
            | Command::DynamicMetadata(..) => Val::None,
        }
    }
}

impl LogFacts for Line<'_> {
    fn status(&self) -> u16 {
        0
    }
    fn duration_ms(&self) -> u64 {
        Line::duration_ms(self).unwrap_or(0)
    }
    fn flags(&self) -> ResponseFlags {
        let mut f = ResponseFlags::NONE;
        for name in self.out.flags.split(',') {
            if let Some(flag) = ResponseFlags::from_name(name) {
                f.set(flag);
            }
        }
        f
    }
    fn header(&self, h: &crate::model::matcher::HeaderMatch) -> bool {
        // A connection has no headers: the matcher meets an empty header map.
        crate::rbac::missing_header(h)
    }
    fn traced(&self) -> bool {
        false
    }
    fn id_integer(&self) -> Option<u64> {
        None
    }
    fn grpc_status(&self) -> i32 {
        2
    }
    fn log_type(&self) -> i32 {
        TCP_CONNECTION_END
    }
}

/// Evaluates `istio.stats`' dimension expressions against the connection as its access log
/// reads it, appending each value to `key`.
pub(super) fn dimensions(
    ctx: &CoreCtx,
    f: &crate::model::istio::IstioStats,
    tp: &TcpProxy,
    conn: &Downstream,
    out: &Outcome,
    peers: crate::model::cel::Peers<'_>,
    key: &mut crate::stats::labeled::KeyBuilder<'_>,
) {
    let line = Line {
        istio_authn: tp.istio_authn,
        conn,
        out,
        hostname: &ctx.hostname,
    };
    let mut v = String::new();
    for e in f.exprs.iter() {
        v.clear();
        e.eval(&line, peers, &mut v);
        key.push_clean(&v);
    }
}

/// Writes the connection's line to each access log whose filter passes it.
pub(super) fn write(ctx: &CoreCtx, tp: &TcpProxy, conn: &Downstream, out: &Outcome) {
    let snapshot = ctx.snapshot();
    let line = Line {
        istio_authn: tp.istio_authn,
        conn,
        out,
        hostname: &ctx.hostname,
    };
    for log in &tp.access_logs {
        if log
            .filter
            .as_ref()
            .is_some_and(|f| !f.passes(&line, &snapshot.runtime))
        {
            continue;
        }
        if let Some(otel) = &log.otel {
            let start = out.start.map_or(std::time::SystemTime::now(), |(t, _)| t);
            ctx.otel_record(otel, &otel.record(&line, start));
            continue;
        }
        ctx.log_line(log.sink, |buf| log.format.write(&line, b"-", buf));
    }
}

/// The network `set_filter_state`'s objects for a new connection, each value formatted
/// over it (a missing value is `-`, as in Envoy's formatter).
pub(crate) fn connection_objects(
    values: &[crate::model::filter_state::SetValue],
    conn: &Downstream,
    istio_authn: bool,
    hostname: &str,
) -> std::rc::Rc<[crate::model::filter_state::Object]> {
    let out = Outcome {
        start: Some((std::time::SystemTime::now(), std::time::Instant::now())),
        flags: "-",
        ..Outcome::default()
    };
    // An internal connection's objects (its opener's) come first.
    let mut objects: Vec<_> = conn
        .objects
        .as_deref()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let mut buf = Vec::new();
    for v in values {
        // Each value sees those set before it.
        let mut c = conn.clone();
        c.objects = Some(objects.clone().into());
        let line = Line {
            istio_authn,
            conn: &c,
            out: &out,
            hostname,
        };
        buf.clear();
        v.format.write(&line, b"-", &mut buf);
        crate::model::filter_state::put(&mut objects, v, &buf);
    }
    objects.into()
}

/// `f` formatted over a connection that is opening (Envoy's formatter with no request:
/// the TCP proxy's tunneling hostname and headers).
pub(crate) fn format_over(
    f: &crate::model::format::Format,
    conn: &Downstream,
    istio_authn: bool,
    hostname: &str,
) -> Vec<u8> {
    let out = Outcome {
        start: Some((std::time::SystemTime::now(), std::time::Instant::now())),
        flags: "-",
        ..Outcome::default()
    };
    let line = Line {
        istio_authn,
        conn,
        out: &out,
        hostname,
    };
    let mut buf = Vec::new();
    f.write(&line, b"-", &mut buf);
    buf
}
