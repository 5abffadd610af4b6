//! HTTP/2 with the `h2` crate over monoio's poll-io bridge: downstream connections
//! (`server`), upstream connections from the core's pool, flow-controlled body pumps and
//! the head conversions to and from the HTTP/1 form the request path works on.

pub mod convert;
pub mod flood;
pub(crate) mod streams;
pub(crate) mod tunnel;

use std::cell::Cell;
use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use crate::ctx::CoreCtx;
use crate::http::error::HttpError;
use crate::http::forwarding::with_timeout;
use crate::model::{Cluster, Endpoint, Http2Settings};
use crate::upstream::h2pool::H2Conn;

/// The HTTP/2 connection preface a client opens with (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection to `ep` from the core's HTTP/2 pool with room for one more stream, or a
/// new one.
pub(crate) async fn upstream(
    ctx: &CoreCtx,
    cluster: &Cluster,
    ep: &Endpoint,
    settings: Http2Settings,
) -> Result<H2Conn, HttpError> {
    use crate::upstream::h2pool::{Failure, Outcome};
    let key = cluster.pool_key(ep);
    let opening = loop {
        let waiting = {
            let mut u = ctx.upstreams.borrow_mut();
            if let Some(c) = u.h2.get(ctx.core, ep.address, key) {
                return Ok(c);
            }
            match u
                .h2
                .wait_or_open(ep.address, key, settings.max_concurrent_streams)
            {
                Ok(waiting) => waiting,
                Err(opening) => break opening,
            }
        };
        // Another stream is opening a connection: its outcome is this one's.
        match waiting.outcome().await {
            Outcome::Opened | Outcome::Abandoned => continue,
            Outcome::Failed(f) => return Err(HttpError::connect(f.error())),
        }
    };
    let opened = crate::upstream::connect_h2(ctx.core, cluster, ep, settings).await;
    let mut u = ctx.upstreams.borrow_mut();
    match opened {
        Ok(conn) => {
            u.h2.add(conn.clone());
            u.sweeper.wake();
            opening.end(&mut u.h2, Outcome::Opened);
            Ok(conn)
        }
        Err(e) => {
            opening.end(&mut u.h2, Outcome::Failed(Failure::of(&e)));
            Err(HttpError::connect(e))
        }
    }
}

/// Sends `data` as flow control allows: never more than the peer granted, so what the
/// proxy holds for a stream stays within its window.
pub(crate) async fn send_all(
    to: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return to.send_data(data, end);
    }
    while !data.is_empty() {
        to.reserve_capacity(data.len());
        let mut n = to.capacity();
        if n == 0 {
            n = match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(e),
                None => return Err(h2::Reason::CANCEL.into()),
            };
        }
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        to.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

/// What sees each chunk a pump moves (`None`: the body ended with trailers).
pub(crate) type Record<'a> = Option<&'a dyn Fn(Option<&[u8]>)>;

/// Why a pump stopped.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// The source stream failed or was reset.
    Recv(h2::Error),
    /// The sink stream failed or was reset.
    Send,
    /// Nothing arrived for the stream idle timeout, or the route's deadline passed.
    Timeout,
}

/// Moves a stream's body and trailers from `from` to `to`, returning window to the sender
/// only once the bytes went on: a slow reader slows the writer instead of filling memory.
/// `idle` bounds each wait for the source, `deadline` the whole body. Returns the body
/// bytes moved.
pub(crate) async fn pump(
    from: &mut RecvStream,
    to: &mut SendStream<Bytes>,
    idle: Option<Duration>,
    deadline: Option<&RouteDeadline>,
    mut grpc: Option<GrpcTap<'_>>,
    // Sees each chunk as it goes (a request body kept for retries).
    record: Record<'_>,
) -> Result<u64, PumpError> {
    let mut moved = 0u64;
    loop {
        let next = monoio::select! {
            n = with_timeout(idle, from.data()) => n.ok_or(PumpError::Timeout)?,
            _ = RouteDeadline::passed(deadline) => return Err(PumpError::Timeout),
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(PumpError::Recv)?;
        let n = chunk.len();
        if n == 0 {
            continue;
        }
        if let Some(tap) = &mut grpc {
            tap.frames.inspect(&chunk);
        }
        if let Some(record) = record {
            record(Some(&chunk));
        }
        send_all(to, chunk, false)
            .await
            .map_err(|_| PumpError::Send)?;
        moved += n as u64;
        let _ = from.flow_control().release_capacity(n);
    }
    let trailers = monoio::select! {
        t = with_timeout(idle, from.trailers()) => t.ok_or(PumpError::Timeout)?,
        _ = RouteDeadline::passed(deadline) => return Err(PumpError::Timeout),
    };
    match trailers.map_err(PumpError::Recv)? {
        Some(t) => {
            if let Some(record) = record {
                record(None);
            }
            if let Some(GrpcTap {
                call: Some(call), ..
            }) = &grpc
            {
                call.trailers(&t);
            }
            to.send_trailers(t).map_err(|_| PumpError::Send)?
        }
        None => to
            .send_data(Bytes::new(), true)
            .map_err(|_| PumpError::Send)?,
    }
    Ok(moved)
}

/// What grpc_stats sees of a body pumped between HTTP/2 streams: its messages, and (on the
/// response side) the `grpc-status` of its trailers.
pub(crate) struct GrpcTap<'a> {
    pub frames: &'a mut crate::http::filter::grpc_stats::Frames,
    pub call: Option<&'a crate::http::filter::grpc_stats::Call>,
}

/// A stream's route timeout. As in Envoy it starts once the request has fully arrived, so
/// a client still streaming (gRPC client or bidirectional streaming) is not cut off; the
/// request side marks that moment, the response side waits on it.
#[derive(Clone)]
pub(crate) struct RouteDeadline {
    timeout: Option<Duration>,
    request_done: Rc<Cell<Option<Instant>>>,
}

impl RouteDeadline {
    pub(crate) fn new(timeout: Option<Duration>, request_done: bool) -> Self {
        RouteDeadline {
            timeout,
            request_done: Rc::new(Cell::new(request_done.then(Instant::now))),
        }
    }

    /// The request's last byte arrived.
    pub(crate) fn request_done(&self) {
        if self.request_done.get().is_none() {
            self.request_done.set(Some(Instant::now()));
        }
    }

    /// When the timeout passes, once it is known.
    /// The same request's end with another timeout (an attempt's own).
    pub(crate) fn with_timeout(&self, timeout: Duration) -> RouteDeadline {
        RouteDeadline {
            timeout: Some(timeout),
            request_done: self.request_done.clone(),
        }
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub(crate) fn at(&self) -> Option<Instant> {
        Some(self.request_done.get()? + self.timeout?)
    }

    /// Resolves when the deadline passes; never without a timeout.
    pub(crate) async fn passed(this: Option<&Self>) {
        let Some((d, t)) = this.and_then(|d| Some((d, d.timeout?))) else {
            return std::future::pending().await;
        };
        loop {
            match d.at() {
                Some(at) => {
                    monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
                    return;
                }
                // Still receiving the request: look again later.
                None => monoio::time::sleep(t).await,
            }
        }
    }
}

/// The reset to pass on for a pump that stopped on `e`.
pub(crate) fn reason(e: &h2::Error) -> h2::Reason {
    e.reason().unwrap_or(h2::Reason::CANCEL)
}
