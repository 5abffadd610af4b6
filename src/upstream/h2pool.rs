//! One core's HTTP/2 upstream connections: many streams share a connection, up to the
//! peer's `SETTINGS_MAX_CONCURRENT_STREAMS`; a full or closed connection makes room for a
//! new one. Nothing here is shared with other cores.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use rustc_hash::FxHashMap;

use crate::stats::{ClusterStat, Scope};

/// Shared between the pool, the streams using a connection and its driver task.
#[derive(Default)]
pub struct H2State {
    /// Streams open on the connection.
    pub active: Cell<u32>,
    /// The connection ended (GOAWAY, error or close): no new streams.
    pub closed: Cell<bool>,
    /// Streams ever opened on it, for the cluster's `max_requests_per_connection`.
    pub opened: Cell<u32>,
}

/// One upstream HTTP/2 connection.
#[derive(Clone)]
pub struct H2Conn {
    pub send: SendRequest<Bytes>,
    pub addr: SocketAddr,
    /// This side's address (`%UPSTREAM_LOCAL_ADDRESS%`), shared by the connection's
    /// handles.
    pub local: Option<std::rc::Rc<SocketAddr>>,
    /// Its TLS identity (0: plaintext), part of the pool key.
    pub tls_key: u64,
    pub state: Rc<H2State>,
    /// The cluster's `max_requests_per_connection`: past it the connection takes no new
    /// stream and goes once its last stream ends.
    pub max_streams: Option<u32>,
    /// Both ends' identities, on a TLS connection (`istio.stats`).
    pub principals: Option<std::sync::Arc<crate::model::tls::UpstreamPrincipals>>,
}

impl H2Conn {
    pub fn new(send: SendRequest<Bytes>, addr: SocketAddr) -> Self {
        H2Conn {
            send,
            addr,
            local: None,
            tls_key: 0,
            state: Rc::default(),
            max_streams: None,
            principals: None,
        }
    }

    /// Whether it served all the streams the cluster allows a connection.
    fn exhausted(&self) -> bool {
        self.max_streams
            .is_some_and(|m| self.state.opened.get() >= m)
    }

    /// Whether another stream fits within the peer's limit and the cluster's.
    fn has_room(&self) -> bool {
        !self.state.closed.get()
            && !self.exhausted()
            && (self.state.active.get() as usize) < self.send.current_max_send_streams()
    }

    /// Counts one stream on the connection until the guard drops.
    pub fn stream(&self) -> StreamGuard {
        self.state.active.set(self.state.active.get() + 1);
        self.state.opened.set(self.state.opened.get() + 1);
        StreamGuard(self.state.clone())
    }
}

/// Releases a connection's stream slot.
pub struct StreamGuard(Rc<H2State>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
    }
}

/// Keeps `upstream_cx_active` right for as long as a connection's driver runs.
pub struct CxGuard {
    pub stats: Arc<Scope>,
    pub core: usize,
    /// Its place under the cluster's `max_connections`.
    pub _permit: Option<crate::model::breakers::Permit>,
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        let c = self.stats.core(self.core);
        c.dec(ClusterStat::UpstreamCxActive as usize);
        c.inc(ClusterStat::UpstreamCxDestroy as usize);
    }
}

/// HTTP/2 connections by endpoint and TLS identity.
#[derive(Default)]
pub struct H2Pool {
    conns: FxHashMap<(SocketAddr, u64), Vec<H2Conn>>,
}

impl H2Pool {
    /// A connection to `addr` with TLS identity `tls_key` and room for one more stream;
    /// closed ones are dropped.
    pub fn get(&mut self, addr: SocketAddr, tls_key: u64) -> Option<H2Conn> {
        let list = self.conns.get_mut(&(addr, tls_key))?;
        // An exhausted connection is let go: it closes once its last stream ends.
        list.retain(|c| !c.state.closed.get() && !c.exhausted());
        list.iter().find(|c| c.has_room()).cloned()
    }

    pub fn add(&mut self, conn: H2Conn) {
        self.conns
            .entry((conn.addr, conn.tls_key))
            .or_default()
            .push(conn);
    }
}
