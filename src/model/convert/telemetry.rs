//! Istio's telemetry HTTP filters: `istio.stats` (`stats.PluginConfig`, packed directly or
//! in a TypedStruct) and the HTTP peer metadata exchange (`io.istio.http.peer_metadata.Config`
//! in a TypedStruct, or the older null-VM Wasm plugin `envoy.wasm.metadata_exchange`).
//! What Ringside does not implement of them is refused by name.

use std::sync::Arc;

use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Value};

use super::{any_type, err, ConvertError, Ctx};
use crate::model::filter::FilterKind;
use crate::model::istio::{IstioService, IstioStats, PeerMetadata, Reporter};
use crate::proto::stats::{MetricConfig, MetricDefinition, PluginConfig};

const PLUGIN_CONFIG: &str = "stats.PluginConfig";
const PEER_METADATA: &str = "io.istio.http.peer_metadata.Config";
const WASM: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";

/// A TypedStruct: its type URL and value.
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(message, optional, tag = "2")]
    value: Option<Struct>,
}

/// The HTTP filter for Istio's telemetry extensions, or `None` when `any` is not one.
pub(super) fn http_filter(
    name: &str,
    any: &prost_types::Any,
    res: &str,
    path: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Option<FilterKind>, ConvertError> {
    let at = format!("{path}.typed_config");
    let typed = if super::istio::TYPED_STRUCTS.contains(&any_type(any)) {
        let t = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| err(res, &at, format!("invalid TypedStruct: {e}")))?;
        Some((
            t.type_url.rsplit('/').next().unwrap_or("").to_string(),
            t.value.unwrap_or_default(),
        ))
    } else {
        None
    };
    let t = typed.as_ref().map_or(any_type(any), |(t, _)| t.as_str());
    match t {
        PLUGIN_CONFIG => {
            let config = match &typed {
                Some((_, v)) => plugin_from_struct(v, res, &format!("{at}.value"))?,
                None => PluginConfig::decode(any.value.as_slice())
                    .map_err(|e| err(res, &at, format!("invalid stats.PluginConfig: {e}")))?,
            };
            Ok(Some(FilterKind::IstioStats(Arc::new(stats(
                &config, res, &at, ctx,
            )?))))
        }
        PEER_METADATA => {
            let Some((_, v)) = &typed else {
                return Err(err(
                    res,
                    &at,
                    "io.istio.http.peer_metadata.Config is read in its TypedStruct form only (as istiod sends it)",
                ));
            };
            Ok(Some(FilterKind::PeerMetadata(Arc::new(peer_metadata(
                v,
                res,
                &format!("{at}.value"),
                ctx,
            )?))))
        }
        // The older HTTP metadata exchange: Istio's built-in ("null VM") Wasm plugin, only
        // under its own name; never a Wasm filter in general.
        WASM if name == "istio.metadata_exchange" && typed.is_none() => {
            let inbound = ctx.inbound;
            Ok(Some(FilterKind::PeerMetadata(Arc::new(PeerMetadata {
                downstream_discovery: true,
                upstream_discovery: true,
                downstream_propagation: inbound,
                upstream_propagation: !inbound,
                skip_external: false,
                node: ctx.stats.istio.node.load_full(),
            }))))
        }
        _ => Ok(None),
    }
}

