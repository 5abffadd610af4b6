//! Worker cores: one pinned thread per core, each with its own monoio runtime, listeners,
//! pools and stats cells, from start to drain.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ctx::{CoreCtx, LogBatch};
use crate::model::SharedSnapshot;

/// Which io driver the cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Driver {
    /// io_uring when the kernel and seccomp allow it, else epoll with a warning.
    Auto,
    /// io_uring only (fails when unavailable).
    IoUring,
    /// The legacy epoll driver.
    Legacy,
}

/// Decides the driver once for the process.
pub fn resolve_driver(requested: Driver) -> Result<Driver, String> {
    let uring = monoio::utils::detect_uring();
    match requested {
        Driver::Auto if uring => Ok(Driver::IoUring),
        Driver::Auto => {
            tracing::warn!("io_uring is unavailable (kernel or seccomp profile); using the legacy epoll driver");
            Ok(Driver::Legacy)
        }
        Driver::IoUring if !uring => {
            Err("--io-driver io-uring was requested but io_uring is unavailable".into())
        }
        d => Ok(d),
    }
}

/// What the control thread asks of a core after start.
pub enum CoreCommand {
    /// Start serving a listener added or replaced by LDS (this core's socket).
    Listen(crate::listener::CoreListener),
    /// A listener changed but kept its address: same socket, new configuration.
    Update(Arc<crate::model::Listener>),
    /// Stop a listener removed by LDS and drain its connections.
    Stop(Arc<str>),
    /// A snapshot of this version was published: load it now and report it as served.
    Snapshot(u64),
    /// From the outlier detector: ejected hosts, or a request for volumes.
    Outlier(crate::outlier::ToCore),
    /// `/drain_listeners`: drain the connections of every listener (or of the inbound
    /// ones) with the drain strategy over `window`, and stop accepting after `stop_after`
    /// (`None`: keep accepting, `skip_exit`).
    Drain {
        inbound_only: bool,
        window: Duration,
        gradual: bool,
        stop_after: Option<Duration>,
    },
}

/// The snapshot version each core has loaded and when (for `/config_dump` and the publish
/// latency measurement), one cache line per core, plus the last publish.
pub struct Served {
    cores: Box<[crate::stats::Padded<(AtomicU64, AtomicU64)>]>,
    /// Version and start time (ns since [`Served::epoch`]) of the last publish.
    published: (AtomicU64, AtomicU64),
    epoch: Instant,
}

