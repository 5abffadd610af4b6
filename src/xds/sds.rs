//! SDS streams of their own: secrets whose `sds_config` names a static cluster (Istio's
//! `sds-grpc`, pilot-agent's Unix socket at `./var/run/secrets/workload-spiffe-uds/socket`)
//! come over `SecretDiscoveryService.StreamSecrets`, state of the world, one stream per
//! cluster. Each stream subscribes to the names the cached listeners and clusters use,
//! follows them as LDS and CDS change, and ACKs or NACKs what it applies through the same
//! [`Control`] as ADS (a bad secret is NACKed and the old one keeps serving).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::model::convert::SdsSource;
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::envoy::service::discovery::v3 as pb;
use crate::proto::google::rpc::Status;

use super::control::{set_connected, Control, INVALID_ARGUMENT};
use super::state::{Kind, Update};
use super::transport::{session, Backoff, StreamEnd};

/// Starts one SDS stream for every cluster the resources name as an SDS source, as they
/// appear. Runs for ever on the control thread's `LocalSet`.
pub async fn supervise(node: Node, control: Rc<RefCell<Control>>) {
    let mut changed = control.borrow().changed.subscribe();
    let mut running: BTreeSet<Arc<str>> = BTreeSet::new();
    loop {
        let clusters = control.borrow().resources.sds_clusters();
        for c in clusters {
            if running.insert(c.clone()) {
                tokio::task::spawn_local(run(c, node.clone(), control.clone()));
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// One cluster's SDS stream, reconnecting with backoff while it has names to ask for.
async fn run(cluster: Arc<str>, node: Node, control: Rc<RefCell<Control>>) {
    let source = SdsSource::Grpc(cluster.clone());
    let path = format!(
        "sds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name '{cluster}'"
    );
    let mut changed = control.borrow().changed.subscribe();
    let mut backoff = Backoff::new();
    loop {
        if control
            .borrow()
            .resources
            .wanted_secrets(&source)
            .is_empty()
        {
            if changed.changed().await.is_err() {
                return;
            }
            continue;
        }
        let target = super::transport::target_of(&cluster, &control.borrow().statics, &path);
        let (target, timeout) = match target {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("SDS disabled for this source: {e}");
                return;
            }
        };
        let got = session("SDS", &target, timeout, &control, |channel| {
            stream(&node, &control, &source, channel)
        })
        .await;
        if got {
            backoff.reset();
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// What was last accepted and asked for on the stream.
#[derive(Default)]
struct Sent {
    version: String,
    nonce: String,
    names: BTreeSet<String>,
}

async fn stream(
    node: &Node,
    control: &RefCell<Control>,
    source: &SdsSource,
    channel: tonic::transport::Channel,
) -> StreamEnd {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::DiscoveryRequest>();
    let mut node_sent = false;
    let send = |tx: &UnboundedSender<pb::DiscoveryRequest>,
                node_sent: &mut bool,
                s: &Sent,
                error: Option<String>| {
        // pilot-agent reads the node from the first request only.
        let node = (!*node_sent).then(|| node.clone());
        *node_sent = true;
        let _ = tx.send(pb::DiscoveryRequest {
            version_info: s.version.clone(),
            node,
            resource_names: s.names.iter().cloned().collect(),
            type_url: Kind::Secret.type_url().into(),
            response_nonce: s.nonce.clone(),
            error_detail: error.map(|message| Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            }),
        });
    };
    let mut sent = Sent {
        names: control.borrow().resources.wanted_secrets(source),
        ..Sent::default()
    };
    send(&tx, &mut node_sent, &sent, None);
    let path = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
    let rx = UnboundedReceiverStream::new(rx);
    let mut inbound = super::grpc::open::<_, pb::DiscoveryResponse>(channel, path, &[], rx)
        .await
        .map_err(|s| (false, s))?;
    set_connected(&control.borrow(), true);
    let mut changed = control.borrow().changed.subscribe();
    let mut got = false;
    loop {
        let resp = tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(got),
                Err(s) => return Err((got, s)),
            },
            c = changed.changed() => {
                if c.is_err() {
                    return Ok(got);
                }
                let names = control.borrow().resources.wanted_secrets(source);
                if names != sent.names {
                    sent.names = names;
                    send(&tx, &mut node_sent, &sent, None);
                }
                continue;
            }
        };
        got = true;
        if resp.type_url != Kind::Secret.type_url() {
            tracing::warn!(type_url = %resp.type_url, "ignoring a non-secret response on an SDS stream");
            continue;
        }
        let update = Update::sotw(Kind::Secret, &resp.version_info, resp.resources);
        let result = control.borrow_mut().apply(&update);
        sent.nonce = resp.nonce;
        let error = match result {
            Ok(_) => {
                sent.version = resp.version_info;
                None
            }
            Err(e) => Some(e),
        };
        send(&tx, &mut node_sent, &sent, error);
        // Skip the change notice our own update raised, unless the names moved.
        changed.borrow_and_update();
        let names = control.borrow().resources.wanted_secrets(source);
        if names != sent.names {
            sent.names = names;
            send(&tx, &mut node_sent, &sent, None);
        }
    }
}

/// What a file looked like when last polled: modification time, size, inode.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Watches the SDS files (`path_config_source`) that static and dynamic resources read,
/// once a second while there are any; when one changes (written in place, or replaced by a rename as
/// cert-manager and Kubernetes secret volumes do), everything that reads it is converted
/// again and published. A file a new LDS/CDS resource names counts as unchanged when
/// first seen: it was just read by the conversion that named it.
pub async fn watch_files(control: Rc<RefCell<Control>>) {
    // The static resources' files were read at start: they are stamped now, so a change
    // within the first poll interval is not taken for their first sight.
    let mut seen: std::collections::BTreeMap<std::path::PathBuf, Stamp> = control
        .borrow()
        .statics
        .sds_files
        .iter()
        .map(|f| (f.clone(), stamp(f)))
        .collect();
    let mut published = crate::wake::published();
    loop {
        let none = {
            let c = control.borrow();
            c.statics.sds_files.is_empty() && c.resources.sds_files().is_empty()
        };
        if none {
            // Nothing to poll (Istio's secrets come over the SDS API): no wake-ups until a
            // publish may have named a file.
            let _ = published.changed().await;
        } else {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let files: BTreeSet<std::path::PathBuf> = {
            let c = control.borrow();
            let mut f = c.resources.sds_files();
            f.extend(c.statics.sds_files.iter().cloned());
            f
        };
        let mut changed = BTreeSet::new();
        for f in &files {
            let now = stamp(f);
            if seen
                .insert(f.clone(), now)
                .is_some_and(|before| before != now)
            {
                changed.insert(f.clone());
            }
        }
        seen.retain(|f, _| files.contains(f));
        if !changed.is_empty() {
            control.borrow_mut().reload_sds_files(&changed);
        }
    }
}
