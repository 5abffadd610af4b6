//! `envoy.config.cluster.v3.Cluster` → [`Cluster`].

use crate::model::metadata::Packed;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Cluster, Discovery, DnsFamily, DnsHost, Endpoint};
use crate::proto::envoy::config::cluster::v3 as pb;
use crate::proto::envoy::config::core::v3::HealthStatus;
use crate::stats::ClusterStat;

use crate::proto::envoy::config::core::v3::address::Address;
use crate::proto::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier as Server;
use crate::proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use crate::proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use crate::proto::envoy::extensions::upstreams::http::v3 as http_opts;
use http_opts::HttpProtocolOptions;

use super::{
    any_type, decode_any, duration, err, host_port, socket_addr, timeout, ConvertError, Ctx,
};

pub(super) fn convert(c: &pb::Cluster, ctx: &mut Ctx<'_>) -> Result<Cluster, ConvertError> {
    if c.name.is_empty() {
        return Err(err("cluster ''", "name", "cluster name is required"));
    }
    let res = &*format!("cluster '{}'", c.name);
    let (tls, passthrough) = match &c.transport_socket {
        Some(ts) => super::internal::socket(ts, c, res, "transport_socket", ctx)?,
        None => (None, None),
    };
    let mut tls_matches = Vec::with_capacity(c.transport_socket_matches.len());
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let at = format!("transport_socket_matches[{i}]");
        let Some(ts) = &m.transport_socket else {
            return Err(err(
                res,
                format!("{at}.transport_socket"),
                "a transport socket is required",
            ));
        };
        let labels = m
            .r#match
            .as_ref()
            .map(|s| struct_labels(s, res, &format!("{at}.match")))
            .transpose()?
            .unwrap_or_default();
        let (tls, passthrough) =
            super::internal::socket(ts, c, res, &format!("{at}.transport_socket"), ctx)?;
        tls_matches.push(crate::model::tls::TlsMatch {
            name: m.name.as_str().into(),
            labels,
            tls,
            passthrough,
        });
    }
    use pb::cluster::DiscoveryType as T;
    let type_value = match c.cluster_discovery_type {
        Some(pb::cluster::ClusterDiscoveryType::Type(t)) => t,
        None => T::Static as i32,
    };
    let discovery = match T::try_from(type_value) {
        Ok(T::Static) => Discovery::Static,
        Ok(T::StrictDns) => Discovery::StrictDns,
        Ok(T::LogicalDns) => Discovery::LogicalDns,
        Ok(T::Eds) => Discovery::Eds,
        Ok(T::OriginalDst) => Discovery::OriginalDst,
        Err(_) => {
            return Err(err(
                res,
                "type",
                format!("unknown cluster type {type_value}"),
            ))
        }
    };
    use pb::cluster::LbPolicy as P;
    let lb_policy = P::try_from(c.lb_policy);
    if (discovery == Discovery::OriginalDst) != matches!(lb_policy, Ok(P::ClusterProvided)) {
        return Err(err(
            res,
            "lb_policy",
            "ORIGINAL_DST clusters, and only they, take lb_policy CLUSTER_PROVIDED",
        ));
    }
    if discovery == Discovery::OriginalDst && c.load_assignment.is_some() {
        return Err(err(
            res,
            "load_assignment",
            "ORIGINAL_DST clusters connect to the original destination, not to endpoints",
        ));
    }
    let original_dst = super::internal::original_dst_config(c, discovery, res)?;
    let lb = super::lb::lb_policy(c, lb_policy, res)?;
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration(d, res, "connect_timeout")?,
        None => Duration::from_secs(5),
    };
    if connect_timeout.is_zero() {
        return Err(err(res, "connect_timeout", "must be greater than 0"));
    }
    let (http2, http2_follows_downstream, typed_common) = http2(c, res)?;
    // istiod sets these in the typed HttpProtocolOptions (a DestinationRule's
    // connectionPool.http idleTimeout and maxRequestsPerConnection); older bootstraps on
    // the cluster itself. One place or the other, as Envoy requires.
    let common = match (&c.common_http_protocol_options, &typed_common) {
        (Some(_), Some((_, at))) => {
            return Err(err(
                res,
                at.as_str(),
                "common_http_protocol_options is set on the cluster too: set it in one place",
            ))
        }
        (Some(o), None) => Some((o, "common_http_protocol_options".to_string())),
        (None, Some((o, at))) => Some((o, at.clone())),
        (None, None) => None,
    };
    let mut idle_timeout = Some(Duration::from_secs(3600));
    let mut max_requests_per_connection = None;
    let mut max_connection_duration = None;
    let mut max_headers_count = 100;
    if let Some((o, at)) = common {
        idle_timeout = timeout(
            o.idle_timeout.as_ref(),
            idle_timeout,
            res,
            &format!("{at}.idle_timeout"),
        )?;
        max_requests_per_connection = o.max_requests_per_connection.filter(|&n| n > 0);
        max_connection_duration = timeout(
            o.max_connection_duration.as_ref(),
            None,
            res,
            &format!("{at}.max_connection_duration"),
        )?;
        if let Some(n) = o.max_headers_count {
            if n == 0 {
                return Err(err(
                    res,
                    format!("{at}.max_headers_count"),
                    "must be at least 1",
                ));
            }
            max_headers_count = n as usize;
        }
        // headers_with_underscores_action: Envoy's upstream codecs take no action on
        // response headers (the field's documentation says so), so it changes nothing.
    }
    if c.per_connection_buffer_limit_bytes.is_some() {
        ctx.ignored
            .push(format!("{res}.per_connection_buffer_limit_bytes"));
    }
    if c.respect_dns_ttl {
        ctx.ignored.push(format!("{res}.respect_dns_ttl"));
    }
    if c.cleanup_interval.is_some() {
        ctx.ignored.push(format!("{res}.cleanup_interval"));
    }
    let tcp_exchange = super::telemetry::cluster_filters(&c.filters, res, ctx)?;
    use pb::cluster::DnsLookupFamily as F;
    let dns_family = match F::try_from(c.dns_lookup_family) {
        Ok(F::Auto) => DnsFamily::Auto,
        Ok(F::V4Only) => DnsFamily::V4Only,
        Ok(F::V6Only) => DnsFamily::V6Only,
        Ok(F::V4Preferred) => DnsFamily::V4Preferred,
        Ok(F::All) => DnsFamily::All,
        Err(_) => return Err(err(res, "dns_lookup_family", "unknown value")),
    };
    let dns_refresh = match &c.dns_refresh_rate {
        Some(d) => duration(d, res, "dns_refresh_rate")?,
        None => Duration::from_secs(5),
    };
    if dns_refresh < Duration::from_millis(1) {
        return Err(err(res, "dns_refresh_rate", "must be at least 1ms"));
    }
    let dns_jitter = match &c.dns_jitter {
        Some(d) => duration(d, res, "dns_jitter")?,
        None => Duration::ZERO,
    };
    let (mut endpoints, mut dns_hosts, mut unix) = (Vec::new(), Vec::new(), Vec::new());
    let mut eds_service = None;
    if discovery == Discovery::Eds {
        let eds = c.eds_cluster_config.as_ref();
        super::config_source(
            eds.and_then(|e| e.eds_config.as_ref()),
            ctx.ads,
            res,
            "eds_cluster_config.eds_config",
        )?;
        if c.load_assignment.is_some() {
            return Err(err(
                res,
                "load_assignment",
                "EDS clusters take their endpoints from EDS, not load_assignment",
            ));
        }
        let service = eds
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&c.name);
        eds_service = Some(Arc::<str>::from(service));
    } else if c.eds_cluster_config.is_some() {
        return Err(err(res, "eds_cluster_config", "only valid with type EDS"));
    }
    if let Some(la) = &c.load_assignment {
        // Envoy ignores an inline assignment's `cluster_name`, whatever it says.
        (endpoints, dns_hosts, unix) = self::endpoints(la, discovery, res, "load_assignment")?;
    }
    // The deprecated cluster-level field (pilot-agent's bootstrap sets it); Envoy refuses
    // both at once.
    if let Some(n) = c.max_requests_per_connection {
        if max_requests_per_connection.is_some() {
            return Err(err(
                res,
                "max_requests_per_connection",
                "Only one of max_requests_per_connection from Cluster or HttpProtocolOptions can be specified",
            ));
        }
        max_requests_per_connection = Some(n).filter(|&n| n > 0);
    }
    if discovery == Discovery::LogicalDns && dns_hosts.len() != 1 {
        return Err(err(
            res,
            "load_assignment",
            "LOGICAL_DNS clusters must have exactly one endpoint",
        ));
    }
    let stat_name = if c.alt_stat_name.is_empty() {
        &c.name
    } else {
        &c.alt_stat_name
    };
    let stats = ctx
        .stats
        .scope::<ClusterStat>(&format!("cluster.{stat_name}."));
    let update_stats = ctx
        .stats
        .scope::<crate::stats::ClusterUpdateStat>(&format!("cluster.{stat_name}."));
    let breakers = Arc::new(super::breakers::breakers(c, stat_name, ctx, res)?);
    let bind_source = match &c.upstream_bind_config {
        Some(b) => {
            let Some(sa) = &b.source_address else {
                return Err(err(
                    res,
                    "upstream_bind_config.source_address",
                    "source_address is required",
                ));
            };
            let a = crate::proto::envoy::config::core::v3::Address {
                address: Some(Address::SocketAddress(sa.clone())),
            };
            Some(socket_addr(&a, res, "upstream_bind_config")?)
        }
        None => None,
    };
    Ok(Cluster {
        pool_id: {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            c.name.hash(&mut h);
            h.finish()
        },
        name: c.name.as_str().into(),
        breakers,
        stats,
        update_stats,
        bind_source,
        discovery,
        eds_service,
        http2,
        http2_follows_downstream,
        unix_endpoints: unix.into(),
        lb,
        connect_timeout,
        idle_timeout,
        max_requests_per_connection,
        max_connection_duration,
        max_headers_count,
        tcp_keepalive: c
            .upstream_connection_options
            .as_ref()
            .and_then(|o| o.tcp_keepalive.as_ref())
            .map(keepalive),
        dns_family,
        dns_refresh,
        dns_jitter,
        dns_hosts: dns_hosts.into(),
        endpoints: endpoints.into(),
        tls,
        passthrough,
        original_dst,
        tls_matches: tls_matches.into(),
        istio_service: super::telemetry::istio_service(c.metadata.as_ref()),
        tcp_exchange,
        outlier: super::outlier::outlier(c, stat_name, ctx, res)?,
        health: super::health::health(c, (stat_name, http2.is_some()), ctx, res)?,
        panic_threshold: super::outlier::panic_threshold(c, res)?,
        lb_tuning: super::lb::lb_tuning(c, lb, discovery, res)?,
        metadata: Packed::new(c.metadata.as_ref()),
    })
}

