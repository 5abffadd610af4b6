//! Internal listeners (Envoy's `internal_listener`) and what reaches them: endpoints at an
//! `envoy_internal_address`, the `internal_upstream` transport socket's passthrough
//! metadata, and filter state shared with the upstream connection. Istio's HBONE is built
//! from these: an outbound cluster's endpoint is the internal listener `connect_originate`,
//! whose TCP proxy tunnels the bytes over HTTP/2 CONNECT to the peer's port 15008, where
//! `connect_terminate` hands each CONNECT stream to the internal listener `main_internal`.
//!
//! An internal connection is made on the core that opens it and served there: both ends
//! are one core's. It carries no IP addresses of its own; Envoy shows its peer as
//! `envoy://internal_client_address/` and its local address as
//! `envoy://<listener>/<endpoint id>` until a listener filter restores an IP destination.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::filter_state::Object;

/// An ORIGINAL_DST cluster's `original_dst_lb_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginalDstConfig {
    /// `upstream_port_override`: the port connected to, whatever the destination's.
    pub port_override: Option<u16>,
    /// `metadata_key` (namespace, key): an `ip:port` in the connection's dynamic metadata
    /// is the destination.
    pub metadata_key: Option<(Arc<str>, Arc<str>)>,
}

/// An endpoint at an `envoy_internal_address`.
#[derive(Debug, Clone, PartialEq)]
pub struct InternalEndpoint {
    /// The internal listener it connects to (`server_listener_name`).
    pub listener: Arc<str>,
    /// `endpoint_id`: tells apart endpoints on one listener (Istio: the destination).
    pub endpoint_id: Arc<str>,
    /// Its `filter_metadata`, for the transport socket's host passthrough.
    pub metadata: Metadata,
    /// `envoy://<listener>/<endpoint id>`, as Envoy prints it.
    pub display: Arc<str>,
}

// Metadata values may hold floats; equality is still what configuration diffs need.
impl Eq for InternalEndpoint {}

/// Filter metadata: namespace → struct, sorted by namespace.
pub type Metadata = Arc<[(Arc<str>, Arc<prost_types::Struct>)]>;

/// The `internal_upstream` transport socket of a cluster (or of one of its
/// `transport_socket_matches`): which metadata the internal connection receives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Passthrough {
    /// Namespaces copied from the endpoint's metadata (`kind: host`).
    pub host: Vec<Arc<str>>,
    /// Namespaces copied from the cluster's metadata (`kind: cluster`), read at
    /// configuration time.
    pub cluster: Vec<(Arc<str>, Option<Arc<prost_types::Struct>>)>,
}

/// What an internal listener's connection is handed when it is opened.
#[derive(Debug, Clone, Default)]
pub struct Hello {
    /// The connection's dynamic metadata (the passthrough metadata).
    pub metadata: Vec<(Arc<str>, Arc<prost_types::Struct>)>,
    /// Filter state objects the opener shared with its upstream connection.
    pub objects: Vec<Object>,
    /// Passthrough namespaces the endpoint or cluster did not have
    /// (`internal_upstream.no_metadata`).
    pub missing: u32,
}

impl Hello {
    /// The string at `namespace.key` of the connection's metadata.
    pub fn metadata_str(&self, namespace: &str, key: &str) -> Option<&str> {
        use prost_types::value::Kind;
        let (_, s) = self.metadata.iter().find(|(n, _)| &**n == namespace)?;
        match s.fields.get(key)?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v),
            _ => None,
        }
    }
}

impl Passthrough {
    /// The metadata an internal connection to `ep` receives.
    pub fn hello(&self, ep: Option<&InternalEndpoint>, objects: Vec<Object>) -> Hello {
        let mut out = Hello {
            objects,
            ..Hello::default()
        };
        for name in &self.host {
            match ep.and_then(|e| e.metadata.iter().find(|(n, _)| n == name)) {
                Some((n, s)) => merge(&mut out.metadata, n, s),
                None => out.missing += 1,
            }
        }
        for (name, value) in &self.cluster {
            match value {
                Some(s) => merge(&mut out.metadata, name, s),
                None => out.missing += 1,
            }
        }
        out
    }
}

