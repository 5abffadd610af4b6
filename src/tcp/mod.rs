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
use crate::model::{Cluster, Discovery, TcpProxy};
use crate::stats::{ClusterStat, TcpStat};
use crate::tls::UpIo;

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
    let Some((mut up, _permit)) = connect(&ctx, &tp, cluster, &conn).await else {
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
    let mut down = down;
    let ended = match (&mut down, &mut up) {
        (MaybeTls::Plain(down), MaybeTls::Plain(up)) => {
            crate::io::splice_both_ways(
                (down, up),
                tp.idle_timeout,
                tp.max_downstream_connection_duration,
                rx,
                tx,
            )
            .await
        }
        (down, up) => {
            // TLS terminated or originated here: the plaintext is copied through user
            // space (no splice), under the same idle and lifetime limits.
            let (ended, a, b) = crate::io::copy_tls_tunnel(
                down,
                up,
                tp.idle_timeout,
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

/// Connects to the cluster (TLS when its transport socket for the endpoint says so),
/// trying up to `max_connect_attempts` times.
async fn connect(
    ctx: &Rc<CoreCtx>,
    tp: &TcpProxy,
    cluster: &Cluster,
    conn: &Downstream,
) -> Option<(UpIo, Option<crate::model::breakers::Permit>)> {
    let cstats = cluster.stats.core(ctx.core);
    for attempt in 0..tp.max_connect_attempts {
        let ep = if cluster.discovery == Discovery::OriginalDst {
            // A connection that was not redirected would be sent back to this listener:
            // a loop, refused (Istio adds a blackhole chain for the same reason).
            if conn.loops_back() {
                cstats.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "original destination is this listener: refused");
                return None;
            }
            crate::model::Endpoint::at(conn.dst)
        } else {
            let picked = ctx.upstreams.borrow_mut().pick(cluster).cloned();
            let Some(e) = picked else {
                cstats.inc(ClusterStat::UpstreamCxNoneHealthy as usize);
                return None;
            };
            e
        };
        match crate::upstream::open_io(ctx.core, cluster, &ep, false).await {
            Ok(s) => return Some(s),
            Err(crate::upstream::ConnectError::Overflow) => return None,
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, addr = %ep.address, attempt, "connect failed: {e}")
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
