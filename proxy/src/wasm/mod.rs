//! The proxy-wasm host: filters compiled to WebAssembly (ABI 0.2.1 and 0.1.0, as built
//! with the official `proxy-wasm` Rust SDK for Envoy) run in wasmtime sandboxes, one
//! instance per filter per worker, on the request path of the routes that list them.
//!
//! The engine and compiled modules are in `wasm_engine.rs`, a configured filter of one
//! generation in `runtime/plugin.rs`; here:
//!
//! - [`instance`]: an instance, its start-up and every bounded call into the guest;
//! - [`host`], [`wasi`]: the imports, over [`memory`] (guest memory, bounds-checked);
//!   [`state`]: what they act on; [`maps`], [`properties`], [`header_cache`]: what guests
//!   read/write; [`output`]: guest stdout/stderr as log lines; [`link`]: the worker side;
//! - [`http`]: the per-request chain driven from `http/filters.rs`;
//! - [`l4`]: network (TCP) filter contexts driven from `l4/`;
//! - [`callout`], [`grpc`], [`shared`], [`metrics`], [`extensions`]: `http_call`,
//!   gRPC calls and streams, shared data and queues, guest metrics, Tandem's foreign
//!   functions.

pub mod abi;
pub mod callout;
pub mod extensions;
pub mod grpc;
pub mod header_cache;
pub mod host;
pub mod http;
pub mod instance;
pub mod l4;
pub mod link;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod properties;
pub mod shared;
pub mod state;
pub mod wasi;

/// What a node's filters share across its workers and reloads: shared data and queues
/// (per VM id) and the metrics they define. One per node (in `Shared`); a trial run gets
/// its own, so it leaves nothing behind.
#[derive(Default)]
pub struct HostShared {
    pub(crate) store: std::sync::Mutex<shared::Store>,
    pub(crate) metrics: std::sync::RwLock<metrics::Registry>,
}

impl std::fmt::Debug for HostShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostShared").finish_non_exhaustive()
    }
}

/// Starts each filter of `config` once, without a worker, to check that it starts and
/// accepts its configuration: the last step of taking a configuration (the daemon's
/// start and reloads, `tandem check`). A filter that does not start is reported at its
/// `name`, like any other problem of the file.
pub fn trial(
    config: &crate::config::Config,
    artifacts: &crate::runtime::Artifacts,
) -> Result<(), crate::config::ConfigError> {
    let mut issues = Vec::new();
    for (i, (f, module)) in config.filters.iter().zip(&artifacts.modules).enumerate() {
        // The trial's counters are not the filter's traffic, nor is what it stores: a
        // throwaway set of each.
        let p = crate::runtime::plugin::Plugin::new(f, module, &crate::stats::StatsRegistry::default());
        let host = std::sync::Arc::new(HostShared::default());
        if let Err(e) = instance::Instance::create(&std::sync::Arc::new(p), link::detached(), host) {
            issues.push(crate::config::ConfigIssue {
                line: f.declared_at.0,
                col: f.declared_at.1,
                key: format!("filter[{i}]"),
                message: format!("filter `{}` does not start: {e}", f.name),
                hint: Some("check the filter's configuration (its log lines above say more)".into()),
            });
        }
    }
    if issues.is_empty() {
        return Ok(());
    }
    Err(crate::config::ConfigError::Invalid {
        file: config.source.clone(),
        issues,
    })
}
