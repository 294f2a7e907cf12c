//! One node's state, shared by its workers, the admin API and signal handlers: the
//! current runtime snapshot, stats, the node's phase, and where the configuration
//! comes from (a reload, in `control/reload.rs`, reads it again).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::config::{self, Config, ConfigError};
use crate::phase::{NodePhase, Phase};
use crate::runtime::{Artifacts, Runtime};
use crate::stats::{EndpointStats, ListenerStats, StatsRegistry};

/// Where the configuration comes from, so a reload can read it again.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// Text embedded in the binary (the demo), with a label.
    Embedded(&'static str, String),
}

impl ConfigSource {
    /// Takes the configuration: reads and validates it, loads what its files hold
    /// (certificates, filter modules; their warnings join the configuration's), and
    /// starts each of its filters once (see [`crate::wasm::trial`]).
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let reading = match self {
            ConfigSource::File(p) => config::read_file(p)?,
            ConfigSource::Embedded(label, text) => config::read_str(label, text),
        };
        // Certificates and modules are loaded even when the file has other problems,
        // so one pass reports them all.
        let config::Reading {
            source,
            config,
            mut issues,
        } = reading;
        let built = config.as_ref().map(Artifacts::build);
        let (mut config, mut artifacts) = match (config, built) {
            (Some(config), Some(Ok(artifacts))) if issues.is_empty() => (config, artifacts),
            (_, Some(Err(more))) => {
                issues.extend(more);
                return Err(config::invalid(&source, issues));
            }
            _ => return Err(config::invalid(&source, issues)),
        };
        config.warnings.append(&mut artifacts.warnings);
        crate::wasm::trial(&config, &artifacts)?;
        Ok(Loaded { config, artifacts })
    }
}

/// A configuration taken: its validated values and what its files became; what a
/// server starts from and a reload swaps in.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Its certificates and filter modules, loaded and compiled.
    pub artifacts: Artifacts,
}

/// State shared by every thread of one node (a process usually runs one).
#[derive(Debug)]
pub struct Shared {
    /// The runtime new requests use.
    pub runtime: ArcSwap<Runtime>,
    /// Counters keyed by identity.
    pub stats: Arc<StatsRegistry>,
    /// Learned sticky bindings of this node (kept across reloads, like the counters).
    pub sticky: crate::sticky::StickyTable,
    /// Listener counters, in listener order (restart-only set).
    pub listeners: Vec<(String, Arc<ListenerStats>)>,
    /// Where reloads read from.
    pub source: ConfigSource,
    /// Access log sender.
    pub access_log: AccessLog,
    /// Where the node is in its life (serving, handing over, maintenance, draining):
    /// what the request path, idle connections, the SYN gate and `/ready` act on.
    pub phase: Phase,
    /// Workers whose listeners are bound and accepting.
    pub workers_ready: AtomicUsize,
    /// Worker count.
    pub workers: usize,
    /// Downstream connections open (all listeners).
    pub connections: AtomicU64,
    /// The next connection number (`connection.id` for filters; unique in the process).
    pub conn_ids: AtomicU64,
    /// Process start, for uptime.
    pub started: Instant,
    /// Wakes workers to stop accepting and drain.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Asks the control loop to stop as on SIGTERM (`POST /drain`): a VIP holder hands
    /// its VIPs over before the listeners close.
    pub stop_requested: tokio::sync::watch::Sender<bool>,
    /// The generation of the runtime last installed: workers follow reloads by it
    /// instead of polling `runtime`.
    pub(crate) reloaded: tokio::sync::watch::Sender<u64>,
    /// Wakes a single node's health thread, which otherwise sleeps until its next
    /// sweep: an operator started draining an endpoint, so drains are tracked again.
    pub(crate) health_wake: tokio::sync::Notify,
    /// The configuration the process started with: restart-only settings (listeners,
    /// admin, pair, VIPs) stay as they were then, so a reload compares against it (a
    /// change reverted by a later reload is then no longer reported).
    pub(crate) started_with: Arc<Config>,
    pub(crate) reload_lock: Mutex<()>,
    removed: Mutex<Vec<RemovedEndpoint>>,
    /// This node's member of the pair's Raft group, when `[ha]` is configured.
    pub pair: Option<Arc<crate::pair::Pair>>,
    /// What this node's filters share across workers and reloads.
    pub wasm: Arc<crate::wasm::HostShared>,
}

