//! Listening sockets: every core binds its own SO_REUSEPORT socket per listener and runs an
//! accept loop that survives resource errors and stops on drain.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::ctx::CoreCtx;
use crate::io::bind_reuseport;
use crate::model::{Listener, NetworkFilter, Snapshot};
use crate::stats::{HttpStat, ListenerStat};

/// Sockets for every listener, one per core, plus the addresses they ended up on.
pub struct Bound {
    /// `per_core[k]` are core k's sockets.
    pub per_core: Vec<Vec<(Arc<Listener>, std::net::TcpListener)>>,
    /// Listener name → bound address (port 0 resolved).
    pub addresses: HashMap<Arc<str>, SocketAddr>,
}

/// Binds every listener of `snapshot` once per core. Port 0 is resolved by the first bind
/// and reused by the others, so all cores share one port.
pub fn bind_all(snapshot: &Snapshot, cores: usize) -> io::Result<Bound> {
    let mut per_core: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
    let mut addresses = HashMap::new();
    for l in &snapshot.listeners {
        let mut addr = l.address;
        for (k, sockets) in per_core.iter_mut().enumerate() {
            let sock = bind_reuseport(addr, 1024).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("listener '{}': cannot bind {addr}: {e}", l.name),
                )
            })?;
            if k == 0 {
                addr = sock.local_addr()?;
            }
            sockets.push((l.clone(), sock));
        }
        addresses.insert(l.name.clone(), addr);
    }
    Ok(Bound {
        per_core,
        addresses,
    })
}

/// Accepts on one core until draining starts.
pub async fn accept_loop(ctx: Rc<CoreCtx>, listener: Arc<Listener>, socket: std::net::TcpListener) {
    let socket = match monoio::net::TcpListener::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %listener.name, "cannot register listener: {e}");
            return;
        }
    };
    let mut drain = ctx.drain.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = monoio::select! {
            r = socket.accept() => r,
            _ = drain.wait_for(|d| *d) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let local = stream.local_addr().unwrap_or(listener.address);
                let _ = stream.set_nodelay(true);
                spawn_connection(&ctx, &listener, stream, peer, local);
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and friends: back off instead of spinning.
                tracing::warn!(listener = %listener.name, "accept failed: {e}; retrying in {backoff:?}");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn spawn_connection(
    ctx: &Rc<CoreCtx>,
    listener: &Arc<Listener>,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let guard = ActiveGuard::new(ctx.clone(), listener.clone());
    match &listener.filter {
        NetworkFilter::Http(hcm) => {
            let hcm = hcm.clone();
            let fut = crate::http::conn::serve(ctx.clone(), hcm.clone(), stream, peer, local);
            monoio::spawn(async move {
                let _guard = guard;
                if CatchUnwind(Box::pin(fut)).await.is_err() {
                    hcm.stats
                        .core(_guard.ctx.core)
                        .inc(HttpStat::PanicsCaught as usize);
                    tracing::error!(%peer, "a bug panicked while serving this connection; it was closed and the core keeps serving");
                }
            });
        }
    }
}

/// Counts a connection as active on its core and listener for as long as it lives.
struct ActiveGuard {
    ctx: Rc<CoreCtx>,
    listener: Arc<Listener>,
}

impl ActiveGuard {
    fn new(ctx: Rc<CoreCtx>, listener: Arc<Listener>) -> Self {
        ctx.active.set(ctx.active.get() + 1);
        let c = listener.stats.core(ctx.core);
        c.inc(ListenerStat::DownstreamCxTotal as usize);
        c.inc(ListenerStat::DownstreamCxActive as usize);
        ActiveGuard { ctx, listener }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.ctx.active.set(self.ctx.active.get() - 1);
        let c = self.listener.stats.core(self.ctx.core);
        c.dec(ListenerStat::DownstreamCxActive as usize);
        c.inc(ListenerStat::DownstreamCxDestroy as usize);
    }
}

/// Runs a future, turning a panic inside it into `Err(())` so that one connection's bug
/// cannot take the whole core down.
pub struct CatchUnwind<F>(pub Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_does_not_stop_the_runtime() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let survived = rt.block_on(async {
            let h = monoio::spawn(CatchUnwind(Box::pin(async {
                monoio::time::sleep(Duration::from_millis(1)).await;
                panic!("boom");
            })));
            let first = h.await;
            let second = monoio::spawn(CatchUnwind(Box::pin(async { 7 }))).await;
            (first.is_err(), second)
        });
        assert_eq!(survived, (true, Ok(7)));
    }
}
