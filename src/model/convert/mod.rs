//! Protos → validated model. One file per resource type; every error names the resource
//! and the field path. A batch is converted whole before anything is published.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;

use crate::proto::envoy::config::bootstrap::v3::Bootstrap;
use crate::proto::envoy::config::core::v3 as core;
use crate::stats::Store;

use super::Snapshot;

mod cluster;
mod listener;
mod route;

/// A configuration error: which resource, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {path}: {reason}")]
pub struct ConvertError {
    pub resource: String,
    pub path: String,
    pub reason: String,
}

/// State shared by one conversion batch.
pub struct Ctx<'a> {
    pub stats: &'a Store,
    /// Paths of fields that were set but are ignorable knobs (README table).
    pub ignored: Vec<String>,
    cluster_index: HashMap<Arc<str>, usize>,
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

/// Converts a bootstrap into the first snapshot.
pub fn bootstrap_snapshot(
    bootstrap: &Bootstrap,
    stats: &Store,
    version: u64,
) -> Result<(Snapshot, Vec<String>), ConvertError> {
    let mut ctx = Ctx {
        stats,
        ignored: Vec::new(),
        cluster_index: HashMap::new(),
    };
    let admin = match &bootstrap.admin {
        Some(admin) => {
            if !admin.access_log.is_empty() {
                ctx.ignored.push("admin.access_log".into());
            }
            match &admin.address {
                Some(a) => Some(socket_addr(a, "admin", "admin.address")?),
                None => None,
            }
        }
        None => None,
    };
    if let Some(node) = &bootstrap.node {
        if !node.user_agent_name.is_empty() || node.user_agent_version_type.is_some() {
            ctx.ignored.push("node.user_agent_*".into());
        }
    }
    let empty = Default::default();
    let sr = bootstrap.static_resources.as_ref().unwrap_or(&empty);
    let mut clusters = Vec::with_capacity(sr.clusters.len());
    for (i, c) in sr.clusters.iter().enumerate() {
        let path = format!("static_resources.clusters[{i}]");
        let cluster = cluster::convert(c, &mut ctx).map_err(|mut e| {
            e.path = join(&path, &e.path);
            e
        })?;
        if ctx.cluster_index.insert(cluster.name.clone(), i).is_some() {
            return Err(err(
                &format!("cluster '{}'", cluster.name),
                format!("{path}.name"),
                "duplicate cluster name",
            ));
        }
        clusters.push(Arc::new(cluster));
    }
    let mut listeners = Vec::with_capacity(sr.listeners.len());
    let mut names = std::collections::HashSet::new();
    for (i, l) in sr.listeners.iter().enumerate() {
        let path = format!("static_resources.listeners[{i}]");
        let listener = listener::convert(l, &mut ctx).map_err(|mut e| {
            e.path = join(&path, &e.path);
            e
        })?;
        if !names.insert(listener.name.clone()) {
            return Err(err(
                &format!("listener '{}'", listener.name),
                format!("{path}.name"),
                "duplicate listener name",
            ));
        }
        listeners.push(Arc::new(listener));
    }
    let snapshot = Snapshot {
        version,
        built_at: SystemTime::now(),
        listeners,
        clusters,
        cluster_index: ctx.cluster_index,
        admin,
        bootstrap: Arc::new(bootstrap.clone()),
    };
    Ok((snapshot, ctx.ignored))
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
mod tests;
