//! CONNECT over HTTP/2 terminated here (a route with `connect_config`): the stream's DATA
//! frames become a TCP connection to the route's upstream. This is Istio's HBONE server
//! side: `connect_terminate` (port 15008, mutual TLS) hands each CONNECT stream to the
//! internal listener `main_internal`, with the filter state its filters share (the
//! CONNECT's authority, the client's principals and baggage).

use bytes::Bytes;

use crate::http::error::HttpError;
use crate::model::route::Forward;
use crate::stats::{ClusterStat, HttpStat};

use super::Stream;

impl Stream {
    /// Opens a connection to the route's upstream, answers 200 once it is up (no body
    /// framing: the stream stays open) and copies bytes both ways until either side ends.
    pub(super) async fn terminate_connect(&mut self, f: &Forward) -> Result<(), HttpError> {
        let snapshot = self.snapshot.clone();
        let (_, cluster, ep, _permit) =
            crate::http::forwarding::connect_target(self, &snapshot, f)?;
        // What this request and its connection share with the upstream connection.
        let mut objects: Vec<_> =
            crate::model::filter_state::shared(&self.filters.objects).collect();
        objects.extend(self.down.shared_objects());
        let (mut up, permit) =
            crate::upstream::open_io_sharing(self.ctx.core, cluster, &ep, true, objects)
                .await
                .map_err(HttpError::connect)?;
        let core = self.ctx.core;
        // `upstream_cx_active` until the tunnel ends, then `upstream_cx_destroy`.
        let _cx = crate::upstream::h2pool::CxGuard {
            stats: cluster.stats.clone(),
            core,
            _permit: permit,
        };
        let cs = cluster.stats.core(core);
        cs.inc(ClusterStat::UpstreamRqTotal as usize);
        let resp = http::Response::builder()
            .status(200)
            .body(())
            .map_err(|_| HttpError::ClientGone)?;
        let tx = match self.respond.send_response(resp, false) {
            Ok(tx) => tx,
            Err(_) => {
                self.client_reset();
                return Err(HttpError::ClientGone);
            }
        };
        self.responded = true;
        self.log.status = 200;
        self.count_status(200);
        // The upstream's answer, as Envoy's TCP upstream synthesises it, charged as Envoy's
        // router charges response headers (the request counts as completed then).
        cs.count_status(200, ClusterStat::UpstreamRq1xx as usize);
        cs.inc(ClusterStat::UpstreamRqCompleted as usize);
        let Some(body) = self.body.take() else {
            // The client ended its side with the CONNECT itself: nothing to carry.
            let mut tx = tx;
            let _ = tx.send_data(Bytes::new(), true);
            return Ok(());
        };
        let hs = self.hcm.stats.core(core);
        hs.inc(HttpStat::DownstreamCxUpgradesTotal as usize);
        hs.inc(HttpStat::DownstreamCxUpgradesActive as usize);
        let mut io = crate::http::h2::tunnel::H2Io::new(tx, body);
        let idle = f.more().idle_timeout.or(self.hcm.stream_idle_timeout);
        // The upstream connection's bytes counted as they pass, as Envoy counts them.
        let from_up = |n| cs.add(ClusterStat::UpstreamCxRxBytesTotal as usize, n);
        let from_client = |n| cs.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
        let (ended, to_client, from_client) =
            crate::io::copy_to_stream(&mut up, &mut io, idle, None, [&from_up, &from_client]).await;
        if ended != crate::io::Tunnel::Done {
            io.reset();
        }
        hs.dec(HttpStat::DownstreamCxUpgradesActive as usize);
        self.log.bytes_received = from_client;
        self.log.bytes_sent = to_client;
        self.resp_ended = true;
        Ok(())
    }
}
