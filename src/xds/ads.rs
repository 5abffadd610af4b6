//! The ADS streams: one gRPC stream to the control plane (TCP, or a Unix socket as
//! pilot-agent serves it), state of the world (`GRPC`) or incremental (`DELTA_GRPC`),
//! following Envoy's xDS protocol: ACK with the accepted version and the nonce, NACK with
//! the previous version, the nonce and the error. `control` decides; `client` reconnects
//! with jittered exponential backoff while the last good snapshot keeps serving.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::model::convert::AdsConfig;
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::envoy::service::discovery::v3 as pb;
use crate::proto::google::rpc::Status;

use super::control::{set_connected, Control, INVALID_ARGUMENT};
use super::state::{Incoming, Kind, Update};
use super::transport::{next_response, StreamEnd};

/// The types this bootstrap subscribes to, in Envoy's order.
fn kinds(cfg: &AdsConfig) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| match k {
            Kind::Cluster => cfg.cds,
            Kind::Listener => cfg.lds,
            _ => true,
        })
        .collect()
}

/// The resource type of a response, or `None` (with a warning) for types never asked for.
fn subscribed_kind(type_url: &str) -> Option<Kind> {
    let kind = Kind::from_type_url(type_url);
    if kind.is_none() {
        tracing::warn!(%type_url, "ignoring a response of a type Ringside does not subscribe to");
    }
    kind
}

#[derive(Default)]
struct SotwType {
    version: String,
    nonce: String,
    names: BTreeSet<String>,
    sent: bool,
}

pub(super) async fn sotw_stream(
    cfg: &AdsConfig,
    node: &Node,
    control: &RefCell<Control>,
    channel: tonic::transport::Channel,
) -> StreamEnd {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::DiscoveryRequest>();
    let mut node_sent = false;
    let mut types: BTreeMap<Kind, SotwType> = BTreeMap::new();
    let send = |tx: &UnboundedSender<pb::DiscoveryRequest>,
                node_sent: &mut bool,
                kind: Kind,
                t: &SotwType,
                error: Option<String>| {
        let node = (!*node_sent || !cfg.set_node_on_first_message_only).then(|| node.clone());
        *node_sent = true;
        let _ = tx.send(pb::DiscoveryRequest {
            version_info: t.version.clone(),
            node,
            resource_names: t.names.iter().cloned().collect(),
            type_url: kind.type_url().into(),
            response_nonce: t.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
        });
    };
    // Initial requests, carrying the versions this client already has (reconnects).
    for kind in kinds(cfg) {
        let names = control.borrow().wanted(kind);
        if !kind.wildcard() && names.is_empty() {
            continue;
        }
        let t = types.entry(kind).or_default();
        t.version = control.borrow().resources.version(kind);
        t.names = names;
        t.sent = true;
        send(&tx, &mut node_sent, kind, t, None);
    }
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    let rx = UnboundedReceiverStream::new(rx);
    let mut inbound =
        super::grpc::open::<_, pb::DiscoveryResponse>(channel, path, &cfg.metadata, rx)
            .await
            .map_err(|s| (false, s))?;
    set_connected(&control.borrow(), true);
    let mut got = false;
    loop {
        let resp = match next_response(&mut inbound, control).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(got),
            Err(s) => return Err((got, s)),
        };
        got = true;
        let Some(kind) = subscribed_kind(&resp.type_url) else {
            continue;
        };
        let update = Update::sotw(kind, &resp.version_info, resp.resources);
        let result = control.borrow_mut().apply(&update);
        release_after(update);
        let t = types.entry(kind).or_default();
        t.nonce = resp.nonce;
        let error = match result {
            Ok(_) => {
                t.version = resp.version_info;
                None
            }
            Err(e) => Some(e),
        };
        send(&tx, &mut node_sent, kind, t, error);
        // EDS, RDS and SDS over ADS follow what CDS and LDS reference.
        for k in [Kind::Endpoint, Kind::Route, Kind::Secret] {
            if !follows(kind, k) {
                continue;
            }
            let wanted = control.borrow().wanted(k);
            let t = types.entry(k).or_default();
            if wanted != t.names || (!t.sent && !wanted.is_empty()) {
                t.names = wanted;
                t.sent = true;
                send(&tx, &mut node_sent, k, t, None);
            }
        }
    }
}

