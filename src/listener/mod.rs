//! Listening sockets: every core binds its own SO_REUSEPORT socket per listener and runs an
//! accept loop that survives resource errors and stops on drain.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::ctx::{CoreCtx, DrainEvent, Slot};
use crate::io::bind_listener_socket;
use crate::model::{Listener, Snapshot};
use crate::stats::ListenerStat;

mod balance;
mod guard;
mod handle;
mod rbac;
use balance::inbox_loop;
pub use balance::{Balancer, Handoff};
use guard::ActiveGuard;
use handle::handle;
pub mod sniff;

/// A core's listening socket, with its balancer when the listener asks for one. A
/// `bind_to_port: false` listener has no socket: it serves connections other listeners
/// hand over by original destination.
pub struct CoreListener {
    pub listener: Arc<Listener>,
    pub socket: Option<std::net::TcpListener>,
    pub balance: Option<(Arc<Balancer>, tokio::sync::mpsc::UnboundedReceiver<Handoff>)>,
}

/// Sockets for every listener, one per core, plus the addresses they ended up on.
pub struct Bound {
    /// `per_core[k]` are core k's sockets.
    pub per_core: Vec<Vec<CoreListener>>,
    /// Listener name → bound address (port 0 resolved).
    pub addresses: HashMap<Arc<str>, SocketAddr>,
}

/// Binds every listener of `snapshot` once per core. Port 0 is resolved by the first bind
/// and reused by the others, so all cores share one port.
pub fn bind_all(snapshot: &Snapshot, cores: usize) -> io::Result<Bound> {
    let mut per_core: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
    let mut addresses = HashMap::new();
    for l in &snapshot.listeners {
        let (sockets, addr) = bind_listener(l, cores)?;
        for (k, s) in sockets.into_iter().enumerate() {
            per_core[k].push(s);
        }
        addresses.insert(l.name.clone(), addr);
    }
    Ok(Bound {
        per_core,
        addresses,
    })
}

/// Binds one listener once per core (element k is core k's socket) and returns the
/// address all of them share.
pub fn bind_listener(
    l: &Arc<Listener>,
    cores: usize,
) -> io::Result<(Vec<CoreListener>, SocketAddr)> {
    let mut addr = l.address;
    if !l.bind_to_port {
        let out = (0..cores)
            .map(|_| CoreListener {
                listener: l.clone(),
                socket: None,
                balance: None,
            })
            .collect();
        return Ok((out, addr));
    }
    let (balancer, mut inboxes) = if l.exact_balance {
        let (b, rx) = Balancer::new(cores);
        (Some(b), rx.into_iter().map(Some).collect())
    } else {
        (None, (0..cores).map(|_| None).collect::<Vec<_>>())
    };
    let mut out = Vec::with_capacity(cores);
    for (k, inbox) in inboxes.iter_mut().enumerate() {
        // Envoy's default without `tcp_backlog_size`: -1, which Linux reads as
        // net.core.somaxconn. A burst past a smaller queue has its SYNs dropped, each
        // retried a second later.
        let sock = bind_listener_socket(addr, -1, l.transparent).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("listener '{}': cannot bind {addr}: {e}", l.name),
            )
        })?;
        if k == 0 {
            addr = sock.local_addr()?;
        }
        let balance = balancer.clone().zip(inbox.take());
        out.push(CoreListener {
            listener: l.clone(),
            socket: Some(sock),
            balance,
        });
    }
    Ok((out, addr))
}

/// Stops a listener on this core: no more accepts, and its connections close at their
/// next request boundary (Envoy drains a removed or replaced listener the same way).
pub fn stop(ctx: &CoreCtx, name: &str) {
    if let Some(slot) = ctx.listeners.borrow_mut().remove(name) {
        slot.shut();
    }
}

/// `/drain_listeners` on this core: the connections of every listener (or of the inbound
/// ones) are asked to close with the drain strategy over `window`; the listeners stop
/// accepting after `stop_after` (at once for a plain drain, after the window for a
/// graceful one, never with `skip_exit`), as Envoy's admin drain does.
pub fn drain(
    ctx: &CoreCtx,
    inbound_only: bool,
    window: std::time::Duration,
    gradual: bool,
    stop_after: Option<std::time::Duration>,
) {
    for slot in ctx.listeners.borrow().values() {
        if inbound_only && !slot.config.borrow().inbound {
            continue;
        }
        let event = slot.drain.borrow().clone();
        if gradual {
            event.raise_gradually(window);
        } else {
            event.raise();
        }
        match stop_after {
            None => {}
            Some(d) if d.is_zero() => slot.stop.raise(),
            Some(d) => {
                let slot = slot.clone();
                monoio::spawn(async move {
                    monoio::time::sleep(d).await;
                    slot.stop.raise();
                });
            }
        }
    }
}

