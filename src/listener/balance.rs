//! Envoy's `exact_balance`: a core that accepts a connection hands it to the core with
//! the fewest.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::ctx::{CoreCtx, Slot};

/// A connection accepted by one core for another (exact balance).
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
}

/// Envoy's `exact_balance` for one listener: every accepted connection goes to the core
/// with the fewest open connections. The counters and inboxes are touched once per
/// connection (accept and close), never per request.
pub struct Balancer {
    load: Box<[AtomicUsize]>,
    pub(super) inboxes: Vec<tokio::sync::mpsc::UnboundedSender<Handoff>>,
}

impl Balancer {
    /// A balancer over `cores` cores and each core's inbox receiver.
    pub fn new(
        cores: usize,
    ) -> (
        Arc<Balancer>,
        Vec<tokio::sync::mpsc::UnboundedReceiver<Handoff>>,
    ) {
        let (tx, rx): (Vec<_>, Vec<_>) = (0..cores)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let load = (0..cores).map(|_| AtomicUsize::new(0)).collect();
        (Arc::new(Balancer { load, inboxes: tx }), rx)
    }

    /// Chooses the least-loaded core and counts the connection there.
    pub(super) fn assign(&self) -> usize {
        let target = (0..self.load.len())
            .min_by_key(|&k| self.load[k].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.load[target].fetch_add(1, Ordering::Relaxed);
        target
    }

    pub(super) fn release(&self, core: usize) {
        self.load[core].fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn inbox_loop(
    ctx: Rc<CoreCtx>,
    balancer: Arc<Balancer>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    slot: Rc<Slot>,
) {
    loop {
        let handoff = monoio::select! {
            h = rx.recv() => h,
            _ = slot.stop.wait() => return,
        };
        let Some(h) = handoff else { return };
        match monoio::net::TcpStream::from_std(h.stream) {
            Ok(stream) => super::serve_here(&ctx, &slot, Some(&balancer), stream, h.peer),
            Err(e) => {
                balancer.release(ctx.core);
                let name = slot.config.borrow().name.clone();
                tracing::warn!(listener = %name, "cannot adopt a handed-over connection: {e}");
            }
        }
    }
}