/// `tcp_keepalive`: SO_KEEPALIVE, with the probe count, idle time and interval the message
/// sets (the others keep the system's defaults, as in Envoy).
fn keepalive(k: &crate::proto::envoy::config::core::v3::TcpKeepalive) -> socket2::TcpKeepalive {
    let mut t = socket2::TcpKeepalive::new();
    if let Some(s) = k.keepalive_time {
        t = t.with_time(Duration::from_secs(u64::from(s)));
    }
    if let Some(s) = k.keepalive_interval {
        t = t.with_interval(Duration::from_secs(u64::from(s)));
    }
    if let Some(n) = k.keepalive_probes {
        t = t.with_retries(n);
    }
    t
}

const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The cluster's HTTP/2 settings when it asks for HTTP/2 upstream: the legacy
/// `http2_protocol_options` or `typed_extension_protocol_options` with an explicit HTTP/2
/// config, or `use_downstream_protocol_config` (the bool: HTTP/2 only for HTTP/2 clients).
/// Also the typed options' `common_http_protocol_options`, with its path.
fn http2(c: &pb::Cluster, res: &str) -> Result<HttpOptions, ConvertError> {
    let mut follows_downstream = false;
    let mut common = None;
    let mut h2 = match &c.http2_protocol_options {
        Some(o) => Some(super::http2_settings(
            o,
            res,
            "http2_protocol_options",
            false,
        )?),
        None => None,
    };
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[\"{key}\"]");
        if any_type(any) != HTTP_OPTIONS {
            return Err(err(
                res,
                format!("{path}.typed_config"),
                format!(
                    "protocol options of type {} are not supported",
                    any_type(any)
                ),
            ));
        }
        let o: HttpProtocolOptions = decode_any(any, HTTP_OPTIONS, res, &path)?;
        use http_opts::http_protocol_options::UpstreamProtocolOptions as U;
        match &o.upstream_protocol_options {
            Some(U::ExplicitHttpConfig(e)) => {
                use http_opts::http_protocol_options::explicit_http_config::ProtocolConfig as P;
                if let Some(P::Http2ProtocolOptions(o)) = &e.protocol_config {
                    let at = format!("{path}.explicit_http_config.http2_protocol_options");
                    h2 = Some(super::http2_settings(o, res, &at, false)?);
                }
            }
            Some(U::UseDownstreamProtocolConfig(u)) => {
                let at = format!("{path}.use_downstream_protocol_config.http2_protocol_options");
                h2 = Some(match &u.http2_protocol_options {
                    Some(o) => super::http2_settings(o, res, &at, false)?,
                    None => crate::model::Http2Settings::default(),
                });
                follows_downstream = true;
            }
            None => {}
        }
        if let Some(c) = o.common_http_protocol_options {
            common = Some((c, format!("{path}.common_http_protocol_options")));
        }
    }
    Ok((h2, follows_downstream, common))
}

