//! The `ringside` binary: Envoy's command-line shape.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringside::app::{self, Options};
use ringside::worker::Driver;

#[cfg(not(any(feature = "count-allocs", feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "count-allocs")]
#[global_allocator]
static GLOBAL: ringside::io::CountingAlloc = ringside::io::CountingAlloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Serve,
    Validate,
}

/// A thread-per-core sidecar proxy that runs Envoy's configuration.
#[derive(Debug, Parser)]
#[command(name = "ringside", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Bootstrap file (Envoy v3 YAML or JSON). Without it (and without --config-yaml) the
    /// embedded default configuration runs.
    #[arg(short = 'c', long = "config-path")]
    config_path: Option<PathBuf>,
    /// Bootstrap YAML merged over the file (protobuf merge: repeated fields append).
    #[arg(long = "config-yaml")]
    config_yaml: Option<String>,
    /// Worker cores (default: all CPUs).
    #[arg(long)]
    concurrency: Option<usize>,
    /// `validate` checks the configuration and exits.
    #[arg(long, value_enum, default_value = "serve")]
    mode: Mode,
    /// trace, debug, info, warning/warn, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// Seconds that in-flight requests get to finish after SIGTERM.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// io driver of the worker cores.
    #[arg(long = "io-driver", value_enum, default_value = "auto")]
    io_driver: Driver,
    /// Write the admin listener's address here once it is bound (as Envoy does).
    #[arg(long = "admin-address-path")]
    admin_address_path: Option<PathBuf>,
    /// How connections are asked to close while draining: `gradual` (Envoy's default:
    /// spread over the drain time) or `immediate` (all at once).
    #[arg(long = "drain-strategy", value_enum, default_value = "gradual")]
    drain_strategy: DrainStrategy,
    /// The IP version of the server's own address (recorded in `x-forwarded-for` for
    /// loopback peers).
    #[arg(long = "local-address-ip-version", value_enum, default_value = "v4")]
    local_address_ip_version: IpVersion,
    /// How often the cores hand buffered access-log lines to the writer (Envoy's file
    /// flush interval). Ringside's default is 200 ms.
    #[arg(long = "file-flush-interval-msec")]
    file_flush_interval_msec: Option<u64>,
    /// Per-component log levels, `component:level,...`, with Envoy's component names.
    #[arg(long = "component-log-level")]
    component_log_level: Option<String>,
    /// Log line format, with Envoy's (spdlog) flags: %Y %m %d %T %H %M %S %e %f %z %l %L
    /// %n %v %t %P %g %s %# %! %_ %%.
    #[arg(long = "log-format")]
    log_format: Option<String>,
    /// Write the application log to this file instead of standard error.
    #[arg(long = "log-path")]
    log_path: Option<PathBuf>,
    /// Overrides the bootstrap's `node.cluster`.
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// Overrides the bootstrap's `node.id`.
    #[arg(long = "service-node")]
    service_node: Option<String>,
    /// Overrides the bootstrap's `node.locality.zone`.
    #[arg(long = "service-zone")]
    service_zone: Option<String>,
    /// Allows core dumps (a core file on a crash, within the system's limits).
    #[arg(long = "enable-core-dump")]
    enable_core_dump: bool,
    /// Envoy's hot restart is never used by Ringside: accepted, as Envoy accepts it.
    #[arg(long = "disable-hot-restart")]
    disable_hot_restart: bool,
    /// Ringside logs no deprecation warnings: accepted.
    #[arg(long = "skip-deprecated-logs")]
    skip_deprecated_logs: bool,
    /// Drop (with a warning) bootstrap fields that are not in Envoy's API at all, as Envoy
    /// does; fields in Envoy's API that Ringside does not implement stay refused by name.
    #[arg(long = "allow-unknown-static-fields")]
    allow_unknown_static_fields: bool,
    /// Hot-restart base id (shared memory name): no hot restart in Ringside, accepted.
    #[arg(long = "base-id")]
    base_id: Option<u32>,
    /// Hot-restart epoch: only 0 (the first process) is meaningful without hot restart.
    #[arg(long = "restart-epoch", default_value_t = 0)]
    restart_epoch: u32,
    /// Hot-restart parent shutdown time: no hot restart in Ringside, accepted.
    #[arg(long = "parent-shutdown-time-s")]
    parent_shutdown_time_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DrainStrategy {
    Gradual,
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IpVersion {
    V4,
    V6,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print (--dry-run), apply or remove (--cleanup) the pod's traffic capture rules, with
    /// istio-iptables' flags.
    Iptables(ringside::iptables::Options),
}

fn main() -> ExitCode {
    ringside::io::tune_allocator();
    let cli = Cli::parse();
    if let Some(Command::Iptables(o)) = &cli.command {
        return match ringside::iptables::execute(o) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    // Hot restart and deprecation logging do not exist in Ringside: these flags are accepted
    // as Envoy accepts them, with nothing to do.
    let _ = (
        cli.disable_hot_restart,
        cli.skip_deprecated_logs,
        cli.base_id,
        cli.parent_shutdown_time_s,
    );
    if cli.restart_epoch != 0 {
        eprintln!(
            "error: --restart-epoch {}: Ringside has no hot restart; only epoch 0 runs",
            cli.restart_epoch
        );
        return ExitCode::from(1);
    }
    let filter = match ringside::logging::filter(&cli.log_level, cli.component_log_level.as_deref())
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) =
        ringside::logging::init(filter, cli.log_format.as_deref(), cli.log_path.as_deref())
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    if cli.enable_core_dump {
        if let Err(e) = ringside::io::enable_core_dump() {
            tracing::warn!("--enable-core-dump: {e}");
        }
    }
    let opts = Options {
        config_path: cli.config_path,
        config_yaml: cli.config_yaml,
        allow_unknown_static_fields: cli.allow_unknown_static_fields,
        concurrency: cli.concurrency,
        validate_only: cli.mode == Mode::Validate,
        drain_time: Duration::from_secs(cli.drain_time_s),
        driver: cli.io_driver,
        admin_address_path: cli.admin_address_path,
        command_line: std::env::args().collect(),
        gradual_drain: cli.drain_strategy == DrainStrategy::Gradual,
        local_address_v6: cli.local_address_ip_version == IpVersion::V6,
        log_flush_interval: cli.file_flush_interval_msec.map(Duration::from_millis),
        cli_log_format: cli.log_format.is_some(),
        service_cluster: cli.service_cluster,
        service_node: cli.service_node,
        service_zone: cli.service_zone,
    };
    match app::run(opts) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