impl Served {
    pub fn new(cores: usize) -> Arc<Served> {
        Arc::new(Served {
            cores: (0..cores)
                .map(|_| crate::stats::Padded((AtomicU64::new(0), AtomicU64::new(0))))
                .collect(),
            published: (AtomicU64::new(0), AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The version core `k` serves.
    pub fn get(&self, k: usize) -> u64 {
        self.cores[k].0 .0.load(Ordering::Acquire)
    }

    /// Every core's version.
    pub fn all(&self) -> Vec<u64> {
        (0..self.cores.len()).map(|k| self.get(k)).collect()
    }

    fn set(&self, k: usize, v: u64) {
        let at = self.ns(Instant::now());
        self.cores[k].0 .1.store(at, Ordering::Relaxed);
        self.cores[k].0 .0.store(v, Ordering::Release);
    }

    /// Records a publish of `version` whose work began at `started` (the response's
    /// arrival).
    pub fn published(&self, version: u64, started: Instant) {
        self.published.1.store(self.ns(started), Ordering::Relaxed);
        self.published.0.store(version, Ordering::Release);
    }

    /// The last published version and, once every core serves it, how long it took from
    /// the response's arrival to the last core.
    pub fn last_publish(&self) -> (u64, Option<Duration>) {
        let v = self.published.0.load(Ordering::Acquire);
        let start = self.published.1.load(Ordering::Relaxed);
        let mut last = 0;
        for c in self.cores.iter() {
            if c.0 .0.load(Ordering::Acquire) < v {
                return (v, None);
            }
            last = last.max(c.0 .1.load(Ordering::Relaxed));
        }
        (v, Some(Duration::from_nanos(last.saturating_sub(start))))
    }
}

/// Everything one core starts with.
pub struct CoreStart {
    pub core: usize,
    pub cpu: Option<core_affinity::CoreId>,
    pub snapshot: SharedSnapshot,
    pub listeners: Vec<crate::listener::CoreListener>,
    pub drain: tokio::sync::watch::Receiver<bool>,
    pub drain_time: Duration,
    /// `--drain-strategy gradual`.
    pub gradual_drain: bool,
    /// How often buffered access-log lines go to the writer.
    pub log_flush_interval: Duration,
    pub log_tx: Option<Sender<LogBatch>>,
    pub hostname: Arc<str>,
    pub local_ip: std::net::IpAddr,
    pub commands: tokio::sync::mpsc::UnboundedReceiver<CoreCommand>,
    pub served: Arc<Served>,
}

/// Starts a core thread.
pub fn spawn(start: CoreStart, driver: Driver) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringside-core-{}", start.core))
        .spawn(move || {
            if let Some(cpu) = start.cpu {
                if !core_affinity::set_for_current(cpu) {
                    tracing::warn!(core = start.core, "could not pin to CPU {}", cpu.id);
                }
            }
            let result = match driver {
                Driver::IoUring => uring_runtime().map(|mut rt| rt.block_on(core_main(start))),
                Driver::Legacy | Driver::Auto => {
                    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| rt.block_on(core_main(start)))
                }
            };
            if let Err(e) = result {
                tracing::error!("cannot start the core runtime: {e}");
            }
        })
}

/// An io_uring runtime set up for one thread that owns its ring: completions are run when
/// the core asks for them (COOP_TASKRUN, DEFER_TASKRUN) instead of interrupting it with an
/// inter-processor interrupt each time a peer's packet lands. Older kernels get a plain ring.
fn uring_runtime(
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let tuned = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(urb)
        .with_entries(1024)
        .enable_timer()
        .build();
    tuned.or_else(|e| {
        tracing::warn!("io_uring without COOP/DEFER_TASKRUN ({e}); using a plain ring");
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(1024)
            .enable_timer()
            .build()
    })
}

/// How often a core closes its spent idle upstream connections.
const POOL_SWEEP: Duration = Duration::from_secs(1);

async fn core_main(start: CoreStart) {
    let ctx = Rc::new(CoreCtx::new(
        start.core,
        start.snapshot,
        start.drain.clone(),
        start.log_tx,
        start.hostname,
        start.local_ip,
    ));
    // Internal connections this core opens are served by its own internal listeners.
    let weak = Rc::downgrade(&ctx);
    crate::upstream::internal::set_acceptor(Box::new(move |a| match weak.upgrade() {
        Some(ctx) => crate::listener::accept_internal(&ctx, a),
        None => Err(a),
    }));
    for l in start.listeners {
        crate::listener::start(&ctx, l);
    }
    start.served.set(ctx.core, ctx.snapshot().version);
    let (cmd_ctx, served, mut commands) = (ctx.clone(), start.served.clone(), start.commands);
    monoio::spawn(async move {
        while let Some(cmd) = commands.recv().await {
            match cmd {
                CoreCommand::Listen(l) => crate::listener::start(&cmd_ctx, l),
                CoreCommand::Update(l) => crate::listener::update(&cmd_ctx, l),
                CoreCommand::Stop(name) => crate::listener::stop(&cmd_ctx, &name),
                CoreCommand::Drain {
                    inbound_only,
                    window,
                    gradual,
                    stop_after,
                } => crate::listener::drain(&cmd_ctx, inbound_only, window, gradual, stop_after),
                CoreCommand::Outlier(cmd) => {
                    cmd_ctx
                        .upstreams
                        .borrow_mut()
                        .outlier
                        .apply(cmd, cmd_ctx.core);
                }
                CoreCommand::Snapshot(_) => {
                    let snap = cmd_ctx.snapshot();
                    cmd_ctx.upstreams.borrow_mut().outlier.prune(&snap);
                    let v = snap.version;
                    served.set(cmd_ctx.core, v);
                }
            }
        }
    });
    monoio::spawn(crate::http::span::export::timer(ctx.clone()));
    // Idle upstream connections past their idle time or duration close within a tick,
    // even when no request asks for their endpoint again.
    // Both sleep while there is nothing to look after: an idle core takes no wake-ups.
    let sweeper = ctx.clone();
    monoio::spawn(async move {
        loop {
            std::future::poll_fn(|cx| {
                let u = sweeper.upstreams.borrow();
                u.sweeper.poll_until(cx, u.holds_connections())
            })
            .await;
            monoio::time::sleep(POOL_SWEEP).await;
            sweeper.upstreams.borrow_mut().sweep(Instant::now());
        }
    });
    let deadlines = ctx.clone();
    monoio::spawn(async move { deadlines.deadlines.sweep().await });
    let collector = ctx.clone();
    monoio::spawn(async move {
        loop {
            std::future::poll_fn(|cx| collector.freed.poll_noted(cx)).await;
            monoio::time::sleep(crate::io::PURGE_DELAY + Duration::from_millis(50)).await;
            crate::io::collect_freed();
        }
    });
    let flusher = ctx.clone();
    let flush_every = start.log_flush_interval;
    monoio::spawn(async move {
        loop {
            std::future::poll_fn(|cx| flusher.flusher.poll_until(cx, flusher.logs_pending())).await;
            monoio::time::sleep(flush_every).await;
            flusher.flush_logs();
            crate::http::otel::flush(&flusher, false);
        }
    });
    let mut drain = start.drain;
    let _ = drain.wait_for(|d| *d).await;
    ctx.drain_event.raise();
    for slot in ctx.listeners.borrow().values() {
        if start.gradual_drain {
            slot.shut_gradually(start.drain_time);
        } else {
            slot.shut();
        }
    }
    // Listeners stop accepting on their own; in-flight requests get until the deadline.
    let deadline = Instant::now() + start.drain_time;
    while ctx.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.active.get() > 0 {
        tracing::warn!(
            core = ctx.core,
            connections = ctx.active.get(),
            "drain time over; closing remaining connections"
        );
    }
    ctx.flush_logs();
    // Spans and OpenTelemetry records still batched go now; the core waits for their
    // exports a little while (a collector that does not answer does not hold the exit).
    crate::http::otel::flush(&ctx, true);
    crate::http::span::export::flush_all(&ctx);
    let deadline = Instant::now() + EXPORT_GRACE;
    while ctx.exports.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How long a stopping core waits for its last exports.
const EXPORT_GRACE: Duration = Duration::from_secs(2);
