//! Start and stop, in order: bootstrap → first snapshot (DNS warmed) → bind → workers →
//! control loop (admin, DNS, signals) → drain → exit.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config;
use crate::ctx::LogBatch;
use crate::model::{convert, LogSink};
use crate::stats::{ServerStat, Store};
use crate::worker::{self, CoreStart, Driver};

/// Command-line choices that shape a run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_path: Option<PathBuf>,
    pub config_yaml: Option<String>,
    /// `--allow-unknown-static-fields`: drop bootstrap fields outside Envoy's API.
    pub allow_unknown_static_fields: bool,
    pub concurrency: Option<usize>,
    pub validate_only: bool,
    pub drain_time: Duration,
    pub driver: Driver,
    pub admin_address_path: Option<PathBuf>,
    pub command_line: Vec<String>,
    /// `--drain-strategy gradual` (Envoy's default): connections are asked to close
    /// spread over the drain time, not all at once.
    pub gradual_drain: bool,
    /// `--local-address-ip-version v6`.
    pub local_address_v6: bool,
    /// `--file-flush-interval-msec`: how often the cores hand access-log lines over.
    pub log_flush_interval: Option<Duration>,
    /// `--log-format` was given (exclusive with the bootstrap's `application_log_config`).
    pub cli_log_format: bool,
    /// `--service-cluster`, `--service-node`, `--service-zone`: override the bootstrap's
    /// node.
    pub service_cluster: Option<String>,
    pub service_node: Option<String>,
    pub service_zone: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_path: None,
            config_yaml: None,
            allow_unknown_static_fields: false,
            concurrency: None,
            validate_only: false,
            drain_time: Duration::from_secs(600),
            driver: Driver::Auto,
            admin_address_path: None,
            command_line: Vec::new(),
            gradual_drain: true,
            local_address_v6: false,
            log_flush_interval: None,
            cli_log_format: false,
            service_cluster: None,
            service_node: None,
            service_zone: None,
        }
    }
}

/// Why the process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{location}: {err}")]
    Convert {
        location: String,
        err: convert::ConvertError,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Driver(String),
    #[error("{0}")]
    Logging(String),
}

