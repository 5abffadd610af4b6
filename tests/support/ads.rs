//! A scripted ADS server (tonic) for the xDS tests: the test pushes responses and reads
//! the requests Ringside sends, for both state-of-the-world and delta streams, over TCP
//! or a Unix socket.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_core::Stream;
use prost::Message;
use ringside::proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ringside::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use ringside::proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// What a client sent, either protocol.
#[derive(Debug, Clone)]
pub enum Req {
    Sotw(DiscoveryRequest),
    Delta(DeltaDiscoveryRequest),
}

type Out<T> = Arc<Mutex<Option<UnboundedSender<Result<T, Status>>>>>;

#[derive(Clone)]
struct Svc {
    requests: UnboundedSender<Req>,
    sotw: Out<DiscoveryResponse>,
    delta: Out<DeltaDiscoveryResponse>,
    streams: Arc<AtomicU64>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(self.open(req, &self.sotw, Req::Sotw))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(self.open(req, &self.delta, Req::Delta))
    }
}

/// pilot-agent's SDS service: its streams are scripted like the ADS ones (a server serves
/// both, so one test server can stand for istiod and another for pilot-agent's SDS).
#[tonic::async_trait]
impl SecretDiscoveryService for Svc {
    type StreamSecretsStream = BoxStream<DiscoveryResponse>;
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_secrets(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Ok(self.open(req, &self.sotw, Req::Sotw))
    }

    async fn delta_secrets(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Ok(self.open(req, &self.delta, Req::Delta))
    }

    async fn fetch_secrets(
        &self,
        _req: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("the test SDS server streams only"))
    }
}

impl Svc {
    /// Opens a stream of either protocol: its requests go to the test as `wrap(r)`, its
    /// responses come from the sender left in `out`.
    fn open<I: Send + 'static, O: Send + 'static>(
        &self,
        req: Request<Streaming<I>>,
        out: &Out<O>,
        wrap: fn(I) -> Req,
    ) -> Response<BoxStream<O>> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        let mut inbound = req.into_inner();
        let (tx, rx) = unbounded_channel();
        *out.lock().unwrap() = Some(tx);
        let requests = self.requests.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let _ = requests.send(wrap(r));
            }
        });
        Response::new(Box::pin(UnboundedReceiverStream::new(rx)))
    }
}

/// Where the server listens.
pub enum Addr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// A running ADS server.
pub struct AdsServer {
    pub addr: Addr,
    requests: UnboundedReceiver<Req>,
    pending: std::collections::VecDeque<Req>,
    svc: Svc,
    nonce: u64,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl AdsServer {
    /// Listens on 127.0.0.1 (`port` 0: any).
    pub async fn tcp(port: u16) -> AdsServer {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = l.local_addr().unwrap();
        Self::serve(
            Addr::Tcp(addr),
            tokio_stream::wrappers::TcpListenerStream::new(l),
        )
    }

    /// Listens on a Unix socket, as pilot-agent does.
    pub async fn unix(path: PathBuf) -> AdsServer {
        let _ = std::fs::remove_file(&path);
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        Self::serve(
            Addr::Unix(path),
            tokio_stream::wrappers::UnixListenerStream::new(l),
        )
    }

    fn serve<S, IO>(addr: Addr, incoming: S) -> AdsServer
    where
        S: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let (req_tx, requests) = unbounded_channel();
        let svc = Svc {
            requests: req_tx,
            sotw: Arc::default(),
            delta: Arc::default(),
            streams: Arc::default(),
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = AggregatedDiscoveryServiceServer::new(svc.clone());
        let sds = SecretDiscoveryServiceServer::new(svc.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(server)
                .add_service(sds)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        AdsServer {
            addr,
            requests,
            pending: Default::default(),
            svc,
            nonce: 0,
            shutdown: Some(stop_tx),
            task,
        }
    }

    /// Streams opened so far.
    pub fn streams(&self) -> u64 {
        self.svc.streams.load(Ordering::SeqCst)
    }

    /// Stops the server and closes its streams (a control-plane restart).
    pub async fn stop(mut self) {
        *self.svc.sotw.lock().unwrap() = None;
        *self.svc.delta.lock().unwrap() = None;
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }

    /// The next request of `type_url` (those of other types stay queued), within 10 s.
    pub async fn next(&mut self, type_url: &str) -> Req {
        let of = |r: &Req| match r {
            Req::Sotw(r) => r.type_url.clone(),
            Req::Delta(r) => r.type_url.clone(),
        };
        if let Some(i) = self.pending.iter().position(|r| of(r) == type_url) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = tokio::time::timeout_at(deadline, self.requests.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no {type_url} request within 10 s; queued: {:?}",
                        self.pending
                    )
                })
                .expect("server running");
            if of(&r) == type_url {
                return r;
            }
            self.pending.push_back(r);
        }
    }

    /// True if no request of `type_url` arrives within `wait`.
    pub async fn quiet(&mut self, type_url: &str, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.next(type_url))
            .await
            .is_err()
    }

    /// The next state-of-the-world request of a type.
    pub async fn next_sotw(&mut self, type_url: &str) -> DiscoveryRequest {
        match self.next(type_url).await {
            Req::Sotw(r) => r,
            Req::Delta(r) => panic!("expected a state-of-the-world request, got {r:?}"),
        }
    }

    /// The next delta request of a type.
    pub async fn next_delta(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        match self.next(type_url).await {
            Req::Delta(r) => r,
            Req::Sotw(r) => panic!("expected a delta request, got {r:?}"),
        }
    }

    /// Sends a state-of-the-world response; returns its nonce.
    pub fn push(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<prost_types::Any>,
    ) -> String {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        let tx = self
            .svc
            .sotw
            .lock()
            .unwrap()
            .clone()
            .expect("a SotW stream");
        tx.send(Ok(DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: type_url.into(),
            nonce: nonce.clone(),
        }))
        .unwrap();
        nonce
    }

    /// Sends a delta response (resources are (name, version, resource)); returns its nonce.
    pub fn push_delta(
        &mut self,
        type_url: &str,
        resources: Vec<(&str, &str, prost_types::Any)>,
        removed: &[&str],
    ) -> String {
        self.nonce += 1;
        let nonce = format!("d{}", self.nonce);
        let tx = self
            .svc
            .delta
            .lock()
            .unwrap()
            .clone()
            .expect("a delta stream");
        tx.send(Ok(DeltaDiscoveryResponse {
            system_version_info: format!("sys{}", self.nonce),
            resources: resources
                .into_iter()
                .map(|(name, version, r)| Resource {
                    name: name.into(),
                    aliases: vec![],
                    version: version.into(),
                    resource: Some(r),
                })
                .collect(),
            type_url: type_url.into(),
            removed_resources: removed.iter().map(|s| s.to_string()).collect(),
            nonce: nonce.clone(),
        }))
        .unwrap();
        nonce
    }
}