/// Envoy merges a namespace passed twice (`MergeFrom`): later fields win.
fn merge(
    into: &mut Vec<(Arc<str>, Arc<prost_types::Struct>)>,
    name: &Arc<str>,
    s: &Arc<prost_types::Struct>,
) {
    match into.iter_mut().find(|(n, _)| n == name) {
        Some((_, old)) => {
            let mut m = (**old).clone();
            m.fields
                .extend(s.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            *old = Arc::new(m);
        }
        None => into.push((name.clone(), s.clone())),
    }
}

/// The address the core's pools, load balancers and outlier tracking know an internal
/// endpoint by: an IPv6 address in the discard-only prefix `100::/64` (RFC 6666), which no
/// connection ever reaches, made from a hash of the listener and endpoint id, so two
/// internal endpoints never share a pooled connection.
pub fn synthetic_address(listener: &str, endpoint_id: &str) -> SocketAddr {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0x4942_4f4e_4500);
    h.update(listener.as_bytes());
    h.update(&[0]);
    h.update(endpoint_id.as_bytes());
    let x = h.digest();
    let ip = Ipv6Addr::new(
        0x100,
        0,
        0,
        0,
        (x >> 48) as u16,
        (x >> 32) as u16,
        (x >> 16) as u16,
        x as u16,
    );
    SocketAddr::new(ip.into(), 0)
}

/// Whether `a` is an internal endpoint's address (see [`synthetic_address`]).
pub fn is_synthetic(a: &SocketAddr) -> bool {
    matches!(a.ip(), std::net::IpAddr::V6(v6) if v6.segments()[..4] == [0x100, 0, 0, 0])
}

/// Envoy's address of an internal connection's client.
pub const CLIENT_ADDRESS: &str = "envoy://internal_client_address/";

/// The placeholder an internal connection's peer address is, printed as
/// [`CLIENT_ADDRESS`].
pub fn client_address() -> SocketAddr {
    synthetic_address("internal_client_address", "")
}

/// What the internal listener filters restore, from the connection's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restore {
    /// Nothing: the connection keeps its internal addresses.
    #[default]
    None,
    /// Envoy's `original_dst`: the metadata `envoy.filters.listener.original_dst`'s
    /// `local`, else the filter state `envoy.filters.listener.original_dst.local_ip`; and
    /// the peer from the filter state `...original_dst.remote_ip`.
    OriginalDst,
    /// Istio's `istio.set_internal_dst_address`: the metadata `tunnel`'s `destination`
    /// (and `address`, where an ORIGINAL_DST cluster connects), else the filter state
    /// `istio.set_internal_dst_address` (a CONNECT's authority).
    IstioTunnel,
}

/// Filter state keys the internal listener filters read.
pub use super::filter_state::{LOCAL_IP, REMOTE_IP};
pub const ISTIO_AUTHORITY: &str = "istio.set_internal_dst_address";
/// Where an ORIGINAL_DST cluster finds its destination first (Envoy's
/// `Network::DestinationAddress`).
pub const DESTINATION_ADDRESS: &str = "envoy.network.transport_socket.original_dst_address";

/// What restoring found: the destination, the peer, and an ORIGINAL_DST cluster's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restored {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub original_dst: Option<SocketAddr>,
}

