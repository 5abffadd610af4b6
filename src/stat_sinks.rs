//! The stat sinks' flush loop, on the control thread (`stats_sinks`, every
//! `stats_flush_interval`): statsd datagrams, and the metrics services' streams —
//! `MetricsService.StreamMetrics`, one client stream kept open to the sink's cluster (TLS
//! as the cluster says, its SDS certificates included), one message per flush (or one per
//! `batch_size` families), the node in each stream's first message only. A stream that
//! fails is opened again at the next flush; that flush's metrics are dropped, as Envoy
//! drops them. Nothing here runs on a core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::model::{SharedSnapshot, Snapshot};
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::envoy::service::metrics::v3 as pb;
use crate::proto::io::prometheus::client as prom;
use crate::stats::sink::metrics_service::Families;
use crate::stats::sink::{Flusher, SinkConfig};
use crate::stats::Store;

/// Flushes the sinks every interval, for as long as the process runs (on the control
/// thread's runtime). `node` identifies the proxy to metrics services; `snapshots` finds
/// their clusters.
pub async fn run(store: Arc<Store>, config: SinkConfig, node: Node, snapshots: SharedSnapshot) {
    let mut sockets = Vec::new();
    for s in &config.statsd {
        let local: std::net::SocketAddr = if s.addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        match tokio::net::UdpSocket::bind(local).await {
            Ok(sock) => sockets.push((sock, s)),
            Err(e) => tracing::error!("statsd sink {}: {e}", s.addr),
        }
    }
    let mut flusher = Flusher::default();
    let mut services: Vec<Stream> = config
        .metrics
        .iter()
        .map(|m| Stream {
            families: Families::new(m.clone()),
            node: node.clone(),
            stream: None,
        })
        .collect();
    let mut every = tokio::time::interval(config.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if !services.is_empty() {
            let snapshot = snapshots.load_full();
            for s in &mut services {
                s.flush(&store, &snapshot).await;
            }
        }
        if sockets.is_empty() {
            continue;
        }
        let lines = flusher.lines(&store);
        for (sock, s) in &sockets {
            for line in &lines {
                let datagram = format!("{}.{line}", s.prefix);
                // A full socket buffer or an unreachable collector drops the metric, as
                // UDP does; nothing waits for it.
                let _ = sock.try_send_to(datagram.as_bytes(), s.addr);
            }
        }
    }
}

/// A metrics service sink: what its last flush saw, and its stream.
struct Stream {
    families: Families,
    node: Node,
    stream: Option<(
        tokio::sync::mpsc::Sender<pb::StreamMetricsMessage>,
        Arc<AtomicBool>,
    )>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Stream {
    /// One flush: the families, sent on the stream (opened first when there is none).
    pub async fn flush(&mut self, store: &Store, snapshot: &Snapshot) {
        let families = self.families.build(store);
        if self
            .stream
            .as_ref()
            .is_some_and(|(_, ended)| ended.load(Ordering::Acquire))
        {
            self.stream = None;
        }
        let mut first = false;
        if self.stream.is_none() {
            match self.open(snapshot).await {
                Ok(s) => {
                    self.stream = Some(s);
                    first = true;
                }
                Err(e) => {
                    tracing::debug!(cluster = %self.families.cfg.cluster, "metrics service: {e}");
                    return;
                }
            }
        }
        let Some((tx, _)) = &self.stream else {
            return;
        };
        let size = if self.families.cfg.batch == 0 {
            families.len().max(1)
        } else {
            self.families.cfg.batch
        };
        let mut chunks: Vec<Vec<prom::MetricFamily>> =
            families.chunks(size).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for chunk in chunks {
            let identifier = first.then(|| pb::stream_metrics_message::Identifier {
                node: Some(self.node.clone()),
            });
            first = false;
            let msg = pb::StreamMetricsMessage {
                identifier,
                envoy_metrics: chunk,
            };
            if tx.try_send(msg).is_err() {
                self.stream = None;
                return;
            }
        }
    }

    /// Opens the stream: a connection to the cluster's first endpoint, over TLS when the
    /// cluster's transport socket says so.
    async fn open(
        &self,
        snapshot: &Snapshot,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<pb::StreamMetricsMessage>,
            Arc<AtomicBool>,
        ),
        String,
    > {
        let cluster = snapshot
            .cluster(&self.families.cfg.cluster)
            .ok_or("its cluster is not ready (its secrets may not have arrived)")?;
        let ep = cluster
            .endpoints
            .first()
            .ok_or("its cluster has no endpoint")?;
        let addr = ep.address;
        let tls = cluster.tls_for(ep).cloned();
        let endpoint = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.families.cfg.authority
        ))
        .map_err(|e| e.to_string())?
        .connect_timeout(cluster.connect_timeout);
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let _ = tcp.set_nodelay(true);
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some(t) => {
                        let name = t.sni.clone().unwrap_or_else(|| {
                            rustls::pki_types::ServerName::IpAddress(addr.ip().into())
                        });
                        let c = tokio_rustls::TlsConnector::from(t.h2.clone());
                        Box::new(c.connect(name, tcp).await?)
                    }
                };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
            }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        for (k, v) in &self.families.cfg.metadata {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                v.parse(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        let ended = Arc::new(AtomicBool::new(false));
        let done = ended.clone();
        let mut client = pb::metrics_service_client::MetricsServiceClient::new(channel);
        tokio::spawn(async move {
            if let Err(e) = client.stream_metrics(req).await {
                tracing::debug!("metrics service stream ended: {e}");
            }
            done.store(true, Ordering::Release);
        });
        Ok((tx, ended))
    }
}
