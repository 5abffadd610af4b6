//! A request's span once the request is done: Envoy's tags read off the request, encoded
//! for its tracer (Zipkin JSON v2, OTLP), queued on the request's core and exported off
//! the request path ([`export`]).

pub(crate) mod done;
pub(crate) use done::Done;
pub(crate) mod export;

/// The request is done: its span, if sampled, joins its tracer's batch on this core.
pub(crate) fn finish<E: crate::http::exchange::Exchange + ?Sized>(
    ctx: &std::rc::Rc<crate::ctx::CoreCtx>,
    x: &E,
) {
    let Some(s) = &x.log().span else { return };
    let Some(t) = &x.hcm().tracing else { return };
    let Some(tracer) = &t.tracer else { return };
    if !s.sampled {
        return;
    }
    let done = done::Done::of(x, t, s, ctx);
    export::add(ctx, tracer, &done);
}
