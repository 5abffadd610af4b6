//! Opaque TCP proxying (`envoy.filters.network.tcp_proxy`): connect to the chain's
//! cluster — or, for an `ORIGINAL_DST` cluster, to where the connection was going — and
//! copy bytes both ways on the owning core. A half-close is passed on (the other
//! direction keeps flowing until it closes too); an error on either side closes both;
//! the connection closes when both directions are quiet for `idle_timeout`. Payload
//! bytes are spliced (kernel to kernel), never copied through user space, unless TLS ends
//! or begins here.

use std::rc::Rc;
use std::sync::Arc;

use monoio::io::AsyncWriteRentExt;

use crate::ctx::{CoreCtx, Downstream, DrainEvent};
use crate::io::{MaybeTls, Tunnel};
use crate::model::{Cluster, Discovery, TcpHash, TcpProxy};
use crate::stats::{ClusterStat, TcpStat};
use crate::tls::UpIo;

pub(crate) mod log;
mod telemetry;
mod tunnel;

/// Serves one downstream connection; `prefix` holds bytes the listener filters read.
pub async fn serve(
    ctx: Rc<CoreCtx>,
    tp: Arc<TcpProxy>,
    down: crate::tls::DownIo,
    conn: Downstream,
    drain: Rc<DrainEvent>,
    prefix: Vec<u8>,
) {
    let mut outcome = Outcome::default();
    if !tp.access_logs.is_empty() {
        outcome.start = Some((std::time::SystemTime::now(), std::time::Instant::now()));
    }
    proxy(&ctx, &tp, down, &conn, prefix, &mut outcome).await;
    // A drained listener's TCP connections run until they end or the process's drain
    // time is over (as Envoy's do); nothing to do with `drain` here.
    drop(drain);
    if let Some(f) = &tp.istio {
        telemetry::report(&ctx, f, &tp, &conn, &outcome);
    }
    if !tp.access_logs.is_empty() {
        log::write(&ctx, &tp, &conn, &outcome);
    }
}

/// Reports and logs a connection network RBAC closed before it was proxied (`why`:
/// Envoy's termination details). Envoy's TCP proxy had picked its cluster by then.
pub fn denied(ctx: &Rc<CoreCtx>, tp: &Arc<TcpProxy>, conn: &Downstream, why: String) {
    if tp.istio.is_none() && tp.access_logs.is_empty() {
        return;
    }
    let now = (std::time::SystemTime::now(), std::time::Instant::now());
    let outcome = Outcome {
        start: Some(now),
        flags: "-",
        cluster: ctx.snapshot().cluster(tp.pick(fastrand::u32(..))).cloned(),
        termination: Some(why),
        ..Outcome::default()
    };
    if let Some(f) = &tp.istio {
        telemetry::report(ctx, f, tp, conn, &outcome);
    }
    if !tp.access_logs.is_empty() {
        log::write(ctx, tp, conn, &outcome);
    }
}

/// What one connection did, for `istio.stats` and the access log.
#[derive(Default)]
pub(crate) struct Outcome {
    /// When it started (kept only for an access log).
    pub start: Option<(std::time::SystemTime, std::time::Instant)>,
    /// The upstream endpoint chosen, and this side's address once connected.
    pub upstream: Option<std::net::SocketAddr>,
    pub upstream_local: Option<std::net::SocketAddr>,
    /// Why connecting upstream failed (`%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub transport_failure: Option<String>,
    /// Why a network filter closed the connection (`%CONNECTION_TERMINATION_DETAILS%`).
    pub termination: Option<String>,
    /// Envoy's response flag (`-` when none).
    pub flags: &'static str,
    /// Bytes from the client, and to it.
    pub received: u64,
    pub sent: u64,
    pub cluster: Option<Arc<Cluster>>,
    /// The upstream endpoint's workload (istiod's `istio.workload` metadata).
    pub workload: Option<Arc<crate::model::istio::Peer>>,
    /// The upstream TLS connection's identities.
    pub principals: Option<Arc<crate::model::tls::UpstreamPrincipals>>,
    /// The series periodic reports made while it was open, and the bytes they reported.
    pub ticked: Option<(Arc<crate::stats::istio::TcpSeries>, (u64, u64))>,
    /// The peers' metadata exchange frames (client's, upstream's), when they sent one.
    pub down_frame: Option<Vec<u8>>,
    pub up_frame: Option<Vec<u8>>,
}

