//! Protos → validated model. One file per resource type; every error names the resource
//! and the field path. A batch is converted whole before anything is published.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;

use crate::proto::envoy::config::bootstrap::v3::Bootstrap;
use crate::proto::envoy::config::core::v3 as core;
use crate::proto::envoy::config::route::v3 as route_pb;
use crate::stats::Store;

use super::Snapshot;

mod access_log;
mod bootstrap;
mod breakers;
mod chain;
mod cidr;
mod cluster;
mod compressor;
mod ext_authz;
mod fault;
mod filter_state;
mod hcm;
mod health;
mod http_filter;
mod internal;
mod istio;
mod jwt;
mod lb;
mod listener;
mod matchers;
mod mirror;
mod outlier;
mod rbac;
mod retry;
mod route;
mod route_table;
pub(crate) mod runtime;
mod stats_config;
mod stats_overrides;
mod stats_sinks;
mod tcp;
mod telemetry;
mod tls;
mod tracing;

/// A configuration error: which resource, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {}{reason}", at(.path))]
pub struct ConvertError {
    pub resource: String,
    pub path: String,
    pub reason: String,
}

/// `path: `, or nothing for an error about the resource as a whole.
fn at(path: &str) -> String {
    match path {
        "" => String::new(),
        p => format!("{p}: "),
    }
}

/// State shared by one conversion batch.
pub struct Ctx<'a> {
    pub stats: &'a Store,
    /// Paths of fields that were set but are ignorable knobs (docs/configuration.md table).
    pub ignored: Vec<String>,
    cluster_index: rustc_hash::FxHashMap<Arc<str>, usize>,
    /// Converting xDS resources (not the bootstrap): routes are not validated against
    /// clusters by default, as in Envoy.
    dynamic: bool,
    /// The bootstrap configures an ADS stream (`ads: {}` config sources are valid).
    ads: bool,
    /// SDS secrets known now, by name.
    pub secrets: Arc<SecretMap>,
    /// The SDS secrets the converted resources name, and where each comes from.
    pub secret_refs: std::collections::BTreeSet<(Arc<str>, SdsSource)>,
    /// Reads SDS files (`path_config_source`); `None`: they are refused.
    pub sds_files: Option<SdsFileReader>,
    /// The listener being converted is INBOUND (`istio.stats` reports `destination`).
    pub inbound: bool,
    /// The listener being converted is OUTBOUND (Envoy's `egress` tracing operation).
    pub outbound: bool,
    /// The bootstrap enables internal listeners (`envoy.bootstrap.internal_listener`).
    pub internal_listeners: bool,
    /// Retry policies converted so far, with their encodings: istiod gives every route
    /// of a sidecar the same one, so routes share one (see [`Ctx::retry_policy`]).
    retries: Vec<(route_pb::RetryPolicy, Arc<crate::model::retry::RetryPolicy>)>,
}

/// Reads the secrets of an SDS file (the control thread passes `config::read_sds_file`).
pub type SdsFileReader =
    fn(
        &std::path::Path,
    )
        -> Result<Vec<crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret>, String>;

/// SDS secrets by name, as received (each validated by [`check_secret`]).
pub type SecretMap = std::collections::BTreeMap<
    Arc<str>,
    Arc<crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret>,
>;

/// Where an SDS secret is fetched from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SdsSource {
    /// The ADS stream (`sds_config: {ads: {}}`).
    Ads,
    /// A separate SDS stream to this static cluster (Istio: `sds-grpc`).
    Grpc(Arc<str>),
    /// A file (`path_config_source`) holding a `DiscoveryResponse` of secrets, read at
    /// conversion and watched for rotation.
    File(Arc<str>),
}

pub use bootstrap::{
    admin_access_logs, ads_config, bootstrap_snapshot, bootstrap_snapshot_with,
    internal_listeners_enabled, AdsConfig,
};
pub(crate) use route_table::TableBuilder;
pub use stats_sinks::stats_sinks;
pub use tls::check_secret;

impl<'a> Ctx<'a> {
    /// A context for resources that arrive over xDS.
    pub fn dynamic(stats: &'a Store) -> Self {
        Ctx {
            stats,
            ignored: Vec::new(),
            cluster_index: Default::default(),
            dynamic: true,
            ads: true,
            secrets: Arc::default(),
            secret_refs: Default::default(),
            sds_files: None,
            inbound: false,
            outbound: false,
            internal_listeners: false,
            retries: Vec::new(),
        }
    }