fn stats(
    c: &PluginConfig,
    res: &str,
    at: &str,
    ctx: &mut Ctx<'_>,
) -> Result<IstioStats, ConvertError> {
    let p = |f: &str| format!("{at}.{f}");
    if !c.definitions.is_empty() {
        // Custom metrics (a CEL value per metric) are not implemented.
        return Err(err(
            res,
            p("definitions"),
            "custom metric definitions are not implemented",
        ));
    }
    let (shape, exprs) = super::stats_overrides::overrides(c, res, at, ctx)?;
    for (f, set, why) in [
        (
            "rotation_interval",
            c.rotation_interval.is_some(),
            "series are never rotated out",
        ),
        (
            "graceful_deletion_interval",
            c.graceful_deletion_interval.is_some(),
            "series are never rotated out",
        ),
    ] {
        if set {
            ctx.ignored.push(format!("{res}.{} ({why})", p(f)));
        }
    }
    let reporter = match c.reporter {
        0 if ctx.inbound => Reporter::Destination,
        0 => Reporter::Source,
        1 => Reporter::Waypoint,
        r => return Err(err(res, p("reporter"), format!("unknown reporter {r}"))),
    };
    let node = ctx.stats.istio.node.load_full();
    ctx.stats
        .istio
        .build
        .get_or_init(|| match &*node.istio_version {
            "" => "unknown".into(),
            v => v.into(),
        });
    Ok(IstioStats {
        reporter,
        host_header_fallback: !c.disable_host_header_fallback,
        shape: ctx.stats.istio.shape_id(shape).ok_or_else(|| {
            err(
                res,
                p("metrics"),
                "more than 256 distinct metric overrides in this proxy",
            )
        })?,
        node: ctx.stats.istio.node.load_full(),
        exprs: exprs.into(),
        series: ctx.stats.istio.http.clone(),
        tcp_series: ctx.stats.istio.tcp.clone(),
        tcp_report_every: match &c.tcp_reporting_duration {
            None => Some(std::time::Duration::from_secs(5)),
            Some(d) => {
                let ms = d.seconds.max(0) as u64 * 1000 + (d.nanos.max(0) as u64) / 1_000_000;
                (ms > 0).then(|| std::time::Duration::from_millis(ms))
            }
        },
    })
}

fn kind(v: &Value) -> Option<&Kind> {
    v.kind.as_ref()
}

fn as_str<'v>(v: &'v Value, res: &str, at: &str) -> Result<&'v str, ConvertError> {
    match kind(v) {
        Some(Kind::StringValue(s)) => Ok(s),
        _ => Err(err(res, at, "a string is required")),
    }
}

fn as_list<'v>(v: &'v Value, res: &str, at: &str) -> Result<&'v [Value], ConvertError> {
    match kind(v) {
        Some(Kind::ListValue(l)) => Ok(&l.values),
        _ => Err(err(res, at, "a list is required")),
    }
}

fn as_struct<'v>(v: &'v Value, res: &str, at: &str) -> Result<&'v Struct, ConvertError> {
    match kind(v) {
        Some(Kind::StructValue(s)) => Ok(s),
        _ => Err(err(res, at, "an object is required")),
    }
}

fn as_bool(v: &Value, res: &str, at: &str) -> Result<bool, ConvertError> {
    match kind(v) {
        Some(Kind::BoolValue(b)) => Ok(*b),
        _ => Err(err(res, at, "a bool is required")),
    }
}

/// The protobuf JSON names of a field (`snake_case` and `lowerCamelCase`).
fn is(key: &str, field: &str) -> bool {
    key == field || key == crate::config::camel(field)
}

fn duration_text(v: &Value, res: &str, at: &str) -> Result<prost_types::Duration, ConvertError> {
    let s = as_str(v, res, at)?;
    let secs: f64 = s
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| err(res, at, format!("'{s}' is not a duration")))?;
    Ok(prost_types::Duration {
        seconds: secs.trunc() as i64,
        nanos: (secs.fract() * 1e9) as i32,
    })
}

