//! The application log as Envoy's command line configures it: `-l LEVEL`,
//! `--component-log-level component:level,...` (Envoy's component names, mapped onto
//! Ringside's modules), `--log-format` (Envoy's spdlog flags) and `--log-path`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

mod levels;
pub use levels::admin as admin_logging;

/// Envoy's logger components and the Ringside modules that log for each.
const COMPONENTS: &[(&str, &[&str])] = &[
    ("admin", &["ringside::admin"]),
    (
        "config",
        &["ringside::config", "ringside::model", "ringside::xds"],
    ),
    ("connection", &["ringside::listener", "ringside::tcp"]),
    ("conn_handler", &["ringside::listener"]),
    ("dns", &["ringside::xds::dns"]),
    ("file", &[]),
    ("filter", &["ringside::http::filter"]),
    ("grpc", &["ringside::xds::transport"]),
    ("hc", &[]),
    ("health_checker", &[]),
    ("http", &["ringside::http"]),
    (
        "http2",
        &["ringside::http::h2", "ringside::http::h2_server"],
    ),
    ("init", &["ringside::xds::state"]),
    ("io", &["ringside::io"]),
    ("main", &["ringside::app", "ringside::worker"]),
    ("matcher", &["ringside::router"]),
    ("misc", &["ringside::stats"]),
    ("rbac", &[]),
    ("rds", &["ringside::xds"]),
    ("router", &["ringside::router"]),
    ("runtime", &[]),
    ("secret", &["ringside::xds::sds", "ringside::tls"]),
    ("stats", &["ringside::stats", "ringside::admin"]),
    ("tracing", &[]),
    ("upstream", &["ringside::upstream"]),
    // After `upstream`: the pools are part of it, and `%n` names the first.
    ("pool", &["ringside::upstream"]),
    ("wasm", &[]),
    ("websocket", &["ringside::http::conn::tunnel"]),
    ("jwt", &[]),
    ("ext_authz", &[]),
    ("lua", &[]),
    ("quic", &[]),
    ("udp", &[]),
    ("testing", &[]),
];

/// The filter for `-l` and `--component-log-level` (recorded for admin's `/logging`).
pub fn filter(default: &str, components: Option<&str>) -> Result<EnvFilter, String> {
    let bad_level = |s: &str| {
        format!("invalid log level '{s}' (trace, debug, info, warning, error, critical, off)")
    };
    let default = levels::cli_name(default).ok_or_else(|| bad_level(default))?;
    let mut per = Vec::new();
    for item in components
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (name, lvl) = item
            .split_once(':')
            .ok_or_else(|| format!("--component-log-level: '{item}' is not component:level"))?;
        let lvl = levels::cli_name(lvl).ok_or_else(|| bad_level(lvl))?;
        let Some((name, _)) = COMPONENTS.iter().find(|(c, _)| *c == name) else {
            return Err(format!(
                "--component-log-level: invalid component specified '{name}'"
            ));
        };
        per.push((*name, lvl));
    }
    levels::start(default, per)
}

/// Installs the log: Envoy's `--log-format` pattern (or its default look), to
/// `--log-path` (appended) or standard error. The bootstrap's `application_log_config` may
/// replace the format once it is read ([`set_format`]).
pub fn init(filter: EnvFilter, format: Option<&str>, path: Option<&Path>) -> Result<(), String> {
    set_format(LogFormat::Text(Pattern::parse(
        format.unwrap_or(DEFAULT_FORMAT),
    )));
    match path {
        Some(p) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("--log-path {}: {e}", p.display()))?;
            // Each line is formatted whole, then written with one append write: no lock.
            install(filter, std::sync::Arc::new(file));
        }
        None => install(filter, std::io::stderr),
    }
    Ok(())
}

/// The subscriber writing to `writer`, its filter swappable by admin's `/logging`.
fn install<W>(filter: EnvFilter, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(Current)
        .with_writer(writer)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    let _ = levels::RELOAD.set(Box::new(move |f| {
        handle.reload(f).map_err(|e| e.to_string())
    }));
    builder.init();
}

