//! `envoy.filters.http.grpc_stats`: per-cluster gRPC outcome and message counters,
//! `cluster.<name>.grpc.{success,failure,total,<grpc-status>,request_message_count,
//! response_message_count}` as Envoy names them without per-method stats.

use std::sync::Arc;

use super::{FilterHost, Routed};
use crate::http::exchange::Exchange;
use crate::model::filter::GrpcStatsConfig;
use crate::stats::{ClusterStat, Scope};

/// A gRPC call being counted: its cluster's scope (grpc_stats counts its `grpc.` stats), and what
/// `istio.stats` reads of it.
#[derive(Clone)]
pub(crate) struct Call {
    pub stats: Option<Arc<Scope>>,
    pub core: usize,
    /// What `istio.stats` and the access log read of the call.
    pub seen: Option<std::rc::Rc<Seen>>,
}

/// Watches a gRPC request's call (its status and messages) for `istio.stats` and the
/// access log.
pub(super) fn observe<E: FilterHost>(x: &mut E) -> std::rc::Rc<Seen> {
    let core = x.core();
    let call = x.filter_state_mut().grpc.get_or_insert(Call {
        stats: None,
        core,
        seen: None,
    });
    call.seen.get_or_insert_with(Default::default).clone()
}

/// What a gRPC call showed, for `istio.stats` and the access log: its `grpc-status` (trailers win over
/// headers, as they come later) and its messages each way.
#[derive(Default)]
pub(crate) struct Seen {
    pub status: std::cell::Cell<Option<i32>>,
    /// The `grpc-message` that came with it (a span's `grpc.message`).
    pub message: std::cell::RefCell<Option<Box<str>>>,
    /// Request messages, response messages.
    pub messages: [std::cell::Cell<u64>; 2],
}

pub(super) fn decode<E: FilterHost>(x: &mut E, _config: &GrpcStatsConfig, routed: &Routed<'_>) {
    if !x.grpc() || !resolves(x) {
        return;
    }
    // Only requests with a cluster are counted (not direct responses or unrouted ones).
    let Some(name) = routed.cluster() else { return };
    let Some(cluster) = x.snapshot().cluster(name) else {
        return;
    };
    let stats = cluster.stats.clone();
    let core = x.core();
    let call = x.filter_state_mut().grpc.get_or_insert(Call {
        stats: None,
        core,
        seen: None,
    });
    call.stats = Some(stats);
}

/// The path is `/<service>/<method>` (query dropped, empty segments ignored).
fn resolves<E: Exchange + ?Sized>(x: &E) -> bool {
    let path = x.bytes(&x.head().target);
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    path.split(|&b| b == b'/').filter(|s| !s.is_empty()).count() == 2
}

impl Call {
    /// Charges the `grpc-status` of response trailers, and notes their `grpc-message`.
    pub(crate) fn trailers(&self, t: &http::HeaderMap) {
        if let Some(v) = t.get("grpc-status") {
            self.charge(v.as_bytes());
        }
        if let Some(v) = t.get("grpc-message") {
            self.note_message(v.as_bytes());
        }
    }

    /// Notes a `grpc-message` seen in response headers or trailers, where it is watched.
    pub(crate) fn note_message(&self, message: &[u8]) {
        if let Some(seen) = &self.seen {
            *seen.message.borrow_mut() = Some(String::from_utf8_lossy(message).into());
        }
    }

    /// Charges a `grpc-status` value seen in response headers or trailers.
    pub(crate) fn charge(&self, status: &[u8]) {
        if let Some(seen) = &self.seen {
            // Envoy's reading: a code above 16 or not a number is -1 (InvalidCode).
            let code = std::str::from_utf8(status)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|&n| n <= 16)
                .map_or(-1, |n| n as i32);
            seen.status.set(Some(code));
        }
        let Some(stats) = &self.stats else { return };
        let c = stats.core(self.core);
        if let Some(i) = status_index(status) {
            c.inc(i);
        }
        c.inc(if status == b"0" {
            ClusterStat::GrpcSuccess
        } else {
            ClusterStat::GrpcFailure
        } as usize);
        c.inc(ClusterStat::GrpcTotal as usize);
    }

    /// A frame counter for one direction of the call.
    pub(crate) fn frames(&self, response: bool) -> Frames {
        Frames {
            stats: self.stats.clone(),
            seen: self.seen.clone(),
            core: self.core,
            stat: if response {
                ClusterStat::GrpcResponseMessageCount
            } else {
                ClusterStat::GrpcRequestMessageCount
            },
            state: FrameState::Flag,
        }
    }
}

/// The counter of grpc-status `0`..`16` (other values count only in success/failure/total).
fn status_index(status: &[u8]) -> Option<usize> {
    let n: usize = std::str::from_utf8(status).ok()?.parse().ok()?;
    (n <= 16 && status.len() <= 2 && (status.len() == 1 || status[0] != b'0'))
        .then_some(ClusterStat::GrpcStatus0 as usize + n)
}

/// Counts gRPC messages in a body as it passes, chunk by chunk: a message counts when its
/// flag byte is seen, as in Envoy.
pub(crate) struct Frames {
    stats: Option<Arc<Scope>>,
    seen: Option<std::rc::Rc<Seen>>,
    core: usize,
    stat: ClusterStat,
    state: FrameState,
}

#[derive(Clone, Copy)]
enum FrameState {
    /// Waiting for a frame's flag byte.
    Flag,
    /// Reading the 4-byte length: bytes read so far and the length so far.
    Length(u8, u32),
    /// Skipping this many payload bytes.
    Payload(u64),
}

impl Frames {
    pub(crate) fn inspect(&mut self, mut data: &[u8]) {
        let mut delta = 0u64;
        while !data.is_empty() {
            match self.state {
                FrameState::Flag => {
                    delta += 1;
                    data = &data[1..];
                    self.state = FrameState::Length(0, 0);
                }
                FrameState::Length(got, len) => {
                    let len = (len << 8) | u32::from(data[0]);
                    data = &data[1..];
                    self.state = if got == 3 {
                        if len == 0 {
                            FrameState::Flag
                        } else {
                            FrameState::Payload(u64::from(len))
                        }
                    } else {
                        FrameState::Length(got + 1, len)
                    };
                }
                FrameState::Payload(left) => {
                    let n = (data.len() as u64).min(left);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        FrameState::Flag
                    } else {
                        FrameState::Payload(left - n)
                    };
                }
            }
        }
        if delta > 0 {
            if let Some(stats) = &self.stats {
                stats.core(self.core).add(self.stat as usize, delta);
            }
            if let Some(seen) = &self.seen {
                let m =
                    &seen.messages[usize::from(self.stat == ClusterStat::GrpcResponseMessageCount)];
                m.set(m.get() + delta);
            }
        }
    }
}
