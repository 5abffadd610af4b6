//! Bootstrap configuration: Envoy's v3 YAML/JSON (proto3 JSON mapping, `Any` by `@type`)
//! parsed through the descriptor pool into the generated `proto` types.
//!
//! Unknown fields are refused by name: the pool knows only the subset of Envoy's API that
//! Ringside implements, so anything else fails closed here, before conversion.

use std::fmt;
use std::path::Path;

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage};

use crate::proto;

pub mod locate;
mod unknown;
use crate::proto::envoy::config::bootstrap::v3::Bootstrap;
pub(crate) use unknown::camel;

/// Built-in configuration used when neither `-c` nor `--config-yaml` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../../examples/default.yaml");

/// Where a piece of configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file given with `-c`.
    File(String),
    /// The `--config-yaml` argument.
    Inline,
    /// The embedded default configuration.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => f.write_str(p),
            Source::Inline => f.write_str("--config-yaml"),
            Source::Default => f.write_str("<embedded default config>"),
        }
    }
}

/// A bootstrap that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read: {reason}")]
    Read { origin: Source, reason: String },
    #[error("{origin}{}: field `{path}`: {reason}", line_col(*.line, *.column))]
    Parse {
        origin: Source,
        line: Option<usize>,
        column: Option<usize>,
        path: String,
        reason: String,
    },
}

fn line_col(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// A bootstrap as loaded, with the texts it came from (to locate errors).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub bootstrap: Bootstrap,
    pub source: Source,
    pub text: String,
    pub inline: Option<String>,
    /// Fields dropped under `--allow-unknown-static-fields` (`source: path`).
    pub unknown_fields: Vec<String>,
}

impl Loaded {
    /// Where a field path is written: `file:line`, `--config-yaml:line`, or the source alone.
    pub fn locate(&self, path: &str) -> String {
        if let Some(inline) = &self.inline {
            if let Some(l) = locate::field_lines(inline).get(path) {
                return format!("{}:{l}", Source::Inline);
            }
        }
        match locate::line_of(&self.text, path) {
            Some(l) => format!("{}:{l}", self.source),
            None => self.source.to_string(),
        }
    }
}

/// Reads the bootstrap the way Envoy does: the file (YAML or JSON), then `--config-yaml`
/// merged over it with protobuf merge semantics (repeated fields append). With
/// `allow_unknown` (`--allow-unknown-static-fields`), fields outside Envoy's API are dropped
/// and listed in [`Loaded::unknown_fields`].
pub fn load(
    path: Option<&Path>,
    inline: Option<&str>,
    allow_unknown: bool,
) -> Result<Loaded, ConfigError> {
    let mut unknown_fields = Vec::new();
    let mut parse = |text: &str, source: &Source| -> Result<Bootstrap, ConfigError> {
        if !allow_unknown {
            return parse_bootstrap(text, source);
        }
        let (b, removed) = parse_bootstrap_lenient(text, source)?;
        unknown_fields.extend(removed.into_iter().map(|p| format!("{source}: {p}")));
        Ok(b)
    };
    let (mut bootstrap, source, text) = match path {
        Some(p) => {
            let source = Source::File(p.display().to_string());
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                origin: source.clone(),
                reason: e.to_string(),
            })?;
            (parse(&text, &source)?, source, text)
        }
        None if inline.is_some() => (Bootstrap::default(), Source::Inline, String::new()),
        None => (
            parse_bootstrap(DEFAULT_CONFIG, &Source::Default)?,
            Source::Default,
            DEFAULT_CONFIG.to_string(),
        ),
    };
    if let Some(text) = inline {
        let overlay = parse(text, &Source::Inline)?;
        bootstrap
            .merge(overlay.encode_to_vec().as_slice())
            .expect("re-decoding our own encoding");
    }
    Ok(Loaded {
        bootstrap,
        source,
        text,
        inline: inline.map(str::to_string),
        unknown_fields,
    })
}

/// Parses one bootstrap document (YAML is a superset of JSON).
pub fn parse_bootstrap(text: &str, source: &Source) -> Result<Bootstrap, ConfigError> {
    parse_message(text, source, "envoy.config.bootstrap.v3.Bootstrap")
}

/// Parses YAML/JSON text as the named message, naming the field path of any error.
pub fn parse_message<M: Message + Default>(
    text: &str,
    source: &Source,
    message: &str,
) -> Result<M, ConfigError> {
    let desc = proto::pool()
        .get_message_by_name(message)
        .expect("message is in proto/");
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let dynamic = parse_dynamic(de, text, source, desc)?;
    transcode(dynamic, source)
}

