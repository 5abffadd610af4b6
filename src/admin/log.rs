//! The admin listener's access log (`admin.access_log`): one line per admin request, as
//! Envoy's admin connection manager writes it (details `admin_filter_response`, the peer
//! appended to `x-forwarded-for`, `x-forwarded-proto: http`).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::model::format::{write_start_time, Command, Context};

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
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> bool {
        let mut text = |s: &str| {
            out.extend_from_slice(s.as_bytes());
            true
        };
        match cmd {
            Command::StartTime => {
                write_start_time(self.start, out);
                true
            }
            Command::Req(a, b) => {
                self.req(a, out) || b.as_deref().is_some_and(|b| self.req(b, out))
            }
            Command::Resp(..)
            | Command::UpstreamHost
            | Command::UpstreamCluster
            | Command::RouteName
            | Command::DynamicMetadata(..) => false,
            Command::Protocol => text("HTTP/1.1"),
            Command::ResponseCode => text(&self.status.to_string()),
            Command::ResponseCodeDetails => text("admin_filter_response"),
            Command::ResponseFlags => text("-"),
            Command::BytesReceived => text(&self.bytes_received.to_string()),
            Command::BytesSent => text(&self.bytes_sent.to_string()),
            Command::Duration => text(&self.started.elapsed().as_millis().to_string()),
            Command::DownstreamRemoteAddress => text(&self.peer.to_string()),
            Command::DownstreamRemoteAddressWithoutPort => text(&self.peer.ip().to_string()),
            Command::DownstreamLocalAddress => text(&self.local.to_string()),
            Command::DownstreamLocalAddressWithoutPort => text(&self.local.ip().to_string()),
            Command::Hostname => text(&self.hostname),
        }
    }
}
