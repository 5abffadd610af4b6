//! `CoreCtx`: what every connection task on one core shares (as `Rc`): the snapshot
//! cache, the upstream pools and LB state, the drain signal and the access-log buffer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use arc_swap::Cache;

use crate::model::{LogSink, SharedSnapshot, Snapshot};
use crate::upstream::Upstreams;
use crate::wake::Parked;

mod logs;
pub use logs::*;

/// What cores and the app send to the logger thread.
pub enum LogBatch {
    /// Formatted access-log lines for one sink.
    Lines(LogSink, Vec<u8>),
    /// Answer once everything sent before has been written.
    Sync(Sender<()>),
    /// Close and reopen every log file (admin `/reopen_logs`, after a rotation).
    Reopen,
}

/// Per-core context.
pub struct CoreCtx {
    pub core: usize,
    cache: RefCell<Cache<SharedSnapshot, Arc<Snapshot>>>,
    pub upstreams: RefCell<Upstreams>,
    /// This core's copies of the listeners' TLS configs (own session caches).
    pub tls: crate::tls::CoreConfigs,
    /// Becomes true when the process starts draining (from the control thread; watched by
    /// one task per core, which then raises `drain_event`).
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// The core-local copy of the drain signal that connections wait on: no locks, no
    /// atomics on the request path.
    pub drain_event: DrainEvent,
    /// Connections open on this core.
    pub active: Cell<usize>,
    /// HTTP/1.1 requests in progress on this core: with one, its writes go out at once
    /// (see [`crate::io::MaybeTls::write_all_now`]).
    pub requests: Cell<usize>,
    /// Every listener running on this core, by name.
    pub listeners: RefCell<std::collections::HashMap<Arc<str>, std::rc::Rc<Slot>>>,
    pub stdout_log: RefCell<Vec<u8>>,
    pub stderr_log: RefCell<Vec<u8>>,
    /// Lines for access-log files, by file id.
    file_logs: RefCell<Vec<Vec<u8>>>,
    /// OpenTelemetry access-log records, by logger id.
    pub otel_logs: RefCell<Vec<OtelBatch>>,
    /// The log flusher, parked while every buffer above is empty.
    pub flusher: Parked,
    /// Finished spans waiting for their export, by tracer id.
    pub traces: RefCell<Vec<logs::TraceBatch>>,
    /// The tracers' flush timer, parked until a tracer is first used on this core.
    pub tracer_timer: Parked,
    /// Memory freed in bulk on this core, returned to the OS after the allocator's delay.
    pub freed: crate::wake::Freed,
    /// Deadlines that seldom end by time (cold connections' idle timeouts), on one timer.
    pub deadlines: crate::wake::Deadlines,
    /// Exports (spans, OpenTelemetry records) under way from this core: a core that stops
    /// waits for them, briefly.
    pub exports: Cell<usize>,
    log_tx: Option<Sender<LogBatch>>,
    pub hostname: Arc<str>,
    /// The host's address, appended to `x-forwarded-for` for loopback peers.
    pub local_ip: std::net::IpAddr,
    /// Istio's decoded peers and `istio_*` series on this core.
    pub istio: crate::model::istio::IstioCore,
}

/// One listener running on a core: its configuration for new connections, the drain
/// event its current connections watch, and the stop event of its accept loop.
pub struct Slot {
    pub config: RefCell<Arc<crate::model::Listener>>,
    pub drain: RefCell<std::rc::Rc<DrainEvent>>,
    pub stop: DrainEvent,
    /// The address the socket is bound to (port 0 resolved): the accepting address.
    pub bound: std::net::SocketAddr,
}

impl Slot {
    /// Stops accepting and drains every connection.
    pub fn shut(&self) {
        self.stop.raise();
        self.drain.borrow().raise();
    }

    /// Stops accepting and drains every connection with `--drain-strategy gradual`:
    /// connections are asked to close spread over `window`.
    pub fn shut_gradually(&self, window: std::time::Duration) {
        self.stop.raise();
        self.drain.borrow().raise_gradually(window);
    }
}

/// One request in flight to an upstream host: it counts in the cluster's
/// `upstream_rq_active` and, for LEAST_REQUEST, in the host's load, from the moment the
/// proxy starts sending it until the guard drops, however the exchange ends. Every codec
/// pairing (HTTP/1.1 or HTTP/2 on either side) counts through it.
pub struct UpstreamRequest<'c> {
    ctx: &'c CoreCtx,
    cluster: &'c crate::model::Cluster,
    addr: std::net::SocketAddr,
}

