//! Publishing a snapshot: bind what it adds, swap it in whole, tell the cores.
//!
//! Listener sockets are bound here, on the control thread, before the swap: a listener
//! that cannot bind fails the publish, naming the listener, and nothing changes (the
//! caller refuses that listener and publishes the rest, as Envoy does). A listener whose
//! address is unchanged keeps its sockets; the cores serve new connections with the new
//! configuration and drain the old ones, as Envoy does on a listener update.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::mpsc::UnboundedSender;

use crate::listener::bind_listener;
use crate::model::{SharedSnapshot, Snapshot};
use crate::worker::{CoreCommand, Served};

/// A listener that could not bind: which, and the error.
#[derive(Debug)]
pub struct BindError {
    pub listener: Arc<str>,
    pub message: String,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The control thread's handle on the cores.
pub struct Publisher {
    pub shared: SharedSnapshot,
    cores: Vec<UnboundedSender<CoreCommand>>,
    pub served: Arc<Served>,
    /// Listener name → the address it is bound to (for admin).
    pub addresses: Arc<ArcSwap<HashMap<Arc<str>, SocketAddr>>>,
}

impl Publisher {
    pub fn new(
        shared: SharedSnapshot,
        cores: Vec<UnboundedSender<CoreCommand>>,
        served: Arc<Served>,
        addresses: HashMap<Arc<str>, SocketAddr>,
    ) -> Publisher {
        Publisher {
            shared,
            cores,
            served,
            addresses: Arc::new(ArcSwap::from_pointee(addresses)),
        }
    }

    /// Binds the listeners `next` adds or moves, swaps it in and tells every core. On a
    /// bind error nothing changes.
    pub fn publish(&mut self, mut next: Snapshot, started: Instant) -> Result<u64, BindError> {
        let current = self.shared.load_full();
        next.version = current.version + 1;
        let old: HashMap<&str, _> = current.listeners.iter().map(|l| (&*l.name, l)).collect();
        let mut addresses = (**self.addresses.load()).clone();
        let mut commands: Vec<Vec<CoreCommand>> = self.cores.iter().map(|_| Vec::new()).collect();
        let mut bound_now = Vec::new();
        for l in &next.listeners {
            match old.get(&*l.name) {
                Some(o) if Arc::ptr_eq(o, l) => {}
                Some(o) if o.bind_key == l.bind_key => {
                    for c in commands.iter_mut() {
                        c.push(CoreCommand::Update(l.clone()));
                    }
                }
                _ => {
                    // Port 0 listeners keep the port they got, as long as they exist.
                    let mut want = l.clone();
                    if l.address.port() == 0 {
                        if let Some(a) = addresses.get(&l.name) {
                            if a.ip() == l.address.ip() && old.contains_key(&*l.name) {
                                let mut copy = (**l).clone_with_address(*a);
                                copy.bind_key.clone_from(&l.bind_key);
                                want = Arc::new(copy);
                            }
                        }
                    }
                    let (sockets, addr) =
                        bind_listener(&want, self.cores.len()).map_err(|e| BindError {
                            listener: l.name.clone(),
                            message: e.to_string(),
                        })?;
                    bound_now.push((l.name.clone(), addr));
                    for (k, s) in sockets.into_iter().enumerate() {
                        commands[k].push(CoreCommand::Listen(s));
                    }
                }
            }
        }
        let keep: std::collections::HashSet<&str> =
            next.listeners.iter().map(|l| &*l.name).collect();
        for name in old.keys().filter(|n| !keep.contains(*n)) {
            addresses.remove(*name);
            for c in commands.iter_mut() {
                c.push(CoreCommand::Stop((*name).into()));
            }
        }
        for (n, a) in bound_now {
            addresses.insert(n, a);
        }
        // The admin layer of the runtime changes beside xDS (`/runtime_modify`): keep the
        // one current at the moment of the swap.
        // Recorded before the swap, so no core can serve the version before its publish
        // time is known (again after it, if a runtime change took the number meanwhile).
        let expected = self.shared.load().version + 1;
        self.served.published(expected, started);
        let next = Arc::new(next);
        let previous = self.shared.rcu(|cur| {
            let mut s = (*next).clone();
            s.runtime = cur.runtime.clone();
            s.version = cur.version + 1;
            s
        });
        let version = previous.version + 1;
        if version != expected {
            self.served.published(version, started);
        }
        self.addresses.store(Arc::new(addresses));
        crate::wake::announce();
        for (k, cmds) in commands.into_iter().enumerate() {
            for c in cmds {
                let _ = self.cores[k].send(c);
            }
            let _ = self.cores[k].send(CoreCommand::Snapshot(version));
        }
        Ok(version)
    }

    /// Tells the cores to load the current snapshot (after a DNS-only change).
    pub fn notify(&self) {
        let v = self.shared.load().version;
        for c in &self.cores {
            let _ = c.send(CoreCommand::Snapshot(v));
        }
    }
}
