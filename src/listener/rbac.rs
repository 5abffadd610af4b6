//! What a chain's filters before its terminal one do to a new connection: the network
//! `set_filter_state`'s objects, then `envoy.filters.network.rbac`, before the terminal
//! filter sees a byte.

use crate::ctx::Downstream;
use crate::model::chain::FilterChain;

/// The network `set_filter_state`'s objects, set as the connection opens (before RBAC
/// reads them). `sni`: what the TLS inspector read on a chain that does not terminate TLS.
pub(super) fn set_objects(
    chain: &FilterChain,
    down: &mut Downstream,
    sni: Option<&str>,
    hostname: &str,
) {
    let Some(values) = &chain.objects else {
        return;
    };
    if let (None, Some(sni)) = (&down.authn, sni) {
        // TLS passed through: the values' server name is the sniffed SNI.
        down.authn = Some(std::rc::Rc::new(crate::rbac::Authn {
            sni: sni.into(),
            peer: None,
            local_principal: None,
        }));
    }
    down.objects = Some(crate::tcp::log::connection_objects(
        values,
        down,
        chain.istio_authn.on(),
        hostname,
    ));
}

/// `istio_authn` with `shared: true`: its principals go, as filter state, to every
/// upstream (internal) connection this connection's requests open, and on from there
/// (HBONE's `connect_terminate` hands them to `main_internal`).
pub(super) fn share_principals(down: &mut Downstream) {
    use crate::model::filter_state::{Object, Shared};
    let Some(authn) = down.authn.clone() else {
        return;
    };
    let mut objects: Vec<Object> = down
        .objects
        .as_deref()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    for key in ["io.istio.peer_principal", "io.istio.local_principal"] {
        if let Some(v) = authn.filter_state(key, true) {
            objects.retain(|o| &*o.key != key);
            objects.push(Object {
                key: key.into(),
                value: v.into(),
                hashable: true,
                read_only: true,
                shared: Shared::Transitive,
            });
        }
    }
    down.objects = Some(objects.into());
}

/// The chain's network RBAC filters, in order, on a new connection: `Err` with Envoy's
/// connection termination details when one denies it (the connection is then closed). Envoy evaluates on the first byte the client sends;
/// Ringside decides before any byte flows either way (and before connecting upstream),
/// with the same verdict, since nothing the rules read changes in between.
/// `sni`: what the TLS inspector read on a chain that does not terminate TLS.
pub(super) fn allows(
    chain: &FilterChain,
    down: &Downstream,
    sni: Option<&str>,
    core: usize,
) -> Result<(), String> {
    use crate::stats::{RbacShadowStat, RbacStat};
    if chain.rbac.is_empty() {
        return Ok(());
    }
    let input = ConnInput(down, chain.istio_authn.on(), sni);
    for f in chain.rbac.iter() {
        if let Some(e) = &f.shadow {
            let v = crate::rbac::evaluate(e, &input);
            f.shadow_stats.core(core).inc(if v.allowed {
                RbacShadowStat::ShadowAllowed
            } else {
                RbacShadowStat::ShadowDenied
            } as usize);
        }
        let Some(e) = &f.rules else { continue };
        let v = crate::rbac::evaluate(e, &input);
        if v.allowed {
            f.stats.core(core).inc(RbacStat::Allowed as usize);
        } else {
            f.stats.core(core).inc(RbacStat::Denied as usize);
            let policy = v.policy.unwrap_or("none");
            tracing::debug!(peer = %down.peer, chain = %chain.name, policy, "RBAC denied the connection");
            return Err(format!("rbac_access_denied_matched_policy[{policy}]"));
        }
    }
    Ok(())
}

/// A connection as the network RBAC filter reads it (no headers, no path).
struct ConnInput<'a>(&'a Downstream, bool, Option<&'a str>);

impl crate::rbac::Input for ConnInput<'_> {
    fn local(&self) -> std::net::SocketAddr {
        self.0.dst
    }
    fn direct_remote(&self) -> std::net::IpAddr {
        self.0.peer.ip()
    }
    fn sni(&self) -> &str {
        match self.0.authn.as_deref() {
            Some(a) => &a.sni,
            None => self.2.unwrap_or(""),
        }
    }
    fn tls(&self) -> bool {
        self.0.tls
    }
    fn peer(&self) -> Option<&crate::rbac::PeerIdentity> {
        self.0.authn.as_deref()?.peer.as_ref()
    }
    fn filter_state(&self, key: &str) -> Option<&str> {
        self.0.filter_object(key, self.1).map(|f| f.value)
    }
}
