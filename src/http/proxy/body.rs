//! The response body's side of forwarding: the filters' encode phase on the upstream head
//! (which starts their encode-data phase), and what a body that stops part-way becomes.

use super::up::RecvError;
use super::{Deadline, Downstream};
use crate::http::flags::ResponseFlags;
use crate::http::h1::ResponseHead;
use crate::stats::{ClusterStat, HttpStat};

/// Runs the encode phase on an upstream response head: the data phase its body goes
/// through, if a filter acts on it.
pub(super) fn encode_head<D: Downstream>(
    d: &mut D,
    up: &[u8],
    resp: &ResponseHead,
    end: bool,
) -> Option<crate::http::filter::encode::EncodeData> {
    use crate::http::filter::encode::{begin, Head};
    let find = |name: &[u8]| {
        resp.headers
            .iter()
            .find(|(n, _)| up[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| &up[v.clone()])
    };
    let head = Head {
        status: resp.status,
        content_type: find(b"content-type"),
        content_length: resp.content_length,
        content_encoding: find(b"content-encoding"),
        cache_control: find(b"cache-control"),
        etag: find(b"etag"),
        vary: find(b"vary"),
        upgrade: resp.status == 101,
    };
    begin(d, &head, end)
}

/// The upstream response stopped part-way through its body.
pub(super) fn body_failed<D: Downstream>(
    d: &mut D,
    cluster: &crate::model::Cluster,
    e: RecvError,
    deadline: &Deadline,
) {
    let cs = cluster.stats.core(d.core());
    // The host's outlier detection hears of it, as Envoy's router reports a reset or the
    // route timeout after the response head (the connection was counted with the head,
    // so only the failure: 503 or 504, a local-origin failure when split).
    let late = |d: &D, o| {
        if let (Some(cfg), Some(addr)) = (&cluster.outlier, d.log().upstream) {
            let mut u = d.ctx().upstreams.borrow_mut();
            u.outlier.put(&cluster.name, cfg, addr, o);
        }
    };
    match e {
        RecvError::Timeout if deadline.expired() => {
            late(d, crate::model::outlier::Outcome::ConnectTimeout);
            cs.inc(ClusterStat::UpstreamRqTimeout as usize);
            d.log_mut()
                .flags
                .set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
            d.abort(h2::Reason::CANCEL);
        }
        RecvError::Timeout => {
            let core = d.core();
            d.hcm()
                .stats
                .core(core)
                .inc(HttpStat::DownstreamRqIdleTimeout as usize);
            d.log_mut().flags.set(ResponseFlags::STREAM_IDLE_TIMEOUT);
            d.abort(h2::Reason::CANCEL);
        }
        RecvError::Reset(reason) => {
            late(d, crate::model::outlier::Outcome::ConnectFailed);
            cs.inc(ClusterStat::UpstreamRqRxReset as usize);
            d.log_mut().flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET);
            d.abort(reason);
        }
    }
}

/// After a 101 to an upgrade, the connection becomes the tunnel: what the upstream sent
/// after the 101 (`head_len` bytes) belongs to it.
pub(super) async fn upgraded<D: Downstream>(
    d: &mut D,
    mut conn: crate::upstream::Conn,
    cluster: &crate::model::Cluster,
    idle: Option<std::time::Duration>,
    head_len: usize,
) {
    conn.buf.drain(..head_len);
    if !d.flush().await {
        d.client_gone();
        return;
    }
    d.tunnel(conn, cluster, idle).await;
}
