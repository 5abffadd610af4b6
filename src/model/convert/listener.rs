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
    let Some(addr) = &l.address else {
        return Err(err(res, "address", "address is required"));
    };
    let address = socket_addr(addr, res, "address")?;
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
    let inspectors = super::chain::listener_filters(l, res, ctx)?;
    let use_original_dst = l.use_original_dst.unwrap_or(false);
    let restore_dst = use_original_dst || inspectors.1;
    let inspectors = inspectors.0;
    let bind_to_port = l.bind_to_port.unwrap_or(true);
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
    let stats = ctx.stats.scope_with_workers::<ListenerStat>(
        &format!("listener.{stat_prefix}."),
        &[
            ListenerStat::DownstreamCxTotal as usize,
            ListenerStat::DownstreamCxActive as usize,
        ],
    );
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
    })
}

/// Envoy's listener stat name: the address with `:` replaced by `_`.
pub fn listener_stat_name(a: &std::net::SocketAddr) -> String {
    match a {
        std::net::SocketAddr::V4(v4) => format!("{}_{}", v4.ip(), v4.port()),
        std::net::SocketAddr::V6(v6) => format!("[{}]_{}", v6.ip(), v6.port()),
    }
}
