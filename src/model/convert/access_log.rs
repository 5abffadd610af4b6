//! `access_log` entries (connection managers, TCP proxies, the admin listener) →
//! [`AccessLog`]: the file and stream loggers, their text and JSON formats, and Envoy's
//! access log filters.

use std::sync::Arc;

use crate::model::access_log::{AccessLog, CmpOp, Comparison, LogFilter, LogSink};
use crate::model::flags::ResponseFlags;
use crate::model::format::{Format, DEFAULT_ACCESS_LOG};
use crate::proto::envoy::config::accesslog::v3 as pb;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::extensions::access_loggers::file::v3 as file;
use crate::proto::envoy::extensions::access_loggers::stream::v3 as stream;

use super::{any_type, data_source, decode_any, err, ConvertError};

const STDOUT_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
const FILE_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";

/// A file logger's sink: `/dev/stdout` and `/dev/stderr` are the process's own streams;
/// any other file must open for appending now (Envoy refuses a configuration whose log
/// file it cannot open), and is then written by the logger thread.
fn file_sink(path: &str, res: &str, field: &str) -> Result<LogSink, ConvertError> {
    match path {
        "" => Err(err(res, field, "path is required")),
        "/dev/stdout" => Ok(LogSink::Stdout),
        "/dev/stderr" => Ok(LogSink::Stderr),
        _ => {
            crate::model::access_log::open(std::path::Path::new(path)).map_err(|e| {
                err(
                    res,
                    field,
                    format!("cannot open access log file '{path}': {e}"),
                )
            })?;
            Ok(LogSink::File(crate::model::access_log::intern(path)))
        }
    }
}

/// How a logger's configuration gives its format.
enum Given {
    Default,
    Text(String),
    Json(prost_types::Struct),
    Sfs(core::SubstitutionFormatString),
}

pub(super) fn access_log(
    al: &pb::AccessLog,
    res: &str,
    path: &str,
) -> Result<AccessLog, ConvertError> {
    let Some(pb::access_log::ConfigType::TypedConfig(any)) = &al.config_type else {
        return Err(err(
            res,
            format!("{path}.typed_config"),
            "typed_config is required",
        ));
    };
    let sfs = |f: Option<core::SubstitutionFormatString>| f.map_or(Given::Default, Given::Sfs);
    let (sink, given) = match any_type(any) {
        STDOUT_LOG => {
            let l: stream::StdoutAccessLog = decode_any(any, STDOUT_LOG, res, path)?;
            use stream::stdout_access_log::AccessLogFormat::LogFormat;
            (
                LogSink::Stdout,
                sfs(l.access_log_format.map(|LogFormat(f)| f)),
            )
        }
        STDERR_LOG => {
            let l: stream::StderrAccessLog = decode_any(any, STDERR_LOG, res, path)?;
            use stream::stderr_access_log::AccessLogFormat::LogFormat;
            (
                LogSink::Stderr,
                sfs(l.access_log_format.map(|LogFormat(f)| f)),
            )
        }
        FILE_LOG => {
            let l: file::FileAccessLog = decode_any(any, FILE_LOG, res, path)?;
            use file::file_access_log::AccessLogFormat as F;
            let given = match l.access_log_format {
                None => Given::Default,
                Some(F::Format(t)) if t.is_empty() => Given::Default,
                Some(F::Format(t)) => Given::Text(t),
                Some(F::JsonFormat(j) | F::TypedJsonFormat(j)) => Given::Json(j),
                Some(F::LogFormat(f)) => Given::Sfs(f),
            };
            let sink = file_sink(&l.path, res, &format!("{path}.typed_config.path"))?;
            (sink, given)
        }
        other => {
            return Err(err(
                res,
                format!("{path}.typed_config"),
                format!(
                    "access logger '{}' of type {other} is not supported",
                    al.name
                ),
            ))
        }
    };
    let fpath = format!("{path}.typed_config.log_format");
    let text = |t: &str, at: &str| Format::parse(t).map_err(|e| err(res, at, e));
    let json = |j: &prost_types::Struct, at: &str| Format::json(j).map_err(|e| err(res, at, e));
    let format = match given {
        Given::Default => text(DEFAULT_ACCESS_LOG, &fpath)?,
        Given::Text(t) => text(&t, &format!("{path}.typed_config.format"))?,
        Given::Json(j) => json(&j, &format!("{path}.typed_config.json_format"))?,
        Given::Sfs(sfs) => {
            use core::substitution_format_string::Format as F;
            let mut f = match &sfs.format {
                Some(F::TextFormatSource(ds)) => {
                    let at = format!("{fpath}.text_format_source");
                    let bytes = data_source(ds, res, &at)?;
                    let t = String::from_utf8(bytes.to_vec())
                        .map_err(|_| err(res, &at, "format is not UTF-8"))?;
                    text(&t, &at)?
                }
                Some(F::TextFormat(t)) => text(t, &format!("{fpath}.text_format"))?,
                Some(F::JsonFormat(j)) => json(j, &format!("{fpath}.json_format"))?,
                None => text(DEFAULT_ACCESS_LOG, &fpath)?,
            };
            f.omit_empty = sfs.omit_empty_values;
            f
        }
    };
    let filter = al
        .filter
        .as_ref()
        .map(|f| log_filter(f, res, &format!("{path}.filter")))
        .transpose()?;
    Ok(AccessLog {
        sink,
        format: Arc::new(format),
        filter,
    })
}

