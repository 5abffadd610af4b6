//! The control thread's JWKS fetcher: `jwt_authn`'s `remote_jwks` are fetched here, over
//! HTTP/1.1 (TLS when the cluster has a transport socket for the endpoint), never on a
//! worker. See `jwt::remote` for the cache and the requests that wait on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::jwt::jwks::Jwks;
use crate::jwt::remote::RemoteJwks;
use crate::model::SharedSnapshot;

/// Starts the fetcher on the control thread's runtime (once).
pub fn serve(snapshot: SharedSnapshot, control: usize) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Arc<RemoteJwks>>();
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            let snapshot = snapshot.clone();
            tokio::spawn(async move {
                // Whatever ends this task, the waiting requests are released.
                let mut guard = Unfinished(Some(r.clone()), control);
                let jwks = fetch_with_retries(&r, &snapshot).await;
                guard.0 = None;
                let ok = jwks.is_some();
                r.finish(jwks, control);
                if let Some(a) = r.async_fetch {
                    // Again before the keys would expire, or soon after a failure.
                    let wait = if ok {
                        r.cache_duration
                            .saturating_sub(Duration::from_secs(5))
                            .max(Duration::from_secs(1))
                    } else {
                        a.failed_refetch
                    };
                    let weak = Arc::downgrade(&r);
                    drop(r);
                    tokio::time::sleep(wait).await;
                    if let Some(r) = weak.upgrade() {
                        r.request();
                    }
                }
            });
        }
    });
    crate::jwt::remote::register(tx);
}

/// Ends a fetch as failed if its task ends without finishing it (a panic).
struct Unfinished(Option<Arc<RemoteJwks>>, usize);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.finish(None, self.1);
        }
    }
}

async fn fetch_with_retries(r: &Arc<RemoteJwks>, snapshot: &SharedSnapshot) -> Option<Jwks> {
    let mut attempt = 0;
    loop {
        let result = tokio::time::timeout(r.timeout, fetch_once(r, snapshot))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match result {
            Ok(jwks) => return Some(jwks),
            Err(e) => {
                tracing::warn!(
                    "jwt_authn: fetching JWKS from {} (cluster {}) failed: {e}",
                    r.uri,
                    r.cluster
                );
                if attempt >= r.retries {
                    return None;
                }
                attempt += 1;
                // Jittered exponential back-off, as Envoy's JitteredExponentialBackOff.
                let (base, max) = r.backoff;
                let ceiling = base
                    .saturating_mul(1 << (attempt - 1).min(20))
                    .min(max)
                    .as_millis()
                    .max(1) as u64;
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..ceiling))).await;
            }
        }
    }
}

/// The largest key set accepted.
const MAX_BODY: usize = 1 << 20;

async fn fetch_once(r: &RemoteJwks, snapshot: &SharedSnapshot) -> Result<Jwks, String> {
    use http_body_util::BodyExt as _;
    let snap = snapshot.load_full();
    let cluster = snap
        .cluster(&r.cluster)
        .ok_or_else(|| format!("cluster {} is not configured", r.cluster))?
        .clone();
    let healthy: Vec<_> = cluster.endpoints.iter().filter(|e| e.healthy).collect();
    if healthy.is_empty() {
        return Err(format!("cluster {} has no healthy endpoint", r.cluster));
    }
    let ep = healthy[fastrand::usize(..healthy.len())];
    let addr: SocketAddr = ep.address;
    let tcp = tokio::time::timeout(
        cluster.connect_timeout,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("connecting to {addr} timed out"))?
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let req = http::Request::get(&*r.path)
        .header(http::header::HOST, &*r.authority)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = match cluster.tls_for(ep) {
        Some(tls) => {
            let name = tls.server_name(&ep.hostname, addr.ip());
            let stream = tokio_rustls::TlsConnector::from(tls.h1.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS to {addr}: {e}"))?;
            send(hyper_util::rt::TokioIo::new(stream), req).await?
        }
        None => send(hyper_util::rt::TokioIo::new(tcp), req).await?,
    };
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    if body.is_empty() {
        return Err("empty body".into());
    }
    Jwks::parse(&body).map_err(|s| s.text().to_string())
}

async fn send<T>(
    io: hyper_util::rt::TokioIo<T>,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