/// `stats.PluginConfig` from its JSON form (a TypedStruct's value).
fn plugin_from_struct(s: &Struct, res: &str, at: &str) -> Result<PluginConfig, ConvertError> {
    let mut c = PluginConfig::default();
    for (k, v) in &s.fields {
        let fp = format!("{at}.{k}");
        if is(k, "disable_host_header_fallback") {
            c.disable_host_header_fallback = as_bool(v, res, &fp)?;
        } else if is(k, "tcp_reporting_duration") {
            c.tcp_reporting_duration = Some(duration_text(v, res, &fp)?);
        } else if is(k, "rotation_interval") {
            c.rotation_interval = Some(duration_text(v, res, &fp)?);
        } else if is(k, "graceful_deletion_interval") {
            c.graceful_deletion_interval = Some(duration_text(v, res, &fp)?);
        } else if k == "reporter" {
            c.reporter = match kind(v) {
                Some(Kind::StringValue(r)) if r == "UNSPECIFIED" => 0,
                Some(Kind::StringValue(r)) if r == "SERVER_GATEWAY" => 1,
                Some(Kind::NumberValue(n)) if *n == 0.0 || *n == 1.0 => *n as i32,
                _ => return Err(err(res, &fp, "UNSPECIFIED or SERVER_GATEWAY is required")),
            };
        } else if k == "definitions" {
            c.definitions = vec![MetricDefinition::default(); as_list(v, res, &fp)?.len()];
        } else if k == "metrics" {
            for (i, m) in as_list(v, res, &fp)?.iter().enumerate() {
                let mp = format!("{fp}[{i}]");
                let mut mc = MetricConfig::default();
                for (mk, mv) in &as_struct(m, res, &mp)?.fields {
                    let fp = format!("{mp}.{mk}");
                    if mk == "name" {
                        mc.name = as_str(mv, res, &fp)?.to_string();
                    } else if mk == "drop" {
                        mc.drop = as_bool(mv, res, &fp)?;
                    } else if mk == "match" {
                        mc.r#match = as_str(mv, res, &fp)?.to_string();
                    } else if is(mk, "tags_to_remove") {
                        for (j, t) in as_list(mv, res, &fp)?.iter().enumerate() {
                            let t = as_str(t, res, &format!("{fp}[{j}]"))?;
                            mc.tags_to_remove.push(t.to_string());
                        }
                    } else if mk == "dimensions" {
                        for (dk, dv) in &as_struct(mv, res, &fp)?.fields {
                            let d = as_str(dv, res, &format!("{fp}.{dk}"))?;
                            mc.dimensions.insert(dk.clone(), d.to_string());
                        }
                    } else {
                        return Err(err(res, fp, "stats.MetricConfig has no such field"));
                    }
                }
                c.metrics.push(mc);
            }
        } else {
            return Err(err(res, fp, "stats.PluginConfig has no such field"));
        }
    }
    Ok(c)
}

/// A list of discovery or propagation methods: whether `istio_headers` is among them
/// (and its `skip_external_clusters`). `workload_discovery` (the metadata discovery
/// extension, off in a plain sidecar) finds nothing here; `baggage` is refused.
fn methods(v: &Value, res: &str, at: &str, discovery: bool) -> Result<(bool, bool), ConvertError> {
    let (mut headers, mut skip) = (false, false);
    for (i, m) in as_list(v, res, at)?.iter().enumerate() {
        let mp = format!("{at}[{i}]");
        let s = as_struct(m, res, &mp)?;
        if s.fields.len() != 1 {
            return Err(err(res, &mp, "exactly one method is required"));
        }
        for (k, mv) in &s.fields {
            let fp = format!("{mp}.{k}");
            if is(k, "istio_headers") {
                headers = true;
                for (hk, hv) in &as_struct(mv, res, &fp)?.fields {
                    if is(hk, "skip_external_clusters") {
                        skip = as_bool(hv, res, &format!("{fp}.{hk}"))?;
                    } else {
                        return Err(err(res, format!("{fp}.{hk}"), "no such field"));
                    }
                }
            } else if discovery && is(k, "workload_discovery") {
                // Needs the workload metadata discovery extension: nothing to find.
            } else if k == "baggage" {
                return Err(err(res, fp, "baggage metadata exchange is not implemented"));
            } else {
                return Err(err(res, fp, "no such method"));
            }
        }
    }
    Ok((headers, skip))
}

