//! The bootstrap's `stats_sinks`, `stats_flush_interval` and `stats_flush_on_admin` →
//! where the stats go besides the admin endpoint ([`crate::stats::sink`]).

use super::*;
use crate::proto::envoy::config::metrics::v3 as metrics;
use crate::stats::sink::{HistogramEmit, MetricsService, SinkConfig, Statsd};

const RES: &str = "bootstrap";

/// Envoy's bounds on `stats_flush_interval`.
const MIN_FLUSH: Duration = Duration::from_millis(1);
const MAX_FLUSH: Duration = Duration::from_secs(300);

/// The sinks and how often they are flushed, naming the field of anything refused.
pub fn stats_sinks(b: &Bootstrap) -> Result<SinkConfig, ConvertError> {
    use crate::proto::envoy::config::bootstrap::v3::bootstrap::StatsFlush;
    if let Some(StatsFlush::StatsFlushOnAdmin(on)) = &b.stats_flush {
        if b.stats_flush_interval.is_some() {
            return Err(err(
                RES,
                "stats_flush_on_admin",
                "Only one of stats_flush_interval or stats_flush_on_admin should be set!",
            ));
        }
        return Err(err(
            RES,
            "stats_flush_on_admin",
            if *on {
                "flushing the sinks on admin requests is not supported; use stats_flush_interval"
            } else {
                "may only be true"
            },
        ));
    }
    let interval = match &b.stats_flush_interval {
        None => Duration::from_secs(5),
        Some(d) => {
            let d = duration(d, RES, "stats_flush_interval")?;
            if !(MIN_FLUSH..=MAX_FLUSH).contains(&d) {
                return Err(err(RES, "stats_flush_interval", "must be from 1ms to 300s"));
            }
            d
        }
    };
    let mut statsd = Vec::new();
    let mut metrics_services = Vec::new();
    for (i, s) in b.stats_sinks.iter().enumerate() {
        let path = format!("stats_sinks[{i}]");
        let Some(metrics::stats_sink::ConfigType::TypedConfig(any)) = &s.config_type else {
            return Err(err(RES, format!("{path}.typed_config"), "is required"));
        };
        match any_type(any) {
            "envoy.config.metrics.v3.StatsdSink" => {
                let c: metrics::StatsdSink = decode_any(
                    any,
                    "envoy.config.metrics.v3.StatsdSink",
                    RES,
                    &format!("{path}.typed_config"),
                )?;
                statsd.push(statsd_sink(&c, &format!("{path}.typed_config"))?);
            }
            "envoy.config.metrics.v3.MetricsServiceConfig" => {
                let at = format!("{path}.typed_config");
                let c: metrics::MetricsServiceConfig = decode_any(
                    any,
                    "envoy.config.metrics.v3.MetricsServiceConfig",
                    RES,
                    &at,
                )?;
                metrics_services.push(metrics_service(b, &c, &at)?);
            }
            other => {
                return Err(err(
                    RES,
                    format!("{path}.typed_config"),
                    format!(
                    "stat sink {other} ({}) is not supported; statsd and the metrics service are",
                    s.name
                ),
                ))
            }
        }
    }
    Ok(SinkConfig {
        interval,
        statsd,
        metrics: metrics_services,
    })
}

fn metrics_service(
    b: &Bootstrap,
    c: &metrics::MetricsServiceConfig,
    path: &str,
) -> Result<MetricsService, ConvertError> {
    use crate::proto::envoy::config::core::v3::ApiVersion;
    if c.transport_api_version == ApiVersion::V2 as i32 {
        return Err(err(
            RES,
            format!("{path}.transport_api_version"),
            "V2 xDS transport protocol version is deprecated; use V3",
        ));
    }
    let e = super::ext_authz::exporter(c.grpc_service.as_ref(), RES, path)?;
    let known = b
        .static_resources
        .as_ref()
        .is_some_and(|sr| sr.clusters.iter().any(|k| *k.name == *e.cluster));
    if !known {
        return Err(err(
            RES,
            format!("{path}.grpc_service.envoy_grpc.cluster_name"),
            format!(
                "Unknown gRPC client cluster '{}' (a static cluster is required)",
                e.cluster
            ),
        ));
    }
    use metrics::HistogramEmitMode as M;
    let emit = match M::try_from(c.histogram_emit_mode) {
        Ok(M::SummaryAndHistogram) => HistogramEmit::SummaryAndHistogram,
        Ok(M::Summary) => HistogramEmit::Summary,
        Ok(M::Histogram) => HistogramEmit::Histogram,
        Err(_) => {
            return Err(err(
                RES,
                format!("{path}.histogram_emit_mode"),
                "unknown mode",
            ))
        }
    };
    Ok(MetricsService {
        cluster: e.cluster,
        authority: e.authority,
        metadata: e.metadata,
        deltas: c.report_counters_as_deltas.unwrap_or(false),
        labels: c.emit_tags_as_labels,
        emit,
        batch: c.batch_size as usize,
    })
}

fn statsd_sink(c: &metrics::StatsdSink, path: &str) -> Result<Statsd, ConvertError> {
    use metrics::statsd_sink::StatsdSpecifier as S;
    let addr = match &c.statsd_specifier {
        Some(S::Address(a)) => match &a.address {
            Some(crate::proto::envoy::config::core::v3::address::Address::SocketAddress(sa)) => {
                let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
                    err(
                        RES,
                        format!("{path}.address.socket_address.address"),
                        format!("'{}' is not an IP address", sa.address),
                    )
                })?;
                let port = match sa.port_specifier {
                    Some(crate::proto::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                };
                let port = u16::try_from(port).ok().filter(|&p| p > 0).ok_or_else(|| {
                    err(
                        RES,
                        format!("{path}.address.socket_address.port_value"),
                        "a UDP port from 1 to 65535 is required",
                    )
                })?;
                std::net::SocketAddr::new(ip, port)
            }
            _ => {
                return Err(err(
                    RES,
                    format!("{path}.address"),
                    "only a socket_address (UDP) is supported",
                ))
            }
        },
        Some(S::TcpClusterName(_)) => {
            return Err(err(
                RES,
                format!("{path}.tcp_cluster_name"),
                "statsd over a TCP cluster is not supported; use address (UDP)",
            ))
        }
        None => {
            return Err(err(
                RES,
                path,
                "one of address and tcp_cluster_name is required",
            ))
        }
    };
    let prefix = if c.prefix.is_empty() {
        "envoy".to_string()
    } else {
        c.prefix.clone()
    };
    Ok(Statsd { addr, prefix })
}
