//! `istio.stats` on a TCP chain: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_received_bytes_total` and
//! `istio_tcp_sent_bytes_total`, reported every `tcp_reporting_duration` while the
//! connection is open and when it closes, with the labels of the peers the TCP metadata
//! exchange (or the upstream endpoint's metadata) named.

use std::sync::Arc;

use crate::ctx::{CoreCtx, Downstream};
use crate::model::istio::{IstioStats, Peer, PeerLabels, Reporter};
use crate::model::TcpProxy;
use crate::stats::istio::{TcpMetric, TcpSeries};
use crate::stats::labeled::KeyBuilder;

/// One side's exchange at a periodic report: `None` where none runs, `Some(None)` until
/// the peer's frame was read.
pub(super) type Frame = Option<Option<Vec<u8>>>;

/// What periodic reports made of an open connection: its series and the bytes reported.
#[derive(Default)]
pub(super) struct Ticks {
    series: std::cell::RefCell<Option<Arc<TcpSeries>>>,
    reported: std::cell::Cell<(u64, u64)>,
}

impl Ticks {
    pub(super) fn into_inner(self) -> Option<(Arc<TcpSeries>, (u64, u64))> {
        let reported = self.reported.get();
        self.series.into_inner().map(|s| (s, reported))
    }
}

/// A periodic report of an open connection: once its peer is known (each side the
/// exchange runs on has read its peer's frame), the series is fixed (with the flags of
/// now, as istio-proxy fixes them), opened counted, and the bytes since the last report
/// added. `frames`: per side, `None` where no exchange runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn tick(
    ctx: &CoreCtx,
    f: &IstioStats,
    tp: &TcpProxy,
    conn: &Downstream,
    o: &super::Outcome,
    frames: (Frame, Frame),
    ticks: &Ticks,
    (received, sent): (u64, u64),
) {
    if ticks.series.borrow().is_none() {
        if matches!(frames.0, Some(None)) || matches!(frames.1, Some(None)) {
            return;
        }
        let down = frames.0.flatten();
        let up = frames.1.flatten();
        let Some(series) = series_for(
            ctx,
            f,
            tp,
            conn,
            o,
            (down.as_deref(), up.as_deref()),
            o.flags,
        ) else {
            return;
        };
        series.add(TcpMetric::Opened as usize, 1);
        *ticks.series.borrow_mut() = Some(series);
    }
    if let Some(series) = &*ticks.series.borrow() {
        let (r, s) = ticks.reported.get();
        series.add(TcpMetric::Received as usize, received - r);
        series.add(TcpMetric::Sent as usize, sent - s);
        ticks.reported.set((received, sent));
    }
}

/// Reports a closed connection: the rest of its bytes and its close, into the series
/// periodic reports fixed, else one made now (with the flags it ended with).
pub(super) fn report(
    ctx: &CoreCtx,
    f: &IstioStats,
    tp: &TcpProxy,
    conn: &Downstream,
    o: &super::Outcome,
) {
    if let Some((series, (r, s))) = &o.ticked {
        series.add(TcpMetric::Received as usize, o.received.saturating_sub(*r));
        series.add(TcpMetric::Sent as usize, o.sent.saturating_sub(*s));
        series.add(TcpMetric::Closed as usize, 1);
        return;
    }
    let frames = (o.down_frame.as_deref(), o.up_frame.as_deref());
    let Some(series) = series_for(ctx, f, tp, conn, o, frames, o.flags) else {
        return;
    };
    series.add(TcpMetric::Sent as usize, o.sent);
    series.add(TcpMetric::Received as usize, o.received);
    series.add(TcpMetric::Opened as usize, 1);
    series.add(TcpMetric::Closed as usize, 1);
}

/// The connection's series: its peers (from the exchange's frames, else the endpoint's
/// metadata), principals, service and `flags`.
fn series_for(
    ctx: &CoreCtx,
    f: &IstioStats,
    tp: &TcpProxy,
    conn: &Downstream,
    o: &super::Outcome,
    (down_frame, up_frame): (Option<&[u8]>, Option<&[u8]>),
    flags: &str,
) -> Option<Arc<TcpSeries>> {
    let (peer_san, local_san) = match (f.reporter, &conn.authn, &o.principals) {
        (Reporter::Source, _, Some(p)) => (&*p.peer, &*p.local),
        (Reporter::Source, _, None) => ("", ""),
        (_, Some(a), _) => a.istio_principals(tp.istio_authn),
        _ => ("", ""),
    };
    let down_peer = down_frame.and_then(Peer::from_frame);
    let up_peer = up_frame
        .and_then(Peer::from_frame)
        .or_else(|| o.workload.as_deref().cloned());
    let empty = Peer::default();
    let peer = match f.reporter {
        Reporter::Source => up_peer.as_ref(),
        _ => down_peer.as_ref(),
    }
    .unwrap_or(&empty);
    let up = match f.reporter {
        Reporter::Waypoint => up_peer.as_ref().unwrap_or(&empty),
        _ => peer,
    };
    let cluster = o.cluster.as_deref();
    let name = cluster.map_or("", |c| &*c.name);
    let mut service = ("", "", "");
    if let Some(p) = crate::model::istio::PASSTHROUGH
        .iter()
        .find(|p| **p == name)
    {
        service.1 = p;
    } else if let Some(s) = cluster.and_then(|c| c.istio_service.as_deref()) {
        service = (&s.host, &s.name, &s.namespace);
    }
    let mut key = ctx.istio.tcp.scratch.borrow_mut();
    key.clear();
    let mut k = KeyBuilder(&mut key);
    crate::model::istio::push_peer_labels(
        &mut k,
        &PeerLabels {
            reporter: f.reporter,
            node: &f.node,
            peer,
            up_peer: up,
            peer_san,
            local_san,
            service,
        },
    );
    k.push_clean("tcp");
    k.push_clean(flags);
    k.push_clean(match f.reporter {
        Reporter::Source => "unknown",
        _ if !peer_san.is_empty() && !local_san.is_empty() => "mutual_tls",
        _ => "none",
    });
    k.push_clean(itoa::Buffer::new().format(f.shape));
    if !f.exprs.is_empty() {
        let peers = crate::model::cel::Peers {
            downstream: down_peer.as_ref(),
            upstream: up_peer.as_ref(),
        };
        super::log::dimensions(ctx, f, tp, conn, o, peers, &mut k);
    }
    let series = f.tcp_series.series(ctx.core, &ctx.istio.tcp, &key);
    drop(key);
    series
}
