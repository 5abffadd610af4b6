//! The `ringside` binary: Envoy's command-line shape.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringside::app::{self, Options};
use ringside::worker::Driver;

#[cfg(not(feature = "count-allocs"))]
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
    let level = match cli.log_level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let opts = Options {
        config_path: cli.config_path,
        config_yaml: cli.config_yaml,
        concurrency: cli.concurrency,
        validate_only: cli.mode == Mode::Validate,
        drain_time: Duration::from_secs(cli.drain_time_s),
        driver: cli.io_driver,
        admin_address_path: cli.admin_address_path,
        command_line: std::env::args().collect(),
    };
    match app::run(opts) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
