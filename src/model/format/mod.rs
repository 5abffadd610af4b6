//! Envoy's substitution format strings (`%COMMAND%`), used by access logs and by header
//! values. A format is parsed once at configuration time; unknown commands are refused.

mod json;
mod time;

pub use time::{civil_from_days, write_rfc3339_nanos, write_start_time, TimeFormat};

/// Appends `s` as a JSON string (as the JSON log formats write strings).
pub fn json_string(s: &[u8], out: &mut Vec<u8>) {
    json::escape(s, out);
}

/// Envoy's default access log format.
pub const DEFAULT_ACCESS_LOG: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A parsed format: a text line, or Envoy's JSON form (`json_format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    body: Body,
    /// Lower-cased request header names the format reads (so a request keeps only those).
    pub request_headers: Vec<String>,
    /// Emit nothing instead of `-` for missing values (in JSON: leave the key out).
    pub omit_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    Text(Vec<Part>),
    /// Keys sorted, as Envoy writes them.
    Json(Vec<(String, json::Node)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Command {
        cmd: Command,
        max_len: Option<usize>,
    },
}

/// Which address of an endpoint a command writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    Full,
    WithoutPort,
    /// The port alone (a number).
    Port,
}

/// `%GRPC_STATUS(...)%`'s forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcForm {
    /// `Ok`, `DeadlineExceeded`… (the default).
    Camel,
    /// `OK`, `DEADLINE_EXCEEDED`…
    Snake,
    Number,
}

/// A value a format can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `START_TIME`, or `START_TIME(FORMAT)`.
    StartTime(Option<Box<TimeFormat>>),
    /// `REQ(main?alt)`: names lower-cased; pseudo-headers keep their colon.
    Req(String, Option<String>),
    Resp(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    /// The endpoint chosen (`UPSTREAM_HOST`), connected or not.
    UpstreamHost,
    /// The connection's peer (`UPSTREAM_REMOTE_ADDRESS…`): only once connected.
    UpstreamRemote(Addr),
    UpstreamLocal(Addr),
    /// The cluster's observability name (`alt_stat_name` when set).
    UpstreamCluster,
    UpstreamClusterRaw,
    UpstreamTransportFailureReason,
    UpstreamRequestAttemptCount,
    /// The client as the connection manager settles it (`x-forwarded-for` when the
    /// proxy is not the edge).
    DownstreamRemote(Addr),
    /// The connection's peer.
    DownstreamDirectRemote(Addr),
    DownstreamLocal(Addr),
    /// The SNI the client sent.
    RequestedServerName,
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    RouteName,
    Hostname,
    GrpcStatus(GrpcForm),
    /// `DYNAMIC_METADATA(NAMESPACE:KEY:...)`: a value a filter wrote (jwt_authn's payload,
    /// RBAC's shadow verdict).
    DynamicMetadata(String, Vec<String>),
    /// `FILTER_STATE(KEY:PLAIN|TYPED)`: `true` for PLAIN.
    FilterState(String, bool),
    /// A value fixed at configuration time (`ENVIRONMENT(NAME)`; `None` when unset).
    Const(Option<String>),
}

impl Command {
    /// Whether the command reads what only the downstream TLS handshake knows.
    pub fn reads_tls(&self) -> bool {
        matches!(
            self,
            Command::RequestedServerName
                | Command::DownstreamPeerUriSan
                | Command::DownstreamLocalUriSan
                | Command::FilterState(..)
        )
    }
}

/// What [`Context::write`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    /// Nothing: the value is missing.
    None,
    /// Text (quoted in JSON).
    Str,
    /// A JSON value as it is (a number, or a structure).
    Json,
}

impl From<bool> for Val {
    fn from(written: bool) -> Val {
        if written {
            Val::Str
        } else {
            Val::None
        }
    }
}

/// What a format is evaluated against.
pub trait Context {
    /// Writes the value of `cmd` to `out` and says what it wrote.
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val;
}

impl Format {
    /// Parses `text`. Errors name the offending command.
    pub fn parse(text: &str) -> Result<Format, String> {
        let parts = parse_parts(text)?;
        let mut f = Format {
            body: Body::Text(parts),
            request_headers: Vec::new(),
            omit_empty: false,
        };
        f.collect_headers();
        Ok(f)
    }

    /// Envoy's `json_format`: each string value is a format string; numbers, booleans,
    /// nulls, lists and structures are kept. Errors name the key.
    pub fn json(fields: &prost_types::Struct) -> Result<Format, String> {
        let mut f = Format {
            body: Body::Json(json::object(fields, "")?),
            request_headers: Vec::new(),
            omit_empty: false,
        };
        f.collect_headers();
        Ok(f)
    }

