//! The ADS client: one gRPC stream to the control plane (TCP, or a Unix socket as
//! pilot-agent serves it), state of the world (`GRPC`) or incremental (`DELTA_GRPC`),
//! following Envoy's xDS protocol: ACK with the accepted version and the nonce, NACK with
//! the previous version, the nonce and the error; reconnect with jittered exponential
//! backoff while the last good snapshot keeps serving.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::model::convert::AdsConfig;
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::envoy::service::discovery::v3 as pb;
use crate::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient as Client;
use crate::proto::google::rpc::Status;
use crate::stats::{ClusterStat, ControlPlaneStat, Scope, Store, XdsStat};

use super::publish::Publisher;
use super::state::{Incoming, Kind, Resources, Static, Update};

/// gRPC status code INVALID_ARGUMENT, carried by NACKs.
pub(super) const INVALID_ARGUMENT: i32 = 3;

/// Everything the control thread's xDS side owns.
pub struct Control {
    pub publisher: Publisher,
    pub resources: Resources,
    pub statics: Static,
    pub stats: Arc<Store>,
    /// The stats block the control thread writes.
    pub core: usize,
    /// Set once the first CDS and LDS responses were applied (`/ready`).
    pub initialized: Arc<AtomicBool>,
    cp: Arc<Scope>,
    seen: BTreeSet<Kind>,
    /// Bumped after every applied update: SDS streams re-read what they should
    /// subscribe to.
    pub changed: tokio::sync::watch::Sender<u64>,
}