/// A listener updated in place (same socket): new connections get the new configuration,
/// the connections of the old one drain.
pub fn update(ctx: &CoreCtx, listener: Arc<Listener>) {
    let slots = ctx.listeners.borrow();
    let Some(slot) = slots.get(&listener.name) else {
        return;
    };
    *slot.config.borrow_mut() = listener;
    let old = slot.drain.replace(Rc::new(DrainEvent::default()));
    old.raise();
}

/// Runs one core's side of a listener: its accept loop and, with exact balance, the inbox
/// of connections other cores handed over.
/// A listener of the same name already running on this core is stopped first.
pub fn start(ctx: &Rc<CoreCtx>, l: CoreListener) {
    stop(ctx, &l.listener.name);
    let slot = Rc::new(Slot {
        config: RefCell::new(l.listener.clone()),
        drain: RefCell::new(Rc::new(DrainEvent::default())),
        stop: DrainEvent::default(),
        bound: l
            .socket
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(l.listener.address),
    });
    if ctx.draining() {
        slot.shut();
    }
    ctx.listeners
        .borrow_mut()
        .insert(l.listener.name.clone(), slot.clone());
    let balancer = l.balance.as_ref().map(|(b, _)| b.clone());
    if let Some((b, rx)) = l.balance {
        monoio::spawn(inbox_loop(ctx.clone(), b, rx, slot.clone()));
    }
    if let Some(socket) = l.socket {
        monoio::spawn(accept_loop(ctx.clone(), socket, balancer, slot));
    }
}

