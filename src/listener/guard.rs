//! A connection's place in its core's and listener's counts, held for as long as it lives.

use std::rc::Rc;
use std::sync::Arc;

use super::Balancer;
use crate::ctx::CoreCtx;
use crate::model::Listener;
use crate::stats::ListenerStat;

/// Counts a connection as active on its core and listener for as long as it lives.
pub(super) struct ActiveGuard {
    pub ctx: Rc<CoreCtx>,
    pub listener: Arc<Listener>,
    /// Already counted on this core by `Balancer::assign`; released on close.
    pub balancer: Option<Arc<Balancer>>,
    /// Counted against the global connection limit; released on close.
    pub global: Option<Arc<crate::model::overload::GlobalConnLimit>>,
}

impl ActiveGuard {
    /// The connection now belongs to another listener (original destination handoff).
    pub fn move_to(&mut self, listener: Arc<Listener>) {
        let old = self.listener.stats.core(self.ctx.core);
        old.dec(ListenerStat::DownstreamCxActive as usize);
        let c = listener.stats.core(self.ctx.core);
        c.inc(ListenerStat::DownstreamCxTotal as usize);
        c.inc(ListenerStat::DownstreamCxActive as usize);
        self.listener = listener;
    }

    pub fn new(ctx: Rc<CoreCtx>, listener: Arc<Listener>, balancer: Option<Arc<Balancer>>) -> Self {
        ctx.active.set(ctx.active.get() + 1);
        let c = listener.stats.core(ctx.core);
        c.inc(ListenerStat::DownstreamCxTotal as usize);
        c.inc(ListenerStat::DownstreamCxActive as usize);
        ActiveGuard {
            ctx,
            listener,
            balancer,
            global: None,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.ctx.active.set(self.ctx.active.get() - 1);
        let c = self.listener.stats.core(self.ctx.core);
        c.dec(ListenerStat::DownstreamCxActive as usize);
        c.inc(ListenerStat::DownstreamCxDestroy as usize);
        if let Some(b) = &self.balancer {
            b.release(self.ctx.core);
        }
        if let Some(g) = &self.global {
            g.release();
        }
    }
}