    /// A route's or virtual host's retry policy: the one converted earlier from an equal
    /// encoding, else converted now (its conversion reads nothing but `p`).
    pub(crate) fn retry_policy(
        &mut self,
        p: &route_pb::RetryPolicy,
        res: &str,
        path: &str,
    ) -> Result<Arc<crate::model::retry::RetryPolicy>, ConvertError> {
        /// Distinct policies remembered (a mesh has a handful; a linear search).
        const KEPT: usize = 8;
        if let Some((_, held)) = self.retries.iter().find(|(pb, _)| pb == p) {
            return Ok(held.clone());
        }
        let converted = Arc::new(retry::retry_policy(p, res, path)?);
        if self.retries.len() == KEPT {
            self.retries.remove(0);
        }
        self.retries.push((p.clone(), converted.clone()));
        Ok(converted)
    }
}

/// Converts one CDS cluster.
pub fn cluster_resource(
    c: &crate::proto::envoy::config::cluster::v3::Cluster,
    ctx: &mut Ctx<'_>,
) -> Result<super::Cluster, ConvertError> {
    cluster::convert(c, ctx)
}

/// Converts one LDS listener.
pub fn listener_resource(
    l: &crate::proto::envoy::config::listener::v3::Listener,
    ctx: &mut Ctx<'_>,
) -> Result<super::Listener, ConvertError> {
    listener::convert(l, ctx)
}

/// Converts one RDS route configuration.
pub fn route_resource(
    rc: &crate::proto::envoy::config::route::v3::RouteConfiguration,
    ctx: &mut Ctx<'_>,
) -> Result<super::route::RouteTable, ConvertError> {
    let res = format!("route configuration '{}'", rc.name);
    if rc.name.is_empty() {
        return Err(err(&res, "name", "name is required"));
    }
    let mut t = route_table::convert(rc, &res, "", ctx)?;
    t.name = rc.name.as_str().into();
    Ok(t)
}

/// Converts one EDS ClusterLoadAssignment into endpoints.
pub fn endpoints_resource(
    cla: &crate::proto::envoy::config::endpoint::v3::ClusterLoadAssignment,
) -> Result<Vec<super::Endpoint>, ConvertError> {
    let res = format!("cluster load assignment '{}'", cla.cluster_name);
    if cla.cluster_name.is_empty() {
        return Err(err(&res, "cluster_name", "cluster_name is required"));
    }
    let (endpoints, _, unix) = cluster::endpoints(cla, super::Discovery::Static, &res, "")?;
    if let Some(p) = unix.first() {
        return Err(err(
            &res,
            "endpoints",
            format!(
                "unix socket endpoint {} is not supported in EDS",
                p.display()
            ),
        ));
    }
    Ok(endpoints)
}

/// Static listeners are built once, at start: an SDS server's secret they name would
/// never be applied to them, so they are refused with the name (static clusters fed by an
/// SDS server are held by the control thread instead: see `bootstrap_snapshot_with`).
/// SDS files (`path_config_source`) are read at conversion and watched afterwards; they
/// are collected in `files`.
fn static_sds(
    ctx: &mut Ctx<'_>,
    path: &str,
    res: &str,
    files: &mut std::collections::BTreeSet<std::path::PathBuf>,
) -> Result<(), ConvertError> {
    for (name, source) in std::mem::take(&mut ctx.secret_refs) {
        match source {
            SdsSource::File(f) => {
                files.insert(std::path::PathBuf::from(&*f));
            }
            SdsSource::Ads | SdsSource::Grpc(_) => return Err(err(
                res,
                path,
                format!("SDS secret '{name}': static listeners take certificates from files, inline, or SDS files (path_config_source); SDS servers are for LDS/CDS resources and static clusters"),
            )),
        }
    }
    Ok(())
}

