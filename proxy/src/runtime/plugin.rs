//! A plugin: one `[[filter]]` of the running configuration, ready to instantiate.
//! Each configuration generation gets new `Plugin`s (new uid), so a reload swaps
//! instances while requests in flight finish on the ones they started with.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{FailurePolicy, FilterConfig};
use crate::stats::PluginStats;
use crate::wasm_engine::{LoadedModule, EPOCH_TICK};

/// A compiled, configured filter.
#[derive(Debug)]
pub struct Plugin {
    /// Unique per compiled runtime (instances are keyed by it).
    pub uid: u64,
    /// `plugin_name`.
    pub name: Arc<str>,
    /// `plugin_root_id`.
    pub root_id: String,
    /// `plugin_vm_id`: shared data and queues are per VM id.
    pub vm_id: String,
    /// Buffer 6.
    pub vm_config: Vec<u8>,
    /// Buffer 7.
    pub config: Vec<u8>,
    /// What a failed guest means for its request.
    pub failure_policy: FailurePolicy,
    /// Memory cap in bytes.
    pub memory_limit: usize,
    /// Epoch ticks a callback may run.
    pub deadline_ticks: u64,
    /// Cluster-scoped shared-data prefix.
    pub shared_prefix: Option<String>,
    /// WASI environment.
    pub env: Vec<(String, String)>,
    /// Compiled module.
    pub module: wasmtime::Module,
    /// Module digest.
    pub sha256: String,
    /// Counters (kept across reloads by name).
    pub stats: Arc<PluginStats>,
}

static UID: AtomicU64 = AtomicU64::new(1);

impl Plugin {
    /// Builds the runtime plugin of a validated filter from its compiled module; its
    /// counters are `stats`'s.
    pub fn new(f: &FilterConfig, module: &LoadedModule, stats: &crate::stats::StatsRegistry) -> Plugin {
        Plugin {
            uid: UID.fetch_add(1, Relaxed),
            name: Arc::from(f.name.as_str()),
            root_id: f.root_id.clone(),
            vm_id: f.vm_id.clone(),
            vm_config: f.vm_config.clone(),
            config: f.config.clone(),
            failure_policy: f.failure_policy,
            memory_limit: f.memory_limit,
            deadline_ticks: ticks(f.cpu_limit),
            shared_prefix: f.shared_prefix.clone(),
            env: f.env.clone(),
            module: module.module.clone(),
            sha256: module.sha256.clone(),
            stats: stats.plugin(&f.name),
        }
    }
}

/// Epoch ticks for a CPU limit (at least two, so a limit is never shorter than asked).
pub(crate) fn ticks(limit: Duration) -> u64 {
    (limit.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 2
}
