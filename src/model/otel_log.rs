//! `envoy.access_loggers.open_telemetry`, validated: each finished request (or TCP
//! connection) becomes an OTLP `LogRecord` whose body and attributes are formats, batched on
//! its core and exported with `LogsService/Export` over the core's own HTTP/2 pool.
// The id registry's lock is taken at configuration time only, never on a core.
#![allow(clippy::disallowed_types)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message;

use super::format::{Command, Context, Format};
use crate::proto::opentelemetry::proto::common::v1 as otlp;
use crate::proto::opentelemetry::proto::logs::v1 as logs;

/// One configured OpenTelemetry access logger.
pub struct OtelLog {
    /// Its per-core batch, the same for every configuration naming the same collector
    /// and log name.
    pub id: u32,
    pub cluster: Arc<str>,
    pub authority: Box<str>,
    pub timeout: Option<Duration>,
    pub metadata: Vec<(Box<str>, Box<str>)>,
    pub body: Option<OtelValue>,
    pub attributes: Vec<(String, OtelValue)>,
    /// The export's `Resource`, encoded once (built-in labels and `resource_attributes`).
    pub resource: Vec<u8>,
    /// `buffer_flush_interval` (1 s) and `buffer_size_bytes` (16 KiB).
    pub flush_every: Duration,
    pub flush_bytes: usize,
    /// `access_logs.open_telemetry_access_log.<stat_prefix>`.
    pub stats: Arc<crate::stats::Scope>,
}

/// An OTLP value whose strings are formats.
pub enum OtelValue {
    Text(Format),
    List(Vec<OtelValue>),
    Kv(Vec<(String, OtelValue)>),
}

impl OtelValue {
    fn for_each_command(&self, f: &mut dyn FnMut(&Command)) {
        match self {
            OtelValue::Text(t) => t.for_each_command(f),
            OtelValue::List(l) => l.iter().for_each(|v| v.for_each_command(f)),
            OtelValue::Kv(kv) => kv.iter().for_each(|(_, v)| v.for_each_command(f)),
        }
    }

    fn eval(&self, ctx: &dyn Context) -> otlp::AnyValue {
        use otlp::any_value::Value as V;
        let value = match self {
            OtelValue::Text(t) => {
                let mut out = Vec::new();
                t.write(ctx, b"-", &mut out);
                V::StringValue(String::from_utf8_lossy(&out).into_owned())
            }
            OtelValue::List(l) => V::ArrayValue(otlp::ArrayValue {
                values: l.iter().map(|v| v.eval(ctx)).collect(),
            }),
            OtelValue::Kv(kv) => V::KvlistValue(otlp::KeyValueList {
                values: kv_list(kv, ctx),
            }),
        };
        otlp::AnyValue { value: Some(value) }
    }
}

fn kv_list(kv: &[(String, OtelValue)], ctx: &dyn Context) -> Vec<otlp::KeyValue> {
    kv.iter()
        .map(|(k, v)| otlp::KeyValue {
            key: k.clone(),
            value: Some(v.eval(ctx)),
        })
        .collect()
}

impl OtelLog {
    /// Every command its body and attributes read.
    pub fn for_each_command(&self, f: &mut dyn FnMut(&Command)) {
        if let Some(b) = &self.body {
            b.for_each_command(f);
        }
        self.attributes
            .iter()
            .for_each(|(_, v)| v.for_each_command(f));
    }

    /// The record of one request or connection, started at `start`.
    pub fn record(&self, ctx: &dyn Context, start: SystemTime) -> logs::LogRecord {
        let nanos = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        logs::LogRecord {
            time_unix_nano: nanos,
            body: self.body.as_ref().map(|b| b.eval(ctx)),
            attributes: kv_list(&self.attributes, ctx),
            ..Default::default()
        }
    }

    /// The `ExportLogsServiceRequest` of a batch: `records` are `ScopeLogs.log_records`
    /// entries, already encoded.
    pub fn export(&self, records: &[u8]) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let field = |tag: u32, body: &[u8], out: &mut Vec<u8>| {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(body.len() as u64, out);
            out.extend_from_slice(body);
        };
        let mut resource_logs = Vec::with_capacity(records.len() + self.resource.len() + 16);
        field(1, &self.resource, &mut resource_logs);
        field(2, records, &mut resource_logs);
        let mut out = Vec::with_capacity(resource_logs.len() + 8);
        field(1, &resource_logs, &mut out);
        out
    }
}

/// Appends `record` to a batch of `ScopeLogs.log_records`.
pub fn append(record: &logs::LogRecord, batch: &mut Vec<u8>) {
    prost::encoding::message::encode(2, record, batch);
}

/// The encoded `Resource` of a logger.
pub fn resource(attributes: Vec<otlp::KeyValue>) -> Vec<u8> {
    crate::proto::opentelemetry::proto::resource::v1::Resource {
        attributes,
        dropped_attributes_count: 0,
    }
    .encode_to_vec()
}

static IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The batch id of a logger by its collector and log name.
pub fn intern(key: &str) -> u32 {
    let mut ids = IDS.lock().unwrap_or_else(|e| e.into_inner());
    match ids.iter().position(|k| k == key) {
        Some(i) => i as u32,
        None => {
            ids.push(key.to_string());
            (ids.len() - 1) as u32
        }
    }
}
