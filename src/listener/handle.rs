//! One accepted connection's setup — original destination, listener filters, filter
//! chain, network RBAC, TLS handshake — and what then serves it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::guard::ActiveGuard;
use super::{rbac, sniff, CatchUnwind};
use crate::ctx::{CoreCtx, Downstream, DrainEvent};
use crate::io::MaybeTls;
use crate::model::chain::{Choice, ConnInfo, Sniffed};
use crate::model::NetworkFilter;
use crate::stats::{HttpStat, ListenerStat, TcpStat};

/// What serves a connection once its setup (listener filters, filter chain, TLS
/// handshake) is done. `handle` returns it rather than awaiting it, so that the setup's
/// state is freed first: a connection holds only what serving it needs.
pub(super) type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// One accepted connection: restore its original destination (and move to the listener
/// that owns it), choose the filter chain — inspecting the first bytes only if the choice
/// depends on them — and run the chain's network filter.
pub(super) async fn handle(
    mut guard: ActiveGuard,
    mut stream: monoio::net::TcpStream,
    peer: SocketAddr,
    // The connection's local address, and the address of the socket that accepted it:
    // what a connection to ORIGINAL_DST must not loop back to.
    (local, accepted_on): (SocketAddr, SocketAddr),
    mut drain: Rc<DrainEvent>,
    // An internal connection: what its opener handed it.
    hello: Option<crate::model::internal::Hello>,
) -> Option<Serving> {
    let ctx = guard.ctx.clone();
    let mut listener = guard.listener.clone();
    let mut dst = local;
    let mut peer = peer;
    let mut restored = false;
    let (mut objects, mut internal) = (None, None);
    if let Some(hello) = hello {
        let r = listener.internal.unwrap_or_default().apply(&hello);
        if let Some(l) = r.local {
            dst = l;
            restored = true;
        }
        if let Some(p) = r.remote {
            peer = p;
        }
        let mut o = hello.objects.clone();
        if let Some(a) = r.original_dst {
            use crate::model::filter_state::{Object, Shared};
            o.retain(|x| &*x.key != crate::model::internal::DESTINATION_ADDRESS);
            o.push(Object {
                key: crate::model::internal::DESTINATION_ADDRESS.into(),
                value: a.to_string().into(),
                hashable: false,
                read_only: true,
                shared: Shared::None,
            });
        }
        objects = (!o.is_empty()).then(|| o.into());
        internal = Some(Rc::new(hello));
    }
    if listener.restore_dst {
        match crate::io::original_dst(&stream, local) {
            Ok(Some(a)) => {
                dst = a;
                restored = a != local;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(%peer, "SO_ORIGINAL_DST: {e}"),
        }
        let c = listener.stats.core(ctx.core);
        c.inc(if restored {
            ListenerStat::OriginalDstRestored as usize
        } else {
            ListenerStat::OriginalDstMissing as usize
        });
        let target = if listener.use_original_dst {
            ctx.snapshot().listener_for(dst).cloned()
        } else {
            None
        };
        if let Some(t) = target {
            // The listener's current version on this core and its drain event.
            let slot = ctx.listeners.borrow().get(&t.name).cloned();
            let (t, d) = match slot {
                Some(s) => (s.config.borrow().clone(), s.drain.borrow().clone()),
                None => (t, drain.clone()),
            };
            guard.move_to(t.clone());
            listener = t;
            drain = d;
        }
    }
    let mut prefix = Vec::new();
    let port = dst.port();
    let unsniffed = Sniffed::RAW;
    let raw = (!listener.inspectors.any_for(port)).then_some(&unsniffed);
    let mut info = ConnInfo {
        local: dst,
        peer,
        sniffed: raw,
    };
    let mut choice = listener.chains.choose(&info);
    // A TCP chain whose access log shows the SNI needs the TLS inspector even when the
    // chain was chosen without it (Envoy always runs the inspector it is given).
    let logs_sni = |c: &Choice| match c {
        Choice::Chain(i) => {
            let ch = &listener.chains.chains[*i];
            ch.tls.is_none()
                && matches!(&ch.filter, NetworkFilter::Tcp(t) if t.log_needs.tls)
                && listener.inspectors.tls_for(port)
        }
        _ => false,
    };
    let sniffed;
    if choice == Choice::NeedSniff || (raw.is_none() && logs_sni(&choice)) {
        let ins = &listener.inspectors;
        let c = listener.stats.core(ctx.core);
        c.inc(ListenerStat::DownstreamPreCxActive as usize);
        // Boxed, as the handshake and the TCP proxy below: each of these states would
        // otherwise size this future, held for as long as the connection is open.
        let found = crate::ctx::boxed(|| {
            sniff::sniff(
                &mut stream,
                ins.tls_for(port),
                ins.http_for(port),
                ins.timeout,
                ins.continue_on_timeout,
            )
        })
        .await;
        c.dec(ListenerStat::DownstreamPreCxActive as usize);
        match found {
            Ok((s, bytes)) => {
                sniffed = s;
                prefix = bytes;
            }
            Err(e) => {
                if e == sniff::SniffError::Timeout {
                    c.inc(ListenerStat::DownstreamPreCxTimeout as usize);
                }
                tracing::debug!(listener = %listener.name, %peer, "listener filters: {e:?}");
                return None;
            }
        }
        info.sniffed = Some(&sniffed);
        choice = listener.chains.choose(&info);
    }
    let Choice::Chain(i) = choice else {
        listener
            .stats
            .core(ctx.core)
            .inc(ListenerStat::NoFilterChainMatch as usize);
        tracing::debug!(listener = %listener.name, %peer, %dst, "no filter chain matches");
        return None;
    };
    let chain = &listener.chains.chains[i];
    let filter = chain.filter.clone();
    let mut down = Downstream {
        peer,
        dst,
        restored,
        via: accepted_on,
        tls: chain.tls.is_some(),
        client_cert: None,
        authn: None,
        objects,
        internal,
    };
    let stream = match chain.tls.clone() {
        None => MaybeTls::Plain(stream),
        Some(tls) => {
            // The handshake runs here, on the core that owns the connection.
            let cells = listener.stats.core(ctx.core);
            let prefix = std::mem::take(&mut prefix);
            let s = match crate::ctx::boxed(|| {
                crate::tls::accept(&tls, &ctx.tls, stream, prefix, cells)
            })
            .await
            {
                Ok(s) => s,
                Err(why) => {
                    tracing::debug!(listener = %listener.name, %peer, chain = %chain.name, "TLS handshake refused: {why:?}");
                    return None;
                }
            };
            if chain.reads_identity() {
                let Some(a) = crate::tls::authn(&s, &tls) else {
                    tracing::debug!(listener = %listener.name, %peer, "client certificate unreadable for RBAC: refused");
                    return None;
                };
                down.authn = Some(std::rc::Rc::new(a));
            } else if chain.reports_identity() {
                // Telemetry only: an unreadable certificate leaves the principals unknown.
                down.authn = crate::tls::authn(&s, &tls).map(std::rc::Rc::new);
            }
            rbac::set_objects(chain, &mut down, None, &ctx.hostname);
            if chain.istio_authn == crate::model::chain::IstioAuthn::Shared {
                rbac::share_principals(&mut down);
            }
            if let Err(why) = rbac::allows(chain, &down, None, ctx.core) {
                {
                    denied(&ctx, &filter, &down, why);
                    return None;
                }
            }
            if let NetworkFilter::Http(hcm) = &filter {
                down.client_cert = crate::tls::client_cert(&s, &tls, hcm);
                let fut =
                    crate::http::conn::serve_tls(ctx.clone(), hcm.clone(), s, down, drain).await?;
                return Some(Box::pin(serve_http(guard, hcm.clone(), peer, fut)));
            }
            crate::tls::down_io(s)
        }
    };
    // Network RBAC decides before the terminal filter sees a byte (TLS chains: above).
    let sni = info.sniffed.and_then(|s| s.server_name.as_deref());
    if chain.tls.is_none() {
        rbac::set_objects(chain, &mut down, sni, &ctx.hostname);
        if let Err(why) = rbac::allows(chain, &down, sni, ctx.core) {
            {
                denied(&ctx, &filter, &down, why);
                return None;
            }
        }
    }
    match filter {
        NetworkFilter::Http(hcm) => {
            // TLS connections to an HTTP chain were served above.
            let MaybeTls::Plain(stream) = stream else {
                return None;
            };
            let fut =
                crate::http::conn::serve(ctx.clone(), hcm.clone(), stream, down, drain, prefix)
                    .await?;
            Some(Box::pin(serve_http(guard, hcm, peer, fut)))
        }
        NetworkFilter::Tcp(tp) => {
            if let (true, None, Some(sni)) = (tp.log_needs.tls, &down.authn, sni) {
                // TLS passed through: the access log's server name is the sniffed SNI.
                down.authn = Some(std::rc::Rc::new(crate::rbac::Authn {
                    sni: sni.into(),
                    peer: None,
                    local_principal: None,
                }));
            }
            tp.stats
                .core(ctx.core)
                .inc(TcpStat::DownstreamCxTotal as usize);
            let fut = crate::tcp::serve(ctx.clone(), tp, stream, down, drain, prefix);
            Some(Box::pin(async move {
                fut.await;
                drop(guard);
            }))
        }
    }
}

/// An HTTP connection's serving, once its setup is done: a bug's panic closes only this
/// connection (counted), and the connection's guard goes with it.
async fn serve_http(
    guard: ActiveGuard,
    hcm: Arc<crate::model::HttpConnectionManager>,
    peer: SocketAddr,
    // Boxed by the caller: held by value here, it would size this future too.
    fut: crate::http::conn::Serving,
) {
    if CatchUnwind(fut).await.is_err() {
        hcm.stats
            .core(guard.ctx.core)
            .inc(HttpStat::PanicsCaught as usize);
        tracing::error!(%peer, "a bug panicked while serving this connection; it was closed and the core keeps serving");
    }
    drop(guard);
}

/// A connection network RBAC refused: a TCP proxy still reports and logs it, as Envoy's
/// does (its filter was made for the connection before the RBAC filter closed it).
fn denied(ctx: &Rc<CoreCtx>, filter: &NetworkFilter, down: &Downstream, why: String) {
    if let NetworkFilter::Tcp(tp) = filter {
        crate::tcp::denied(ctx, tp, down, why);
    }
}
