//! A server run from a value: [`Server::start`] brings up the access log, the shared
//! state, the pair's member, the workers, VIPs, anycast and the admin API for a taken
//! configuration; [`Server::serve`] then acts on [`Command`]s (reload, reopen the access
//! log, stop) until it stops, hands over and drains. `tandem run` feeds it the process's
//! signals ([`signal_commands`]) and tells systemd (Type=notify) when it is ready.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::AccessLog;
use crate::config::{LogConfig, LogFormat};
use crate::shared::{ConfigSource, Loaded, Shared};
use crate::stats::StatsRegistry;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Workers could not bind or start.
    #[error(transparent)]
    Start(#[from] crate::listen::StartError),
    /// The admin listener could not bind.
    #[error("admin listener {addr}: {source}")]
    Admin {
        /// Address.
        addr: std::net::SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The access log could not be opened.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// The Raft member could not start.
    #[error("pair: {0}")]
    Pair(String),
    /// The process's signal handlers could not be set up.
    #[error("signals: {0}")]
    Signals(std::io::Error),
    /// A thread of the node (control loop, VIPs, health checks, anycast) could not start.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
}

/// Installs the process log (stderr). `RUST_LOG` overrides the configured level.
pub fn init_logging(cfg: &LogConfig) {
    // openraft's own logs are routine chatter (every failed heartbeat to an unreachable
    // peer is an error, 20 a second during a partition; a vote error every election
    // timeout while peers start): below debug they are off, and the group's changes are
    // said by Tandem's own lines (`ha: …`, see tandem_ha::watch) and shown by
    // `tandem ctl cluster`. At debug or trace, or with a directive naming openraft, it
    // all shows.
    let quiet = !cfg.level.contains('=') && !matches!(cfg.level.as_str(), "debug" | "trace");
    let level = if quiet {
        format!("{},openraft=off", cfg.level)
    } else {
        cfg.level.clone()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: files and the journal get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// What the process's signals, or a program that runs a server, ask of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read the configuration again and swap it in (SIGHUP).
    Reload,
    /// Reopen the access log after logrotate renamed it (SIGUSR1, as nginx).
    ReopenAccessLog,
    /// Hand the VIPs over, drain and stop (SIGTERM, SIGINT). Dropping every sender of
    /// the command channel means the same.
    Stop,
}

/// A started node: its shared state, VIPs and anycast groups, where its admin API
/// listens, and the runtime its control loop runs on. Nothing of it is process-wide,
/// so one process can run several (tests do).
#[derive(Debug)]
pub struct Server {
    /// The node: shared state, VIPs, anycast groups.
    pub node: crate::control::Node,
    /// Bound admin address.
    pub admin: std::net::SocketAddr,
    /// The control loop's runtime (reloads, the stop handover).
    control: tokio::runtime::Runtime,
}

impl Server {
    /// Starts a server from a configuration value and serves until a [`Command::Stop`]
    /// arrives on `commands` (or every sender is dropped, or the admin API asks for a
    /// drain); then hands over its VIPs, drains and returns.
    pub fn run(
        loaded: Loaded,
        source: ConfigSource,
        commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), RunError> {
        Server::start(loaded, source)?.serve(commands)
    }

    /// Starts admin and workers for a taken configuration; returns once every worker
    /// accepts (or after 10 s).
    pub fn start(loaded: Loaded, source: ConfigSource) -> Result<Server, RunError> {
        let control = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Thread)?;
        let config = &loaded.config;
        let stats = Arc::new(StatsRegistry::default());
        let access_log = AccessLog::start(&config.log.access_log, config.log.access_log_format, stats.clone())
            .map_err(RunError::AccessLog)?;
        let admin_addr = config.admin.listen;
        let token = config.admin.token.clone();
        let listeners: Vec<_> = config.listeners.iter().map(|l| (l.name.clone(), l.listen)).collect();
        for w in &config.warnings {
            tracing::warn!("{}:{}:{}: {}: {}", config.source, w.line, w.col, w.key, w.message);
        }
        let pair = match &config.ha {
            Some(ha) => {
                let pair = crate::pair::start(ha).map_err(RunError::Pair)?;
                tracing::info!(node = pair.id, "joined the pair's Raft group");
                Some(pair)
            }
            None => None,
        };
        let vips = config.vips.clone();
        let (anycast, bgp) = (config.anycast.clone(), config.bgp.clone());
        let shared = Shared::new(loaded, source, access_log, stats, pair);
        crate::listen::start(shared.clone())?;
        // Listeners are up before the node can win a VIP.
        let vips = crate::cluster::vips::start(&vips, shared.clone()).map_err(RunError::Thread)?;
        crate::health_thread::start(shared.clone()).map_err(RunError::Thread)?;
        // Announced once healthy for the hold-down: listeners up, health checks under way.
        let anycast =
            crate::cluster::anycast::start(&anycast, bgp.as_ref(), shared.clone()).map_err(RunError::Thread)?;
        let node = crate::control::Node {
            shared: shared.clone(),
            vips,
            anycast,
            rate_samples: Default::default(),
        };
        let admin =
            crate::control::admin::start(node.clone(), admin_addr, token).map_err(|source| RunError::Admin {
                addr: admin_addr,
                source,
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.workers_ready.load(Relaxed) < shared.workers && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for (name, addr) in listeners {
            tracing::info!(listener = %name, %addr, workers = shared.workers, "listening");
        }
        tracing::info!(%admin, "admin API listening");
        Ok(Server { node, admin, control })
    }

    /// Serves `commands` until a stop (see [`Server::run`]); then hands over, drains
    /// (bounded by `drain_timeout`) and returns.
    pub fn serve(self, mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>) -> Result<(), RunError> {
        let Server { node, control, .. } = self;
        let shared = node.shared.clone();
        control.block_on(async move {
            let mut drain_rx = shared.shutdown.subscribe();
            let mut stop_rx = shared.stop_requested.subscribe();
            sd_notify("READY=1");
            loop {
                tokio::select! {
                    command = commands.recv() => match command {
                        Some(Command::Reload) => {
                            sd_notify("RELOADING=1");
                            let _ = crate::control::reload::reload(&shared);
                            sd_notify("READY=1");
                        }
                        Some(Command::ReopenAccessLog) => shared.access_log.reopen(),
                        Some(Command::Stop) | None => break,
                    },
                    _ = drain_rx.wait_for(|d| *d) => break,
                    _ = stop_rx.wait_for(|s| *s) => break,
                }
            }
            sd_notify("STOPPING=1");
            // A VIP holder hands over as in maintenance: clients are asked to close their
            // connections for `maintenance_handover` (their next ones still reach this node,
            // one request each), then the SYN gate closes and the VIPs go with priority 0
            // (the peer takes over at once); then drain.
            let handover = shared.runtime.load().config.server.maintenance_handover;
            crate::control::lifecycle::hand_over_for_stop(&node, handover).await;
            shared.begin_drain();
            let timeout = shared.runtime.load().config.server.drain_timeout;
            let deadline = Instant::now() + timeout;
            while shared.connections.load(Relaxed) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = shared.connections.load(Relaxed);
            if left > 0 {
                tracing::warn!(
                    connections = left,
                    "drain timeout reached; closing remaining connections"
                );
            } else {
                tracing::info!("drained; exiting");
            }
            Ok(())
        })
    }
}

/// The process's signals as [`Command`]s: SIGHUP reloads, SIGUSR1 reopens the access
/// log, SIGTERM and SIGINT stop. Registered before it returns, so call it before the
/// server starts: a SIGHUP that arrives right after `/ready` turns 200 (or systemd's
/// READY) must reload, not kill the process by the default action. A thread of its own
/// forwards them until the receiver is dropped.
pub fn signal_commands() -> Result<tokio::sync::mpsc::UnboundedReceiver<Command>, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (registered_tx, registered) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tandem-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return drop(registered_tx.send(Err(e))),
            };
            rt.block_on(async move {
                let streams = (|| {
                    Ok::<_, std::io::Error>((
                        signal(SignalKind::hangup())?,
                        signal(SignalKind::user_defined1())?,
                        signal(SignalKind::terminate())?,
                        signal(SignalKind::interrupt())?,
                    ))
                })();
                let (mut hup, mut usr1, mut term, mut int) = match streams {
                    Ok(s) => {
                        let _ = registered_tx.send(Ok(()));
                        s
                    }
                    Err(e) => return drop(registered_tx.send(Err(e))),
                };
                loop {
                    let command = tokio::select! {
                        _ = hup.recv() => Command::Reload,
                        _ = usr1.recv() => Command::ReopenAccessLog,
                        _ = term.recv() => Command::Stop,
                        _ = int.recv() => Command::Stop,
                    };
                    if tx.send(command).is_err() {
                        return;
                    }
                }
            });
        })
        .map_err(RunError::Signals)?;
    match registered.recv() {
        Ok(Ok(())) => Ok(rx),
        Ok(Err(e)) => Err(RunError::Signals(e)),
        Err(_) => Err(RunError::Signals(std::io::Error::other("the signal thread ended"))),
    }
}

/// Sends a state line to systemd when run as a `Type=notify` service.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        if let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name) {
            let _ = sock.send_to_addr(state.as_bytes(), &addr);
        }
    } else {
        let _ = sock.send_to(state.as_bytes(), &path);
    }
}
