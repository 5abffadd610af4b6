//! TLS handshakes on the core that owns the connection: rustls through tokio-rustls over
//! monoio's poll-io bridge, bounded by the chain's handshake timeout, each failure counted
//! as Envoy counts it (`listener.<address>.ssl.*`). Nothing falls back to plaintext: a
//! failed handshake closes the connection.

use std::io;
use std::sync::Arc;

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::net::TcpStream;
use rustls::{CertificateError, Error as TlsError};

use crate::io::{MaybeTls, ReadAhead, Rewind};
use crate::model::tls::{DownstreamTls, UpstreamTls};
use crate::model::Endpoint;
use crate::stats::{ClusterStat, CoreCells, ListenerStat};

/// A downstream TLS stream, after the handshake.
pub type ServerStream = tokio_rustls::server::TlsStream<ReadAhead<Rewind<TcpStreamPoll>>>;

/// A downstream connection, plaintext or TLS, for the HTTP/1.1 path and `tcp_proxy`.
pub type DownIo = MaybeTls<TcpStream, ServerStream>;

/// An upstream TLS stream, after the handshake.
pub type ClientStream = tokio_rustls::client::TlsStream<ReadAhead<TcpStreamPoll>>;

/// An upstream connection, plaintext or TLS, for the HTTP/1.1 pool and `tcp_proxy`.
pub type UpIo = MaybeTls<TcpStream, ClientStream>;

/// Why a handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not done within `transport_socket_connect_timeout`.
    Timeout,
    /// A client certificate was required and none was sent.
    NoCertificate,
    /// The client's chain did not verify (unknown CA, expired, bad signature).
    Untrusted,
    /// The chain verified but no subject alternative name matched.
    SanMismatch,
    /// `require_sni` and the client named no server.
    NoSni,
    /// Anything else: not TLS, no shared version or cipher, the peer went away.
    Failed,
}

impl Refused {
    /// The listener stat Envoy counts it in.
    pub fn stat(self) -> ListenerStat {
        match self {
            Refused::Timeout => ListenerStat::DownstreamCxTransportSocketConnectTimeout,
            Refused::NoCertificate => ListenerStat::SslFailVerifyNoCert,
            Refused::Untrusted => ListenerStat::SslFailVerifyError,
            Refused::SanMismatch => ListenerStat::SslFailVerifySan,
            Refused::NoSni | Refused::Failed => ListenerStat::SslConnectionError,
        }
    }

    /// The cluster stat Envoy counts it in (an upstream handshake).
    pub fn cluster_stat(self) -> ClusterStat {
        match self {
            Refused::Timeout => ClusterStat::UpstreamCxConnectTimeout,
            Refused::NoCertificate => ClusterStat::SslFailVerifyNoCert,
            Refused::Untrusted => ClusterStat::SslFailVerifyError,
            Refused::SanMismatch => ClusterStat::SslFailVerifySan,
            Refused::NoSni | Refused::Failed => ClusterStat::SslConnectionError,
        }
    }

    fn of(e: &io::Error) -> Refused {
        match e.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
            Some(TlsError::NoCertificatesPresented) => Refused::NoCertificate,
            Some(TlsError::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )) => Refused::SanMismatch,
            Some(TlsError::InvalidCertificate(_)) => Refused::Untrusted,
            _ => Refused::Failed,
        }
    }
}

/// One core's copies of the listeners' rustls configs, each with a session cache of its
/// own, so a handshake touches no cache another core uses (rustls's cache locks inside).
/// Session tickets stay shared: the ticketer's keys must open a ticket whichever core the
/// client's next connection lands on (a read lock, never held across I/O). Entries whose
/// configuration left the snapshot are dropped on the next miss.
#[derive(Default)]
pub struct CoreConfigs(std::cell::RefCell<rustc_hash::FxHashMap<usize, CoreConfig>>);

/// A listener's TLS settings (held, so its address is not reused while the entry lives)
/// and this core's rustls configs for them.
type CoreConfig = (Arc<DownstreamTls>, Configs);

/// This core's rustls configs for one listener's TLS settings: as configured, and the same
/// without ALPN, for clients that offer no protocol the listener lists.
#[derive(Clone)]
pub struct Configs {
    pub main: Arc<rustls::ServerConfig>,
    pub no_alpn: Arc<rustls::ServerConfig>,
}

