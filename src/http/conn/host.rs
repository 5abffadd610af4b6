//! What an HTTP/1.1 connection lends its request's HTTP filters.

use std::sync::Arc;

use super::Connection;
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
    fn decide_request_id(&mut self) {
        if self.log.request_id.is_none() {
            self.log.request_id = crate::http::forwarding::request_id(&*self);
        }
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
    fn replace_path(&mut self, path: &[u8]) -> std::ops::Range<usize> {
        self.synthesize(path)
    }
}
