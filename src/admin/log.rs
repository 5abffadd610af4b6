//! The admin listener's access log (`admin.access_log`): one line per admin request, as
//! Envoy's admin connection manager writes it (details `admin_filter_response`, the peer
//! appended to `x-forwarded-for`, `x-forwarded-proto: http`).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::model::format::{write_start_time, Command, Context, Val};

/// What one admin exchange leaves for the log.
pub(super) struct AdminExchange {
    pub start: SystemTime,
    pub started: Instant,
    pub method: String,
    pub target: String,
    /// Lower-cased names.
    pub headers: Vec<(String, Vec<u8>)>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub status: u16,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub hostname: std::sync::Arc<str>,
}

impl AdminExchange {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
    }

    fn req(&self, name: &str, out: &mut Vec<u8>) -> bool {
        let v: Option<std::borrow::Cow<'_, [u8]>> = match name {
            ":method" => Some(self.method.as_bytes().into()),
            ":path" => Some(self.target.as_bytes().into()),
            ":authority" => self.header("host").map(Into::into),
            ":scheme" | "x-forwarded-proto" => Some(b"http"[..].into()),
            "x-forwarded-for" => {
                let ip = self.peer.ip().to_string();
                Some(match self.header(name) {
                    Some(v) => [v, b",", ip.as_bytes()].concat().into(),
                    None => ip.into_bytes().into(),
                })
            }
            _ => self.header(name).map(Into::into),
        };
        v.is_some_and(|v| {
            out.extend_from_slice(&v);
            true
        })
    }
}

impl Context for AdminExchange {
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val {
        let mut text = |s: &str| {
            out.extend_from_slice(s.as_bytes());
            Val::Str
        };
        match cmd {
            Command::StartTime(None) => {
                write_start_time(self.start, out);
                Val::Str
            }
            Command::StartTime(Some(f)) => {
                f.write(self.start, out);
                Val::Str
            }
            Command::Req(a, b) => {
                (self.req(a, out) || b.as_deref().is_some_and(|b| self.req(b, out))).into()
            }
            Command::Protocol => text("HTTP/1.1"),
            Command::ResponseCode => {
                text(&self.status.to_string());
                Val::Json
            }
            Command::ResponseCodeDetails => text("admin_filter_response"),
            Command::ResponseFlags => text("-"),
            Command::BytesReceived => {
                text(&self.bytes_received.to_string());
                Val::Json
            }
            Command::BytesSent => {
                text(&self.bytes_sent.to_string());
                Val::Json
            }
            Command::Duration => {
                text(&self.started.elapsed().as_millis().to_string());
                Val::Json
            }
            Command::DownstreamRemote(how) | Command::DownstreamDirectRemote(how) => {
                crate::http::log::write_addr(self.peer, *how, out)
            }
            Command::DownstreamLocal(how) => crate::http::log::write_addr(self.local, *how, out),
            Command::Hostname => text(&self.hostname),
            Command::Const(v) => text(v.as_deref().unwrap_or("-")),
            Command::UpstreamRequestAttemptCount => {
                text("0");
                Val::Json
            }
            // No upstream, no TLS, no filters on the admin listener.
            _ => Val::None,
        }
    }
}
