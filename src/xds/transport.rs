//! Reaching an xDS server (ADS or SDS): where it is (a static cluster's TCP or Unix
//! socket endpoint), the gRPC channel, one counted session per connection, jittered
//! backoff between them, and the pieces every stream shares.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::model::convert::AdsConfig;
use crate::stats::ControlPlaneStat;

use super::control::{set_connected, Control};
use super::state::Static;

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

/// The xDS stream's HTTP/2 flow-control windows. A big mesh's route configuration is
/// megabytes in one message (5.8 MB at 10,000 services); with hyper's 2 MiB stream window
/// it arrived in several window-update round trips. Envoy's gRPC client opens 256 MiB
/// windows; this is flow control only, nothing is allocated for it.
const WINDOW: u32 = 16 << 20;

pub(super) async fn connect(
    target: &Target,
    timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::Endpoint;
    match target {
        Target::Tcp(addr) => {
            Endpoint::from_shared(format!("http://{addr}"))?
                .initial_stream_window_size(WINDOW)
                .initial_connection_window_size(WINDOW)
                .connect_timeout(timeout)
                .tcp_nodelay(true)
                .connect()
                .await
        }
        Target::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .initial_stream_window_size(WINDOW)
                .initial_connection_window_size(WINDOW)
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

pub(super) type StreamEnd = Result<bool, (bool, tonic::Status)>;

/// Waits for the next warming deadline, or for ever.
async fn deadline(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The next response of the stream; warming deadlines that pass meanwhile re-assemble.
pub(super) async fn next_response<T: prost::Message + Default>(
    inbound: &mut super::grpc::Inbound<T>,
    control: &RefCell<Control>,
) -> Result<Option<T>, tonic::Status> {
    loop {
        let at = control.borrow().next_deadline();
        tokio::select! {
            m = inbound.message() => return m,
            _ = deadline(at) => control.borrow_mut().on_deadline(),
        }
    }
}