impl CoreCtx {
    /// Counts a request to `addr` of `cluster` as in flight (see [`UpstreamRequest`]).
    pub fn upstream_request<'c>(
        &'c self,
        cluster: &'c crate::model::Cluster,
        addr: std::net::SocketAddr,
    ) -> UpstreamRequest<'c> {
        cluster
            .stats
            .core(self.core)
            .inc(crate::stats::ClusterStat::UpstreamRqActive as usize);
        if matches!(cluster.lb, crate::model::LbPolicy::LeastRequest { .. }) {
            self.upstreams
                .borrow_mut()
                .request_started(&cluster.name, addr);
        }
        UpstreamRequest {
            ctx: self,
            cluster,
            addr,
        }
    }
}

impl UpstreamRequest<'_> {
    /// The response arrived whole: `upstream_rq_completed`, and `upstream_rq_time` since
    /// the request was sent. Returns the time it read, for the downstream request's own
    /// histogram (one clock read for both).
    pub fn complete(&self, sent: std::time::Instant) -> std::time::Instant {
        self.complete_at(sent, std::time::Instant::now())
    }

    /// As [`UpstreamRequest::complete`], the response having ended at `now`.
    pub fn complete_at(
        &self,
        sent: std::time::Instant,
        now: std::time::Instant,
    ) -> std::time::Instant {
        let cells = self.cluster.stats.core(self.ctx.core);
        cells.inc(crate::stats::ClusterStat::UpstreamRqCompleted as usize);
        cells.record(
            crate::stats::ClusterHistogram::UpstreamRqTime as usize,
            now.saturating_duration_since(sent).as_millis() as u64,
        );
        now
    }
}

impl Drop for UpstreamRequest<'_> {
    fn drop(&mut self) {
        let (ctx, cluster) = (self.ctx, self.cluster);
        cluster
            .stats
            .core(ctx.core)
            .dec(crate::stats::ClusterStat::UpstreamRqActive as usize);
        if matches!(cluster.lb, crate::model::LbPolicy::LeastRequest { .. }) {
            ctx.upstreams
                .borrow_mut()
                .request_finished(&cluster.name, self.addr);
        }
    }
}

/// One request counted in [`CoreCtx::requests`] (see [`CoreCtx::request_started`]).
pub struct RequestInProgress<'a>(&'a Cell<usize>);

impl<'a> RequestInProgress<'a> {
    fn enter(count: &'a Cell<usize>) -> Self {
        count.set(count.get() + 1);
        RequestInProgress(count)
    }
}

impl Drop for RequestInProgress<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl CoreCtx {
    pub fn new(
        core: usize,
        shared: SharedSnapshot,
        drain: tokio::sync::watch::Receiver<bool>,
        log_tx: Option<Sender<LogBatch>>,
        hostname: Arc<str>,
        local_ip: std::net::IpAddr,
    ) -> Self {
        CoreCtx {
            core,
            cache: RefCell::new(Cache::new(shared)),
            upstreams: RefCell::new(Upstreams::new(core)),
            tls: crate::tls::CoreConfigs::default(),
            drain,
            drain_event: DrainEvent::default(),
            active: Cell::new(0),
            requests: Cell::new(0),
            listeners: RefCell::new(std::collections::HashMap::new()),
            stdout_log: RefCell::new(Vec::new()),
            stderr_log: RefCell::new(Vec::new()),
            file_logs: RefCell::new(Vec::new()),
            otel_logs: RefCell::new(Vec::new()),
            flusher: Parked::default(),
            traces: RefCell::new(Vec::new()),
            tracer_timer: Parked::default(),
            freed: Default::default(),
            deadlines: Default::default(),
            exports: Cell::new(0),
            log_tx,
            hostname,
            local_ip,
            istio: Default::default(),
        }
    }

    /// The current snapshot. Cheap when unchanged: no refcount traffic unless it moved.
    /// Counts an HTTP/1.1 request in `requests` for as long as the guard lives (also when
    /// its connection's future is dropped mid-request or unwinds from a panic).
    pub fn request_started(&self) -> RequestInProgress<'_> {
        RequestInProgress::enter(&self.requests)
    }

    pub fn refresh(&self, held: &mut Arc<Snapshot>) {
        let mut cache = self.cache.borrow_mut();
        let current = cache.load();
        if !Arc::ptr_eq(current, held) {
            *held = current.clone();
        }
    }

    /// The current snapshot (a new reference).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cache.borrow_mut().load().clone()
    }

    /// The global downstream connection limit, if the bootstrap sets one (no snapshot
    /// refcount traffic when it does not).
    pub fn global_cx(&self) -> Option<Arc<crate::model::overload::GlobalConnLimit>> {
        self.cache.borrow_mut().load().global_cx.clone()
    }

    /// True once draining started on this core.
    pub fn draining(&self) -> bool {
        self.drain_event.raised()
    }
}

