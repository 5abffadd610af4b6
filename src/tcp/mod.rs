//! Opaque TCP proxying (`envoy.filters.network.tcp_proxy`): connect to the chain's
//! cluster — or, for an `ORIGINAL_DST` cluster, to where the connection was going — and
//! copy bytes both ways on the owning core. A half-close is passed on (the other
//! direction keeps flowing until it closes too); an error on either side closes both;
//! the connection closes when both directions are quiet for `idle_timeout`. Payload
//! bytes are spliced (kernel to kernel), never copied through user space.

use std::rc::Rc;
use std::sync::Arc;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::ctx::{CoreCtx, Downstream, DrainEvent};
use crate::io::Tunnel;
use crate::model::{Cluster, Discovery, TcpProxy};
use crate::stats::{ClusterStat, TcpStat};

/// Serves one downstream connection; `prefix` holds bytes the listener filters read.
pub async fn serve(
    ctx: Rc<CoreCtx>,
    tp: Arc<TcpProxy>,
    down: crate::tls::DownIo,
    conn: Downstream,
    drain: Rc<DrainEvent>,
    prefix: Vec<u8>,
) {
    let core = ctx.core;
    let stats = tp.stats.core(core);
    let snapshot = ctx.snapshot();
    let name = tp.pick(fastrand::u32(..));
    let Some(cluster) = snapshot.cluster(name) else {
        stats.inc(TcpStat::DownstreamCxNoRoute as usize);
        tracing::debug!(cluster = %name, peer = %conn.peer, "tcp_proxy: no such cluster");
        return;
    };
    let Some(mut up) = connect(&ctx, &tp, cluster, &conn).await else {
        return;
    };
    let cstats = cluster.stats.core(core);
    let _active = UpstreamActive(cstats);
    if !prefix.is_empty() {
        let n = prefix.len() as u64;
        let (res, _) = up.write_all(prefix).await;
        if res.is_err() {
            return;
        }
        stats.add(TcpStat::DownstreamCxRxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
    }
    let rx = |n| {
        stats.add(TcpStat::DownstreamCxRxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
    };
    let tx = |n| {
        stats.add(TcpStat::DownstreamCxTxBytesTotal as usize, n);
        cstats.add(ClusterStat::UpstreamCxRxBytesTotal as usize, n);
    };
    let ended = match down {
        crate::io::MaybeTls::Plain(down) => {
            crate::io::splice_both_ways(
                (&down, &up),
                tp.idle_timeout,
                tp.max_downstream_connection_duration,
                rx,
                tx,
            )
            .await
        }
        crate::io::MaybeTls::Tls(mut down) => {
            // TLS terminated here: the plaintext is copied through user space (no
            // splice), bounded by the connection's lifetime limit; the idle timeout
            // does not apply to it yet.
            let Ok(mut upstream) = up.try_into_poll_io().map_err(|(e, _)| e) else {
                return;
            };
            let (ended, a, b) = crate::io::copy_both_ways(
                &mut down.0,
                &mut upstream,
                tp.max_downstream_connection_duration,
            )
            .await;
            rx(a);
            tx(b);
            ended
        }
    };
    match ended {
        Tunnel::Done | Tunnel::Error => {}
        Tunnel::Idle => stats.inc(TcpStat::IdleTimeout as usize),
        Tunnel::MaxDuration => stats.inc(TcpStat::MaxDownstreamConnectionDurationReached as usize),
    }
    // A drained listener's TCP connections run until they end or the process's drain
    // time is over (as Envoy's do); nothing to do with `drain` here.
    drop(drain);
}

/// Counts an upstream connection as active until dropped.
struct UpstreamActive<'a>(&'a crate::stats::CoreCells);

impl Drop for UpstreamActive<'_> {
    fn drop(&mut self) {
        self.0.dec(ClusterStat::UpstreamCxActive as usize);
        self.0.inc(ClusterStat::UpstreamCxDestroy as usize);
    }
}

/// Connects to the cluster, trying up to `max_connect_attempts` times.
async fn connect(
    ctx: &Rc<CoreCtx>,
    tp: &TcpProxy,
    cluster: &Cluster,
    conn: &Downstream,
) -> Option<TcpStream> {
    let cstats = cluster.stats.core(ctx.core);
    for attempt in 0..tp.max_connect_attempts {
        let addr = if cluster.discovery == Discovery::OriginalDst {
            // A connection that was not redirected would be sent back to this listener:
            // a loop, refused (Istio adds a blackhole chain for the same reason).
            if conn.loops_back() {
                cstats.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "original destination is this listener: refused");
                return None;
            }
            conn.dst
        } else {
            let picked = ctx.upstreams.borrow_mut().pick(cluster).map(|e| e.address);
            let Some(a) = picked else {
                cstats.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                return None;
            };
            a
        };
        let connecting = crate::upstream::connect_stream(addr, cluster.bind_source);
        match monoio::time::timeout(cluster.connect_timeout, connecting).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                cstats.inc(ClusterStat::UpstreamCxTotal as usize);
                cstats.inc(ClusterStat::UpstreamCxActive as usize);
                return Some(s);
            }
            Ok(Err(e)) => {
                cstats.inc(ClusterStat::UpstreamCxConnectFail as usize);
                tracing::debug!(cluster = %cluster.name, %addr, attempt, "connect failed: {e}");
            }
            Err(_) => {
                cstats.inc(ClusterStat::UpstreamCxConnectFail as usize);
                cstats.inc(ClusterStat::UpstreamCxConnectTimeout as usize);
            }
        }
    }
    if tp.max_connect_attempts > 1 {
        tp.stats
            .core(ctx.core)
            .inc(TcpStat::UpstreamConnectAttemptsExceeded as usize);
    }
    None
}