impl Restore {
    /// What this listener filter restores from `hello`.
    pub fn apply(self, hello: &Hello) -> Restored {
        let object = |k: &str| {
            super::filter_state::find(&hello.objects, k).and_then(|f| f.value.parse().ok())
        };
        match self {
            Restore::None => Restored::default(),
            Restore::OriginalDst => Restored {
                // A `local` that does not parse is not replaced by the filter state (as
                // in Envoy: it only logs).
                local: match hello.metadata_str("envoy.filters.listener.original_dst", "local") {
                    Some(s) => s.parse().ok(),
                    None => object(LOCAL_IP),
                },
                remote: object(REMOTE_IP),
                original_dst: None,
            },
            Restore::IstioTunnel => {
                if hello.metadata.iter().any(|(n, _)| &**n == "tunnel") {
                    return Restored {
                        local: hello
                            .metadata_str("tunnel", "destination")
                            .and_then(|s| s.parse().ok()),
                        remote: None,
                        original_dst: hello
                            .metadata_str("tunnel", "address")
                            .and_then(|s| s.parse().ok()),
                    };
                }
                // The CONNECT's authority, with the port Istio's connect_authority
                // filter names (0: the authority's own).
                let Some(f) = super::filter_state::find(&hello.objects, ISTIO_AUTHORITY) else {
                    return Restored::default();
                };
                let (authority, port) = match f.value.rsplit_once('|') {
                    Some((a, p)) => (a, p.parse::<u16>().unwrap_or(0)),
                    None => (f.value, 0),
                };
                let local: Option<SocketAddr> = authority.parse().ok();
                Restored {
                    local,
                    remote: None,
                    original_dst: local.map(|mut a| {
                        if port > 0 {
                            a.set_port(port);
                        }
                        a
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(pairs: &[(&str, &str)]) -> Arc<prost_types::Struct> {
        Arc::new(prost_types::Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        })
    }

    #[test]
    fn passthrough_copies_the_named_namespaces_and_counts_the_missing() {
        let ep = InternalEndpoint {
            listener: "connect_originate".into(),
            endpoint_id: "10.0.0.1:80".into(),
            metadata: Arc::new([(
                "envoy.filters.listener.original_dst".into(),
                st(&[("local", "10.0.0.1:80")]),
            )]),
            display: "envoy://connect_originate/10.0.0.1:80".into(),
        };
        let p = Passthrough {
            host: vec!["envoy.filters.listener.original_dst".into(), "istio".into()],
            cluster: vec![("istio".into(), Some(st(&[("x", "1")])))],
        };
        let h = p.hello(Some(&ep), Vec::new());
        assert_eq!(h.missing, 1);
        assert_eq!(
            Restore::OriginalDst.apply(&h).local,
            Some("10.0.0.1:80".parse().unwrap())
        );
        assert_eq!(h.metadata_str("istio", "x"), Some("1"));
    }

    #[test]
    fn istio_tunnel_metadata_wins_over_the_authority() {
        let mut h = Hello {
            metadata: vec![(
                "tunnel".into(),
                st(&[
                    ("destination", "10.0.0.2:8080"),
                    ("address", "10.0.0.2:15008"),
                ]),
            )],
            ..Hello::default()
        };
        let r = Restore::IstioTunnel.apply(&h);
        assert_eq!(r.local, Some("10.0.0.2:8080".parse().unwrap()));
        assert_eq!(r.original_dst, Some("10.0.0.2:15008".parse().unwrap()));
        h.metadata.clear();
        h.objects.push(Object {
            key: ISTIO_AUTHORITY.into(),
            value: "10.0.0.3:80|15008".into(),
            hashable: true,
            read_only: false,
            shared: Default::default(),
        });
        let r = Restore::IstioTunnel.apply(&h);
        assert_eq!(r.local, Some("10.0.0.3:80".parse().unwrap()));
        assert_eq!(r.original_dst, Some("10.0.0.3:15008".parse().unwrap()));
        assert_eq!(Restore::OriginalDst.apply(&h).local, None);
    }

    #[test]
    fn synthetic_addresses_differ_per_endpoint_and_are_recognised() {
        let a = synthetic_address("connect_originate", "10.0.0.1:80");
        let b = synthetic_address("connect_originate", "10.0.0.2:80");
        assert_ne!(a, b);
        assert!(is_synthetic(&a));
        assert!(!is_synthetic(&"10.0.0.1:80".parse().unwrap()));
    }
}