fn peer_metadata(
    s: &Struct,
    res: &str,
    at: &str,
    ctx: &mut Ctx<'_>,
) -> Result<PeerMetadata, ConvertError> {
    let mut p = PeerMetadata {
        downstream_discovery: false,
        upstream_discovery: false,
        downstream_propagation: false,
        upstream_propagation: false,
        skip_external: false,
        node: ctx.stats.istio.node.load_full(),
    };
    for (k, v) in &s.fields {
        let fp = format!("{at}.{k}");
        if is(k, "downstream_discovery") {
            p.downstream_discovery = methods(v, res, &fp, true)?.0;
        } else if is(k, "upstream_discovery") {
            p.upstream_discovery = methods(v, res, &fp, true)?.0;
        } else if is(k, "downstream_propagation") {
            p.downstream_propagation = methods(v, res, &fp, false)?.0;
        } else if is(k, "upstream_propagation") {
            let (h, skip) = methods(v, res, &fp, false)?;
            p.upstream_propagation = h;
            p.skip_external = skip;
        } else if is(k, "shared_with_upstream") {
            // Filter state shared with upstream filters: none here read it.
            as_bool(v, res, &fp)?;
        } else if is(k, "additional_labels") {
            if !as_list(v, res, &fp)?.is_empty() {
                return Err(err(res, fp, "additional labels are not implemented"));
            }
        } else {
            return Err(err(
                res,
                fp,
                "io.istio.http.peer_metadata.Config has no such field",
            ));
        }
    }
    Ok(p)
}

/// The service an Istio cluster serves: `filter_metadata.istio.services[0]`.
pub(super) fn istio_service(
    md: Option<&crate::proto::envoy::config::core::v3::Metadata>,
) -> Option<Arc<IstioService>> {
    let istio = md?.filter_metadata.get("istio")?;
    let flag = |k: &str| {
        matches!(
            istio.fields.get(k).and_then(kind),
            Some(Kind::BoolValue(true))
        )
    };
    let (external, disable_mx) = (flag("external"), flag("disable_mx"));
    let empty = Struct::default();
    let s = match istio.fields.get("services").and_then(kind) {
        Some(Kind::ListValue(l)) => match l.values.first().and_then(kind) {
            Some(Kind::StructValue(s)) => s,
            _ => &empty,
        },
        _ if external || disable_mx => &empty,
        _ => return None,
    };
    let text = |k: &str| match s.fields.get(k).and_then(kind) {
        Some(Kind::StringValue(v)) => v.as_str(),
        _ => "",
    };
    let host = text("host");
    let name = match text("name") {
        "" => host.split('.').next().unwrap_or(""),
        n => n,
    };
    Some(Arc::new(IstioService {
        host: host.into(),
        name: name.into(),
        namespace: text("namespace").into(),
        external,
        disable_mx,
    }))
}

/// An endpoint's workload as istiod describes it in `filter_metadata.istio.workload`:
/// `<workload>;<namespace>;<canonical service>;<canonical revision>;<cluster>` (istio-proxy
/// ignores a value of fewer parts). Endpoints of one workload share one value (`seen`).
pub(super) fn endpoint_workload(
    md: Option<&crate::proto::envoy::config::core::v3::Metadata>,
    seen: &mut std::collections::HashMap<String, Arc<crate::model::istio::Peer>>,
) -> Option<Arc<crate::model::istio::Peer>> {
    let istio = md?.filter_metadata.get("istio")?;
    let Some(Kind::StringValue(w)) = istio.fields.get("workload").and_then(kind) else {
        return None;
    };
    if let Some(p) = seen.get(w) {
        return Some(p.clone());
    }
    let parts: Vec<&str> = w.split(';').collect();
    if parts.len() < 5 {
        return None;
    }
    let clean = crate::stats::labeled::clean;
    let peer = Arc::new(crate::model::istio::Peer {
        workload: clean(parts[0]),
        namespace: clean(parts[1]),
        canonical_service: clean(parts[2]),
        canonical_revision: clean(parts[3]),
        app: "".into(),
        version: "".into(),
        cluster: clean(parts[4]),
    });
    seen.insert(w.clone(), peer.clone());
    Some(peer)
}