pub(super) async fn delta_stream(
    cfg: &AdsConfig,
    node: &Node,
    control: &RefCell<Control>,
    channel: tonic::transport::Channel,
) -> StreamEnd {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::DeltaDiscoveryRequest>();
    let mut node_sent = false;
    let node_for = |node_sent: &mut bool| {
        let n = (!*node_sent || !cfg.set_node_on_first_message_only).then(|| node.clone());
        *node_sent = true;
        n
    };
    let mut subscribed: BTreeMap<Kind, BTreeSet<String>> = BTreeMap::new();
    for kind in kinds(cfg) {
        let names = control.borrow().wanted(kind);
        if !kind.wildcard() && names.is_empty() {
            continue;
        }
        let _ = tx.send(pb::DeltaDiscoveryRequest {
            node: node_for(&mut node_sent),
            type_url: kind.type_url().into(),
            resource_names_subscribe: names.iter().cloned().collect(),
            resource_names_unsubscribe: Vec::new(),
            initial_resource_versions: control.borrow().resources.versions_of(kind),
            response_nonce: String::new(),
            error_detail: None,
        });
        subscribed.insert(kind, names);
    }
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    let rx = UnboundedReceiverStream::new(rx);
    let mut inbound =
        super::grpc::open::<_, pb::DeltaDiscoveryResponse>(channel, path, &cfg.metadata, rx)
            .await
            .map_err(|s| (false, s))?;
    set_connected(&control.borrow(), true);
    let mut got = false;
    loop {
        let resp = match next_response(&mut inbound, control).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(got),
            Err(s) => return Err((got, s)),
        };
        got = true;
        let Some(kind) = subscribed_kind(&resp.type_url) else {
            continue;
        };
        let update = Update {
            kind,
            version_info: resp.system_version_info.clone(),
            resources: resp
                .resources
                .into_iter()
                .filter_map(|r| {
                    r.resource.map(|resource| Incoming {
                        name: r.name,
                        version: r.version,
                        resource: resource.into(),
                    })
                })
                .collect(),
            removed: resp.removed_resources,
            full_state: false,
        };
        let error = control.borrow_mut().apply(&update).err();
        release_after(update);
        let _ = tx.send(pb::DeltaDiscoveryRequest {
            node: node_for(&mut node_sent),
            type_url: resp.type_url,
            response_nonce: resp.nonce,
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        });
        for k in [Kind::Endpoint, Kind::Route, Kind::Secret] {
            if !follows(kind, k) {
                continue;
            }
            let wanted = control.borrow().wanted(k);
            let have = subscribed.entry(k).or_default();
            if wanted != *have {
                let _ = tx.send(pb::DeltaDiscoveryRequest {
                    node: node_for(&mut node_sent),
                    type_url: k.type_url().into(),
                    resource_names_subscribe: wanted.difference(have).cloned().collect(),
                    resource_names_unsubscribe: have.difference(&wanted).cloned().collect(),
                    ..Default::default()
                });
                *have = wanted;
            }
        }
    }
}

/// After a big response (a mesh's whole configuration), the memory its decoding and the
/// replaced snapshot used is returned to the OS a little later, once the cores let go of
/// the old snapshot: mimalloc would otherwise keep those pages resident until this thread
/// allocates again, and a sidecar's memory is read right after a push.
fn release_after(update: Update) {
    const BIG: usize = 1 << 20;
    let bytes: usize = update
        .resources
        .iter()
        .map(|r| r.resource.value.len())
        .sum();
    drop(update);
    if bytes >= BIG {
        crate::io::release_freed_soon();
    }
}

/// Whether a response of `kind` can change which resources of `sub` are wanted: EDS
/// follows the clusters, RDS the listeners, SDS both (listing 10,000 clusters' EDS
/// names after every route change was wasted work).
fn follows(kind: Kind, sub: Kind) -> bool {
    match sub {
        Kind::Endpoint => kind == Kind::Cluster,
        Kind::Route => kind == Kind::Listener,
        _ => matches!(kind, Kind::Cluster | Kind::Listener),
    }
}