/// As [`parse_bootstrap`], with `--allow-unknown-static-fields`: fields that are not in
/// Envoy's API at all are dropped (their paths returned, to be warned about); fields that
/// are in it but not implemented are still refused.
pub fn parse_bootstrap_lenient(
    text: &str,
    source: &Source,
) -> Result<(Bootstrap, Vec<String>), ConfigError> {
    let desc = proto::pool()
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .expect("message is in proto/");
    let mut value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            origin: source.clone(),
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            path: "(top level)".into(),
            reason: strip_location(&e.to_string()),
        })?;
    let mut removed = Vec::new();
    unknown::strip(&mut value, &desc, "", &mut removed);
    let dynamic = parse_dynamic(value, text, source, desc)?;
    Ok((transcode(dynamic, source)?, removed))
}

fn transcode<M: Message + Default>(
    dynamic: DynamicMessage,
    source: &Source,
) -> Result<M, ConfigError> {
    dynamic.transcode_to::<M>().map_err(|e| ConfigError::Parse {
        origin: source.clone(),
        line: None,
        column: None,
        path: String::new(),
        reason: e.to_string(),
    })
}

/// Deserializes `de` as a `desc` message, refusing unknown fields; errors name the field
/// path and, from `text`, its line.
fn parse_dynamic<'de, D>(
    de: D,
    text: &str,
    source: &Source,
    desc: prost_reflect::MessageDescriptor,
) -> Result<DynamicMessage, ConfigError>
where
    D: serde::Deserializer<'de, Error = serde_yaml_ng::Error>,
{
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    DynamicMessage::deserialize_with_options(desc, tracked, &options).map_err(|e| {
        let path = track.path().to_string();
        let (line, column) = match e.location() {
            Some(l) => (Some(l.line()), Some(l.column())),
            None => (None, None),
        };
        let path = match path.as_str() {
            "?" | "." => "(top level)".to_string(),
            _ => path,
        };
        let mut reason = strip_location(&e.to_string());
        if let Some(rest) = reason.strip_prefix(&format!("{path}: ")) {
            reason = rest.to_string();
        }
        if let Some(name) = reason
            .strip_prefix("message '")
            .and_then(|r| r.strip_suffix("' not found"))
        {
            reason = format!("type {name} is not implemented by Ringside");
        }
        let line = refine_line(text, line, &reason).or_else(|| locate::line_of(text, &path));
        ConfigError::Parse {
            origin: source.clone(),
            line,
            column: if line.is_some() { None } else { column },
            path,
            reason,
        }
    })
}

/// serde_yaml reports the start of the enclosing mapping; when the error names a field,
/// point at the line that holds it.
fn refine_line(text: &str, line: Option<usize>, reason: &str) -> Option<usize> {
    let start = line?;
    let Some(name) = reason
        .split('\'')
        .nth(1)
        .or_else(|| reason.split('`').nth(1))
    else {
        return line;
    };
    text.lines()
        .enumerate()
        .skip(start - 1)
        .find(|(_, l)| {
            let t = l
                .trim_start()
                .trim_start_matches("- ")
                .trim_start_matches(['"', '\'']);
            t.starts_with(name)
                && t[name.len()..]
                    .trim_start_matches(['"', '\''])
                    .starts_with(':')
        })
        .map(|(i, _)| i + 1)
        .or(line)
}

fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests;

/// Reads an SDS file as Envoy's `path_config_source` does: a `DiscoveryResponse` (YAML or
/// JSON) whose resources are `Secret`s. The error names the file, and the line and field
/// when the text does not parse.
pub fn read_sds_file(
    path: &Path,
) -> Result<Vec<crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret>, String> {
    use crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret;
    const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let source = Source::File(path.display().to_string());
    let resp: crate::proto::envoy::service::discovery::v3::DiscoveryResponse = parse_message(
        &text,
        &source,
        "envoy.service.discovery.v3.DiscoveryResponse",
    )
    .map_err(|e| e.to_string())?;
    resp.resources
        .iter()
        .enumerate()
        .map(|(i, any)| {
            if any.type_url != SECRET {
                return Err(format!(
                    "{}: resources[{i}] is a {}, not a Secret",
                    path.display(),
                    any.type_url
                ));
            }
            Secret::decode(any.value.as_slice())
                .map_err(|e| format!("{}: resources[{i}]: {e}", path.display()))
        })
        .collect()
}
