//! `istio.stats` on a TCP chain: `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_received_bytes_total` and
//! `istio_tcp_sent_bytes_total`, reported when the connection closes, with the labels of
//! the peers the TCP metadata exchange (or the upstream endpoint's metadata) named.

use crate::ctx::{CoreCtx, Downstream};
use crate::model::istio::{IstioStats, Peer, PeerLabels, Reporter};
use crate::model::TcpProxy;
use crate::stats::istio::TcpMetric;
use crate::stats::labeled::KeyBuilder;

pub(super) fn report(
    ctx: &CoreCtx,
    f: &IstioStats,
    tp: &TcpProxy,
    conn: &Downstream,
    o: &super::Outcome,
) {
    let (peer_san, local_san) = match (f.reporter, &conn.authn, &o.principals) {
        (Reporter::Source, _, Some(p)) => (&*p.peer, &*p.local),
        (Reporter::Source, _, None) => ("", ""),
        (_, Some(a), _) => a.istio_principals(tp.istio_authn),
        _ => ("", ""),
    };
    let down_peer = o.down_frame.as_deref().and_then(Peer::from_frame);
    let up_peer = o
        .up_frame
        .as_deref()
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
    k.push_clean(o.flags);
    k.push_clean(match f.reporter {
        Reporter::Source => "unknown",
        _ if !peer_san.is_empty() && !local_san.is_empty() => "mutual_tls",
        _ => "none",
    });
    k.push_clean(itoa::Buffer::new().format(f.shape));
    let series = f.tcp_series.series(ctx.core, &ctx.istio.tcp, &key);
    drop(key);
    let Some(series) = series else { return };
    series.add(TcpMetric::Sent as usize, o.sent);
    series.add(TcpMetric::Received as usize, o.received);
    series.add(TcpMetric::Opened as usize, 1);
    series.add(TcpMetric::Closed as usize, 1);
}