/// Runs Ringside; returns the process exit code.
pub fn run(opts: Options) -> Result<i32, StartError> {
    let mut loaded = load_compact(&opts)?;
    override_node(&mut loaded.bootstrap, &opts);
    let (bootstrap, origin) = (&loaded.bootstrap, &loaded.source);
    let concurrency = opts
        .concurrency
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let stats = Store::new(concurrency);
    let control = stats.control_core();
    let (mut snapshot, ignored, sds_files) =
        convert::bootstrap_snapshot_with(bootstrap, &stats, 1, Some(config::read_sds_file))
            .map_err(|err| StartError::Convert {
                location: loaded.locate(&err.path),
                err,
            })?;
    if let Some(alc) = &bootstrap.application_log_config {
        use crate::proto::envoy::config::bootstrap::v3::bootstrap::application_log_config::log_format::LogFormat as F;
        let (text, json) = match alc.log_format.as_ref().and_then(|f| f.log_format.as_ref()) {
            Some(F::TextFormat(t)) => (Some(t.as_str()), None),
            Some(F::JsonFormat(j)) => (None, Some(j)),
            None => (None, None),
        };
        let format = crate::logging::bootstrap_format(text, json, opts.cli_log_format)
            .map_err(StartError::Logging)?;
        if let (Some(f), false) = (format, opts.validate_only) {
            crate::logging::set_format(f);
        }
    }
    let server = stats.scope::<ServerStat>("server.");
    for path in &loaded.unknown_fields {
        tracing::warn!(
            "Unknown field in bootstrap, dropped (--allow-unknown-static-fields): {path}"
        );
        server
            .core(control)
            .inc(ServerStat::StaticUnknownFields as usize);
    }
    for path in &ignored {
        tracing::info!("ignoring tuning knob {path} (see docs/configuration.md: ignored fields)");
        server
            .core(control)
            .inc(ServerStat::IgnoredConfigFields as usize);
    }
    if opts.validate_only {
        println!("configuration '{origin}' OK");
        return Ok(0);
    }
    let driver = worker::resolve_driver(opts.driver).map_err(StartError::Driver)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::xds::dns::warm(&mut snapshot, control));
    let admin_addr = snapshot.admin;
    let ads = match &bootstrap.dynamic_resources {
        Some(dr) => convert::ads_config(dr).map_err(|err| StartError::Convert {
            location: loaded.locate(&err.path),
            err,
        })?,
        None => None,
    };
    let mut statics = crate::xds::state::Static::from_snapshot(&snapshot);
    statics.sds_files = sds_files;
    if let Some(cfg) = &ads {
        crate::xds::transport::target(cfg, &statics)
            .map_err(|e| StartError::Driver(format!("{origin}: {e}")))?;
    }
    // With ADS, no listener (the bootstrap's included) binds before the first CDS and LDS
    // responses are applied, as Envoy's init manager holds its workers: a connection
    // before then is refused rather than served without configuration.
    let awaits_xds = ads.as_ref().is_some_and(|a| a.cds || a.lds);
    if awaits_xds {
        snapshot.listeners = Vec::new();
        snapshot.virtual_listeners = crate::model::virtual_index(&snapshot.listeners);
    }
    let bound = crate::listener::bind_all(&snapshot, concurrency)?;
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));
    let served = worker::Served::new(concurrency);
    let (cmd_tx, cmd_rx): (Vec<_>, Vec<_>) = (0..concurrency)
        .map(|_| tokio::sync::mpsc::unbounded_channel())
        .unzip();
    let mut cmd_rx = cmd_rx.into_iter();
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);

    let log_tx = spawn_logger()?;
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let hostname: Arc<str> = hostname().into();
    // Envoy's local address (`--local-address-ip-version`, v4 by default): what a loopback
    // peer is recorded as in x-forwarded-for; loopback itself when the host has no other.
    let local_ip =
        crate::io::host_address(opts.local_address_v6).unwrap_or(if opts.local_address_v6 {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        } else {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        });
    let mut workers = Vec::with_capacity(concurrency);
    for (core, listeners) in bound.per_core.into_iter().enumerate() {
        workers.push(worker::spawn(
            CoreStart {
                core,
                cpu: (!cpus.is_empty()).then(|| cpus[core % cpus.len()]),
                snapshot: shared.clone(),
                listeners,
                drain: drain_rx.clone(),
                drain_time: opts.drain_time,
                gradual_drain: opts.gradual_drain,
                log_flush_interval: opts
                    .log_flush_interval
                    .unwrap_or(Duration::from_millis(200)),
                log_tx: Some(log_tx.clone()),
                hostname: hostname.clone(),
                local_ip,
                commands: cmd_rx.next().expect("one command channel per core"),
                served: served.clone(),
            },
            driver,
        )?);
    }
    server
        .core(control)
        .add(ServerStat::ConcurrencyWorkers as usize, concurrency as u64);
    server.core(control).add(ServerStat::Live as usize, 1);
    tracing::info!(
        concurrency,
        driver = ?driver,
        listeners = ?bound.addresses,
        "ringside started"
    );

    let admin_cores = cmd_tx.clone();
    // Outlier detection's decisions, on this thread; the cores report to it.
    let (outlier_tx, outlier_rx) = tokio::sync::mpsc::unbounded_channel();
    crate::outlier::register(outlier_tx);
    let outlier_cores = cmd_tx.clone();
    let mut detector = crate::outlier::detector::Detector::new(
        control,
        concurrency,
        Box::new(move |k, cmd| {
            let _ = outlier_cores[k].send(worker::CoreCommand::Outlier(cmd));
        }),
    );
    // Active health checks, on this thread too.
    let health_cores = cmd_tx.clone();
    let checker = crate::health::Checker::new(
        control,
        concurrency,
        Box::new(move |k, cmd| {
            let _ = health_cores[k].send(worker::CoreCommand::Outlier(cmd));
        }),
    );
    if let Some(path) = bootstrap
        .cluster_manager
        .as_ref()
        .and_then(|cm| cm.outlier_detection.as_ref())
        .map(|o| o.event_log_path.as_str())
        .filter(|p| !p.is_empty())
    {
        detector.log_events_to(path);
    }
    let publisher = crate::xds::publish::Publisher::new(
        shared.clone(),
        cmd_tx,
        served.clone(),
        bound.addresses,
    );
    let initialized = Arc::new(AtomicBool::new(!awaits_xds));
    let current = shared.clone();
    stats.set_computed(Box::new(move |emit| {
        crate::admin::breaker_stats(&current.load(), emit)
    }));
    let state = Arc::new(crate::admin::AdminState {
        snapshot: shared.clone(),
        stats: stats.clone(),
        listeners: publisher.addresses.clone(),
        served: served.clone(),
        initialized: initialized.clone(),
        started: Instant::now(),
        concurrency,
        drain: drain_tx,
        failing: AtomicBool::new(false),
        command_line: opts.command_line.clone(),
        driver: format!("{driver:?}"),
        cores: admin_cores,
        drain_time: opts.drain_time,
        gradual_drain: opts.gradual_drain,
        draining: std::sync::atomic::AtomicU8::new(0),
        // Checked with the rest of the bootstrap above.
        access_logs: convert::admin_access_logs(bootstrap).unwrap_or_default(),
        log_tx: Some(log_tx.clone()),
        hostname: hostname.clone(),
        outliers: detector.views.clone(),
        health: checker.views.clone(),
    });
    // The control thread's tasks share its xDS state (ADS and SDS streams): a LocalSet.
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&rt, async {
        if let Some(addr) = admin_addr {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            tracing::info!("admin listening on {local}");
            if let Some(p) = &opts.admin_address_path {
                std::fs::write(p, local.to_string())?;
            }
            tokio::spawn(crate::admin::serve(listener, state.clone()));
        }
        tokio::spawn(crate::xds::dns::refresh_loop(shared.clone(), control));
        tokio::task::spawn_local(crate::outlier::detector::run(
            shared.clone(),
            outlier_rx,
            detector,
        ));
        tokio::task::spawn_local(crate::health::run(shared.clone(), checker));
        crate::xds::jwks::serve(shared.clone(), control);
        tokio::spawn(release_idle_memory());
        // Checked with the bootstrap before the cores started.
        if let Ok(sinks) = convert::stats_sinks(bootstrap) {
            if !sinks.is_empty() {
                let node = bootstrap.node.clone().unwrap_or_default();
                tokio::spawn(crate::stat_sinks::run(
                    stats.clone(),
                    sinks,
                    node,
                    shared.clone(),
                ));
            }
        }
        // The control thread's xDS side: ADS when configured, the SDS streams, and the
        // watch on SDS files (which also rotates the certificates of static listeners and
        // clusters). Static clusters an SDS server feeds were left out of the first
        // snapshot: the control thread holds them until their secrets arrive.
        let fed = bootstrap
            .static_resources
            .as_ref()
            .is_some_and(|sr| sr.clusters.len() > statics.clusters.len());
        if ads.is_some() || !statics.sds_files.is_empty() || fed {
            let ctl =
                crate::xds::control::Control::new(publisher, statics, stats.clone(), initialized);
            let ctl = std::rc::Rc::new(std::cell::RefCell::new(ctl));
            let node = bootstrap.node.clone().unwrap_or_default();
            tokio::task::spawn_local(crate::xds::sds::supervise(node.clone(), ctl.clone()));
            tokio::task::spawn_local(crate::xds::sds::watch_files(ctl.clone()));
            tokio::task::spawn_local(crate::xds::control::init_timer(ctl.clone()));
            if let Some(cfg) = ads {
                tokio::task::spawn_local(crate::xds::client::run(cfg, node, ctl));
            }
        }
        let mut drain = state.drain.subscribe();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
            _ = drain.wait_for(|d| *d) => tracing::info!("/quitquitquit: draining"),
        }
        let _ = state.drain.send(true);
        let deadline = Instant::now() + opts.drain_time + Duration::from_secs(2);
        while workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all_done = workers.iter().all(|w| w.is_finished());
        Ok::<(i32, bool), std::io::Error>((0, all_done))
    })?;
    let (code, all_done) = code;
    // The cores flushed their buffers on the way out; wait until the logger wrote them.
    if all_done {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if log_tx.send(LogBatch::Sync(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(Duration::from_secs(2));
        }
    }
    tracing::info!("ringside stopped");
    Ok(code)
}

