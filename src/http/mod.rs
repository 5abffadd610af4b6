//! HTTP connection management: the request path (`conn`), the HTTP/1 codec (`h1`), body
//! streaming, header serialisation, local replies and access logs.

pub mod body;
pub mod conn;
pub mod error;
pub(crate) mod exchange;
pub(crate) mod fields;
pub(crate) mod filter;
pub use crate::model::flags;
pub mod forwarding;
pub(crate) mod grpc_call;
pub mod h1;
pub mod h2;
pub mod h2_server;
pub(crate) mod http_call;
pub mod local_reply;
pub mod log;
pub(crate) mod otel;
pub mod path;
pub(crate) mod proxy;
pub(crate) mod request;
pub(crate) mod span;
pub(crate) mod trace;
pub mod trust;
pub mod write_headers;
pub mod xfcc;