fn comparison(
    c: Option<&pb::ComparisonFilter>,
    res: &str,
    at: &str,
) -> Result<Comparison, ConvertError> {
    let Some(c) = c else {
        return Err(err(res, format!("{at}.comparison"), "is required"));
    };
    let op = match pb::comparison_filter::Op::try_from(c.op) {
        Ok(pb::comparison_filter::Op::Eq) => CmpOp::Eq,
        Ok(pb::comparison_filter::Op::Ge) => CmpOp::Ge,
        Ok(pb::comparison_filter::Op::Le) => CmpOp::Le,
        Ok(pb::comparison_filter::Op::Ne) => CmpOp::Ne,
        Err(_) => {
            return Err(err(
                res,
                format!("{at}.comparison.op"),
                format!("unknown op {}", c.op),
            ))
        }
    };
    let Some(v) = &c.value else {
        return Err(err(res, format!("{at}.comparison.value"), "is required"));
    };
    Ok(Comparison {
        op,
        value: v.default_value,
        runtime_key: Some(v.runtime_key.as_str())
            .filter(|k| !k.is_empty())
            .map(Into::into),
    })
}

fn log_filter(f: &pb::AccessLogFilter, res: &str, at: &str) -> Result<LogFilter, ConvertError> {
    use pb::access_log_filter::FilterSpecifier as F;
    let list = |v: &[pb::AccessLogFilter], at: String| -> Result<Vec<LogFilter>, ConvertError> {
        if v.len() < 2 {
            return Err(err(res, &at, "at least two filters are required"));
        }
        v.iter()
            .enumerate()
            .map(|(i, f)| log_filter(f, res, &format!("{at}[{i}]")))
            .collect()
    };
    Ok(match &f.filter_specifier {
        None => return Err(err(res, at, "a filter is required")),
        Some(F::StatusCodeFilter(s)) => LogFilter::StatusCode(comparison(
            s.comparison.as_ref(),
            res,
            &format!("{at}.status_code_filter"),
        )?),
        Some(F::DurationFilter(d)) => LogFilter::Duration(comparison(
            d.comparison.as_ref(),
            res,
            &format!("{at}.duration_filter"),
        )?),
        Some(F::NotHealthCheckFilter(_)) => LogFilter::NotHealthCheck,
        Some(F::TraceableFilter(_)) => LogFilter::Traceable,
        Some(F::RuntimeFilter(r)) => {
            if r.runtime_key.is_empty() {
                return Err(err(
                    res,
                    format!("{at}.runtime_filter.runtime_key"),
                    "is required",
                ));
            }
            let p = super::fault::fraction(
                r.percent_sampled.as_ref(),
                crate::model::filter::Fraction {
                    numerator: 0,
                    denominator: 100,
                },
                res,
                &format!("{at}.runtime_filter.percent_sampled"),
            )?;
            LogFilter::Runtime {
                key: r.runtime_key.as_str().into(),
                numerator: p.numerator,
                denominator: p.denominator,
                independent: r.use_independent_randomness,
            }
        }
        Some(F::AndFilter(a)) => {
            LogFilter::And(list(&a.filters, format!("{at}.and_filter.filters"))?)
        }
        Some(F::OrFilter(o)) => LogFilter::Or(list(&o.filters, format!("{at}.or_filter.filters"))?),
        Some(F::HeaderFilter(h)) => {
            let hp = format!("{at}.header_filter.header");
            let Some(m) = &h.header else {
                return Err(err(res, hp, "is required"));
            };
            LogFilter::Header(super::matchers::header_match(m, res, &hp)?)
        }
        Some(F::ResponseFlagFilter(r)) => {
            let mut set = ResponseFlags::NONE;
            for (i, name) in r.flags.iter().enumerate() {
                let Some(flag) = ResponseFlags::from_name(name) else {
                    return Err(err(
                        res,
                        format!("{at}.response_flag_filter.flags[{i}]"),
                        format!("unknown response flag '{name}'"),
                    ));
                };
                set.set(flag);
            }
            LogFilter::ResponseFlag(set)
        }
        Some(F::GrpcStatusFilter(g)) => LogFilter::GrpcStatus {
            statuses: g.statuses.clone(),
            exclude: g.exclude,
        },
        Some(F::LogTypeFilter(t)) => LogFilter::LogType {
            types: t.types.clone(),
            exclude: t.exclude,
        },
        Some(F::MetadataFilter(_)) => {
            return Err(err(
                res,
                format!("{at}.metadata_filter"),
                "the metadata access log filter is not supported",
            ))
        }
        Some(F::ExtensionFilter(e)) => {
            let t = e
                .config_type
                .as_ref()
                .map(|pb::extension_filter::ConfigType::TypedConfig(a)| any_type(a).to_string())
                .unwrap_or_default();
            return Err(err(
                res,
                format!("{at}.extension_filter"),
                format!("access log filter '{}' ({t}) is not supported", e.name),
            ));
        }
    })
}