/// `--service-cluster`, `--service-node`, `--service-zone`: they override the bootstrap's
/// node, as in Envoy.
fn override_node(b: &mut crate::proto::envoy::config::bootstrap::v3::Bootstrap, opts: &Options) {
    if opts.service_cluster.is_none() && opts.service_node.is_none() && opts.service_zone.is_none()
    {
        return;
    }
    let node = b.node.get_or_insert_with(Default::default);
    if let Some(c) = &opts.service_cluster {
        node.cluster = c.clone();
    }
    if let Some(n) = &opts.service_node {
        node.id = n.clone();
    }
    if let Some(z) = &opts.service_zone {
        node.locality.get_or_insert_with(Default::default).zone = z.clone();
    }
}

/// Loads the bootstrap on a short-lived thread and keeps a copy made here.
///
/// Parsing goes through the descriptor pool and a dynamic message: megabytes of heap that
/// live only while it runs. Allocated on this thread they would share allocator pages with
/// what lives on, and pages that keep one live object stay resident: the parse's garbage
/// would stay part of the idle resident set. On its own thread it leaves behind only pages
/// that are wholly free once the parsed copy is dropped, and the allocator returns them.
fn load_compact(opts: &Options) -> Result<config::Loaded, StartError> {
    // prost-reflect's global pool (the well-known types, which decoding our pool consults
    // for options) lives for the whole process: built first, its pages hold nothing else.
    let _ = prost_reflect::DescriptorPool::global();
    let parsed = std::thread::scope(|s| {
        let t = std::thread::Builder::new()
            .name("ringside-config".into())
            // The main thread's stack size: deeply nested YAML must parse as it did there.
            .stack_size(8 << 20)
            .spawn_scoped(s, || {
                let loaded = config::load(
                    opts.config_path.as_deref(),
                    opts.config_yaml.as_deref(),
                    opts.allow_unknown_static_fields,
                );
                crate::proto::release_idle_pool(Duration::ZERO);
                loaded
            })?;
        Ok::<_, StartError>(t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?)
    })?;
    Ok(parsed.clone())
}

