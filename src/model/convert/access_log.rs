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

use crate::model::otel_log::{OtelLog, OtelValue};
use crate::proto::envoy::extensions::access_loggers::open_telemetry::v3 as otel_pb;
use crate::proto::opentelemetry::proto::common::v1 as otlp;

use super::{any_type, data_source, decode_any, err, ConvertError};

/// `OpenTelemetryAccessLogConfig`: the collector (an `envoy_grpc` cluster), the body and
/// attributes (formats), the resource (built-in labels unless disabled, then
/// `resource_attributes`) and the batching.
fn otel_log(
    l: &otel_pb::OpenTelemetryAccessLogConfig,
    res: &str,
    path: &str,
    ctx: &mut super::Ctx<'_>,
) -> Result<OtelLog, ConvertError> {
    let cpath = format!("{path}.common_config");
    let Some(common) = &l.common_config else {
        return Err(err(res, cpath, "is required"));
    };
    if common.transport_api_version != 2 {
        return Err(err(
            res,
            format!("{cpath}.transport_api_version"),
            "only V3 is supported",
        ));
    }
    let super::ext_authz::Exporter {
        cluster,
        authority,
        metadata: initial_metadata,
        timeout,
    } = super::ext_authz::exporter(common.grpc_service.as_ref(), res, &cpath)?;
    if !common.filter_state_objects_to_log.is_empty() {
        // Istio sets it; Envoy's OpenTelemetry logger does not read it either.
        ctx.ignored.push(format!("{res}: {cpath}.filter_state_objects_to_log (the OpenTelemetry logger does not read it, as in Envoy)"));
    }
    let flush_every = match &common.buffer_flush_interval {
        Some(d) => super::duration(d, res, &format!("{cpath}.buffer_flush_interval"))?,
        None => std::time::Duration::from_secs(1),
    }
    .max(std::time::Duration::from_millis(1));
    let flush_bytes = common.buffer_size_bytes.unwrap_or(16_384) as usize;
    let value = |v: &otlp::AnyValue, at: &str| otel_value(v, res, at);
    let body = l
        .body
        .as_ref()
        .map(|b| value(b, &format!("{path}.body")))
        .transpose()?;
    let attributes = l.attributes.as_ref().map_or(Ok(Vec::new()), |kv| {
        kv_values(&kv.values, res, &format!("{path}.attributes"))
    })?;
    let mut resource = Vec::new();
    if !l.disable_builtin_labels {
        let node = ctx.stats.istio.node.load();
        for (k, v) in [
            ("log_name", &*common.log_name),
            ("zone_name", &*node.node_zone),
            ("cluster_name", &*node.node_cluster),
            ("node_name", &*node.id),
        ] {
            resource.push(otlp::KeyValue {
                key: k.into(),
                value: Some(otlp::AnyValue {
                    value: Some(otlp::any_value::Value::StringValue(v.into())),
                }),
            });
        }
    }
    if let Some(kv) = &l.resource_attributes {
        resource.extend(kv.values.iter().cloned());
    }
    Ok(OtelLog {
        id: crate::model::otel_log::intern(&format!("{cluster}\n{}", common.log_name)),
        cluster,
        authority,
        timeout,
        metadata: initial_metadata,
        body,
        attributes,
        resource: crate::model::otel_log::resource(resource),
        flush_every,
        flush_bytes,
        stats: ctx.stats.scope::<crate::stats::OtelLogStat>(&format!(
            "access_logs.open_telemetry_access_log.{}",
            l.stat_prefix
        )),
    })
}

fn kv_values(
    kv: &[otlp::KeyValue],
    res: &str,
    at: &str,
) -> Result<Vec<(String, OtelValue)>, ConvertError> {
    kv.iter()
        .map(|e| {
            let p = format!("{at}.{}", e.key);
            let v = e
                .value
                .as_ref()
                .ok_or_else(|| err(res, &p, "a value is required"))?;
            Ok((e.key.clone(), otel_value(v, res, &p)?))
        })
        .collect()
}

/// An `AnyValue` whose strings are formats.
fn otel_value(v: &otlp::AnyValue, res: &str, at: &str) -> Result<OtelValue, ConvertError> {
    use otlp::any_value::Value as V;
    Ok(match &v.value {
        None => OtelValue::Text(Format::parse("").map_err(|e| err(res, at, e))?),
        Some(V::StringValue(s)) => OtelValue::Text(Format::parse(s).map_err(|e| err(res, at, e))?),
        // Envoy 1.40 refuses the others, in these words.
        Some(V::BoolValue(_) | V::IntValue(_) | V::DoubleValue(_) | V::BytesValue(_)) => {
            return Err(err(res, at, "Only string values, nested key value lists and array values are supported in OpenTelemetry access log format."))
        }
        Some(V::ArrayValue(a)) => OtelValue::List(
            a.values
                .iter()
                .enumerate()
                .map(|(i, v)| otel_value(v, res, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Some(V::KvlistValue(kv)) => OtelValue::Kv(kv_values(&kv.values, res, at)?),
    })
}

const STDOUT_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const STDERR_LOG: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
const FILE_LOG: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
const OTEL_LOG: &str =
    "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig";

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

/// `ctx`: `None` for the admin listener's loggers (no OpenTelemetry logger there).
pub(super) fn access_log(
    al: &pb::AccessLog,
    res: &str,
    path: &str,
    ctx: Option<&mut super::Ctx<'_>>,
) -> Result<AccessLog, ConvertError> {
    let Some(pb::access_log::ConfigType::TypedConfig(any)) = &al.config_type else {
        return Err(err(
            res,
            format!("{path}.typed_config"),
            "typed_config is required",
        ));
    };
    let sfs = |f: Option<core::SubstitutionFormatString>| f.map_or(Given::Default, Given::Sfs);
    let mut otel = None;
    let (sink, given) = match any_type(any) {
        OTEL_LOG => {
            let tpath = format!("{path}.typed_config");
            let Some(ctx) = ctx else {
                return Err(err(
                    res,
                    tpath,
                    "the OpenTelemetry access logger is not supported on the admin listener",
                ));
            };
            let l: otel_pb::OpenTelemetryAccessLogConfig = decode_any(any, OTEL_LOG, res, path)?;
            otel = Some(Arc::new(otel_log(&l, res, &tpath, ctx)?));
            (LogSink::Stdout, Given::Default)
        }
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
        Given::Sfs(sfs) => substitution_format(&sfs, DEFAULT_ACCESS_LOG, res, &fpath)?,
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
        otel,
    })
}

/// A `SubstitutionFormatString` (`default` when it names no format).
pub(super) fn substitution_format(
    sfs: &core::SubstitutionFormatString,
    default: &str,
    res: &str,
    fpath: &str,
) -> Result<Format, ConvertError> {
    use core::substitution_format_string::Format as F;
    let text = |t: &str, at: &str| Format::parse(t).map_err(|e| err(res, at, e));
    let json = |j: &prost_types::Struct, at: &str| Format::json(j).map_err(|e| err(res, at, e));
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
        None => text(default, fpath)?,
    };
    f.omit_empty = sfs.omit_empty_values;
    Ok(f)
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