    fn collect_headers(&mut self) {
        let mut names = Vec::new();
        self.for_each_command(&mut |c| {
            if let Command::Req(a, b) = c {
                for n in std::iter::once(a).chain(b.iter()) {
                    if !n.starts_with(':') && !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        });
        self.request_headers = names;
    }

    /// Calls `f` with every command of the format.
    pub fn for_each_command(&self, f: &mut dyn FnMut(&Command)) {
        match &self.body {
            Body::Text(parts) => parts_commands(parts, f),
            Body::Json(fields) => fields.iter().for_each(|(_, n)| n.for_each_command(f)),
        }
    }

    /// Whether any command satisfies `pred`.
    pub fn any_command(&self, pred: impl Fn(&Command) -> bool) -> bool {
        let mut found = false;
        self.for_each_command(&mut |c| found |= pred(c));
        found
    }

    /// True when the format is plain text (no commands).
    pub fn is_literal(&self) -> Option<&str> {
        match &self.body {
            Body::Text(parts) => match parts.as_slice() {
                [] => Some(""),
                [Part::Literal(s)] => Some(s),
                _ => None,
            },
            Body::Json(_) => None,
        }
    }

    /// Appends the formatted text to `out`; missing values become `missing` (text form),
    /// or `null` (JSON form, a line ending in a newline).
    pub fn write(&self, ctx: &dyn Context, missing: &[u8], out: &mut Vec<u8>) {
        match &self.body {
            Body::Text(parts) => {
                let missing = if self.omit_empty { b"" } else { missing };
                write_parts(parts, ctx, missing, out);
            }
            Body::Json(fields) => {
                json::write_object(fields, ctx, self.omit_empty, out);
                out.push(b'\n');
            }
        }
    }
}

fn parts_commands(parts: &[Part], f: &mut dyn FnMut(&Command)) {
    for p in parts {
        if let Part::Command { cmd, .. } = p {
            f(cmd);
        }
    }
}

/// Writes `parts` as text; returns what the last command wrote.
fn write_parts(parts: &[Part], ctx: &dyn Context, missing: &[u8], out: &mut Vec<u8>) -> Val {
    let mut last = Val::None;
    for p in parts {
        match p {
            Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
            Part::Command { cmd, max_len } => {
                let start = out.len();
                last = ctx.write(cmd, out);
                if last == Val::None {
                    out.extend_from_slice(missing);
                }
                if let Some(m) = max_len {
                    if out.len() - start > *m {
                        out.truncate(start + m);
                    }
                }
            }
        }
    }
    last
}

fn parse_parts(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('%') {
            lit.push('%');
            rest = r;
            continue;
        }
        // Envoy's grammar: `NAME(ARGS)` with no `)` in ARGS (which may hold `%`, as
        // START_TIME's format does), an optional `:LENGTH`, then `%`.
        let end = match rest.find('(') {
            Some(open)
                if open > 0
                    && rest[..open]
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
            {
                let close = open
                    + rest[open..].find(')').ok_or_else(|| {
                        format!("unterminated command in format string at `%{rest}`")
                    })?;
                let mut k = close + 1;
                if let Some(r) = rest[k..].strip_prefix(':') {
                    k += 1 + r.bytes().take_while(u8::is_ascii_digit).count();
                }
                rest[k..].starts_with('%').then_some(k)
            }
            _ => rest.find('%'),
        }
        .ok_or_else(|| format!("unterminated command in format string at `%{rest}`"))?;
        let spec = &rest[..end];
        rest = &rest[end + 1..];
        if !lit.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut lit)));
        }
        parts.push(parse_command(spec)?);
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Literal(lit));
    }
    Ok(parts)
}

