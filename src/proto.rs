//! Rust types generated from `proto/`, our subset of Envoy's v3 API (upstream package
//! names, message names and field numbers), and the descriptor pool that gives them the
//! proto3 JSON mapping.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_includes.rs"));

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// The encoded `FileDescriptorSet` of everything in `proto/`.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The descriptor pool of `proto/`, built once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("proto/ descriptors are valid")
    })
}

/// Type URL prefix used by `Any`.
pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";
