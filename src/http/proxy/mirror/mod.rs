//! Request mirroring (`request_mirror_policies`), as Envoy's router shadows: each policy
//! that draws the request sends a copy to its cluster, fire and forget, from the request's
//! own core and its pools. The copy's head is the one the first attempt sends, with
//! `-shadow` appended to the host (or the policy's host), `x-envoy-internal: true`, this
//! proxy's address appended to `x-forwarded-for` and, when the request is traced, a child
//! span's context sampled as `trace_sampled` says. Its body streams as the primary request
//! reads it; its response is read and dropped, counted in the mirror cluster's stats.
//!
//! A mirror never holds the primary back. Where Envoy pushes back on the client when a
//! mirror's upstream is slower than the primary's, Ringside gives the mirror up once more
//! than [`LIMIT`] bytes wait for it, counting `retry_or_shadow_abandoned`. A mirror whose
//! request has not ended when the primary request ends (the client went away, the primary
//! failed mid-body) is cancelled, as Envoy cancels its shadow streams.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

mod job;

use job::{Job, Span};

use super::Downstream;
use crate::http::h1::BodyKind;
use crate::model::route::{Mirror, MirrorCluster};
use crate::model::Cluster;
use crate::stats::{ClusterStat, Scope};

/// The request body a mirror may hold that its upstream has not taken yet (Envoy's
/// default per-connection buffer limit).
pub(crate) const LIMIT: usize = 1 << 20;

#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum State {
    #[default]
    Open,
    Ended,
    Cancelled,
}

/// The body on its way from the primary request to one mirror.
#[derive(Default)]
struct Tee {
    chunks: VecDeque<Bytes>,
    queued: usize,
    state: State,
    /// When the request ended (the mirror's timeout runs from then, as Envoy's).
    ended_at: Option<std::time::Instant>,
    waker: Option<Waker>,
}