impl Configs {
    /// The config for a ClientHello offering `offered`: when the client offers ALPN and
    /// none of it is ours, the handshake finishes without ALPN, as Envoy's does (rustls
    /// would refuse it with `no_application_protocol`). Istio's client sidecars offer
    /// `istio-peer-exchange`, `istio-h2`, … to servers that may list none of them.
    pub fn for_hello<'a>(
        &self,
        offered: Option<impl Iterator<Item = &'a [u8]>>,
    ) -> Arc<rustls::ServerConfig> {
        let ours = &self.main.alpn_protocols;
        match offered {
            Some(mut offered) if !ours.is_empty() => {
                if offered.any(|p| ours.iter().any(|o| o.as_slice() == p)) {
                    self.main.clone()
                } else {
                    self.no_alpn.clone()
                }
            }
            _ => self.main.clone(),
        }
    }
}

impl CoreConfigs {
    /// This core's configs for `tls`.
    pub fn get(&self, tls: &Arc<DownstreamTls>) -> Configs {
        let key = Arc::as_ptr(tls) as usize;
        let mut map = self.0.borrow_mut();
        if let Some((_, c)) = map.get(&key) {
            return c.clone();
        }
        map.retain(|_, (t, _)| Arc::strong_count(t) > 1);
        let mut config = (*tls.config).clone();
        if tls.session_cache > 0 {
            config.session_storage =
                rustls::server::ServerSessionMemoryCache::new(tls.session_cache);
        }
        // The twin shares the session cache and ticketer (both behind `Arc`).
        let mut no_alpn = config.clone();
        no_alpn.alpn_protocols.clear();
        let configs = Configs {
            main: Arc::new(config),
            no_alpn: Arc::new(no_alpn),
        };
        map.insert(key, (tls.clone(), configs.clone()));
        configs
    }
}

/// Runs the server handshake on `stream` with this core's copy of the config, replaying
/// `prefix` (bytes the TLS inspector read) first, and counts the outcome in `stats`.
pub async fn accept(
    tls: &Arc<DownstreamTls>,
    core: &CoreConfigs,
    stream: TcpStream,
    prefix: Vec<u8>,
    stats: &CoreCells,
) -> Result<ServerStream, Refused> {
    let result = handshake(tls, core.get(tls), stream, prefix).await;
    match &result {
        Ok(s) => {
            let conn = s.get_ref().1;
            stats.inc(ListenerStat::SslHandshake as usize);
            if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.inc(ListenerStat::SslSessionReused as usize);
            }
            if conn.peer_certificates().is_none() {
                stats.inc(ListenerStat::SslNoCertificate as usize);
            }
        }
        Err(r) => stats.inc(r.stat() as usize),
    }
    result
}

async fn handshake(
    tls: &DownstreamTls,
    configs: Configs,
    stream: TcpStream,
    prefix: Vec<u8>,
) -> Result<ServerStream, Refused> {
    let io = stream.try_into_poll_io().map_err(|_| Refused::Failed)?;
    // The ClientHello first, to pick the config by the ALPN it offers.
    let accept = async {
        let start = tokio_rustls::LazyConfigAcceptor::new(
            rustls::server::Acceptor::default(),
            ReadAhead::new(Rewind::new(prefix, io)),
        )
        .await?;
        let config = configs.for_hello(start.client_hello().alpn());
        start.into_stream(config).await
    };
    let s = match monoio::time::timeout(tls.handshake_timeout, accept).await {
        Err(_) => return Err(Refused::Timeout),
        Ok(Err(e)) => return Err(Refused::of(&e)),
        Ok(Ok(s)) => s,
    };
    if tls.require_sni && s.get_ref().1.server_name().is_none() {
        return Err(Refused::NoSni);
    }
    Ok(s)
}

/// What the client's certificate (mutual TLS) means for this connection's requests: its
/// `x-forwarded-client-cert` element, built once, when the connection manager writes one.
pub fn client_cert(
    s: &ServerStream,
    tls: &DownstreamTls,
    hcm: &crate::model::HttpConnectionManager,
) -> Option<std::rc::Rc<crate::peer_cert::ClientCert>> {
    let certs = s.get_ref().1.peer_certificates()?;
    let element = hcm.xfcc.0.writes_details().then(|| {
        let chain: Vec<&[u8]> = certs.iter().map(|c| c.as_ref()).collect();
        crate::peer_cert::element(&chain, &tls.local_uri_sans, hcm.xfcc.1).into()
    });
    Some(std::rc::Rc::new(crate::peer_cert::ClientCert { element }))
}

