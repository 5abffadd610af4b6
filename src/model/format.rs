//! Envoy's substitution format strings (`%COMMAND%`), used by access logs and by header
//! values. A format is parsed once at configuration time; unknown commands are refused.

use std::fmt::Write as _;
use std::time::SystemTime;

/// Envoy's default access log format.
pub const DEFAULT_ACCESS_LOG: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// A parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    parts: Vec<Part>,
    /// Lower-cased request header names the format reads (so a request keeps only those).
    pub request_headers: Vec<String>,
    /// Emit nothing instead of `-` for missing values.
    pub omit_empty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Command {
        cmd: Command,
        max_len: Option<usize>,
    },
}

/// A value a format can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    StartTime,
    /// `REQ(main?alt)`: names lower-cased; pseudo-headers keep their colon.
    Req(String, Option<String>),
    Resp(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseCodeDetails,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    RouteName,
    Hostname,
    /// `DYNAMIC_METADATA(NAMESPACE:KEY:...)`: a value a filter wrote (jwt_authn's payload,
    /// RBAC's shadow verdict).
    DynamicMetadata(String, Vec<String>),
}

/// What a format is evaluated against.
pub trait Context {
    /// Writes the value of `cmd` to `out`; returns false when it has none.
    fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> bool;
}

impl Format {
    /// Parses `text`. Errors name the offending command.
    pub fn parse(text: &str) -> Result<Format, String> {
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
            let end = rest
                .find('%')
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
        let mut request_headers = Vec::new();
        for p in &parts {
            if let Part::Command {
                cmd: Command::Req(a, b),
                ..
            } = p
            {
                for n in std::iter::once(a).chain(b.iter()) {
                    if !n.starts_with(':') && !request_headers.contains(n) {
                        request_headers.push(n.clone());
                    }
                }
            }
        }
        Ok(Format {
            parts,
            request_headers,
            omit_empty: false,
        })
    }

    /// True when the format is plain text (no commands).
    pub fn is_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// Appends the formatted text to `out`; missing values become `missing`.
    pub fn write(&self, ctx: &dyn Context, missing: &[u8], out: &mut Vec<u8>) {
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Part::Command { cmd, max_len } => {
                    let start = out.len();
                    if !ctx.write(cmd, out) && !self.omit_empty {
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
    }
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
    let cmd = if let Some(inner) = head.strip_prefix("REQ(").and_then(|s| s.strip_suffix(')')) {
        let (a, b) = header_args(inner);
        Command::Req(a, b)
    } else if let Some(inner) = head
        .strip_prefix("DYNAMIC_METADATA(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let mut parts = inner.split(':').map(str::to_string);
        let ns = parts
            .next()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("`%{spec}%`: DYNAMIC_METADATA needs a namespace"))?;
        Command::DynamicMetadata(ns, parts.collect())
    } else if let Some(inner) = head.strip_prefix("RESP(").and_then(|s| s.strip_suffix(')')) {
        let (a, b) = header_args(inner);
        Command::Resp(a, b)
    } else {
        match head.as_str() {
            "START_TIME" => Command::StartTime,
            "PROTOCOL" => Command::Protocol,
            "RESPONSE_CODE" => Command::ResponseCode,
            "RESPONSE_CODE_DETAILS" => Command::ResponseCodeDetails,
            "RESPONSE_FLAGS" => Command::ResponseFlags,
            "BYTES_RECEIVED" => Command::BytesReceived,
            "BYTES_SENT" => Command::BytesSent,
            "DURATION" => Command::Duration,
            "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => Command::UpstreamHost,
            "UPSTREAM_CLUSTER" => Command::UpstreamCluster,
            "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
                Command::DownstreamRemoteAddress
            }
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                Command::DownstreamRemoteAddressWithoutPort
            }
            "DOWNSTREAM_LOCAL_ADDRESS" => Command::DownstreamLocalAddress,
            "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Command::DownstreamLocalAddressWithoutPort,
            "ROUTE_NAME" => Command::RouteName,
            "HOSTNAME" => Command::Hostname,
            _ => return Err(format!("unsupported format command `%{spec}%`")),
        }
    };
    Ok(Part::Command { cmd, max_len })
}

/// Writes `t` as Envoy's default START_TIME: `2026-11-24T23:59:01.123Z`.
pub fn write_start_time(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = String::with_capacity(24);
    let _ = write!(
        s,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        d.subsec_millis()
    );
    out.extend_from_slice(s.as_bytes());
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ctx;
    impl Context for Ctx {
        fn write(&self, cmd: &Command, out: &mut Vec<u8>) -> bool {
            match cmd {
                Command::ResponseCode => {
                    out.extend_from_slice(b"200");
                    true
                }
                Command::Req(n, _) if n == ":method" => {
                    out.extend_from_slice(b"GET");
                    true
                }
                _ => false,
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

    #[test]
    fn start_time_is_iso8601() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_996_741_123);
        let mut out = Vec::new();
        write_start_time(t, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "2026-11-29T23:59:01.123Z"
        );
    }
}