/// The exchange on a TLS side whose ALPN settled on its protocol.
fn exchange_side(
    x: Option<&Arc<crate::model::istio::TcpExchange>>,
    alpn: Option<&[u8]>,
) -> Option<crate::io::exchange::MxSide> {
    let x = x?;
    (alpn? == &*x.protocol).then(|| crate::io::exchange::MxSide {
        frame: x.frame.clone(),
        sent: false,
        found: Default::default(),
    })
}

async fn proxy(
    ctx: &Rc<CoreCtx>,
    tp: &Arc<TcpProxy>,
    down: crate::tls::DownIo,
    conn: &Downstream,
    prefix: Vec<u8>,
    out: &mut Outcome,
) {
    out.flags = "-";
    let core = ctx.core;
    let stats = tp.stats.core(core);
    let snapshot = ctx.snapshot();
    let name = tp.pick(fastrand::u32(..));
    let Some(cluster) = snapshot.cluster(name) else {
        stats.inc(TcpStat::DownstreamCxNoRoute as usize);
        tracing::debug!(cluster = %name, peer = %conn.peer, "tcp_proxy: no such cluster");
        // Envoy's NoClusterFound.
        out.flags = "NC";
        return;
    };
    out.cluster = Some(cluster.clone());
    if tp.tunneling.is_some() {
        return tunnel::proxy(ctx, tp, cluster, down, conn, prefix, out).await;
    }
    let (mut up, _permit, ep) = match connect(ctx, tp, cluster, conn).await {
        Ok(c) => c,
        Err(f) => {
            out.flags = f.flags;
            out.upstream = f.host;
            out.transport_failure = f.why;
            return;
        }
    };
    out.workload = ep.workload.clone();
    out.upstream = Some(ep.address);
    out.upstream_local = match &up {
        MaybeTls::Plain(s) => crate::io::ip_local_addr(s),
        MaybeTls::Tls(t) => crate::io::ip_local_addr(t.0.get_ref().0),
    };
    if let (Some(_), MaybeTls::Tls(s), Some(tls)) = (&tp.istio, &up, cluster.tls_for(&ep)) {
        out.principals = crate::tls::upstream_principals(s.0.get_ref().1, tls);
    }
    let cstats = cluster.stats.core(core);
    let _active = UpstreamActive(cstats);
    // Istio's TCP metadata exchange, where TLS settled on its protocol.
    let mut mx_up = match &up {
        MaybeTls::Tls(t) => exchange_side(
            cluster.tcp_exchange.as_ref(),
            t.0.get_ref().1.alpn_protocol(),
        ),
        MaybeTls::Plain(_) => None,
    };
    if !prefix.is_empty() {
        let n = prefix.len() as u64;
        // The bytes the listener sniffed are the client's first: this side's frame goes
        // before them.
        let prefix = match &mut mx_up {
            Some(side) => {
                side.sent = true;
                let mut framed = side.frame.to_vec();
                framed.extend_from_slice(&prefix);
                framed
            }
            None => prefix,
        };
        let (res, _) = up.write_all(prefix).await;
        if res.is_err() {
            return;
        }
        out.received += n;
        stats.add(TcpStat::DownstreamCxRxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
    }
    let received = std::cell::Cell::new(0u64);
    let sent = std::cell::Cell::new(0u64);
    let rx = |n| {
        received.set(received.get() + n);
        stats.add(TcpStat::DownstreamCxRxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
    };
    let tx = |n| {
        sent.set(sent.get() + n);
        stats.add(TcpStat::DownstreamCxTxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxRxBytesTotal as usize, n);
    };
    let mut down = down;
    let mx_down = match &down {
        MaybeTls::Tls(t) => exchange_side(tp.exchange.as_ref(), t.0.get_ref().1.alpn_protocol()),
        MaybeTls::Plain(_) => None,
    };
    let found = (
        mx_down.as_ref().map(|m| m.found.clone()),
        mx_up.as_ref().map(|m| m.found.clone()),
    );
    let tunnel = carry(&mut down, &mut up, tp, [mx_down, mx_up], rx, tx);
    // istio.stats reports an open connection every `tcp_reporting_duration`, once its
    // peer is known (the exchange's frame read, where the exchange runs).
    let ticks = telemetry::Ticks::default();
    let ticking = async {
        let Some((f, every)) = tp
            .istio
            .as_ref()
            .and_then(|f| Some((f, f.tcp_report_every?)))
        else {
            return std::future::pending().await;
        };
        loop {
            monoio::time::sleep(every).await;
            let frame = |c: &Option<Rc<std::cell::RefCell<Option<Vec<u8>>>>>| {
                c.as_ref().map(|c| c.borrow().clone())
            };
            let frames = (frame(&found.0), frame(&found.1));
            let bytes = (received.get(), sent.get());
            telemetry::tick(ctx, f, tp, conn, &*out, frames, &ticks, bytes);
        }
    };
    let ended = monoio::select! {
        e = tunnel => e,
        () = ticking => unreachable!("the ticker never ends"),
    };
    out.ticked = ticks.into_inner();
    out.received += received.get();
    out.sent += sent.get();
    out.down_frame = found.0.and_then(|f| f.borrow_mut().take());
    out.up_frame = found.1.and_then(|f| f.borrow_mut().take());
    match ended {
        Tunnel::Done | Tunnel::Error => {}
        Tunnel::Idle => stats.inc(TcpStat::IdleTimeout as usize),
        Tunnel::MaxDuration => {
            stats.inc(TcpStat::MaxDownstreamConnectionDurationReached as usize);
            out.flags = "DT";
        }
    }
}

/// Moves bytes both ways between the client and the upstream connection under the TCP
/// proxy's idle and lifetime limits: spliced when both are plaintext, else copied through
/// user space (TLS ends or begins here), with Istio's TCP exchange on the sides in `mx`.
/// `rx`/`tx` count the bytes each way as they pass.
async fn carry(
    down: &mut crate::tls::DownIo,
    up: &mut UpIo,
    tp: &TcpProxy,
    mx: [Option<crate::io::exchange::MxSide>; 2],
    rx: impl Fn(u64),
    tx: impl Fn(u64),
) -> Tunnel {
    let (idle, limit) = (tp.idle_timeout, tp.max_downstream_connection_duration);
    match (down, up) {
        (MaybeTls::Plain(down), MaybeTls::Plain(up)) => {
            crate::io::splice_both_ways((down, up), idle, limit, rx, tx).await
        }
        (down, up) => {
            crate::io::copy_tls_tunnel_mx(down, up, idle, limit, mx, [&rx, &tx])
                .await
                .0
        }
    }
}

/// Counts an upstream connection as active until dropped.
struct UpstreamActive<'a>(&'a crate::stats::CoreCells);

impl Drop for UpstreamActive<'_> {
    fn drop(&mut self) {
        self.0.dec(ClusterStat::UpstreamCxActive as usize);
        self.0.inc(ClusterStat::UpstreamCxDestroy as usize);
    }
}