/// A single-threaded, one-shot event: set once, wakes every waiter. Waiters deregister when
/// dropped, so an idle keep-alive connection that waits on it for every request leaves
/// nothing behind.
#[derive(Default)]
pub struct DrainEvent {
    raised: Cell<bool>,
    /// A gradual drain (Envoy's `--drain-strategy gradual`): when it began and over how
    /// long connections are asked to close. `None`: all at once.
    gradual: Cell<Option<(std::time::Instant, std::time::Duration)>>,
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl DrainEvent {
    /// True once raised.
    pub fn raised(&self) -> bool {
        self.raised.get()
    }

    /// Whether a connection should close now (Envoy's `drainClose()`): always once an
    /// immediate drain is raised; during a gradual one, with a probability that grows
    /// from 0 to 1 over the drain window.
    pub fn should_close(&self) -> bool {
        if !self.raised.get() {
            return false;
        }
        match self.gradual.get() {
            None => true,
            Some((began, window)) => {
                let elapsed = began.elapsed().as_secs_f64();
                let window = window.as_secs_f64();
                window <= 0.0 || fastrand::f64() * window < elapsed
            }
        }
    }

    /// Raises the event as a gradual drain over `window`.
    pub fn raise_gradually(&self, window: std::time::Duration) {
        if !self.raised.get() {
            self.gradual.set(Some((std::time::Instant::now(), window)));
        }
        self.raise();
    }

    /// Completes when this connection's turn to close comes: at once for an immediate
    /// drain, at a uniformly drawn moment of a gradual drain's window (so that by time
    /// `t` a share `t / window` of idle connections have closed, as Envoy's gradual
    /// strategy asks).
    pub async fn turn(&self) {
        self.wait().await;
        if let Some(left) = self.turn_left() {
            monoio::time::sleep(left).await;
        }
    }

    /// Once raised: how long until this connection's turn in a gradual drain (drawn anew
    /// at each call); `None` when it is now.
    pub fn turn_left(&self) -> Option<std::time::Duration> {
        let (began, window) = self.gradual.get()?;
        let at = began + window.mul_f64(fastrand::f64());
        let left = at.saturating_duration_since(std::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Raises the event and wakes every waiter.
    pub fn raise(&self) {
        self.raised.set(true);
        for w in self.waiters.borrow_mut().iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    /// Completes once the event is raised.
    pub fn wait(&self) -> Raised<'_> {
        Raised {
            event: self,
            slot: None,
        }
    }
}

/// The future of [`DrainEvent::wait`].
pub struct Raised<'a> {
    event: &'a DrainEvent,
    slot: Option<usize>,
}

impl Future for Raised<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let event = self.event;
        if event.raised.get() {
            return Poll::Ready(());
        }
        let mut waiters = event.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut waiters[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                let i = match event.free.borrow_mut().pop() {
                    Some(i) => {
                        waiters[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            self.event.waiters.borrow_mut()[i] = None;
            self.event.free.borrow_mut().push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of requests in progress comes back down however a request ends: returned,
    /// dropped while waiting (a connection closed mid-request), or unwound by a panic.
    #[test]
    fn requests_in_progress_are_counted_until_their_future_ends() {
        let count = Cell::new(0);
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let finished = async {
                let _c = RequestInProgress::enter(&count);
                assert_eq!(count.get(), 1);
            };
            finished.await;
            assert_eq!(count.get(), 0);
            let slow = async {
                let _c = RequestInProgress::enter(&count);
                monoio::time::sleep(std::time::Duration::from_secs(60)).await;
            };
            let cut = monoio::time::timeout(std::time::Duration::from_millis(1), slow).await;
            assert!(cut.is_err());
            assert_eq!(count.get(), 0);
        });
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _c = RequestInProgress::enter(&count);
            assert_eq!(count.get(), 1);
            panic!("a request's task panics");
        }));
        assert!(panicked.is_err());
        assert_eq!(count.get(), 0);
    }