/// Releases start-up's memory once start-up has settled; later drops the descriptor pool once
/// xDS updates and admin dumps have stopped asking for it for a while, and returns the
/// control thread's freed memory to the OS.
async fn release_idle_memory() {
    const IDLE: Duration = Duration::from_secs(30);
    // Once start-up has settled (the cores have opened their listeners, this thread has
    // bound the admin listener and installed its signal handlers), give its memory back:
    // the descriptor pool (xDS, SDS and /config_dump decode it again when they need it),
    // freed heap, and the code only start-up ran.
    tokio::time::sleep(Duration::from_millis(200)).await;
    crate::proto::release_idle_pool(Duration::ZERO);
    crate::io::release_free_memory();
    crate::io::page_out_startup_code();
    // Then it sleeps until a pool is decoded again, and drops it once unused for IDLE.
    loop {
        match crate::proto::pool_unused_for() {
            None => crate::proto::DECODED.notified().await,
            Some(unused) if unused < IDLE => tokio::time::sleep(IDLE - unused).await,
            Some(_) => {
                if crate::proto::release_idle_pool(IDLE) {
                    crate::io::release_free_memory();
                }
            }
        }
    }
}

/// The access-log writer thread: cores hand it whole batches, so no core ever blocks on
/// stdout or a file.
fn spawn_logger() -> std::io::Result<std::sync::mpsc::Sender<LogBatch>> {
    let (tx, rx) = std::sync::mpsc::channel::<LogBatch>();
    std::thread::Builder::new()
        .name("ringside-log".into())
        .spawn(move || {
            let mut files: std::collections::HashMap<u32, Option<std::fs::File>> =
                Default::default();
            for msg in rx {
                let (sink, batch) = match msg {
                    LogBatch::Lines(sink, batch) => (sink, batch),
                    LogBatch::Sync(ack) => {
                        let _ = ack.send(());
                        continue;
                    }
                    LogBatch::Reopen => {
                        files.clear();
                        continue;
                    }
                };
                let written = match sink {
                    LogSink::Stdout => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&batch).and_then(|_| out.flush())
                    }
                    LogSink::Stderr => std::io::stderr().lock().write_all(&batch),
                    LogSink::File(id) => match files.entry(id).or_insert_with(|| open_log(id)) {
                        Some(f) => f.write_all(&batch),
                        None => Err(std::io::ErrorKind::NotFound.into()),
                    },
                };
                let q = &crate::ctx::LOG_QUEUE;
                let done = if written.is_ok() {
                    &q.written
                } else {
                    &q.failed
                };
                done.fetch_add(1, Ordering::Relaxed);
                q.queued_bytes
                    .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            }
        })?;
    Ok(tx)
}

/// Opens access-log file `id`; a failure is logged once and its lines dropped until the
/// next `/reopen_logs` (the file opened when the configuration was checked).
fn open_log(id: u32) -> Option<std::fs::File> {
    let path = crate::model::access_log::path(id)?;
    match crate::model::access_log::open(&path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot open access log file");
            None
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