/// How log lines look: a `--log-format` style pattern, or (`application_log_config`'s
/// `json_format`) a JSON object whose values are patterns.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFormat {
    Text(Pattern),
    Json(Vec<(String, Pattern)>),
}

/// The format every line is written with (swapped once the bootstrap is read).
static FORMAT: arc_swap::ArcSwapOption<LogFormat> = arc_swap::ArcSwapOption::const_empty();

/// Makes `f` the format of the lines logged from now on.
pub fn set_format(f: LogFormat) {
    FORMAT.store(Some(std::sync::Arc::new(f)));
}

/// The bootstrap's `application_log_config.log_format`: `text_format` (a `--log-format`
/// pattern) or `json_format` (string values only; `%v` and `%_` are refused there, as in
/// Envoy, since they would break the JSON). Exclusive with `--log-format`, as in Envoy.
pub fn bootstrap_format(
    text: Option<&str>,
    json: Option<&prost_types::Struct>,
    cli_format: bool,
) -> Result<Option<LogFormat>, String> {
    if (text.is_some() || json.is_some()) && cli_format {
        return Err(
            "Only one of ApplicationLogConfig.log_format or CLI option --log-format can be specified."
                .into(),
        );
    }
    if let Some(t) = text {
        return Ok(Some(LogFormat::Text(Pattern::parse(t))));
    }
    let Some(j) = json else {
        return Ok(None);
    };
    let mut fields = Vec::new();
    for (k, v) in &j.fields {
        let Some(prost_types::value::Kind::StringValue(s)) = &v.kind else {
            return Err(format!(
                "application_log_config.log_format.json_format.{k}: only string values are supported"
            ));
        };
        if s.contains("%v") || s.contains("%_") {
            return Err(format!(
                "application_log_config.log_format.json_format.{k}: %v and %_ are not supported in json_format (use %j)"
            ));
        }
        fields.push((k.clone(), Pattern::parse(s)));
    }
    Ok(Some(LogFormat::Json(fields)))
}

impl LogFormat {
    /// Renders one line (without the newline).
    pub fn render(&self, out: &mut String, e: &LogEvent<'_>) {
        match self {
            LogFormat::Text(p) => p.render(out, e),
            LogFormat::Json(fields) => {
                let mut obj = serde_json::Map::new();
                for (k, p) in fields {
                    let mut v = String::new();
                    p.render(&mut v, e);
                    obj.insert(k.clone(), serde_json::Value::String(v));
                }
                out.push_str(&serde_json::Value::Object(obj).to_string());
            }
        }
    }
}

/// What one log line says.
pub struct LogEvent<'a> {
    pub now: SystemTime,
    pub level: Level,
    pub component: &'a str,
    pub file: &'a str,
    pub line: u32,
    pub message: &'a str,
}

/// Envoy's default log format.
pub const DEFAULT_FORMAT: &str = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v";