/// Why no upstream connection was made.
struct Failed {
    /// The response flags Envoy sets (`UH` no healthy upstream, `UO` overflow, `UF,URX`
    /// connect failure).
    flags: &'static str,
    /// The endpoint last tried.
    host: Option<std::net::SocketAddr>,
    why: Option<String>,
}

impl From<&'static str> for Failed {
    fn from(flags: &'static str) -> Failed {
        Failed {
            flags,
            host: None,
            why: None,
        }
    }
}

/// Connects to the cluster (TLS when its transport socket for the endpoint says so),
/// trying up to `max_connect_attempts` times.
#[allow(clippy::type_complexity)]
async fn connect(
    ctx: &Rc<CoreCtx>,
    tp: &TcpProxy,
    cluster: &Cluster,
    conn: &Downstream,
) -> Result<
    (
        UpIo,
        Option<crate::model::breakers::Permit>,
        crate::model::Endpoint,
    ),
    Failed,
> {
    let mut last = (None, None);
    for attempt in 0..tp.max_connect_attempts {
        let ep = pick_endpoint(ctx, tp, cluster, conn)?;
        let r =
            crate::upstream::open_io_sharing(ctx.core, cluster, &ep, false, conn.shared_objects())
                .await;
        if let Some(cfg) = &cluster.outlier {
            // As Envoy's TCP proxy tells the detector: a connection made or not.
            let o = match &r {
                Ok(_) => Some(crate::model::outlier::Outcome::Connected),
                Err(crate::upstream::ConnectError::Overflow) => None,
                Err(crate::upstream::ConnectError::Timeout) => {
                    Some(crate::model::outlier::Outcome::ConnectTimeout)
                }
                Err(_) => Some(crate::model::outlier::Outcome::ConnectFailed),
            };
            if let Some(o) = o {
                let mut u = ctx.upstreams.borrow_mut();
                u.outlier.put(&cluster.name, cfg, ep.address, o);
            }
        }
        match r {
            Ok((s, permit)) => return Ok((s, permit, ep)),
            Err(crate::upstream::ConnectError::Overflow) => return Err("UO".into()),
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, addr = %ep.address, attempt, "connect failed: {e}");
                last = (Some(ep.address), crate::upstream::transport_failure(&e));
            }
        }
    }
    if tp.max_connect_attempts > 1 {
        tp.stats
            .core(ctx.core)
            .inc(TcpStat::UpstreamConnectAttemptsExceeded as usize);
    }
    // The connect failed and the attempts are spent (Envoy sets both).
    Err(Failed {
        flags: "UF,URX",
        host: last.0,
        why: last.1,
    })
}