/// Accepts on one core until the listener drains.
///
/// As Envoy does on each wake-up, a completed accept is followed by non-blocking
/// accept(2)s until the queue is empty (at most [`ACCEPT_BURST`]): one accept per turn of
/// the core's run queue, which a burst's new connections fill, let the kernel's accept
/// queue overflow and the dropped SYNs wait a second for their retry.
pub async fn accept_loop(
    ctx: Rc<CoreCtx>,
    socket: std::net::TcpListener,
    balancer: Option<Arc<Balancer>>,
    slot: Rc<Slot>,
) {
    let name = slot.config.borrow().name.clone();
    let socket = match monoio::net::TcpListener::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %name, "cannot register listener: {e}");
            return;
        }
    };
    // Whether the driver's accepts are non-blocking sockets, learned from its first.
    let mut nonblocking = None;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = monoio::select! {
            r = socket.accept() => r,
            _ = slot.stop.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // Accepted as the driver accepts: io_uring's are blocking sockets (its
                // reads and writes wait in the ring), the legacy driver's non-blocking.
                let nonblocking = *nonblocking
                    .get_or_insert_with(|| crate::io::is_nonblocking(&stream).unwrap_or(true));
                take(&ctx, &slot, &balancer, stream, peer);
                for _ in 1..ACCEPT_BURST {
                    let (std, peer) = match crate::io::accept_now(&socket, nonblocking) {
                        Ok(a) => a,
                        // Empty, or an error the next accept reports (and backs off on).
                        Err(_) => break,
                    };
                    match monoio::net::TcpStream::from_std(std) {
                        Ok(stream) => take(&ctx, &slot, &balancer, stream, peer),
                        Err(e) => {
                            tracing::warn!(listener = %name, %peer, "cannot adopt an accepted connection: {e}")
                        }
                    }
                }
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and friends: back off instead of spinning.
                tracing::warn!(listener = %name, "accept failed: {e}; retrying in {backoff:?}");
                monoio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Connections accepted per wake-up of a core's accept loop, at most: a burst is taken
/// in large steps, and the core still turns to the connections it serves in between.
const ACCEPT_BURST: usize = 256;

/// Serves a connection this core accepted, or hands it to the core exact balance picks.
fn take(
    ctx: &Rc<CoreCtx>,
    slot: &Slot,
    balancer: &Option<Arc<Balancer>>,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
) {
    // TCP_NODELAY is the listening socket's, which accepted ones inherit.
    if let Some(b) = balancer {
        let target = b.assign();
        if target != ctx.core {
            let handoff = Handoff {
                stream: crate::io::into_std(stream),
                peer,
            };
            if b.inboxes[target].send(handoff).is_err() {
                b.release(target);
            }
            return;
        }
    }
    serve_here(ctx, slot, balancer.as_ref(), stream, peer);
}

/// Serves a connection on this core: accepted here, or handed over by exact balance.
fn serve_here(
    ctx: &Rc<CoreCtx>,
    slot: &Slot,
    balancer: Option<&Arc<Balancer>>,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
) {
    let listener = slot.config.borrow().clone();
    let drain = slot.drain.borrow().clone();
    // As in Envoy, the socket is asked only when the listener's address does not say it:
    // bound to any address, or transparent (TPROXY hands over other destinations).
    let local = if slot.bound.ip().is_unspecified() || listener.transparent {
        stream.local_addr().unwrap_or(listener.address)
    } else {
        slot.bound
    };
    spawn_connection(
        ctx,
        &listener,
        stream,
        (peer, local, slot.bound),
        balancer.cloned(),
        &drain,
    );
}

/// Serves an internal connection on the internal listener it names (this core's);
/// gives it back when there is none, or it stopped accepting.
pub fn accept_internal(
    ctx: &Rc<CoreCtx>,
    a: Box<crate::upstream::internal::Accepted>,
) -> Result<(), Box<crate::upstream::internal::Accepted>> {
    let slot = ctx.listeners.borrow().get(&a.listener).cloned();
    let Some(slot) = slot else {
        return Err(a);
    };
    let listener = slot.config.borrow().clone();
    if listener.internal.is_none() || slot.stop.raised() {
        return Err(a);
    }
    let drain = slot.drain.borrow().clone();
    // Its addresses are internal ones (Envoy's `envoy://...`): placeholders here, until a
    // listener filter restores an IP destination.
    let peer = crate::model::internal::client_address();
    let guard = ActiveGuard::new(ctx.clone(), listener.clone(), None);
    let a = *a;
    // Boxed before the spawn: moved into the task, the setup future would size the task
    // (held for as long as the connection is open) as well as its own box.
    let fut = crate::ctx::boxed(|| {
        handle(
            guard,
            a.stream,
            peer,
            (listener.address, listener.address),
            drain,
            Some(a.hello),
        )
    });
    monoio::spawn(async move {
        // The setup's future is dropped before the connection is served.
        let setup = CatchUnwind(fut).await;
        match setup {
            Ok(Some(serving)) => serving.await,
            Ok(None) => {}
            Err(()) => tracing::error!("a bug panicked while serving an internal connection; it was closed and the core keeps serving"),
        }
    });
    Ok(())
}

fn spawn_connection(
    ctx: &Rc<CoreCtx>,
    listener: &Arc<Listener>,
    stream: monoio::net::TcpStream,
    (peer, local, bound): (SocketAddr, SocketAddr, SocketAddr),
    balancer: Option<Arc<Balancer>>,
    drain: &Rc<DrainEvent>,
) {
    // The overload manager's global connection limit, where configured.
    let global = match ctx.global_cx() {
        Some(g) if !listener.ignore_global_conn_limit => {
            if !g.try_acquire() {
                listener
                    .stats
                    .core(ctx.core)
                    .inc(ListenerStat::DownstreamGlobalCxOverflow as usize);
                tracing::debug!(listener = %listener.name, %peer, "global downstream connection limit reached: closed");
                if let Some(b) = &balancer {
                    b.release(ctx.core);
                }
                return;
            }
            Some(g)
        }
        _ => None,
    };
    let mut guard = ActiveGuard::new(ctx.clone(), listener.clone(), balancer);
    guard.global = global;
    // Boxed before the spawn: moved into the task, the setup future would size the task
    // (held for as long as the connection is open) as well as its own box.
    let fut =
        crate::ctx::boxed(|| handle(guard, stream, peer, (local, bound), drain.clone(), None));
    monoio::spawn(async move {
        // The setup's future is dropped before the connection is served.
        let setup = CatchUnwind(fut).await;
        match setup {
            Ok(Some(serving)) => serving.await,
            Ok(None) => {}
            Err(()) => {
                tracing::error!(%peer, "a bug panicked while serving this connection; it was closed and the core keeps serving")
            }
        }
    });
}

pub use crate::ctx::CatchUnwind;

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

    /// A listening socket's accepted connections have TCP_NODELAY from it; the accepts
    /// after a completed one take each waiting connection in the mode asked, with its
    /// peer's address, and say `WouldBlock` once none waits.
    #[test]
    fn burst_accepts_take_what_waits_in_the_mode_asked() {
        let l = crate::io::bind_listener_socket("127.0.0.1:0".parse().unwrap(), 16, false).unwrap();
        let at = l.local_addr().unwrap();
        let clients: Vec<_> = (0..2)
            .map(|_| std::net::TcpStream::connect(at).unwrap())
            .collect();
        for (client, nonblocking) in clients.iter().zip([false, true]) {
            let (s, peer) = crate::io::accept_now(&l, nonblocking).unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert!(s.nodelay().unwrap(), "inherited from the listener");
            assert_eq!(crate::io::is_nonblocking(&s).unwrap(), nonblocking);
        }
        let e = crate::io::accept_now(&l, true).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}