/// A parsed `--log-format`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern(Vec<Piece>);

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Flag(char),
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => text.push('%'),
                Some(f) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Flag(f));
                }
                None => text.push('%'),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Pattern(pieces)
    }

    /// Renders one line (without the newline).
    pub fn render(&self, out: &mut String, e: &LogEvent<'_>) {
        let LogEvent {
            now,
            level: lvl,
            component,
            file,
            line,
            message,
        } = *e;
        let d = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = d.as_secs() as i64;
        let (y, mo, day) = crate::model::format::civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let (h, mi, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Flag(f) => {
                    let _ = match f {
                        'Y' => write!(out, "{y:04}"),
                        'm' => write!(out, "{mo:02}"),
                        'd' => write!(out, "{day:02}"),
                        'H' => write!(out, "{h:02}"),
                        'M' => write!(out, "{mi:02}"),
                        'S' => write!(out, "{s:02}"),
                        'T' => write!(out, "{h:02}:{mi:02}:{s:02}"),
                        'e' => write!(out, "{:03}", d.subsec_millis()),
                        'f' => write!(out, "{:06}", d.subsec_micros()),
                        'F' => write!(out, "{:09}", d.subsec_nanos()),
                        'z' => write!(out, "+00:00"),
                        'l' => write!(out, "{}", level_name(lvl)),
                        'L' => write!(out, "{}", &level_name(lvl)[..1].to_ascii_uppercase()),
                        'n' => write!(out, "{component}"),
                        'v' => write!(out, "{message}"),
                        // Envoy's own flags: the message with newlines escaped, or as
                        // a JSON string's content.
                        '_' => write!(out, "{}", message.replace('\n', "\\n")),
                        'j' => write!(out, "{}", json_escape(message)),
                        't' => write!(out, "{}", crate::io::thread_id()),
                        'P' => write!(out, "{}", std::process::id()),
                        'g' => write!(out, "{file}"),
                        's' => write!(out, "{}", file.rsplit('/').next().unwrap_or(file)),
                        '#' => write!(out, "{line}"),
                        '!' => Ok(()),
                        other => write!(out, "%{other}"),
                    };
                }
            }
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warning",
        Level::ERROR => "error",
    }
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len().saturating_sub(1)].to_string()
}

/// The Envoy component a Ringside module logs for (`%n`).
fn component(target: &str) -> &'static str {
    let mut best: (&str, usize) = ("main", 0);
    for (c, targets) in COMPONENTS {
        for t in targets.iter() {
            if target.starts_with(t) && t.len() > best.1 {
                best = (c, t.len());
            }
        }
    }
    best.0
}

/// Collects an event's message and fields as `message key=value ...`.
struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

/// The formatter installed by [`init`]: whatever [`FORMAT`] holds at each line.
struct Current;

impl<S, N> FormatEvent<S, N> for Current
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut msg = Message(String::new());
        event.record(&mut msg);
        let mut line = String::with_capacity(128);
        let format = FORMAT.load();
        let Some(format) = format.as_deref() else {
            return Ok(());
        };
        format.render(
            &mut line,
            &LogEvent {
                now: SystemTime::now(),
                level: *meta.level(),
                component: component(meta.target()),
                file: meta.file().unwrap_or(""),
                line: meta.line().unwrap_or(0),
                message: &msg.0,
            },
        );
        writeln!(w, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_log_format_renders_as_envoy_would() {
        // pilot-agent's default `--log-format`.
        let p = Pattern::parse("%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_733_390_000_123_456);
        let mut out = String::new();
        let event = |level, component, file, line, message| LogEvent {
            now: t,
            level,
            component,
            file,
            line,
            message,
        };
        p.render(
            &mut out,
            &event(
                Level::WARN,
                "upstream",
                "src/upstream/mod.rs",
                42,
                "connect failed",
            ),
        );
        assert!(
            out.starts_with("2024-12-05T09:13:20.123456Z\twarning\tenvoy upstream src/upstream/mod.rs:42\tconnect failed\tthread="),
            "{out}"
        );
        let mut out = String::new();
        Pattern::parse("%L|%%|%s|%j")
            .render(&mut out, &event(Level::ERROR, "x", "a/b.rs", 1, "a\"b"));
        assert_eq!(out, "E|%|b.rs|a\\\"b");
    }

    #[test]
    fn component_levels_use_envoys_names() {
        assert!(filter("warning", Some("misc:error,upstream:debug")).is_ok());
        let e = filter("info", Some("nosuch:debug")).unwrap_err();
        assert!(e.contains("invalid component specified 'nosuch'"), "{e}");
        assert!(filter("loud", None)
            .unwrap_err()
            .contains("invalid log level"));
        assert_eq!(component("ringside::upstream::pool"), "upstream");
        assert_eq!(component("ringside::http::h2_server"), "http2");
        assert_eq!(component("something::else"), "main");
    }
}