/// The endpoint a new upstream connection goes to.
fn pick_endpoint(
    ctx: &Rc<CoreCtx>,
    tp: &TcpProxy,
    cluster: &Cluster,
    conn: &Downstream,
) -> Result<crate::model::Endpoint, Failed> {
    let cstats = cluster.stats.core(ctx.core);
    {
        let ep = if cluster.discovery == Discovery::OriginalDst {
            // A connection that was not redirected would be sent back to this listener:
            // a loop, refused (Istio adds a blackhole chain for the same reason).
            let target = conn.original_dst_target(&cluster.original_dst);
            if conn.loops_back() && target == conn.dst {
                cstats.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "original destination is this listener: refused");
                return Err("UH".into());
            }
            crate::model::Endpoint::at(target)
        } else {
            let key = match &tp.hash {
                None => None,
                // Envoy's SourceIp hash: xxHash64 of the client's address as text.
                Some(TcpHash::SourceIp) => Some(crate::upstream::hash::xxh64_parts(&[conn
                    .peer
                    .ip()
                    .to_string()
                    .as_bytes()])),
                Some(TcpHash::FilterState(k)) => {
                    conn.filter_object(k, tp.istio_authn).and_then(|f| f.hash())
                }
            };
            let picked = ctx
                .upstreams
                .borrow_mut()
                .pick_hashed(cluster, key)
                .cloned();
            let Some(e) = picked else {
                cstats.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                return Err("UH".into());
            };
            e
        };
        Ok(ep)
    }
}