/// Encodes a resource given as YAML (proto3 JSON mapping) into an `Any` of `message`.
pub fn any(message: &str, yaml: &str) -> prost_types::Any {
    let desc = ringside::proto::pool()
        .get_message_by_name(message)
        .unwrap_or_else(|| panic!("{message} in proto/"));
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("valid YAML");
    let msg = prost_reflect::DynamicMessage::deserialize(desc, value).expect("valid resource");
    prost_types::Any {
        type_url: format!("type.googleapis.com/{message}"),
        value: msg.encode_to_vec(),
    }
}

pub fn cluster_any(yaml: &str) -> prost_types::Any {
    any("envoy.config.cluster.v3.Cluster", yaml)
}

pub fn listener_any(yaml: &str) -> prost_types::Any {
    any("envoy.config.listener.v3.Listener", yaml)
}

pub fn route_any(yaml: &str) -> prost_types::Any {
    any("envoy.config.route.v3.RouteConfiguration", yaml)
}

pub fn cla_any(yaml: &str) -> prost_types::Any {
    any("envoy.config.endpoint.v3.ClusterLoadAssignment", yaml)
}

/// An EDS cluster served over ADS.
pub fn eds_cluster(name: &str) -> prost_types::Any {
    cluster_any(&format!(
        "{{name: '{name}', type: EDS, connect_timeout: 1s, eds_cluster_config: {{eds_config: {{ads: {{}}, resource_api_version: V3}}}}}}"
    ))
}

/// A ClusterLoadAssignment for `name` with these endpoints.
pub fn cla(name: &str, addrs: &[std::net::SocketAddr]) -> prost_types::Any {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    cla_any(&format!(
        "{{cluster_name: '{name}', endpoints: [{{lb_endpoints: [{}]}}]}}",
        eps.join(", ")
    ))
}

/// A listener on 127.0.0.1:`port` whose connection manager takes routes `route` from RDS.
pub fn rds_listener(name: &str, port: u16, route: &str) -> prost_types::Any {
    listener_any(&format!(
        r#"
name: '{name}'
address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: '{name}'
      rds: {{route_config_name: '{route}', config_source: {{ads: {{}}, resource_api_version: V3}}}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    ))
}

/// A route configuration sending everything to `cluster`.
pub fn route_to(name: &str, cluster: &str) -> prost_types::Any {
    route_any(&format!(
        "{{name: '{name}', virtual_hosts: [{{name: all, domains: ['*'], routes: [{{match: {{prefix: /}}, route: {{cluster: '{cluster}'}}}}]}}]}}"
    ))
}

/// A bootstrap whose ADS server is `addr`.
pub fn bootstrap(addr: &Addr, delta: bool) -> String {
    let endpoint = match addr {
        Addr::Tcp(a) => format!(
            "{{socket_address: {{address: '{}', port_value: {}}}}}",
            a.ip(),
            a.port()
        ),
        Addr::Unix(p) => format!("{{pipe: {{path: '{}'}}}}", p.display()),
    };
    let api = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node: {{id: 'sidecar~10.1.2.3~app-7d9f.default~default.svc.cluster.local', cluster: app.default, metadata: {{ISTIO_VERSION: '1.28.0'}}, locality: {{region: r1, zone: z1}}}}
dynamic_resources:
  lds_config: {{ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3}}
  cds_config: {{ads: {{}}, initial_fetch_timeout: 0s, resource_api_version: V3}}
  ads_config:
    api_type: {api}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {endpoint}}}}}]}}]
"#
    )
}