/// Istio's TCP metadata exchange (`envoy.tcp.metadataexchange.config.MetadataExchange`,
/// packed or as a TypedStruct); `None` when it names no protocol (it never runs).
pub(super) fn tcp_exchange(
    any: &prost_types::Any,
    res: &str,
    at: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Option<Arc<crate::model::istio::TcpExchange>>, ConvertError> {
    use crate::proto::envoy::tcp::metadataexchange::config::MetadataExchange;
    let m = if super::istio::TYPED_STRUCTS.contains(&any_type(any)) {
        let t = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| err(res, at, format!("invalid TypedStruct: {e}")))?;
        let mut m = MetadataExchange::default();
        for (k, v) in &t.value.unwrap_or_default().fields {
            let fp = format!("{at}.value.{k}");
            if k == "protocol" {
                m.protocol = as_str(v, res, &fp)?.to_string();
            } else if is(k, "enable_discovery") {
                m.enable_discovery = as_bool(v, res, &fp)?;
            } else if is(k, "additional_labels") {
                m.additional_labels = vec![String::new(); as_list(v, res, &fp)?.len()];
            } else {
                return Err(err(res, fp, "MetadataExchange has no such field"));
            }
        }
        m
    } else {
        MetadataExchange::decode(any.value.as_slice())
            .map_err(|e| err(res, at, format!("invalid MetadataExchange: {e}")))?
    };
    if !m.additional_labels.is_empty() {
        return Err(err(
            res,
            format!("{at}.additional_labels"),
            "additional labels are not implemented",
        ));
    }
    if m.enable_discovery {
        // Workload discovery needs the metadata discovery extension: nothing to find.
        ctx.ignored.push(format!(
            "{res}.{at}.enable_discovery (no workload discovery source)"
        ));
    }
    if m.protocol.is_empty() {
        return Ok(None);
    }
    let node = ctx.stats.istio.node.load_full();
    Ok(Some(Arc::new(crate::model::istio::TcpExchange::new(
        &m.protocol,
        &node,
    ))))
}

/// The network `istio.stats` (`istio_tcp_*`).
pub(super) fn network_stats(
    any: &prost_types::Any,
    res: &str,
    at: &str,
    ctx: &mut Ctx<'_>,
) -> Result<Arc<IstioStats>, ConvertError> {
    let config = if super::istio::TYPED_STRUCTS.contains(&any_type(any)) {
        let t = TypedStruct::decode(any.value.as_slice())
            .map_err(|e| err(res, at, format!("invalid TypedStruct: {e}")))?;
        plugin_from_struct(&t.value.unwrap_or_default(), res, &format!("{at}.value"))?
    } else {
        PluginConfig::decode(any.value.as_slice())
            .map_err(|e| err(res, at, format!("invalid stats.PluginConfig: {e}")))?
    };
    Ok(Arc::new(stats(&config, res, at, ctx)?))
}

/// A cluster's `filters` (upstream network filters): istiod's outbound clusters carry
/// Istio's TCP metadata exchange (its upstream side, returned); anything else is refused
/// by type.
pub(super) fn cluster_filters(
    filters: &[crate::proto::envoy::config::cluster::v3::Filter],
    res: &str,
    ctx: &mut super::Ctx<'_>,
) -> Result<Option<std::sync::Arc<crate::model::istio::TcpExchange>>, ConvertError> {
    let mut exchange = None;
    for (i, f) in filters.iter().enumerate() {
        let path = format!("filters[{i}]");
        match f.typed_config.as_ref().and_then(super::istio::config_type) {
            // istiod's outbound clusters: Istio's peer metadata exchange over TCP (ALPN
            // istio-peer-exchange).
            Some(t) if t == super::istio::METADATA_EXCHANGE => {
                let any = f.typed_config.as_ref().expect("typed");
                exchange = tcp_exchange(any, res, &format!("{path}.typed_config"), ctx)?;
            }
            t => {
                return Err(err(
                    res,
                    format!("{path}.typed_config"),
                    format!(
                        "upstream network filter '{}' of type {} is not supported",
                        f.name,
                        t.unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(exchange)
}
