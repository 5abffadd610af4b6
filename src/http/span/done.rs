//! A finished span: its name, kind, times and Envoy's tags, read off the request at its
//! end, and its encodings (Zipkin JSON v2, an OTLP `Span`).

use std::borrow::Cow;
use std::io::Write as _;

use crate::http::exchange::Exchange;
use crate::http::trace::{request_header, request_id};
use crate::model::metadata::Packed;
use crate::model::tracing::{MetadataKind, SpanCtx, TagValue, Tracer, Tracing};

/// One finished span, ready to encode.
pub(crate) struct Done {
    pub ctx: SpanCtx,
    pub name: String,
    /// A server span (else a client span).
    pub server: bool,
    /// Start, microseconds since the epoch.
    pub start_us: u64,
    pub duration_us: u64,
    /// Tags in Envoy's order (a tag set twice keeps its first place, last value).
    pub tags: Vec<(Cow<'static, str>, String)>,
    pub http_status: u16,
    pub grpc_status: Option<i32>,
    /// The caller's `tracestate` (OpenTelemetry).
    pub trace_state: Option<String>,
    /// The span's parent came from the caller (OTLP's remote-parent flag).
    pub remote_parent: bool,
    /// The host's address (Zipkin's local endpoint).
    pub local_ip: std::net::IpAddr,
    pub service_cluster: Box<str>,
}

/// gRPC statuses Envoy counts as errors (those that map to an HTTP 5xx).
fn grpc_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Done {
    fn tag(&mut self, k: impl Into<Cow<'static, str>>, v: String) {
        let k = k.into();
        match self.tags.iter_mut().find(|(n, _)| *n == k) {
            Some(slot) => slot.1 = v,
            None => self.tags.push((k, v)),
        }
    }

    pub(crate) fn of<E: Exchange + ?Sized>(
        x: &E,
        t: &Tracing,
        s: &SpanCtx,
        ctx: &crate::ctx::CoreCtx,
    ) -> Done {
        let tracer: &Tracer = t.tracer.as_deref().expect("a span has a tracer");
        let zipkin = matches!(tracer.kind, crate::model::tracing::TracerKind::Zipkin(_));
        let log = x.log();
        let start_us = log
            .start
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let duration_us = log.started.map_or(0, |s| s.elapsed().as_micros() as u64);
        let authority = x.bytes(&log.authority);
        let authority = if authority.is_empty() {
            x.head()
                .host
                .map_or(&b""[..], |h| &x.buf()[x.head().headers[h].1.clone()])
        } else {
            authority
        };
        // The name: the operation the caller (ingress) or the upstream's answer (egress)
        // named, else the route's decorator; else Zipkin names the span by host,
        // OpenTelemetry by direction.
        let asked = crate::http::trace::asked_operation(x);
        let name = match (asked, &log.operation, &log.decorator) {
            (Some(op), _, _) => text(op),
            (None, Some(op), _) => op.to_string(),
            (None, None, Some(d)) => d.operation.to_string(),
            (None, None, None) if zipkin => text(authority),
            (None, None, None) if t.egress => {
                format!("egress {}", String::from_utf8_lossy(authority))
            }
            (None, None, None) => "ingress".into(),
        };
        let server = match &tracer.kind {
            crate::model::tracing::TracerKind::Zipkin(z) => z.split_spans || !t.egress,
            crate::model::tracing::TracerKind::OpenTelemetry(_) => !t.egress,
        };
        let mut d = Done {
            ctx: *s,
            name,
            server,
            start_us,
            duration_us,
            tags: Vec::with_capacity(24),
            http_status: log.status,
            grpc_status: None,
            trace_state: None,
            remote_parent: s.parent.is_some() && !zipkin,
            local_ip: ctx.local_ip,
            service_cluster: tracer.service_cluster.clone(),
        };
        if !zipkin && s.parent.is_some() {
            d.trace_state = crate::http::trace::tracestate(x)
                .filter(|v| !v.is_empty())
                .map(|v| text(&v));
        }
        for (k, v) in [("node_id", &tracer.node_id), ("zone", &tracer.zone)] {
            if !v.is_empty() {
                d.tag(k, v.to_string());
            }
        }
        if let Some(id) = request_id(x) {
            d.tag("guid:x-request-id", text(id));
        }
        let path = x.bytes(&log.path);
        let path = if path.is_empty() {
            &x.buf()[x.head().target.clone()]
        } else {
            path
        };
        let mut url = Vec::with_capacity(authority.len() + path.len() + 8);
        url.extend_from_slice(crate::http::exchange::forwarded_proto(x));
        url.extend_from_slice(b"://");
        url.extend_from_slice(authority);
        url.extend_from_slice(&path[..path.len().min(t.max_path_tag_length)]);
        d.tag("http.url", text(&url));
        d.tag("http.method", text(&x.buf()[x.head().method.clone()]));
        let or_dash = |v: Option<&[u8]>| v.map_or_else(|| "-".to_string(), text);
        d.tag(
            "downstream_cluster",
            or_dash(request_header(x, b"x-envoy-downstream-service-cluster")),
        );
        d.tag("user_agent", or_dash(request_header(x, b"user-agent")));
        d.tag("http.protocol", text(x.protocol()));
        d.tag("peer.address", x.peer().ip().to_string());
        if let Some(v) = request_header(x, b"x-client-trace-id") {
            d.tag("guid:x-client-trace-id", text(v));
        }
        if x.grpc() {
            d.tag("grpc.path", text(path));
            d.tag("grpc.authority", text(authority));
            if let Some(v) = request_header(x, b"content-type") {
                d.tag("grpc.content_type", text(v));
            }
            if let Some(v) = request_header(x, b"grpc-timeout") {
                d.tag("grpc.timeout", text(v));
            }
        }
        d.tag("request_size", log.bytes_received.to_string());
        d.tag("response_size", log.bytes_sent.to_string());
        d.tag("component", "proxy".into());
        if let Some(c) = &log.cluster {
            d.tag("upstream_cluster", c.to_string());
            let observed = ctx
                .snapshot()
                .cluster(c)
                .and_then(|c| {
                    let p = c.stats.prefix();
                    p.strip_prefix("cluster.")?
                        .strip_suffix('.')
                        .map(str::to_string)
                })
                .unwrap_or_else(|| c.to_string());
            d.tag("upstream_cluster.name", observed);
        }
        d.tag("http.status_code", log.status.to_string());
        d.tag("response_flags", log.flags.to_string());
        if log.status == 0 || log.status >= 500 {
            d.tag("error", "true".into());
        }
        // The upstream cluster's metadata, as Envoy reads it: only once a host was chosen.
        let cluster = || {
            let name = log.cluster.as_ref().filter(|_| log.upstream.is_some())?;
            ctx.snapshot().cluster(name)?.metadata.clone()
        };
        for c in t.custom_tags.iter() {
            // Envoy's custom tags never set an empty value.
            if let Some(v) = custom_value(x, &c.value, &cluster).filter(|v| !v.is_empty()) {
                d.tag(Cow::Owned(c.tag.to_string()), v);
            }
        }
        if let Some(code) = x.grpc_status_seen() {
            d.grpc_status = Some(code);
            d.tag("grpc.status_code", code.to_string());
            if let Some(message) = x.grpc_message_seen() {
                d.tag("grpc.message", message.into());
            }
            if grpc_error(code) {
                d.tag("error", "true".into());
            }
        }
        if zipkin {
            // Zipkin's spans drop empty values.
            d.tags.retain(|(_, v)| !v.is_empty());
        }
        d
    }

    /// The span as Zipkin's JSON v2 object.
    pub(crate) fn zipkin_json(&self, shared: bool, out: &mut Vec<u8>) {
        let s = &self.ctx;
        out.extend_from_slice(b"{\"traceId\":\"");
        crate::http::trace::trace_hex(s, out);
        let _ = write!(out, "\",\"id\":\"{:016x}\"", s.id);
        if let Some(p) = s.parent {
            let _ = write!(out, ",\"parentId\":\"{p:016x}\"");
        }
        if !self.name.is_empty() {
            out.extend_from_slice(b",\"name\":");
            crate::model::format::json_string(self.name.as_bytes(), out);
        }
        let (kind, last) = if self.server {
            ("SERVER", "ss")
        } else {
            ("CLIENT", "cr")
        };
        let _ = write!(
            out,
            ",\"kind\":\"{kind}\",\"timestamp\":{},\"duration\":{},\"localEndpoint\":{{",
            self.start_us, self.duration_us
        );
        if !self.service_cluster.is_empty() {
            out.extend_from_slice(b"\"serviceName\":");
            crate::model::format::json_string(self.service_cluster.as_bytes(), out);
            out.push(b',');
        }
        let family = if self.local_ip.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        };
        let _ = write!(out, "\"{family}\":\"{}\",\"port\":0}}", self.local_ip);
        if !self.tags.is_empty() {
            out.extend_from_slice(b",\"tags\":{");
            for (i, (k, v)) in self.tags.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                crate::model::format::json_string(k.as_bytes(), out);
                out.push(b':');
                crate::model::format::json_string(v.as_bytes(), out);
            }
            out.push(b'}');
        }
        let _ = write!(
            out,
            ",\"annotations\":[{{\"timestamp\":{},\"value\":\"{last}\"}}]",
            self.start_us + self.duration_us
        );
        if shared && self.server {
            out.extend_from_slice(b",\"shared\":true");
        }
        out.push(b'}');
    }

    /// The span as an OTLP `Span`.
    pub(crate) fn otlp(&self) -> crate::proto::opentelemetry::proto::trace::v1::Span {
        use crate::proto::opentelemetry::proto::common::v1 as otlp;
        use crate::proto::opentelemetry::proto::trace::v1::{span::SpanKind, status, Span, Status};
        let s = &self.ctx;
        let mut trace_id = Vec::with_capacity(16);
        trace_id.extend_from_slice(&s.trace_hi.to_be_bytes());
        trace_id.extend_from_slice(&s.trace_lo.to_be_bytes());
        // Status follows the HTTP code, then (for gRPC, always written) the gRPC status.
        let mut code = match self.http_status {
            500.. => Some(status::StatusCode::Error),
            400..=499 if !self.server => Some(status::StatusCode::Error),
            _ => None,
        };
        if let Some(g) = self.grpc_status {
            let error = if self.server { grpc_error(g) } else { g != 0 };
            code = Some(if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            });
        }
        let start = self.start_us * 1000;
        Span {
            trace_id,
            span_id: s.id.to_be_bytes().to_vec(),
            trace_state: self.trace_state.clone().unwrap_or_default(),
            parent_span_id: s.parent.map_or_else(Vec::new, |p| p.to_be_bytes().to_vec()),
            // W3C flags (sampled), with OTLP's "has is-remote" and "is remote" bits.
            flags: 0x101 | if self.remote_parent { 0x200 } else { 0 },
            name: self.name.clone(),
            kind: if self.server {
                SpanKind::Server
            } else {
                SpanKind::Client
            } as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + self.duration_us * 1000,
            attributes: self
                .tags
                .iter()
                .map(|(k, v)| otlp::KeyValue {
                    key: k.to_string(),
                    value: Some(otlp::AnyValue {
                        value: Some(otlp::any_value::Value::StringValue(v.clone())),
                    }),
                })
                .collect(),
            status: code.map(|c| Status {
                message: String::new(),
                code: c as i32,
            }),
            ..Default::default()
        }
    }
}

