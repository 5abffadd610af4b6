//! Tunnels: CONNECT terminated by the proxy, and upgraded (101) connections spliced.

use std::time::Duration;

use monoio::io::AsyncWriteRentExt;

use crate::io::MaybeTls;

use crate::http::error::HttpError;
use crate::model::route::Forward;
use crate::stats::{ClusterStat, HttpStat};
use crate::upstream::Conn as UpstreamConn;

use super::*;

impl Connection {
    /// CONNECT on a route with `connect_config`: the proxy opens a TCP connection to the
    /// route's upstream, answers 200 itself (no Content-Length or Transfer-Encoding, RFC
    /// 9110 9.3.6) and tunnels the bytes both ways until either side closes.
    pub(super) async fn terminate_connect(&mut self, f: &Forward) -> Result<Next, HttpError> {
        let snapshot = self.snapshot.clone();
        let (_, cluster, ep, _permit) =
            crate::http::forwarding::connect_target(self, &snapshot, f)?;
        let up = crate::upstream::connect(self.ctx.core, cluster, &ep)
            .await
            .map_err(HttpError::connect)?;
        cluster
            .stats
            .core(self.ctx.core)
            .inc(ClusterStat::UpstreamRqTotal as usize);
        let (res, _) = self.stream.write_all(&b"HTTP/1.1 200 OK\r\n\r\n"[..]).await;
        if res.is_err() {
            self.client_gone();
            return Ok(Next::Close);
        }
        self.log.status = 200;
        self.count_status(200);
        let idle = f.more().idle_timeout.or(self.hcm.stream_idle_timeout);
        Ok(self.tunnel(up, cluster, idle).await)
    }

    /// After a 101 to an allowed upgrade (WebSocket): bytes either side already read go
    /// across, then the two sockets are spliced together until both close (or stay quiet
    /// for the stream idle timeout). The connection is not reused afterwards.
    pub(super) async fn tunnel(
        &mut self,
        mut up: UpstreamConn,
        cluster: &crate::model::Cluster,
        idle: Option<Duration>,
    ) -> Next {
        let core = self.ctx.core;
        let hs = self.hcm.stats.core(core);
        let cs = cluster.stats.core(core);
        let early = self.buf.split_off(self.head.len.min(self.buf.len()));
        if !early.is_empty() {
            let (res, _) = up.stream.write_all(early).await;
            if res.is_err() {
                return Next::Close;
            }
        }
        let ahead = std::mem::take(&mut up.buf);
        if !ahead.is_empty() {
            let (res, _) = self.stream.write_all(ahead).await;
            if res.is_err() {
                return Next::Close;
            }
        }
        hs.inc(HttpStat::DownstreamCxUpgradesTotal as usize);
        hs.inc(HttpStat::DownstreamCxUpgradesActive as usize);
        let rx = |n| {
            hs.add(HttpStat::DownstreamCxRxBytesTotal as usize, n);
            cs.add(ClusterStat::UpstreamCxTxBytesTotal as usize, n);
        };
        let tx = |n| {
            hs.add(HttpStat::DownstreamCxTxBytesTotal as usize, n);
            cs.add(ClusterStat::UpstreamCxRxBytesTotal as usize, n);
        };
        match (&mut self.stream, &mut up.stream) {
            (MaybeTls::Plain(down), MaybeTls::Plain(upstream)) => {
                crate::io::splice_both_ways((down, &*upstream), idle, None, rx, tx).await;
            }
            (down, upstream) => {
                // Decrypted bytes cannot be spliced: they are copied through user space.
                let (_, a, b) = crate::io::copy_tls_tunnel(down, upstream, idle, None).await;
                rx(a);
                tx(b);
            }
        }
        hs.dec(HttpStat::DownstreamCxUpgradesActive as usize);
        cs.inc(ClusterStat::UpstreamRqCompleted as usize);
        Next::Close
    }
}