/// Checks a config source: only `ads: {}` is supported, and only when the bootstrap
/// configures ADS.
pub(crate) fn config_source(
    cs: Option<&core::ConfigSource>,
    ads: bool,
    resource: &str,
    path: &str,
) -> Result<Option<Duration>, ConvertError> {
    use core::config_source::ConfigSourceSpecifier as S;
    let Some(cs) = cs else {
        return Err(err(resource, path, "config_source is required"));
    };
    match &cs.config_source_specifier {
        Some(S::Ads(_)) => {}
        Some(S::ApiConfigSource(_)) => {
            return Err(err(
                resource,
                format!("{path}.api_config_source"),
                "only ADS config sources (ads: {}) are supported",
            ))
        }
        Some(S::Path(_) | S::PathConfigSource(_)) => {
            return Err(err(
                resource,
                format!("{path}.path_config_source"),
                "file config sources are supported for SDS only: use ADS (ads: {})",
            ))
        }
        None => return Err(err(resource, path, "ads: {} is required")),
    }
    if !ads {
        return Err(err(
            resource,
            format!("{path}.ads"),
            "the bootstrap has no dynamic_resources.ads_config",
        ));
    }
    if cs.resource_api_version == core::ApiVersion::V2 as i32 {
        return Err(err(
            resource,
            format!("{path}.resource_api_version"),
            "only V3 is supported",
        ));
    }
    // Envoy's default initial fetch timeout is 15 s; 0 waits for ever.
    timeout(
        cs.initial_fetch_timeout.as_ref(),
        Some(Duration::from_secs(15)),
        resource,
        &format!("{path}.initial_fetch_timeout"),
    )
}