impl Control {
    pub fn new(
        publisher: Publisher,
        statics: Static,
        stats: Arc<Store>,
        initialized: Arc<AtomicBool>,
    ) -> Control {
        let cp = stats.scope::<ControlPlaneStat>("control_plane.");
        Control {
            publisher,
            resources: Resources::default(),
            statics,
            core: stats.control_core(),
            stats,
            initialized,
            cp,
            seen: BTreeSet::new(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The names a type's subscription should hold now (see [`Resources::wanted`]).
    pub fn wanted(&self, kind: Kind) -> BTreeSet<String> {
        self.resources.wanted(kind, &self.statics)
    }

    fn scopes(&self, update: &Update) -> Vec<Arc<Scope>> {
        match update.kind {
            Kind::Cluster => vec![self.stats.scope::<XdsStat>("cluster_manager.cds.")],
            Kind::Listener => vec![self.stats.scope::<XdsStat>("listener_manager.lds.")],
            Kind::Route => {
                let mut prefixes = BTreeSet::new();
                for inc in &update.resources {
                    let name = if inc.name.is_empty() {
                        route_name(&inc.resource)
                    } else {
                        inc.name.clone()
                    };
                    for p in self.resources.rds_stat_prefixes(&name, &self.statics) {
                        prefixes.insert(format!("http.{p}.rds.{name}."));
                    }
                }
                prefixes
                    .iter()
                    .map(|p| self.stats.scope::<XdsStat>(p))
                    .collect()
            }
            Kind::Endpoint => Vec::new(),
            Kind::Secret => update
                .resources
                .iter()
                .map(|i| {
                    let name = if i.name.is_empty() {
                        secret_name(&i.resource)
                    } else {
                        i.name.clone()
                    };
                    self.stats.scope::<XdsStat>(&format!("sds.{name}."))
                })
                .collect(),
        }
    }

    /// Applies one response: convert, assemble, bind, publish. `Err` is the NACK text.
    pub fn apply(&mut self, update: &Update) -> Result<u64, String> {
        let started = Instant::now();
        let scopes = self.scopes(update);
        let eds: Vec<Arc<Scope>> = if update.kind == Kind::Endpoint {
            let names: BTreeSet<String> = update
                .resources
                .iter()
                .map(|i| {
                    if i.name.is_empty() {
                        cla_name(&i.resource)
                    } else {
                        i.name.clone()
                    }
                })
                .collect();
            names
                .iter()
                .map(|n| self.stats.scope::<ClusterStat>(&format!("cluster.{n}.")))
                .collect()
        } else {
            Vec::new()
        };
        let bump = |x: XdsStat, c: ClusterStat| {
            for s in &scopes {
                s.core(self.core).inc(x as usize);
            }
            for s in &eds {
                s.core(self.core).inc(c as usize);
            }
        };
        bump(XdsStat::UpdateAttempt, ClusterStat::UpdateAttempt);
        // Applied to a copy (cheap: shared maps) so that a bind failure also changes nothing.
        let mut staged = self.resources.clone();
        let mut phases = [Duration::ZERO; 3];
        let result = staged
            .apply(update, &self.statics, &self.stats)
            .and_then(|ignored| {
                for path in ignored {
                    tracing::info!("ignoring tuning knob {path} (see README: ignored fields)");
                }
                phases[0] = started.elapsed();
                staged.prune(&self.statics);
                let current = self.publisher.shared.load_full();
                let snap = staged.assemble(&self.statics, &current);
                phases[1] = started.elapsed();
                let v = self.publisher.publish(snap, started);
                phases[2] = started.elapsed();
                v
            });
        match result {
            Ok(v) => {
                self.resources = staged;
                bump(XdsStat::UpdateSuccess, ClusterStat::UpdateSuccess);
                if update.resources.is_empty() && update.removed.is_empty() {
                    bump(XdsStat::UpdateEmpty, ClusterStat::UpdateEmpty);
                }
                self.seen.insert(update.kind);
                self.changed.send_modify(|v| *v += 1);
                if self.seen.contains(&Kind::Cluster) && self.seen.contains(&Kind::Listener) {
                    self.initialized.store(true, Ordering::Release);
                }
                tracing::info!(
                    kind = update.kind.short(),
                    version = %update.version_info,
                    resources = update.resources.len(),
                    removed = update.removed.len(),
                    snapshot = v,
                    converted_us = phases[0].as_micros() as u64,
                    assembled_us = phases[1].as_micros() as u64,
                    published_us = phases[2].as_micros() as u64,
                    "xDS update applied"
                );
                Ok(v)
            }
            Err(e) => {
                bump(XdsStat::UpdateRejected, ClusterStat::UpdateRejected);
                tracing::warn!(kind = update.kind.short(), version = %update.version_info, "xDS update rejected: {e}");
                Err(e)
            }
        }
    }

    /// SDS files changed: the static resources that read them are converted again from
    /// the bootstrap, the dynamic ones from what was received, and the result is published.
    /// If any of it fails (a half-written file, a key that does not match), nothing
    /// changes and the old certificates keep serving until the next change.
    pub fn reload_sds_files(&mut self, changed: &BTreeSet<std::path::PathBuf>) {
        let started = Instant::now();
        let mut statics = None;
        if self.statics.sds_files.iter().any(|f| changed.contains(f)) {
            let read = Some(crate::config::read_sds_file as crate::model::convert::SdsFileReader);
            match crate::model::convert::bootstrap_snapshot_with(
                &self.statics.bootstrap,
                &self.stats,
                0,
                read,
            ) {
                Ok((snap, _, files)) => {
                    let mut s = Static::from_snapshot(&snap);
                    s.sds_files = files;
                    statics = Some(s);
                }
                Err(e) => {
                    tracing::warn!(
                        "SDS file change rejected, the old certificates keep serving: {e}"
                    );
                    return;
                }
            }
        }
        let mut staged = self.resources.clone();
        let reread = |(_, s): &(Arc<str>, crate::model::convert::SdsSource)| matches!(s, crate::model::convert::SdsSource::File(f) if changed.contains(std::path::Path::new(&**f)));
        if let Err(e) = staged.reconvert(reread, &self.stats) {
            tracing::warn!("SDS file change rejected, the old certificates keep serving: {e}");
            return;
        }
        let current = self.publisher.shared.load_full();
        let snap = staged.assemble(statics.as_ref().unwrap_or(&self.statics), &current);
        match self.publisher.publish(snap, started) {
            Ok(v) => {
                tracing::info!(files = ?changed, snapshot = v, "SDS files reloaded");
                if let Some(s) = statics {
                    self.statics = s;
                }
                self.resources = staged;
                self.changed.send_modify(|v| *v += 1);
            }
            Err(e) => tracing::warn!("publishing after an SDS file change failed: {e}"),
        }
    }

    /// Re-assembles after a warming deadline passed (initial fetch timeout).
    fn on_deadline(&mut self) {
        let current = self.publisher.shared.load_full();
        let snap = self.resources.assemble(&self.statics, &current);
        let s = self.stats.scope::<XdsStat>("listener_manager.lds.");
        s.core(self.core).inc(XdsStat::InitFetchTimeout as usize);
        if let Err(e) = self.publisher.publish(snap, Instant::now()) {
            tracing::warn!("publishing after an initial fetch timeout failed: {e}");
        }
    }
}

fn route_name(any: &prost_types::Any) -> String {
    use prost::Message;
    crate::proto::envoy::config::route::v3::RouteConfiguration::decode(any.value.as_slice())
        .map(|r| r.name)
        .unwrap_or_default()
}

fn secret_name(any: &prost_types::Any) -> String {
    use prost::Message;
    crate::proto::envoy::extensions::transport_sockets::tls::v3::Secret::decode(
        any.value.as_slice(),
    )
    .map(|s| s.name)
    .unwrap_or_default()
}

fn cla_name(any: &prost_types::Any) -> String {
    use prost::Message;
    crate::proto::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(any.value.as_slice())
        .map(|r| r.cluster_name)
        .unwrap_or_default()
}

/// Where the ADS server is.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

/// The ADS server's address, from the static cluster the bootstrap names.
pub fn target(cfg: &AdsConfig, statics: &Static) -> Result<(Target, Duration), String> {
    target_of(
        &cfg.cluster,
        statics,
        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
    )
}

/// The address of a control-plane server (ADS, SDS) behind static cluster `cluster`.
pub fn target_of(
    cluster: &str,
    statics: &Static,
    path: &str,
) -> Result<(Target, Duration), String> {
    let Some(c) = statics.clusters.iter().find(|c| *c.name == *cluster) else {
        return Err(format!("{path}: '{cluster}' is not a static cluster"));
    };
    if let Some(p) = c.unix_endpoints.first() {
        return Ok((Target::Unix(p.clone()), c.connect_timeout));
    }
    if let Some(e) = c.endpoints.first() {
        return Ok((Target::Tcp(e.address), c.connect_timeout));
    }
    Err(format!(
        "{path}: cluster '{cluster}' has no endpoint to reach the control plane"
    ))
}

async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::Endpoint;
    match target {
        Target::Tcp(addr) => {
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .connect()
                .await
        }
        Target::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await
        }
    }
}

/// Jittered exponential backoff: 500 ms doubling to 30 s, each wait drawn from
/// [base/2, base] (Envoy's default retry policy for xDS streams is 500 ms to 30 s).
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff { next: Self::BASE }
    }

    pub fn reset(&mut self) {
        self.next = Self::BASE;
    }

    pub fn wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let half = base / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the ADS client for ever (the process's drain ends it), and the SDS streams the
/// resources it receives ask for. Needs a `LocalSet`: the streams share `control` on
/// this thread.
pub async fn run(cfg: AdsConfig, node: Node, control: Rc<RefCell<Control>>) {
    tokio::task::spawn_local(super::sds::supervise(node.clone(), control.clone()));
    let control = &*control;
    let target = target(&cfg, &control.borrow().statics);
    let (target, timeout) = match target {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("ADS disabled: {e}");
            return;
        }
    };
    let mut backoff = Backoff::new();
    loop {
        let got_response = session("ADS", &target, timeout, control, |channel| async {
            if cfg.delta {
                delta_stream(&cfg, &node, control, channel).await
            } else {
                sotw_stream(&cfg, &node, control, channel).await
            }
        })
        .await;
        if got_response {
            backoff.reset();
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// One connection to an xDS server (`what`: ADS or SDS) and the stream run over it,
/// counted in the control-plane stats. True if any response came (the backoff resets).
pub(super) async fn session<F, Fut>(
    what: &str,
    target: &Target,
    timeout: Duration,
    control: &RefCell<Control>,
    stream: F,
) -> bool
where
    F: FnOnce(tonic::transport::Channel) -> Fut,
    Fut: std::future::Future<Output = StreamEnd>,
{
    match connect(target, timeout).await {
        Ok(channel) => {
            control.borrow().count(ControlPlaneStat::StreamsOpened);
            let r = stream(channel).await;
            set_connected(&control.borrow(), false);
            control.borrow().count(ControlPlaneStat::StreamsClosed);
            match r {
                Ok(got) => {
                    tracing::warn!(?target, "{what} stream closed by the server");
                    got
                }
                Err((got, status)) => {
                    tracing::warn!(?target, "{what} stream failed: {status}");
                    got
                }
            }
        }
        Err(e) => {
            tracing::warn!(?target, "cannot reach the {what} server: {e}");
            false
        }
    }
}

impl Control {
    /// Counts a stream event (ADS or SDS) in the control-plane stats.
    pub(super) fn count(&self, stat: ControlPlaneStat) {
        self.cp.core(self.core).inc(stat as usize);
    }
}

pub(super) fn set_connected(control: &Control, up: bool) {
    let c = control.cp.core(control.core);
    let now = control
        .cp
        .on_core(control.core, ControlPlaneStat::ConnectedState as usize);
    match (now, up) {
        (0, true) => c.inc(ControlPlaneStat::ConnectedState as usize),
        (1, false) => c.dec(ControlPlaneStat::ConnectedState as usize),
        _ => {}
    }
}

pub(super) type StreamEnd = Result<bool, (bool, tonic::Status)>;

pub(super) fn with_metadata<T>(cfg: &AdsConfig, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for (k, v) in &cfg.metadata {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse(),
        ) {
            req.metadata_mut().insert(k, v);
        }
    }
    req
}

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

/// Waits for the next warming deadline, or for ever.
async fn deadline(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The next response of the stream; warming deadlines that pass meanwhile re-assemble.
async fn next_response<T>(
    inbound: &mut tonic::Streaming<T>,
    control: &RefCell<Control>,
) -> Result<Option<T>, tonic::Status> {
    loop {
        let at = control.borrow().resources.next_deadline();
        tokio::select! {
            m = inbound.message() => return m,
            _ = deadline(at) => control.borrow_mut().on_deadline(),
        }
    }
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

async fn sotw_stream(
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
    let mut client = Client::new(channel).max_decoding_message_size(usize::MAX);
    let mut inbound = match client
        .stream_aggregated_resources(with_metadata(cfg, UnboundedReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err((false, s)),
    };
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

async fn delta_stream(
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
    let mut client = Client::new(channel).max_decoding_message_size(usize::MAX);
    let mut inbound = match client
        .delta_aggregated_resources(with_metadata(cfg, UnboundedReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err((false, s)),
    };
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
                        resource,
                    })
                })
                .collect(),
            removed: resp.removed_resources,
            full_state: false,
        };
        let error = control.borrow_mut().apply(&update).err();
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
