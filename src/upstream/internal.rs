//! Connections to internal listeners (endpoints at an `envoy_internal_address`): a socket
//! pair on this core, one end returned as the upstream connection, the other served by
//! the named internal listener on this core, with what the cluster's `internal_upstream`
//! transport socket passes it. The listener layer registers the acceptor (layers above
//! this one serve connections; this one only opens them).

use std::cell::RefCell;
use std::sync::Arc;

use crate::model::internal::Hello;
use crate::model::{Cluster, Endpoint};
use crate::stats::ClusterStat;

/// An internal connection for a listener to serve.
pub struct Accepted {
    pub listener: Arc<str>,
    pub stream: monoio::net::TcpStream,
    pub hello: Hello,
    /// `envoy://<listener>/<endpoint id>`: its local address until a listener filter
    /// restores one.
    pub local: Arc<str>,
}

/// Serves an internal connection; gives it back when no internal listener of that name
/// is on this core.
pub type Acceptor = Box<dyn Fn(Box<Accepted>) -> Result<(), Box<Accepted>>>;

thread_local! {
    static ACCEPTOR: RefCell<Option<Acceptor>> = const { RefCell::new(None) };
}

/// Registers this core's acceptor (the worker, as it starts the core).
pub fn set_acceptor(a: Acceptor) {
    ACCEPTOR.with(|c| *c.borrow_mut() = Some(a));
}

/// Opens an internal connection to `ep` (an internal endpoint), handing the listener the
/// metadata the cluster's transport socket names and the filter state objects the opener
/// shares (`objects`).
pub(super) fn connect(
    core: usize,
    cluster: &Cluster,
    ep: &Endpoint,
    objects: Vec<crate::model::filter_state::Object>,
) -> std::io::Result<monoio::net::TcpStream> {
    let Some(target) = &ep.internal else {
        return Err(std::io::Error::other("not an internal endpoint"));
    };
    let hello = match cluster.passthrough_for(ep) {
        Some(p) => p.hello(Some(target), objects),
        None => Hello {
            objects,
            ..Hello::default()
        },
    };
    if hello.missing > 0 {
        cluster.stats.core(core).add(
            ClusterStat::InternalUpstreamNoMetadata as usize,
            u64::from(hello.missing),
        );
    }
    let (mine, theirs) = crate::io::socket_pair()?;
    let mine = monoio::net::TcpStream::from_std(mine)?;
    let theirs = monoio::net::TcpStream::from_std(theirs)?;
    let accepted = Box::new(Accepted {
        listener: target.listener.clone(),
        stream: theirs,
        hello,
        local: target.display.clone(),
    });
    let refused = ACCEPTOR.with(|c| match &*c.borrow() {
        Some(accept) => accept(accepted).err(),
        None => Some(accepted),
    });
    if refused.is_some() {
        tracing::debug!(cluster = %cluster.name, listener = %target.listener, "no internal listener of that name");
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("no internal listener '{}'", target.listener),
        ));
    }
    Ok(mine)
}