/// A custom tag's value for this request, if it has one.
fn custom_value<E: Exchange + ?Sized>(
    x: &E,
    v: &TagValue,
    cluster: &dyn Fn() -> Option<Packed>,
) -> Option<String> {
    match v {
        TagValue::Fixed(v) => v.as_deref().map(str::to_string),
        TagValue::Header { name, default } => request_header(x, name.as_bytes())
            .map(text)
            .or_else(|| default.as_deref().map(str::to_string)),
        TagValue::Metadata {
            kind: MetadataKind::Request,
            namespace,
            path,
            default,
        } => {
            let mut at = x.dynamic_metadata().and_then(|m| m.get(&**namespace));
            for key in path.iter() {
                at = at.and_then(|v| v.get(&**key));
            }
            at.and_then(metadata_text)
                .or_else(|| default.as_deref().map(str::to_string))
        }
        TagValue::Metadata {
            kind,
            namespace,
            path,
            default,
        } => {
            let packed = match kind {
                MetadataKind::Route => x.log().route_metadata.clone(),
                MetadataKind::Host => x.log().host_metadata.clone(),
                _ => cluster(),
            };
            packed
                .and_then(|p| p.value(namespace, path))
                .as_ref()
                .and_then(metadata_text)
                .or_else(|| default.as_deref().map(str::to_string))
        }
    }
}

/// A metadata value as Envoy writes it into a tag: strings as they are, numbers as
/// `absl::StrCat` writes a double (six significant digits), bools as words, structures
/// as compact JSON.
fn metadata_text(v: &serde_json::Value) -> Option<String> {
    Some(match v {
        serde_json::Value::Null => return None,
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => crate::model::cel::six_digits(n.as_f64()?),
        other => other.to_string(),
    })
}