impl Tee {
    fn set(&mut self, state: State) {
        if self.state == State::Open {
            self.state = state;
            if state == State::Ended {
                self.ended_at = Some(std::time::Instant::now());
            }
            if state == State::Cancelled {
                self.chunks.clear();
                self.queued = 0;
            }
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

enum Piece {
    Data(Bytes),
    End,
    Cancelled,
}

/// Resolves when the mirror must stop whatever it is waiting on: the primary request gave
/// it up, or its timeout (from the request's end) passed.
async fn halted(tee: &RefCell<Tee>, timeout: Option<Duration>) -> job::Failed {
    let ended = std::future::poll_fn(|cx| {
        let mut t = tee.borrow_mut();
        match t.state {
            State::Cancelled => Poll::Ready(None),
            State::Ended => Poll::Ready(t.ended_at),
            State::Open => {
                t.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    match (ended, timeout) {
        (None, _) => job::Failed::Cancelled,
        (Some(at), Some(t)) => {
            monoio::time::sleep((at + t).saturating_duration_since(std::time::Instant::now()))
                .await;
            job::Failed::Timeout
        }
        (Some(_), None) => std::future::pending().await,
    }
}

/// The next piece of the mirror's body, waiting for the primary request to read it.
async fn next(tee: &RefCell<Tee>) -> Piece {
    std::future::poll_fn(|cx| {
        let mut t = tee.borrow_mut();
        if let Some(b) = t.chunks.pop_front() {
            t.queued -= b.len();
            return Poll::Ready(Piece::Data(b));
        }
        match t.state {
            State::Open => {
                t.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            State::Ended => Poll::Ready(Piece::End),
            State::Cancelled => Poll::Ready(Piece::Cancelled),
        }
    })
    .await
}

/// The primary request's side of its mirrors: the body it reads goes to each. Dropped
/// before [`Mirrors::end`], it cancels those still open.
pub(crate) struct Mirrors {
    tees: Vec<Rc<RefCell<Tee>>>,
    /// The primary cluster's stats (`retry_or_shadow_abandoned`, once per request).
    primary: Arc<Scope>,
    core: usize,
    abandoned: std::cell::Cell<bool>,
}

impl Mirrors {
    /// Request payload the primary request read.
    pub(crate) fn push(&self, s: &[u8]) {
        if s.is_empty() {
            return;
        }
        let mut copy: Option<Bytes> = None;
        for t in &self.tees {
            let mut t = t.borrow_mut();
            if t.state != State::Open {
                continue;
            }
            // A body a filter buffered whole may come as one piece: it is bounded by
            // that filter; only a backlog counts.
            if t.queued > 0 && t.queued + s.len() > LIMIT {
                tracing::debug!("a mirror's upstream fell {LIMIT} bytes behind: mirror given up");
                t.set(State::Cancelled);
                if !self.abandoned.replace(true) {
                    self.primary
                        .core(self.core)
                        .inc(ClusterStat::RetryOrShadowAbandoned as usize);
                }
                continue;
            }
            let b = copy
                .get_or_insert_with(|| Bytes::copy_from_slice(s))
                .clone();
            t.queued += b.len();
            t.chunks.push_back(b);
            if let Some(w) = t.waker.take() {
                w.wake();
            }
        }
    }

    /// The request body ended (trailers, where it had some, are not mirrored).
    pub(crate) fn end(&self) {
        for t in &self.tees {
            t.borrow_mut().set(State::Ended);
        }
    }
}

impl Drop for Mirrors {
    fn drop(&mut self) {
        for t in &self.tees {
            t.borrow_mut().set(State::Cancelled);
        }
    }
}

/// Starts the request's mirrors: `head` is the first attempt's upstream head (HTTP/1
/// form), `timeout` the route timeout. `None`: no policy drew the request (or it is a
/// CONNECT or an upgrade, which Envoy does not mirror).
pub(crate) fn start<D: Downstream>(
    d: &D,
    fw: &crate::http::request::Forwarding<'_>,
    primary: &Cluster,
    head: &[u8],
    authority: &std::ops::Range<usize>,
    timeout: Option<Duration>,
) -> Option<Rc<Mirrors>> {
    let f = fw.f;
    if d.upgrading() || head.starts_with(b"CONNECT ") {
        return None;
    }
    let snapshot = d.snapshot_arc();
    // One draw for every policy (Envoy draws each with the stream id).
    let r = fastrand::u64(..);
    let mut tees = Vec::new();
    for m in f.mirrors.iter() {
        if !m.fraction.sample(r) {
            continue;
        }
        let name: &[u8] = match &m.cluster {
            MirrorCluster::Named(c) => c.name.as_bytes(),
            MirrorCluster::Header(h) => match crate::http::trace::request_header(d, h.as_bytes()) {
                Some(v) if !v.is_empty() => v,
                _ => continue,
            },
        };
        let Some(cluster) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| snapshot.cluster(n))
        else {
            tracing::debug!(
                "mirror cluster '{}' does not exist",
                String::from_utf8_lossy(name)
            );
            continue;
        };
        let tee = Rc::new(RefCell::new(Tee::default()));
        if d.request_done() {
            tee.borrow_mut().set(State::Ended);
        }
        // `auto_host_rewrite` applies once the primary has its endpoint: Envoy's copy
        // was taken before, with the request's own host.
        let auto = fw.weighted.is_none_or(|w| w.host_rewrite.is_none())
            && matches!(
                f.more().host_rewrite,
                crate::model::route::HostRewrite::Auto
            );
        let own_host = auto.then(|| d.bytes(authority));
        let (head, span) = shadow_head(d, m, head, own_host);
        let job = Job {
            ctx: d.ctx().clone(),
            snapshot: snapshot.clone(),
            cluster: cluster.name.clone(),
            head,
            span,
            chunked: d.head().body == BodyKind::Chunked,
            h2_down: d.is_h2(),
            timeout,
            tee: tee.clone(),
        };
        monoio::spawn(job.run());
        tees.push(tee);
    }
    (!tees.is_empty()).then(|| {
        Rc::new(Mirrors {
            tees,
            primary: primary.stats.clone(),
            core: d.core(),
            abandoned: std::cell::Cell::new(false),
        })
    })
}

/// The mirror's head: the primary's, with its host, `x-envoy-internal`,
/// `x-forwarded-for` and trace context as Envoy's shadow writer and async client set them;
/// and the mirror's own span, when the request is traced and the mirror sampled.
fn shadow_head<D: Downstream>(
    d: &D,
    m: &Mirror,
    primary: &[u8],
    own_host: Option<&[u8]>,
) -> (Vec<u8>, Option<Span>) {
    // The trace context the primary's head carries is replaced by a child span's.
    let span = d.log().span.as_ref().filter(|_| d.hcm().tracing.is_some());
    let mut injected = Vec::new();
    if let Some(s) = span {
        crate::http::trace::write_context(d, s, s.parent.is_some(), &mut injected);
    }
    let injected_names: Vec<&[u8]> = lines(&injected).filter_map(|l| name_of(l)).collect();
    let mut out = Vec::with_capacity(primary.len() + 128);
    let local = d.ctx().local_ip.to_string();
    let mut xff = false;
    let mut it = lines(primary);
    if let Some(request_line) = it.next() {
        out.extend_from_slice(request_line);
        out.extend_from_slice(b"\r\n");
    }
    for line in it {
        let Some(name) = name_of(line) else { continue };
        let value = line[name.len() + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"host") {
            out.extend_from_slice(b"host: ");
            match (&m.host, own_host) {
                (Some(h), _) => out.extend_from_slice(h.as_bytes()),
                (None, Some(h)) => out.extend_from_slice(h),
                (None, None) => out.extend_from_slice(value),
            }
            if m.suffix {
                shadow_suffix(&mut out);
            }
            out.extend_from_slice(b"\r\n");
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // The proxy's address goes after the client's, where the header is.
            out.extend_from_slice(line);
            out.push(b',');
            out.extend_from_slice(local.as_bytes());
            out.extend_from_slice(b"\r\n");
            xff = true;
        } else if name.eq_ignore_ascii_case(b"x-envoy-internal")
            || (own_host.is_some() && name.eq_ignore_ascii_case(b"x-envoy-original-host"))
            || injected_names.iter().any(|n| n.eq_ignore_ascii_case(name))
        {
        } else {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"x-envoy-internal: true\r\n");
    if !xff {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(local.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut own = None;
    if let Some(s) = span {
        let child = crate::model::tracing::SpanCtx {
            id: fastrand::u64(1..),
            parent: Some(s.id),
            sampled: m.trace_sampled.unwrap_or(s.sampled),
            shared: false,
            ..*s
        };
        crate::http::trace::write_context(d, &child, s.parent.is_some(), &mut out);
        let tracer = d.hcm().tracing.as_ref().and_then(|t| t.tracer.clone());
        own = tracer.filter(|_| child.sampled).map(|tracer| Span {
            ctx: child,
            tracer,
            start: std::time::SystemTime::now(),
        });
    }
    out.extend_from_slice(b"\r\n");
    (out, own)
}

/// Appends `-shadow` to the host just written at the end of `out`, before its port.
fn shadow_suffix(out: &mut Vec<u8>) {
    let start = out.len() - out.iter().rev().position(|&b| b == b' ').unwrap_or(0);
    let host = &out[start..];
    // A port follows the last ':' unless it is inside an IPv6 literal's brackets.
    let port = match host.iter().rposition(|&b| b == b':') {
        Some(i) if !host[i..].contains(&b']') => Some(start + i),
        _ => None,
    };
    match port {
        Some(i) => {
            let tail = out.split_off(i);
            out.extend_from_slice(b"-shadow");
            out.extend_from_slice(&tail);
        }
        None => out.extend_from_slice(b"-shadow"),
    }
}

/// The lines of an HTTP/1 head, without their CRLF, up to the blank line.
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

fn name_of(line: &[u8]) -> Option<&[u8]> {
    let i = line.iter().position(|&b| b == b':')?;
    Some(&line[..i])
}
