//! `envoy.config.cluster.v3.Cluster` → [`Cluster`].

use std::sync::Arc;
use std::time::Duration;

use crate::model::{Cluster, Discovery, DnsFamily, DnsHost, Endpoint, LbPolicy};
use crate::proto::envoy::config::cluster::v3 as pb;
use crate::proto::envoy::config::core::v3::HealthStatus;
use crate::stats::ClusterStat;

use super::{duration, err, host_port, socket_addr, timeout, ConvertError, Ctx};

pub(super) fn convert(c: &pb::Cluster, ctx: &mut Ctx<'_>) -> Result<Cluster, ConvertError> {
    if c.name.is_empty() {
        return Err(err("cluster ''", "name", "cluster name is required"));
    }
    let res = format!("cluster '{}'", c.name);
    let res = res.as_str();
    use pb::cluster::DiscoveryType as T;
    let type_value = match c.cluster_discovery_type {
        Some(pb::cluster::ClusterDiscoveryType::Type(t)) => t,
        None => T::Static as i32,
    };
    let discovery = match T::try_from(type_value) {
        Ok(T::Static) => Discovery::Static,
        Ok(T::StrictDns) => Discovery::StrictDns,
        Ok(T::LogicalDns) => Discovery::LogicalDns,
        Ok(other) => {
            return Err(err(
                res,
                "type",
                format!("cluster type {} is not supported", other.as_str_name()),
            ))
        }
        Err(_) => {
            return Err(err(
                res,
                "type",
                format!("unknown cluster type {type_value}"),
            ))
        }
    };
    use pb::cluster::LbPolicy as P;
    let lb = match P::try_from(c.lb_policy) {
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::Random) => LbPolicy::Random,
        Ok(P::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(pb::cluster::LbConfig::LeastRequestLbConfig(l)) => l.choice_count.unwrap_or(2),
                None => 2,
            };
            if choice_count < 2 {
                return Err(err(
                    res,
                    "least_request_lb_config.choice_count",
                    "must be at least 2",
                ));
            }
            LbPolicy::LeastRequest { choice_count }
        }
        Ok(other) => {
            return Err(err(
                res,
                "lb_policy",
                format!("lb_policy {} is not supported", other.as_str_name()),
            ))
        }
        Err(_) => {
            return Err(err(
                res,
                "lb_policy",
                format!("unknown lb_policy {}", c.lb_policy),
            ))
        }
    };
    if c.lb_config.is_some() && !matches!(lb, LbPolicy::LeastRequest { .. }) {
        return Err(err(
            res,
            "least_request_lb_config",
            "only valid with lb_policy LEAST_REQUEST",
        ));
    }
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration(d, res, "connect_timeout")?,
        None => Duration::from_secs(5),
    };
    if connect_timeout.is_zero() {
        return Err(err(res, "connect_timeout", "must be greater than 0"));
    }
    let mut idle_timeout = Some(Duration::from_secs(3600));
    let mut max_requests_per_connection = None;
    if let Some(o) = &c.common_http_protocol_options {
        idle_timeout = timeout(
            o.idle_timeout.as_ref(),
            idle_timeout,
            res,
            "common_http_protocol_options.idle_timeout",
        )?;
        max_requests_per_connection = o.max_requests_per_connection.filter(|&n| n > 0);
        if o.max_connection_duration.is_some()
            || o.max_headers_count.is_some()
            || o.headers_with_underscores_action != 0
        {
            return Err(err(
                res,
                "common_http_protocol_options",
                "only idle_timeout and max_requests_per_connection are supported on clusters",
            ));
        }
    }
    if c.per_connection_buffer_limit_bytes.is_some() {
        ctx.ignored
            .push(format!("{res}.per_connection_buffer_limit_bytes"));
    }
    if c.respect_dns_ttl {
        ctx.ignored.push(format!("{res}.respect_dns_ttl"));
    }
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
    let mut endpoints = Vec::new();
    let mut dns_hosts = Vec::new();
    if let Some(la) = &c.load_assignment {
        for (li, locality) in la.endpoints.iter().enumerate() {
            if locality.priority != 0 {
                return Err(err(
                    res,
                    format!("load_assignment.endpoints[{li}].priority"),
                    "priorities other than 0 are not supported",
                ));
            }
            for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
                let path = format!("load_assignment.endpoints[{li}].lb_endpoints[{ei}]");
                let Some(crate::proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(ep)) =
                    &lb.host_identifier
                else {
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
                let healthy = !matches!(
                    HealthStatus::try_from(lb.health_status),
                    Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
                );
                match discovery {
                    Discovery::Static => {
                        let address = socket_addr(addr, res, &format!("{path}.endpoint.address"))?;
                        let hostname: Arc<str> = if ep.hostname.is_empty() {
                            address.to_string().into()
                        } else {
                            ep.hostname.as_str().into()
                        };
                        endpoints.push(Endpoint {
                            address,
                            hostname,
                            weight,
                            healthy,
                        });
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
                        });
                    }
                }
            }
        }
        if !la.cluster_name.is_empty() && la.cluster_name != c.name {
            return Err(err(
                res,
                "load_assignment.cluster_name",
                format!("'{}' does not match the cluster name", la.cluster_name),
            ));
        }
    }
    if discovery == Discovery::LogicalDns && dns_hosts.len() != 1 {
        return Err(err(
            res,
            "load_assignment",
            "LOGICAL_DNS clusters must have exactly one endpoint",
        ));
    }
    let stats = ctx.stats.scope::<ClusterStat>(&format!(
        "cluster.{}.",
        if c.alt_stat_name.is_empty() {
            &c.name
        } else {
            &c.alt_stat_name
        }
    ));
    Ok(Cluster {
        name: c.name.as_str().into(),
        stats,
        discovery,
        lb,
        connect_timeout,
        idle_timeout,
        max_requests_per_connection,
        dns_family,
        dns_refresh,
        dns_hosts: dns_hosts.into(),
        endpoints: endpoints.into(),
    })
}
