//! Outlier detection, split as the architecture splits work: each core counts what its own
//! upstream attempts came to (per host, in its upstream state); the control
//! thread decides ([`detector`]): it ejects a host when a core reports a run of failures,
//! evaluates success rates and failure percentages every `interval` from the volumes the
//! cores report, unejects hosts when their time is up, and tells every core which hosts of
//! a cluster are ejected. Messages go through two channels: this module's [`Event`]s from
//! the cores, and [`ToCore`] commands back (inside the cores' command channel).
//!
//! Consecutive failures are counted per core, so with several cores a run of failures
//! spread over them takes longer to reach the threshold than Envoy's per-host count; a
//! host failing every request is ejected after the same number of failures on any core.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc::UnboundedSender;

pub use crate::model::outlier::Kind;

pub mod detector;
mod event_log;
pub mod rates;

/// What a core tells the control thread.
#[derive(Debug)]
pub enum Event {
    /// A host's run of failures of `kind` reached the cluster's threshold on this core.
    Consecutive {
        cluster: Arc<str>,
        addr: SocketAddr,
        kind: Kind,
    },
    /// A host passed its active health check (from the health checker): with
    /// `successful_active_health_check_uneject_host`, an ejected host is let back.
    HealthCheckPassed { cluster: Arc<str>, addr: SocketAddr },
    /// The answer to [`ToCore::Sweep`]: per host, the attempts since the last sweep
    /// (external: successes, total; local origin: successes, total).
    Volumes {
        /// The sweep answered.
        id: u64,
        core: usize,
        hosts: Vec<(Arc<str>, SocketAddr, [u64; 4])>,
    },
}

/// What the control thread tells a core.
#[derive(Debug, Clone)]
pub enum ToCore {
    /// These hosts of `cluster` are ejected now (the whole set, sorted).
    Ejected {
        cluster: Arc<str>,
        hosts: Arc<[SocketAddr]>,
    },
    /// These hosts of `cluster` fail their active health check, or have not passed it yet
    /// (the whole set, sorted; from the health checker).
    Unhealthy {
        cluster: Arc<str>,
        hosts: Arc<[SocketAddr]>,
    },
    /// Report (and restart) the volumes of these clusters' hosts; `id` names the sweep.
    Sweep { id: u64, clusters: Arc<[Arc<str>]> },
}

static EVENTS: OnceLock<UnboundedSender<Event>> = OnceLock::new();

/// Where the cores' events go (the control thread's detector); set once at start.
pub fn register(tx: UnboundedSender<Event>) {
    let _ = EVENTS.set(tx);
}

/// Sends an event to the detector (dropped when none runs: a test harness, a core
/// outliving the control thread).
pub fn send(e: Event) {
    if let Some(tx) = EVENTS.get() {
        let _ = tx.send(e);
    }
}