/// An endpoint a reload removed: it drains (in-flight requests finish on the old
/// runtime) and stays visible in `/status` until it is empty.
#[derive(Debug, Clone)]
pub struct RemovedEndpoint {
    /// Cluster it belonged to.
    pub cluster: Arc<str>,
    /// Address.
    pub address: std::net::SocketAddr,
    /// Its stats (active count, drain times).
    pub stats: Arc<EndpointStats>,
}

impl Shared {
    /// Compiles the first runtime and builds the shared state.
    pub fn new(
        Loaded { config, artifacts }: Loaded,
        source: ConfigSource,
        access_log: AccessLog,
        stats: Arc<StatsRegistry>,
        pair: Option<Arc<crate::pair::Pair>>,
    ) -> Arc<Shared> {
        let listeners = config
            .listeners
            .iter()
            .map(|l| (l.name.clone(), stats.listener(&l.name)))
            .collect();
        let workers = config.server.workers;
        let config = Arc::new(config);
        let runtime = Runtime::compile(config.clone(), artifacts, 1, &stats);
        Arc::new(Shared {
            started_with: config,
            runtime: ArcSwap::from_pointee(runtime),
            stats,
            sticky: crate::sticky::StickyTable::new(pair.clone()),
            listeners,
            source,
            access_log,
            phase: Phase::default(),
            workers_ready: AtomicUsize::new(0),
            workers,
            connections: AtomicU64::new(0),
            conn_ids: AtomicU64::new(1),
            started: Instant::now(),
            shutdown: tokio::sync::watch::channel(false).0,
            stop_requested: tokio::sync::watch::channel(false).0,
            reloaded: tokio::sync::watch::channel(1).0,
            health_wake: tokio::sync::Notify::new(),
            reload_lock: Mutex::new(()),
            removed: Mutex::new(Vec::new()),
            pair,
            wasm: Default::default(),
        })
    }

    /// Endpoints removed by reloads that are draining or recently drained.
    pub fn removed_endpoints(&self) -> std::sync::MutexGuard<'_, Vec<RemovedEndpoint>> {
        self.removed.lock().expect("removed endpoints lock poisoned")
    }

    /// Begins a graceful stop: listeners close, connections finish.
    pub fn begin_drain(&self) {
        if self.phase.step(|_| Some(NodePhase::Draining)) != NodePhase::Draining {
            tracing::info!("draining: no longer accepting connections");
            let _ = self.shutdown.send(true);
        }
    }

    /// Where the node is in its lifecycle, one word for status, ctl and the status page:
    /// `serving`; `handover` (maintenance on, clients asked to close, VIPs still held
    /// until `maintenance_handover` ends); `maintenance` (VIPs released, or none);
    /// `draining` (stopping).
    pub fn phase(&self) -> &'static str {
        self.phase.get().name()
    }

    /// Whether every worker accepts and the node is serving (not handing over, in
    /// maintenance or draining).
    pub fn is_ready(&self) -> bool {
        self.phase.get() == NodePhase::Serving && self.workers_ready.load(Relaxed) == self.workers
    }
}

/// Counts a downstream connection open (its listener's and the process's count) until
/// dropped. Owned, so it moves with the connection from task to task: an idle HTTP/1.1
/// connection is served by a new task once its next bytes arrive (`http::serve`).
pub(crate) struct OpenConn {
    /// The connection's listener's counters.
    pub(crate) stats: Arc<ListenerStats>,
    /// The node, whose open-connection count drain waits on.
    pub(crate) shared: Arc<Shared>,
}

impl OpenConn {
    /// Counts a connection its listener already counted as active (the accept loop
    /// does, to enforce `max_connections`) open in the process too.
    pub(crate) fn new(stats: Arc<ListenerStats>, shared: Arc<Shared>) -> OpenConn {
        shared.connections.fetch_add(1, Relaxed);
        OpenConn { stats, shared }
    }

    /// Lets go of the guard and leaves the connection counted open: for a connection
    /// parked where every byte counts ([`crate::http::idle_lot`]), which makes the guard
    /// again with [`OpenConn::already_counted`] when it leaves.
    pub(crate) fn keep_counted(self) {
        std::mem::forget(self);
    }

    /// The guard of a connection [`OpenConn::keep_counted`] left counted open.
    pub(crate) fn already_counted(stats: Arc<ListenerStats>, shared: Arc<Shared>) -> OpenConn {
        OpenConn { stats, shared }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Relaxed);
        self.shared.connections.fetch_sub(1, Relaxed);
    }
}