    #[test]
    fn waiters_wake_once_raised_and_slots_are_reused() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let ev = std::rc::Rc::new(DrainEvent::default());
            // Many short waits (one per request) leave no slots behind.
            for _ in 0..1000 {
                let w = ev.wait();
                let _ = monoio::time::timeout(std::time::Duration::from_micros(1), w).await;
            }
            assert!(ev.waiters.borrow().len() <= 1);
            let e2 = ev.clone();
            let waiter = monoio::spawn(async move { e2.wait().await });
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            ev.raise();
            waiter.await;
            assert!(ev.raised());
        });
    }
}

/// Where a downstream connection came from and was going.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub peer: std::net::SocketAddr,
    /// The destination: the original one when restored, else the local address.
    pub dst: std::net::SocketAddr,
    /// Whether `dst` was restored from SO_ORIGINAL_DST (REDIRECT interception).
    pub restored: bool,
    /// The address of the listener whose socket accepted it (before any hand-over).
    pub via: std::net::SocketAddr,
    /// Whether the connection is TLS (`x-forwarded-proto: https`).
    pub tls: bool,
    /// The client's certificate, when it presented one (mutual TLS).
    pub client_cert: Option<std::rc::Rc<crate::peer_cert::ClientCert>>,
    /// SNI and identities, on TLS chains whose RBAC or `istio_authn` read them.
    pub authn: Option<std::rc::Rc<crate::rbac::Authn>>,
    /// The connection's filter state objects (the network `set_filter_state`'s, and on an
    /// internal connection those its opener shared).
    pub objects: Option<std::rc::Rc<[crate::model::filter_state::Object]>>,
    /// An internal connection: what it was handed (its dynamic metadata).
    pub internal: Option<std::rc::Rc<crate::model::internal::Hello>>,
}

impl Downstream {
    /// The connection's filter state object `key`: `set_filter_state`'s, else
    /// `istio_authn`'s principals (on chains where it runs).
    pub fn filter_object(
        &self,
        key: &str,
        istio_authn: bool,
    ) -> Option<crate::model::filter_state::Found<'_>> {
        self.objects
            .as_deref()
            .and_then(|o| crate::model::filter_state::find(o, key))
            .or_else(|| self.authn.as_deref()?.filter_object(key, istio_authn))
    }

    /// Whether connecting to the destination (an ORIGINAL_DST cluster) would come back to
    /// the socket that accepted this connection: a loop.
    pub fn loops_back(&self) -> bool {
        let (d, v) = (self.dst, self.via);
        d.port() == v.port() && (d.ip() == v.ip() || v.ip().is_unspecified())
    }

    /// The filter state objects this connection hands an internal connection it opens:
    /// those shared with the upstream (`istio_authn`'s principals among them where it
    /// shares them).
    pub fn shared_objects(&self) -> Vec<crate::model::filter_state::Object> {
        self.objects
            .as_deref()
            .map(|o| crate::model::filter_state::shared(o).collect())
            .unwrap_or_default()
    }

    /// Where an ORIGINAL_DST cluster connects this connection's traffic, as Envoy's
    /// chooses: the filter state `envoy.network.transport_socket.original_dst_address`
    /// (Istio's HBONE sets it), else the cluster's `metadata_key` in the connection's
    /// dynamic metadata, else the (restored) destination; then the cluster's
    /// `upstream_port_override`.
    pub fn original_dst_target(&self, c: &crate::model::OriginalDstConfig) -> std::net::SocketAddr {
        use crate::model::internal::DESTINATION_ADDRESS;
        let from_state = self
            .objects
            .as_deref()
            .and_then(|o| crate::model::filter_state::find(o, DESTINATION_ADDRESS))
            .and_then(|f| f.value.parse().ok());
        let from_metadata = || {
            let (ns, key) = c.metadata_key.as_ref()?;
            self.internal
                .as_deref()?
                .metadata_str(ns, key)?
                .parse()
                .ok()
        };
        let mut a = from_state.or_else(from_metadata).unwrap_or(self.dst);
        if let Some(p) = c.port_override {
            a.set_port(p);
        }
        a
    }
}

/// Runs a future, turning a panic inside it into `Err(())` so that one connection's bug
/// cannot take the whole core down.
pub struct CatchUnwind<F: ?Sized>(pub Pin<Box<F>>);

impl<F: Future + ?Sized> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Boxes the future `make` returns, allocating first so that the future can be written
/// where it will live. `Box::pin(f)` builds `f` on the stack and then copies all of it,
/// its largest state included, into the box: 5–7 KB for a connection's setup and request
/// path, copied once per connection.
#[inline(always)]
#[allow(unsafe_code)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut b = Box::<F>::new_uninit();
    b.write(make());
    // SAFETY: written just above.
    Box::into_pin(unsafe { b.assume_init() })
}
