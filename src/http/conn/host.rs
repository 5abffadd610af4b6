//! What an HTTP/1.1 connection lends its request's HTTP filters.

use std::sync::Arc;

use super::Connection;
use crate::http::error::HttpError;
use crate::http::exchange as log;
use crate::model::{HttpConnectionManager, Snapshot};

impl crate::http::filter::FilterHost for Connection {
    fn filter_state(&self) -> &crate::http::filter::State {
        &self.filters
    }
    fn filter_state_mut(&mut self) -> &mut crate::http::filter::State {
        &mut self.filters
    }
    fn log_mut(&mut self) -> &mut log::Entry {
        &mut self.log
    }
    fn core_ctx(&self) -> &crate::ctx::CoreCtx {
        &self.ctx
    }
    fn core(&self) -> usize {
        self.ctx.core
    }
    fn hcm_arc(&self) -> Arc<HttpConnectionManager> {
        self.hcm.clone()
    }
    fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
    fn remove_request_header(&mut self, name: &[u8]) {
        self.head.remove(&self.buf, name);
    }
    fn buffer_request_body(
        &mut self,
        max: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HttpError>> + '_>> {
        Box::pin(async move {
            use crate::http::body::{Framing, Mode};
            use crate::http::h1::BodyKind;
            use crate::http::proxy::{DownError, Downstream as _};
            let mut data = Vec::new();
            let mut complete = self.head.body == BodyKind::None;
            if !complete {
                // The client waits for this before it sends the body.
                if !self.send_100_continue().await {
                    return Err(HttpError::ClientGone);
                }
                self.head.expect_continue = false;
                self.start_body();
                loop {
                    // Decoded afresh each time: the forwarding consumes the raw bytes later.
                    let mut framing = Framing::new(self.head.body, Mode::ChunkDecode);
                    data.clear();
                    framing
                        .consume_into(&self.pending, &mut data)
                        .map_err(HttpError::BadBody)?;
                    if framing.done() {
                        complete = true;
                        break;
                    }
                    if data.len() > max {
                        break;
                    }
                    match self.read_body(self.hcm.stream_idle_timeout).await {
                        Ok(()) => {}
                        Err(DownError::Gone) => return Err(HttpError::ClientGone),
                        Err(DownError::Idle) => return Err(HttpError::StreamIdleTimeout),
                    }
                }
            }
            self.filters.request_body = Some(Box::new(crate::http::filter::BufferedBody {
                data,
                complete,
            }));
            Ok(())
        })
    }
    fn decide_request_id(&mut self) {
        if self.log.request_id.is_none() {
            self.log.request_id = crate::http::forwarding::request_id(&*self);
        }
        crate::http::filter::begin_trace(self.ctx.core, self);
    }
    fn grpc_unary(
        &self,
        call: crate::http::filter::GrpcCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::http::filter::GrpcAnswer>>> {
        Box::pin(crate::http::grpc_call::unary(
            self.ctx.clone(),
            self.snapshot.clone(),
            call,
        ))
    }
    fn http_call(
        &self,
        call: crate::http::filter::HttpCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::http::filter::HttpAnswer>>> {
        Box::pin(crate::http::http_call::call(
            self.ctx.clone(),
            self.snapshot.clone(),
            call,
        ))
    }
    fn replace_path(&mut self, path: &[u8]) -> std::ops::Range<usize> {
        self.synthesize(path)
    }
}