/// Builds the error for `resource` at `path`.
pub(crate) fn err(
    resource: &str,
    path: impl Into<String>,
    reason: impl Into<String>,
) -> ConvertError {
    ConvertError {
        resource: resource.to_string(),
        path: path.into(),
        reason: reason.into(),
    }
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// A `Duration` proto as std; negative values are errors.
pub(crate) fn duration(
    d: &prost_types::Duration,
    resource: &str,
    path: &str,
) -> Result<Duration, ConvertError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(err(resource, path, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional timeout where zero means disabled, with a default when unset.
pub(crate) fn timeout(
    d: Option<&prost_types::Duration>,
    default: Option<Duration>,
    resource: &str,
    path: &str,
) -> Result<Option<Duration>, ConvertError> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(d, resource, path)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// An IP socket address (listeners, STATIC endpoints, admin).
pub(crate) fn socket_addr(
    a: &core::Address,
    resource: &str,
    path: &str,
) -> Result<SocketAddr, ConvertError> {
    let (host, port) = host_port(a, resource, path)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        err(
            resource,
            format!("{path}.socket_address.address"),
            format!("'{host}' is not an IP address"),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Host and port of a TCP socket address.
pub(crate) fn host_port<'a>(
    a: &'a core::Address,
    resource: &str,
    path: &str,
) -> Result<(&'a str, u16), ConvertError> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    let sa = match &a.address {
        Some(A::SocketAddress(sa)) => sa,
        Some(A::Pipe(_)) => {
            return Err(err(
                resource,
                format!("{path}.pipe"),
                "unix socket (pipe) addresses are not supported here",
            ))
        }
        Some(A::EnvoyInternalAddress(_)) => {
            return Err(err(
                resource,
                format!("{path}.envoy_internal_address"),
                "internal addresses are supported only as cluster endpoints",
            ))
        }
        None => return Err(err(resource, path, "address is required")),
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(err(
            resource,
            format!("{path}.socket_address.protocol"),
            "only TCP is supported",
        ));
    }
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) if p <= 65535 => p as u16,
        Some(PortSpecifier::PortValue(p)) => {
            return Err(err(
                resource,
                format!("{path}.socket_address.port_value"),
                format!("{p} is not a port"),
            ))
        }
        None => 0,
    };
    Ok((sa.address.as_str(), port))
}

/// The bytes of a `DataSource` (files are read now, at configuration time).
pub(crate) fn data_source(
    ds: &core::DataSource,
    resource: &str,
    path: &str,
) -> Result<bytes::Bytes, ConvertError> {
    use core::data_source::Specifier;
    match &ds.specifier {
        Some(Specifier::InlineString(s)) => Ok(bytes::Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Ok(bytes::Bytes::from(b.clone())),
        Some(Specifier::Filename(f)) => std::fs::read(f)
            .map(bytes::Bytes::from)
            .map_err(|e| err(resource, format!("{path}.filename"), format!("{f}: {e}"))),
        Some(Specifier::EnvironmentVariable(v)) => {
            std::env::var(v).map(bytes::Bytes::from).map_err(|_| {
                err(
                    resource,
                    format!("{path}.environment_variable"),
                    format!("environment variable {v} is not set"),
                )
            })
        }
        None => Err(err(resource, path, "data source is empty")),
    }
}

/// Decodes an `Any` whose type URL must be `T`'s.
pub(crate) fn decode_any<T: Message + Default>(
    any: &prost_types::Any,
    full_name: &str,
    resource: &str,
    path: &str,
) -> Result<T, ConvertError> {
    let expected = format!("{}{full_name}", crate::proto::TYPE_URL_PREFIX);
    if any.type_url != expected {
        return Err(err(
            resource,
            format!("{path}.typed_config"),
            format!("expected {expected}, got {}", any.type_url),
        ));
    }
    T::decode(any.value.as_slice()).map_err(|e| {
        err(
            resource,
            format!("{path}.typed_config"),
            format!("cannot decode {full_name}: {e}"),
        )
    })
}

/// The type name of an `Any`, without the URL prefix.
pub(crate) fn any_type(any: &prost_types::Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or(&any.type_url)
}

#[cfg(test)]
mod http2_tests;
#[cfg(test)]
mod internal_tests;
#[cfg(test)]
mod tests;

/// `Http2ProtocolOptions`, with Envoy's bounds (streams 1..2^31-1, windows 65535..2^31-1)
/// and Ringside's defaults for what is unset.
pub(crate) fn http2_settings(
    o: &core::Http2ProtocolOptions,
    resource: &str,
    path: &str,
    downstream: bool,
) -> Result<super::Http2Settings, ConvertError> {
    const MAX: u32 = (1 << 31) - 1;
    if !downstream {
        // Flood protection guards downstream connections only (http::h2::flood): on a
        // cluster the bounds would be silently ignored, so they are refused.
        for (set, name) in [
            (o.max_outbound_frames.is_some(), "max_outbound_frames"),
            (
                o.max_outbound_control_frames.is_some(),
                "max_outbound_control_frames",
            ),
            (
                o.max_consecutive_inbound_frames_with_empty_payload
                    .is_some(),
                "max_consecutive_inbound_frames_with_empty_payload",
            ),
            (
                o.max_inbound_priority_frames_per_stream.is_some(),
                "max_inbound_priority_frames_per_stream",
            ),
            (
                o.max_inbound_window_update_frames_per_data_frame_sent
                    .is_some(),
                "max_inbound_window_update_frames_per_data_frame_sent",
            ),
        ] {
            if set {
                return Err(err(
                    resource,
                    format!("{path}.{name}"),
                    "HTTP/2 flood bounds are implemented for downstream connections only",
                ));
            }
        }
    }
    // `allow_connect` enables extended CONNECT (RFC 8441: WebSocket over HTTP/2), which
    // Ringside does not advertise, so clients upgrade over HTTP/1.1; plain CONNECT (Istio's
    // HBONE, which sets it) needs no setting. Listed in docs/configuration.md's ignored
    // table.
    let _ = o.allow_connect;
    let d = super::Http2Settings::default();
    let field = |v: Option<u32>, name: &str, min: u32, default: u32| match v {
        None => Ok(default),
        Some(v) if (min..=MAX).contains(&v) => Ok(v),
        Some(v) => Err(err(
            resource,
            format!("{path}.{name}"),
            format!("{v} is outside {min}..={MAX}"),
        )),
    };
    Ok(super::Http2Settings {
        max_concurrent_streams: field(
            o.max_concurrent_streams,
            "max_concurrent_streams",
            1,
            d.max_concurrent_streams,
        )?,
        initial_stream_window_size: field(
            o.initial_stream_window_size,
            "initial_stream_window_size",
            65535,
            d.initial_stream_window_size,
        )?,
        initial_connection_window_size: field(
            o.initial_connection_window_size,
            "initial_connection_window_size",
            65535,
            d.initial_connection_window_size,
        )?,
        flood: super::FloodLimits {
            max_outbound_frames: field(
                o.max_outbound_frames,
                "max_outbound_frames",
                1,
                d.flood.max_outbound_frames,
            )?,
            max_outbound_control_frames: field(
                o.max_outbound_control_frames,
                "max_outbound_control_frames",
                1,
                d.flood.max_outbound_control_frames,
            )?,
            max_consecutive_empty_frames: field(
                o.max_consecutive_inbound_frames_with_empty_payload,
                "max_consecutive_inbound_frames_with_empty_payload",
                0,
                d.flood.max_consecutive_empty_frames,
            )?,
            max_priority_frames_per_stream: field(
                o.max_inbound_priority_frames_per_stream,
                "max_inbound_priority_frames_per_stream",
                0,
                d.flood.max_priority_frames_per_stream,
            )?,
            max_window_updates_per_data_frame_sent: field(
                o.max_inbound_window_update_frames_per_data_frame_sent,
                "max_inbound_window_update_frames_per_data_frame_sent",
                1,
                d.flood.max_window_updates_per_data_frame_sent,
            )?,
        },
    })
}
