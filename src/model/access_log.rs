//! Access logs: where a line goes ([`LogSink`]) and in what format, and the files by number:
//! configurations name a file as `LogSink::File(id)`, cores buffer its lines under that id,
//! and the logger thread opens the path once.
// Taken only at configuration time (control thread) and by the logger thread on first use
// of a file; never on a core.
#![allow(clippy::disallowed_types)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::format;

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The id of `path`, the same for every configuration that names it.
pub fn intern(path: &str) -> u32 {
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let path = PathBuf::from(path);
    match paths.iter().position(|p| *p == path) {
        Some(i) => i as u32,
        None => {
            paths.push(path);
            (paths.len() - 1) as u32
        }
    }
}

/// The path numbered `id`.
pub fn path(id: u32) -> Option<PathBuf> {
    PATHS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id as usize)
        .cloned()
}

/// Opens `path` as Envoy opens an access log: created if missing, appended to.
pub fn open(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// Where an access log line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    Stdout,
    Stderr,
    /// A file, by its id in this module's registry.
    File(u32),
}

/// One configured access logger.
pub struct AccessLog {
    pub sink: LogSink,
    pub format: Arc<format::Format>,
    /// `filter`: the line is written only when it holds.
    pub filter: Option<LogFilter>,
    /// An OpenTelemetry logger: the request becomes a record sent to its collector
    /// (`sink` and `format` are then unused).
    pub otel: Option<Arc<super::otel_log::OtelLog>>,
}

impl AccessLog {
    /// Every command the logger reads.
    pub fn for_each_command(&self, f: &mut dyn FnMut(&format::Command)) {
        match &self.otel {
            Some(o) => o.for_each_command(f),
            None => self.format.for_each_command(f),
        }
    }
}

/// A comparison of `ComparisonFilter`: the value, or the runtime's value of `runtime_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub op: CmpOp,
    pub value: u32,
    pub runtime_key: Option<Box<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ge,
    Le,
    Ne,
}

impl Comparison {
    /// Whether `v` passes, against the runtime's value where it has one.
    pub fn holds(&self, v: u64, runtime: &super::runtime::Runtime) -> bool {
        let want = self
            .runtime_key
            .as_deref()
            .and_then(|k| runtime.get_u64(k))
            .unwrap_or(u64::from(self.value));
        match self.op {
            CmpOp::Eq => v == want,
            CmpOp::Ge => v >= want,
            CmpOp::Le => v <= want,
            CmpOp::Ne => v != want,
        }
    }
}

/// Envoy's `AccessLogFilter`s that Ringside evaluates.
pub enum LogFilter {
    StatusCode(Comparison),
    /// On the request's duration in milliseconds.
    Duration(Comparison),
    /// Ringside has no health-check filter, so no request is a health check: always true.
    NotHealthCheck,
    /// The request was traced because it asked to be (`x-envoy-force-trace`): Envoy's
    /// `traced && reason == ServiceForced`, read from the decision packed into its
    /// `x-request-id`.
    Traceable,
    /// `runtime_key`'s numerator (default `numerator`) out of `denominator`, drawn from the
    /// request id unless `independent`.
    Runtime {
        key: Box<str>,
        numerator: u32,
        denominator: u32,
        independent: bool,
    },
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
    Header(super::matcher::HeaderMatch),
    /// Any of these flags (empty: any flag at all).
    ResponseFlag(super::flags::ResponseFlags),
    GrpcStatus {
        statuses: Vec<i32>,
        exclude: bool,
    },
    /// The log types (Envoy's `AccessLogType` numbers) that pass.
    LogType {
        types: Vec<i32>,
        exclude: bool,
    },
}

/// Envoy's `AccessLogType`s Ringside writes: at a request's end, at a TCP connection's.
pub const DOWNSTREAM_END: i32 = 6;
pub const TCP_CONNECTION_END: i32 = 3;

/// What the access logs of a connection manager or TCP proxy need the request path to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogNeeds {
    /// SNI and certificate identities.
    pub tls: bool,
    /// The response head (`%RESP(...)%`, `%GRPC_STATUS%`).
    pub response_head: bool,
    /// The gRPC status of a gRPC request (`%GRPC_STATUS%`, `grpc_status_filter`).
    pub grpc: bool,
}

impl LogNeeds {
    /// Notes what `c` reads.
    pub fn note(&mut self, c: &format::Command) {
        self.tls |= c.reads_tls();
        // The upstream service time alone is read from the request's entry.
        self.response_head |= match c {
            format::Command::Resp(a, b) => a != "x-envoy-upstream-service-time" || b.is_some(),
            format::Command::GrpcStatus(_) => true,
            _ => false,
        };
        self.grpc |= matches!(c, format::Command::GrpcStatus(_));
    }

    pub fn of(logs: &[AccessLog]) -> LogNeeds {
        let mut n = LogNeeds::default();
        for l in logs {
            l.for_each_command(&mut |c| n.note(c));
            if let Some(f) = &l.filter {
                n.grpc |= f.reads_grpc();
                n.response_head |= f.reads_grpc();
            }
        }
        n
    }
}

/// What the access log filters read of a finished request or connection.
pub trait LogFacts {
    /// The response code (0 for a TCP connection).
    fn status(&self) -> u16;
    fn duration_ms(&self) -> u64;
    fn flags(&self) -> super::flags::ResponseFlags;
    fn header(&self, h: &super::matcher::HeaderMatch) -> bool;
    /// Whether the request is traced (its trace decision).
    fn traced(&self) -> bool;
    /// The request id as Envoy's `toInteger` reads it, if there is one.
    fn id_integer(&self) -> Option<u64>;
    /// The gRPC status as Envoy's filter reads it, gRPC request or not: trailers, then
    /// headers, then the mapping of the HTTP status, else UNKNOWN (2).
    fn grpc_status(&self) -> i32;
    /// Envoy's `AccessLogType` of this line.
    fn log_type(&self) -> i32;
}

impl LogFilter {
    /// Whether the line is written.
    pub fn passes(&self, f: &dyn LogFacts, runtime: &super::runtime::Runtime) -> bool {
        match self {
            LogFilter::StatusCode(cmp) => cmp.holds(u64::from(f.status()), runtime),
            LogFilter::Duration(cmp) => cmp.holds(f.duration_ms(), runtime),
            LogFilter::NotHealthCheck => true,
            LogFilter::Traceable => f.traced(),
            LogFilter::Runtime {
                key,
                numerator,
                denominator,
                independent,
            } => {
                let numerator = runtime.get_u64(key).unwrap_or(u64::from(*numerator));
                let draw = match f.id_integer() {
                    Some(n) if !*independent => n,
                    _ => fastrand::u64(..),
                };
                draw % u64::from(*denominator) < numerator
            }
            LogFilter::And(all) => all.iter().all(|g| g.passes(f, runtime)),
            LogFilter::Or(any) => any.iter().any(|g| g.passes(f, runtime)),
            LogFilter::Header(h) => f.header(h),
            LogFilter::ResponseFlag(set) if set.is_empty() => !f.flags().is_empty(),
            LogFilter::ResponseFlag(set) => f.flags().intersects(*set),
            LogFilter::GrpcStatus { statuses, exclude } => {
                statuses.contains(&f.grpc_status()) != *exclude
            }
            LogFilter::LogType { types, exclude } => types.contains(&f.log_type()) != *exclude,
        }
    }

    fn reads_grpc(&self) -> bool {
        match self {
            LogFilter::GrpcStatus { .. } => true,
            LogFilter::And(v) | LogFilter::Or(v) => v.iter().any(LogFilter::reads_grpc),
            _ => false,
        }
    }
}