/// The SNI and identities RBAC and `istio_authn` read, after the handshake.
///
/// `None`: the client's certificate passed verification but its SANs or subject cannot be
/// read, so no policy could judge the identity; the connection is refused rather than
/// judged without it (Envoy reads them with BoringSSL).
pub fn authn(s: &ServerStream, tls: &DownstreamTls) -> Option<crate::rbac::Authn> {
    let conn = &s.get_ref().1;
    let peer = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => Some(crate::rbac::PeerIdentity::of(leaf.as_ref())?),
        None => None,
    };
    Some(crate::rbac::Authn {
        sni: conn.server_name().unwrap_or("").into(),
        peer,
        local_principal: tls
            .local_uri_sans
            .iter()
            .find(|u| u.starts_with("spiffe://"))
            .map(|u| u.as_str().into()),
    })
}

/// The protocol ALPN settled on, when it did.
pub fn alpn(s: &ServerStream) -> Option<&[u8]> {
    s.get_ref().1.alpn_protocol()
}

/// Wraps a finished handshake for the owned-buffer paths.
pub fn down_io(s: ServerStream) -> DownIo {
    MaybeTls::Tls(Box::new(crate::io::RentIo(s)))
}

/// Runs the client handshake to `ep` on `stream` within `timeout`, with ALPN for HTTP/2
/// when `h2`, and counts the outcome in the cluster's `stats`. The server's chain and
/// SPIFFE identity are checked by the context's verifier; a failure closes the
/// connection, never falls back to plaintext.
pub async fn connect(
    tls: &UpstreamTls,
    h2: bool,
    stream: TcpStream,
    ep: &Endpoint,
    timeout: std::time::Duration,
    stats: &CoreCells,
) -> Result<ClientStream, Refused> {
    let result = client_handshake(tls, h2, stream, ep, timeout).await;
    match &result {
        Ok(s) => {
            stats.inc(ClusterStat::SslHandshake as usize);
            if s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.inc(ClusterStat::SslSessionReused as usize);
            }
        }
        Err(r) => {
            tracing::debug!(endpoint = %ep.address, "upstream TLS handshake failed: {r:?}");
            stats.inc(r.cluster_stat() as usize);
        }
    }
    result
}

async fn client_handshake(
    tls: &UpstreamTls,
    h2: bool,
    stream: TcpStream,
    ep: &Endpoint,
    timeout: std::time::Duration,
) -> Result<ClientStream, Refused> {
    if let Some(name) = &tls.missing_secret {
        tracing::warn!(endpoint = %ep.address, "upstream TLS: SDS secret '{name}' has not arrived");
        return Err(Refused::Failed);
    }
    let io = stream.try_into_poll_io().map_err(|_| Refused::Failed)?;
    let config = if h2 { &tls.h2 } else { &tls.h1 };
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = tls.server_name(&ep.hostname, ep.address.ip());
    match monoio::time::timeout(timeout, connector.connect(name, ReadAhead::new(io))).await {
        Err(_) => Err(Refused::Timeout),
        Ok(Err(e)) => Err(Refused::of(&e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// The identities of an upstream TLS connection for `istio.stats`: the server
/// certificate's first URI SAN and this side's (from its configuration).
pub fn upstream_principals(
    conn: &rustls::ClientConnection,
    tls: &crate::model::tls::UpstreamTls,
) -> Option<Arc<crate::model::tls::UpstreamPrincipals>> {
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| crate::rbac::PeerIdentity::of(leaf.as_ref()))
        .and_then(|p| p.uri_sans.into_iter().next())
        .map(|s| crate::stats::labeled::clean(&s))
        .unwrap_or_default();
    let local = tls
        .local_uri_san
        .as_deref()
        .map(crate::stats::labeled::clean)
        .unwrap_or_default();
    (!peer.is_empty() || !local.is_empty())
        .then(|| Arc::new(crate::model::tls::UpstreamPrincipals { peer, local }))
}
