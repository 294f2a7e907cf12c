//! The proxy-wasm host: filters compiled to WebAssembly (ABI 0.2.1 and 0.1.0, as built
//! with the official `proxy-wasm` Rust SDK for Envoy) run in wasmtime sandboxes, one
//! instance per filter per worker, on the request path of the routes that list them.
//!
//! - [`module`]: engine, epoch ticker (CPU limits), compilation with a disk cache;
//! - [`plugin`]: a configured filter of one configuration generation;
//! - [`instance`]: an instance, its start-up and every bounded call into the guest;
//! - [`host`], [`wasi`]: the imports; [`maps`], [`properties`]: what guests read/write;
//! - [`http`]: the per-request chain driven from `proxy.rs`;
//! - [`l4`]: network (TCP) filter contexts driven from `l4.rs`;
//! - [`callout`], [`grpc`], [`shared`], [`metrics`], [`extensions`]: `http_call`,
//!   gRPC calls and streams, shared data and queues, guest metrics, Tandem's foreign
//!   functions.

pub mod abi;
pub mod callout;
pub mod extensions;
pub mod grpc;
pub mod host;
pub mod http;
pub mod instance;
pub mod l4;
pub mod maps;
pub mod metrics;
pub mod module;
pub mod plugin;
pub mod properties;
pub mod shared;
pub mod state;
pub mod wasi;

pub use plugin::Plugin;

/// Instantiates a filter once without a worker to check that it starts and accepts
/// its configuration (used by configuration validation and `tandem check`).
pub fn trial(f: &crate::config::FilterConfig) -> Result<(), String> {
    // The trial's counters are not the filter's traffic: a throwaway set.
    let mut p = Plugin::new(f);
    p.stats = Default::default();
    instance::Instance::create(&std::sync::Arc::new(p), std::rc::Weak::new())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