fn parse_command(spec: &str) -> Result<Part, String> {
    let (head, max_len) = match spec.rsplit_once("):") {
        Some((h, n)) => {
            let n = n
                .parse()
                .map_err(|_| format!("bad length limit in `%{spec}%`"))?;
            (format!("{h})"), Some(n))
        }
        None => (spec.to_string(), None),
    };
    let header_args = |inner: &str| -> (String, Option<String>) {
        match inner.split_once('?') {
            Some((a, b)) => (a.to_ascii_lowercase(), Some(b.to_ascii_lowercase())),
            None => (inner.to_ascii_lowercase(), None),
        }
    };
    let arg = |name: &str| {
        head.strip_prefix(name)
            .and_then(|s| s.strip_prefix('('))
            .and_then(|s| s.strip_suffix(')'))
    };
    let cmd = if let Some(inner) = arg("REQ") {
        let (a, b) = header_args(inner);
        Command::Req(a, b)
    } else if let Some(inner) = arg("RESP") {
        let (a, b) = header_args(inner);
        Command::Resp(a, b)
    } else if let Some(inner) = arg("DYNAMIC_METADATA") {
        let mut parts = inner.split(':').map(str::to_string);
        let ns = parts
            .next()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("`%{spec}%`: DYNAMIC_METADATA needs a namespace"))?;
        Command::DynamicMetadata(ns, parts.collect())
    } else if let Some(inner) = arg("FILTER_STATE") {
        let mut it = inner.split(':');
        let key = it.next().filter(|k| !k.is_empty());
        let key = key.ok_or_else(|| format!("`%{spec}%`: FILTER_STATE needs a key"))?;
        let plain = match it.next() {
            None | Some("TYPED") => false,
            Some("PLAIN") => true,
            Some(other) => {
                return Err(format!(
                    "`%{spec}%`: FILTER_STATE serialization `{other}` is not supported (PLAIN or TYPED)"
                ))
            }
        };
        if it.next().is_some() {
            return Err(format!(
                "`%{spec}%`: FILTER_STATE's FIELD form is not supported"
            ));
        }
        Command::FilterState(key.to_string(), plain)
    } else if let Some(inner) = arg("ENVIRONMENT") {
        Command::Const(std::env::var(inner).ok())
    } else if let Some(inner) = arg("START_TIME") {
        Command::StartTime(Some(Box::new(TimeFormat::parse(inner)?)))
    } else if let Some(inner) = arg("GRPC_STATUS") {
        Command::GrpcStatus(match inner {
            "CAMEL_STRING" => GrpcForm::Camel,
            "SNAKE_STRING" => GrpcForm::Snake,
            "NUMBER" => GrpcForm::Number,
            _ => {
                return Err(format!(
                    "`%{spec}%`: GRPC_STATUS takes CAMEL_STRING, SNAKE_STRING or NUMBER"
                ))
            }
        })
    } else {
        use Addr::{Full, Port, WithoutPort};
        match head.as_str() {
            "START_TIME" => Command::StartTime(None),
            "PROTOCOL" => Command::Protocol,
            "RESPONSE_CODE" => Command::ResponseCode,
            "RESPONSE_CODE_DETAILS" => Command::ResponseCodeDetails,
            "CONNECTION_TERMINATION_DETAILS" => Command::ConnectionTerminationDetails,
            "RESPONSE_FLAGS" => Command::ResponseFlags,
            "BYTES_RECEIVED" => Command::BytesReceived,
            "BYTES_SENT" => Command::BytesSent,
            "DURATION" => Command::Duration,
            "UPSTREAM_HOST" => Command::UpstreamHost,
            "UPSTREAM_REMOTE_ADDRESS" => Command::UpstreamRemote(Full),
            "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Command::UpstreamRemote(WithoutPort),
            "UPSTREAM_REMOTE_PORT" => Command::UpstreamRemote(Port),
            "UPSTREAM_LOCAL_ADDRESS" => Command::UpstreamLocal(Full),
            "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Command::UpstreamLocal(WithoutPort),
            "UPSTREAM_LOCAL_PORT" => Command::UpstreamLocal(Port),
            "UPSTREAM_CLUSTER" => Command::UpstreamCluster,
            "UPSTREAM_CLUSTER_RAW" => Command::UpstreamClusterRaw,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => Command::UpstreamTransportFailureReason,
            "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Command::UpstreamRequestAttemptCount,
            "DOWNSTREAM_REMOTE_ADDRESS" => Command::DownstreamRemote(Full),
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Command::DownstreamRemote(WithoutPort),
            "DOWNSTREAM_REMOTE_PORT" => Command::DownstreamRemote(Port),
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Command::DownstreamDirectRemote(Full),
            "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Command::DownstreamDirectRemote(WithoutPort)
            }
            "DOWNSTREAM_DIRECT_REMOTE_PORT" => Command::DownstreamDirectRemote(Port),
            "DOWNSTREAM_LOCAL_ADDRESS" => Command::DownstreamLocal(Full),
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Command::DownstreamLocal(WithoutPort),
            "DOWNSTREAM_LOCAL_PORT" => Command::DownstreamLocal(Port),
            "REQUESTED_SERVER_NAME" => Command::RequestedServerName,
            "DOWNSTREAM_PEER_URI_SAN" => Command::DownstreamPeerUriSan,
            "DOWNSTREAM_LOCAL_URI_SAN" => Command::DownstreamLocalUriSan,
            "ROUTE_NAME" => Command::RouteName,
            "HOSTNAME" => Command::Hostname,
            "GRPC_STATUS" => Command::GrpcStatus(GrpcForm::Camel),
            "GRPC_STATUS_NUMBER" => Command::GrpcStatus(GrpcForm::Number),
            _ => return Err(format!("unsupported format command `%{spec}%`")),
        }
    };
    Ok(Part::Command { cmd, max_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ctx;
    impl Context for Ctx {
        fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> Val {
            match cmd {
                Command::ResponseCode => {
                    out.extend_from_slice(b"200");
                    Val::Json
                }
                Command::Req(n, _) if n == ":method" => {
                    out.extend_from_slice(b"GET");
                    Val::Str
                }
                Command::Req(n, _) if n == "x-q" => {
                    out.extend_from_slice(b"a\"b\\c\n");
                    Val::Str
                }
                _ => Val::None,
            }
        }
    }

    #[test]
    fn parses_default_and_formats() {
        let f = Format::parse(DEFAULT_ACCESS_LOG).unwrap();
        assert!(f.request_headers.contains(&"x-request-id".to_string()));
        let f = Format::parse(
            "%REQ(:METHOD)% %RESPONSE_CODE% 100%% %REQ(USER-AGENT):3% %UPSTREAM_HOST%",
        )
        .unwrap();
        let mut out = Vec::new();
        f.write(&Ctx, b"-", &mut out);
        assert_eq!(out, b"GET 200 100% - -");
    }

    #[test]
    fn refuses_unknown_commands() {
        assert!(Format::parse("%NOPE%").unwrap_err().contains("NOPE"));
        assert!(Format::parse("%REQ(x").is_err());
    }

    /// Found by review: a length limit must not run on to the next command.
    #[test]
    fn length_limits_and_neighbouring_commands_split_as_envoy_splits_them() {
        let f = Format::parse("[%REQ(:METHOD):2%] [%REQ(:METHOD)%]%RESPONSE_CODE%%REQ(X-Q)%:(x)")
            .unwrap();
        let mut out = Vec::new();
        f.write(&Ctx, b"-", &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "[GE] [GET]200a\"b\\c\n:(x)"
        );
        assert!(Format::parse("%REQ(X):3x%").is_err());
        assert!(Format::parse("%REQ(X%").is_err());
    }

    #[test]
    fn start_time_takes_a_format_with_percent_signs() {
        let f = Format::parse("[%START_TIME(%s.%3f)%] %RESPONSE_CODE%").unwrap();
        assert!(f.any_command(|c| matches!(c, Command::StartTime(Some(_)))));
        assert!(f.any_command(|c| *c == Command::ResponseCode));
        assert!(Format::parse("%START_TIME(%Q)%")
            .unwrap_err()
            .contains("%Q"));
    }

    fn json_format(yaml: &str) -> Format {
        let v: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let s: prost_types::Struct = json::to_struct(&v);
        Format::json(&s).unwrap()
    }

    /// Envoy 1.40 wrote exactly these lines for the same formats.
    #[test]
    fn json_values_are_typed_as_envoy_types_them() {
        let f = json_format(
            "{code: '%RESPONSE_CODE%', code_s: 'c=%RESPONSE_CODE%', missing: '%REQ(X-NOPE)%', mixmiss: 'c=%REQ(X-NOPE)%;%RESPONSE_CODE%', num: 5, topf: 2.5, b: true, nul: null, nested: {s: '%RESPONSE_CODE%', l: [1, '%REQ(:METHOD)%']}, quote: '%REQ(X-Q)%'}",
        );
        let mut out = Vec::new();
        f.write(&Ctx, b"-", &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"b\":true,\"code\":200,\"code_s\":\"c=200\",\"missing\":null,\"mixmiss\":\"c=-;200\",\"nested\":{\"l\":[1,\"GET\"],\"s\":200},\"nul\":null,\"num\":5,\"quote\":\"a\\\"b\\\\c\\n\",\"topf\":2.5}\n"
        );
        let mut f = json_format(
            "{code: '%RESPONSE_CODE%', missing: '%REQ(X-NOPE)%', mixmiss: 'c=%REQ(X-NOPE)%'}",
        );
        f.omit_empty = true;
        let mut out = Vec::new();
        f.write(&Ctx, b"-", &mut out);
        assert_eq!(out, b"{\"code\":200,\"mixmiss\":\"c=\"}\n");
    }

    #[test]
    fn json_errors_name_the_key() {
        let v: serde_json::Value = serde_yaml_ng::from_str("{a: {b: '%NOPE%'}}").unwrap();
        let e = Format::json(&json::to_struct(&v)).unwrap_err();
        assert!(e.contains("a.b") && e.contains("NOPE"), "{e}");
    }
}
