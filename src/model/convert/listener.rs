//! `envoy.config.listener.v3.Listener` → [`Listener`]: address, binding and balancing;
//! its filter chains are `chain`'s, their network filters `hcm`'s.

use crate::model::Listener;
use crate::proto::envoy::config::listener::v3 as pb;
use crate::stats::ListenerStat;

use super::{err, socket_addr, ConvertError, Ctx};

pub(super) fn convert(l: &pb::Listener, ctx: &mut Ctx<'_>) -> Result<Listener, ConvertError> {
    let res = format!("listener '{}'", l.name);
    let res = res.as_str();
    if l.name.is_empty() {
        return Err(err(res, "name", "listener name is required"));
    }
    let address = match (super::chain::is_internal(l), &l.address) {
        (true, a) => internal_address(l, a.as_ref(), res, ctx)?,
        (false, None) => return Err(err(res, "address", "address is required")),
        (false, Some(a)) => socket_addr(a, res, "address")?,
    };
    if l.per_connection_buffer_limit_bytes.is_some() {
        ctx.ignored
            .push(format!("{res}.per_connection_buffer_limit_bytes"));
    }
    if l.enable_reuse_port.is_some() {
        ctx.ignored.push(format!("{res}.enable_reuse_port"));
    }
    // envoy.config.core.v3.TrafficDirection: UNSPECIFIED 0, INBOUND 1, OUTBOUND 2.
    ctx.inbound = l.traffic_direction == 1;
    ctx.outbound = l.traffic_direction == 2;
    let chains = super::chain::chains(l, res, ctx);
    ctx.inbound = false;
    ctx.outbound = false;
    let chains = chains?;
    let (inspectors, original_dst, istio_tunnel) = super::chain::listener_filters(l, res, ctx)?;
    let use_original_dst = l.use_original_dst.unwrap_or(false);
    let internal = super::chain::is_internal(l).then(|| {
        use crate::model::internal::Restore;
        match (istio_tunnel, original_dst) {
            (true, _) => Restore::IstioTunnel,
            (false, true) => Restore::OriginalDst,
            (false, false) => Restore::None,
        }
    });
    // An internal connection's destination comes from what it was handed, never from
    // SO_ORIGINAL_DST.
    let restore_dst = internal.is_none() && (use_original_dst || original_dst);
    let bind_to_port = internal.is_none() && l.bind_to_port.unwrap_or(true);
    let transparent = l.transparent.unwrap_or(false);
    if !bind_to_port && (use_original_dst || transparent) {
        return Err(err(
            res,
            "bind_to_port",
            "a listener that does not bind cannot restore original destinations or be transparent",
        ));
    }
    let stat_prefix = if l.stat_prefix.is_empty() {
        listener_stat_name(&address)
    } else {
        l.stat_prefix.clone()
    };
    // Envoy keeps no listener stats for internal listeners: theirs are nowhere shown.
    let stats = if internal.is_some() {
        ctx.stats.detached_scope::<ListenerStat>()
    } else {
        ctx.stats.scope_with_workers::<ListenerStat>(
            &format!("listener.{stat_prefix}."),
            &[
                ListenerStat::DownstreamCxTotal as usize,
                ListenerStat::DownstreamCxActive as usize,
            ],
        )
    };
    let exact_balance = match &l.connection_balance_config {
        None => false,
        Some(c) => match c.balance_type {
            Some(pb::listener::connection_balance_config::BalanceType::ExactBalance(_)) => true,
            None => {
                return Err(err(
                    res,
                    "connection_balance_config",
                    "a balance type is required",
                ))
            }
        },
    };
    if l.bypass_overload_manager {
        // No overload actions exist to bypass (the manager's actions are refused).
        ctx.ignored.push(format!("{res}.bypass_overload_manager"));
    }
    Ok(Listener {
        ignore_global_conn_limit: l.ignore_global_conn_limit,
        inbound: l.traffic_direction == 1,
        name: l.name.as_str().into(),
        address,
        stats,
        chains,
        bind_to_port,
        restore_dst,
        use_original_dst,
        transparent,
        inspectors,
        exact_balance,
        bind_key: format!(
            "{address} exact_balance={exact_balance} bind={bind_to_port} transparent={transparent}"
        ),
        internal,
    })
}

/// An internal listener's placeholder address. Envoy needs its bootstrap extension for
/// internal listeners, and an address, if one is given, that names the listener itself.
fn internal_address(
    l: &pb::Listener,
    a: Option<&crate::proto::envoy::config::core::v3::Address>,
    res: &str,
    ctx: &Ctx<'_>,
) -> Result<std::net::SocketAddr, ConvertError> {
    use crate::proto::envoy::config::core::v3::address::Address as A;
    use crate::proto::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier as N;
    if !ctx.internal_listeners {
        return Err(err(
            res,
            "internal_listener",
            "internal listeners need the bootstrap extension envoy.bootstrap.internal_listener (InternalListener)",
        ));
    }
    match a.and_then(|a| a.address.as_ref()) {
        None => {}
        Some(A::EnvoyInternalAddress(ia))
            if matches!(&ia.address_name_specifier, Some(N::ServerListenerName(n)) if *n == l.name) => {}
        Some(_) => {
            return Err(err(
                res,
                "address",
                "an internal listener's address, when set, is an envoy_internal_address naming the listener itself",
            ))
        }
    }
    let refused = [
        (l.use_original_dst.unwrap_or(false), "use_original_dst"),
        (l.transparent.unwrap_or(false), "transparent"),
        (
            l.connection_balance_config.is_some(),
            "connection_balance_config",
        ),
    ];
    if let Some((_, field)) = refused.iter().find(|(set, _)| *set) {
        return Err(err(
            res,
            *field,
            "not applicable to an internal listener (it has no socket)",
        ));
    }
    Ok(crate::model::internal::synthetic_address(&l.name, ""))
}

/// Envoy's listener stat name: the address with `:` replaced by `_`.
pub fn listener_stat_name(a: &std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v4) => format!("{}_{}", v4.ip(), v4.port()),
        std::net::SocketAddr::V6(v6) => format!("[{}]_{}", v6.ip(), v6.port()),
    }
}