/// A cluster's HTTP/2 settings, whether HTTP/2 follows the client's protocol, and the
/// typed options' common HTTP options with their path.
type HttpOptions = (
    Option<crate::model::Http2Settings>,
    bool,
    Option<(
        crate::proto::envoy::config::core::v3::HttpProtocolOptions,
        String,
    )>,
);

/// Endpoints of a load assignment: IP endpoints (STATIC/EDS), DNS names (DNS types) and
/// unix socket paths.
pub(super) fn endpoints(
    la: &ClusterLoadAssignment,
    discovery: Discovery,
    res: &str,
    at: &str,
) -> Result<Endpoints, ConvertError> {
    let (mut endpoints, mut dns_hosts, mut unix) = (Vec::new(), Vec::new(), Vec::new());
    let mut workloads = std::collections::HashMap::new();
    // Replicas of one workload carry the same metadata: one copy serves them all.
    let mut packed = std::collections::HashSet::<Packed>::new();
    let prefix = if at.is_empty() {
        String::new()
    } else {
        format!("{at}.")
    };
    let overprovisioning = match la.policy.as_ref().and_then(|p| p.overprovisioning_factor) {
        Some(0) => {
            return Err(err(
                res,
                format!("{prefix}policy.overprovisioning_factor"),
                "must be greater than 0",
            ))
        }
        Some(f) => f,
        None => crate::model::DEFAULT_OVERPROVISIONING,
    };
    for (li, locality) in la.endpoints.iter().enumerate() {
        let dns = matches!(discovery, Discovery::StrictDns | Discovery::LogicalDns);
        // Envoy's bound (its proto validation) is 128.
        let why = match locality.priority {
            p if p > 128 => "must be at most 128",
            p if p != 0 && dns => {
                "priorities other than 0 are supported for STATIC and EDS clusters only"
            }
            _ => "",
        };
        if !why.is_empty() {
            return Err(err(res, format!("{prefix}endpoints[{li}].priority"), why));
        }
        let place = locality.locality.as_ref().map(|l| {
            Arc::new(crate::model::Locality {
                region: l.region.as_str().into(),
                zone: l.zone.as_str().into(),
                sub_zone: l.sub_zone.as_str().into(),
            })
        });
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("{prefix}endpoints[{li}].lb_endpoints[{ei}]");
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(err(res, format!("{path}.endpoint"), "endpoint is required"));
            };
            let Some(addr) = &ep.address else {
                return Err(err(
                    res,
                    format!("{path}.endpoint.address"),
                    "address is required",
                ));
            };
            let weight = lb.load_balancing_weight.unwrap_or(1);
            if weight == 0 {
                return Err(err(
                    res,
                    format!("{path}.load_balancing_weight"),
                    "must be at least 1",
                ));
            }
            let metadata = Packed::new(lb.metadata.as_ref()).map(|p| match packed.get(&p) {
                Some(same) => Packed::clone(same),
                None => {
                    packed.insert(p.clone());
                    p
                }
            });
            let healthy = !matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            let labels = match lb
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(SOCKET_MATCH))
            {
                Some(st) => struct_labels(
                    st,
                    res,
                    &format!("{path}.metadata.filter_metadata[\"{SOCKET_MATCH}\"]"),
                )?,
                None => Vec::new(),
            };
            if let Some(Address::Pipe(pipe)) = &addr.address {
                if discovery != Discovery::Static {
                    return Err(err(
                        res,
                        format!("{path}.endpoint.address.pipe"),
                        "unix socket endpoints need a STATIC cluster",
                    ));
                }
                unix.push(std::path::PathBuf::from(&pipe.path));
                continue;
            }
            let target = if let Some(Address::EnvoyInternalAddress(ia)) = &addr.address {
                let at = format!("{path}.endpoint.address.envoy_internal_address");
                if !matches!(discovery, Discovery::Static | Discovery::Eds) {
                    return Err(err(
                        res,
                        at,
                        "internal endpoints need a STATIC or EDS cluster",
                    ));
                }
                let Some(Server::ServerListenerName(listener)) = &ia.address_name_specifier else {
                    return Err(err(res, at, "server_listener_name is required"));
                };
                let internal =
                    super::internal::endpoint(listener, &ia.endpoint_id, lb.metadata.as_ref());
                Some((
                    crate::model::internal::synthetic_address(listener, &ia.endpoint_id),
                    internal.display.clone(),
                    Some(Arc::new(internal)),
                ))
            } else {
                match discovery {
                    Discovery::Static | Discovery::Eds | Discovery::OriginalDst => {
                        let address = socket_addr(addr, res, &format!("{path}.endpoint.address"))?;
                        let hostname: Arc<str> = if ep.hostname.is_empty() {
                            address.to_string().into()
                        } else {
                            ep.hostname.as_str().into()
                        };
                        Some((address, hostname, None))
                    }
                    Discovery::StrictDns | Discovery::LogicalDns => {
                        let (host, port) =
                            host_port(addr, res, &format!("{path}.endpoint.address"))?;
                        if host.is_empty() {
                            return Err(err(
                                res,
                                format!("{path}.endpoint.address.socket_address.address"),
                                "host name is required",
                            ));
                        }
                        dns_hosts.push(DnsHost {
                            host: host.to_string(),
                            port,
                            weight,
                            labels: labels.clone().into(),
                            metadata: metadata.clone(),
                        });
                        None
                    }
                }
            };
            if let Some((address, hostname, internal)) = target {
                let workload =
                    super::telemetry::endpoint_workload(lb.metadata.as_ref(), &mut workloads);
                endpoints.push(Endpoint {
                    address,
                    hostname,
                    weight,
                    healthy,
                    labels: labels.into(),
                    workload,
                    priority: locality.priority,
                    locality: place.clone(),
                    overprovisioning,
                    group: li as u32,
                    locality_weight: locality.load_balancing_weight.unwrap_or(0),
                    internal,
                    metadata,
                });
            }
        }
    }
    // By priority (a stable sort: each priority's endpoints keep their order), as Envoy
    // keeps one host set per priority; the pick finds each priority's run.
    endpoints.sort_by_key(|e| e.priority);
    Ok((endpoints, dns_hosts, unix))
}

/// The metadata namespace `transport_socket_matches` compare against.
const SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The scalar fields of a metadata struct as (key, text) pairs, sorted by key.
fn struct_labels(
    st: &prost_types::Struct,
    res: &str,
    at: &str,
) -> Result<Vec<crate::model::Label>, ConvertError> {
    use prost_types::value::Kind as V;
    let mut out = Vec::with_capacity(st.fields.len());
    for (k, v) in &st.fields {
        let text = match &v.kind {
            Some(V::StringValue(s)) => s.clone(),
            Some(V::BoolValue(b)) => b.to_string(),
            Some(V::NumberValue(n)) => n.to_string(),
            _ => {
                return Err(err(
                    res,
                    format!("{at}.{k}"),
                    "only string, number and bool values can be matched",
                ))
            }
        };
        out.push((k.as_str().into(), text.into()));
    }
    out.sort();
    Ok(out)
}

type Endpoints = (Vec<Endpoint>, Vec<DnsHost>, Vec<std::path::PathBuf>);
