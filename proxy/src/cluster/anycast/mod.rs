//! Anycast: service addresses held on every node of a tier and announced by BGP through
//! the node's own BGP speaker (BIRD 2, see [`bird`]), so the upstream router spreads
//! flows over the healthy nodes by ECMP. A node announces a group only while it can
//! serve it — listeners accepting, tracked clusters with an endpoint taking traffic,
//! a quorum when asked, not in maintenance — with a hold-down against flapping
//! ([`gate`]). Evaluated every [`EVERY`] on a thread of its own (never on a worker).
//!
//! Maintenance drains before it withdraws (see `control/lifecycle.rs`): clients are asked
//! to close their connections while the route still brings them here, then the route is
//! withdrawn and the SYN gate closes. If the process dies, a guard process writes an
//! empty fragment and reloads BIRD, so a crashed node stops attracting traffic at once
//! rather than after a BGP hold timer.

pub mod bird;
pub mod gate;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{AnycastConfig, BgpConfig};
use crate::phase::NodePhase;
use crate::shared::Shared;

/// How often health is evaluated.
pub const EVERY: Duration = Duration::from_millis(100);

/// After the speaker refused or failed, how long before the next try.
const RETRY: Duration = Duration::from_secs(1);

/// What one group shows: its settings and what the announcer last decided.
#[derive(Debug)]
pub struct Group {
    /// Settings.
    pub config: AnycastConfig,
    /// Whether the speaker announces it now.
    pub announced: AtomicBool,
    /// Announcements made.
    pub announcements: AtomicU64,
    /// Withdrawals made.
    pub withdrawals: AtomicU64,
    /// Why it is withdrawn (empty while announced), or that it is holding down.
    pub reason: Mutex<String>,
}

/// The node's anycast groups and their announcer.
pub struct Anycast {
    /// The groups, in file order.
    pub groups: Vec<Arc<Group>>,
    /// The speaker.
    pub bgp: BgpConfig,
    maintenance: AtomicBool,
    stopping: AtomicBool,
    /// Reloads of the speaker that failed.
    pub speaker_errors: AtomicU64,
    /// Reloads of the speaker that succeeded.
    pub speaker_reloads: AtomicU64,
    /// The last failure, for status.
    pub last_error: Mutex<Option<String>>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// The announcer thread, woken when maintenance or a stop should act at once.
    announcer: OnceLock<std::thread::Thread>,
}

/// Adds the groups' addresses to their interfaces, withdraws whatever a previous run
/// left announced, starts the guard and the announcer thread. Errors adding an address
/// are logged (the group stays withdrawn: the node cannot receive it); the proxy keeps
/// serving. None when no group is configured.
pub fn start(
    groups: &[AnycastConfig],
    bgp: Option<&BgpConfig>,
    shared: Arc<Shared>,
) -> std::io::Result<Option<Arc<Anycast>>> {
    let Some(bgp) = bgp.filter(|_| !groups.is_empty()) else {
        return Ok(None);
    };
    let mut holding = Vec::new();
    for g in groups {
        holding.push(hold_addresses(g));
    }
    if let Err(e) = bird::apply(bgp, &[]) {
        tracing::warn!(error = %e, "anycast: could not withdraw routes a previous run may have left");
    }
    if let Err(e) = start_guard(bgp) {
        tracing::warn!(error = %e, "anycast guard not started: after a crash BIRD keeps announcing until the BGP session ends or `tandem guard-anycast` runs");
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let any = Arc::new(Anycast {
        groups: groups
            .iter()
            .map(|g| {
                Arc::new(Group {
                    config: g.clone(),
                    announced: AtomicBool::new(false),
                    announcements: AtomicU64::new(0),
                    withdrawals: AtomicU64::new(0),
                    reason: Mutex::new("starting".into()),
                })
            })
            .collect(),
        bgp: bgp.clone(),
        maintenance: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        speaker_errors: AtomicU64::new(0),
        speaker_reloads: AtomicU64::new(0),
        last_error: Mutex::new(None),
        done: Mutex::new(Some(done_rx)),
        announcer: OnceLock::new(),
    });
    let announcing = any.clone();
    let thread = std::thread::Builder::new().name("anycast".into()).spawn(move || {
        announcing.announce_loop(&shared, &holding);
        let _ = done_tx.send(());
    })?;
    let _ = any.announcer.set(thread.thread().clone());
    Ok(Some(any))
}

/// Adds `g`'s addresses to its interface (already there is fine); whether all are held.
fn hold_addresses(g: &AnycastConfig) -> bool {
    let Some(index) = tandem_ha::vip::net::interface_index(&g.interface) else {
        tracing::error!(group = %g.name, interface = %g.interface, "anycast: no such interface; the group stays withdrawn");
        return false;
    };
    let mut all = true;
    for (a, p) in &g.addresses {
        if tandem_ha::vip::net::has_address(&g.interface, *a) {
            continue;
        }
        if let Err(e) = tandem_ha::vip::net::add_address(index, *a, *p, None) {
            tracing::error!(group = %g.name, address = %a, error = %e, "anycast: cannot add the address; the group stays withdrawn");
            all = false;
        }
    }
    all
}

impl Anycast {
    /// Maintenance on: withdraw every group now (the caller has already asked clients
    /// to close); off: announce again while healthy.
    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Relaxed);
        self.wake();
    }

    /// Has the announcer act now rather than at its next tick: the SYN gate has just
    /// closed, and every moment the route stays up sends SYNs here that wait for a retry.
    fn wake(&self) {
        if let Some(t) = self.announcer.get() {
            t.unpark();
        }
    }

    /// Whether any group is announced.
    pub fn announces_any(&self) -> bool {
        self.groups.iter().any(|g| g.announced.load(Relaxed))
    }

    /// Withdraws every group and waits (up to `limit`) until the speaker has them.
    pub fn stop(&self, limit: Duration) {
        self.stopping.store(true, Relaxed);
        self.wake();
        if let Some(rx) = self.done.lock().ok().and_then(|mut d| d.take()) {
            let _ = rx.recv_timeout(limit);
        }
    }

    /// Every [`EVERY`]: evaluates each group, steps its gate and hands the speaker the
    /// routes to announce whenever they change (again after a failed reload).
    fn announce_loop(&self, shared: &Shared, holding: &[bool]) {
        let mut gates: Vec<_> = self
            .groups
            .iter()
            .map(|g| gate::Gate::new(g.config.hold_down, g.config.withdraw_after))
            .collect();
        let mut applied: Option<Vec<(IpAddr, u8)>> = None;
        let mut next_try = Instant::now();
        loop {
            let stopping = self.stopping.load(Relaxed);
            let maintenance = stopping || self.maintenance.load(Relaxed);
            let now = Instant::now();
            let mut routes = Vec::new();
            for ((group, gate), held) in self.groups.iter().zip(&mut gates).zip(holding) {
                let trouble = if *held {
                    trouble(shared, &group.config)
                } else {
                    Some("address not held".into())
                };
                let on = gate.step(now, trouble.is_none(), maintenance);
                let reason = match (&trouble, on) {
                    (_, true) => String::new(),
                    _ if maintenance => "maintenance".into(),
                    (Some(t), false) => t.clone(),
                    (None, false) => "holding down".into(),
                };
                *group.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
                if on {
                    routes.extend(group.config.addresses.iter().copied());
                }
            }
            if applied.as_ref() != Some(&routes) && (now >= next_try || stopping) {
                match bird::apply(&self.bgp, &routes) {
                    Ok(()) => {
                        self.speaker_reloads.fetch_add(1, Relaxed);
                        self.record_changes(&routes);
                        applied = Some(routes);
                        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    Err(e) => {
                        self.speaker_errors.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "anycast: the BGP speaker did not take the routes; trying again in 1 s");
                        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        next_try = now + RETRY;
                    }
                }
            }
            if stopping && applied.as_ref().is_some_and(Vec::is_empty) {
                return;
            }
            std::thread::park_timeout(EVERY);
        }
    }

    /// Counts and logs each group whose announcement the speaker now has changed.
    fn record_changes(&self, routes: &[(IpAddr, u8)]) {
        for g in &self.groups {
            let on = g.config.addresses.iter().all(|a| routes.contains(a));
            if g.announced.swap(on, Relaxed) != on {
                if on {
                    g.announcements.fetch_add(1, Relaxed);
                    tracing::info!(group = %g.config.name, "anycast: announced");
                } else {
                    g.withdrawals.fetch_add(1, Relaxed);
                    let why = g.reason.lock().map(|r| r.clone()).unwrap_or_default();
                    tracing::warn!(group = %g.config.name, reason = %why, "anycast: withdrawn");
                }
            }
        }
    }

    /// JSON for `/status`.
    pub fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "speaker": "bird",
            "fragment": self.bgp.fragment.display().to_string(),
            "speaker_reloads": self.speaker_reloads.load(Relaxed),
            "speaker_errors": self.speaker_errors.load(Relaxed),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
            "groups": self.groups.iter().map(|g| serde_json::json!({
                "name": g.config.name,
                "addresses": g.config.addresses.iter().map(|(a, p)| format!("{a}/{p}")).collect::<Vec<_>>(),
                "interface": g.config.interface,
                "announced": g.announced.load(Relaxed),
                "reason": g.reason.lock().map(|r| r.clone()).unwrap_or_default(),
                "announcements": g.announcements.load(Relaxed),
                "withdrawals": g.withdrawals.load(Relaxed),
            })).collect::<Vec<_>>(),
        })
    }

    /// Appends the anycast families to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        crate::exposition::gauge(
            out,
            "tandem_anycast_announced",
            "Whether this node announces the anycast group (1) or has withdrawn it (0).",
        );
        for g in &self.groups {
            let _ = writeln!(
                out,
                "tandem_anycast_announced{{group=\"{}\"}} {}",
                g.config.name,
                u8::from(g.announced.load(Relaxed))
            );
        }
        crate::exposition::counter(
            out,
            "tandem_anycast_changes_total",
            "Announcements and withdrawals the BGP speaker took, per group.",
        );
        for g in &self.groups {
            for (change, v) in [("announce", &g.announcements), ("withdraw", &g.withdrawals)] {
                let _ = writeln!(
                    out,
                    "tandem_anycast_changes_total{{group=\"{}\",change=\"{change}\"}} {}",
                    g.config.name,
                    v.load(Relaxed)
                );
            }
        }
        crate::exposition::counter(
            out,
            "tandem_anycast_speaker_reloads_total",
            "Reloads of the BGP speaker, by result.",
        );
        let _ = writeln!(
            out,
            "tandem_anycast_speaker_reloads_total{{result=\"ok\"}} {}",
            self.speaker_reloads.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "tandem_anycast_speaker_reloads_total{{result=\"failed\"}} {}",
            self.speaker_errors.load(Relaxed)
        );
    }
}

/// Why the node cannot serve `g` now (`None`: it can): it is stopping, a listener is not
/// accepting, a tracked cluster has no endpoint taking traffic, or (when asked) it has
/// no quorum.
fn trouble(shared: &Shared, g: &AnycastConfig) -> Option<String> {
    if shared.phase.get() == NodePhase::Draining {
        return Some("stopping".into());
    }
    if shared.workers_ready.load(Relaxed) < shared.workers {
        return Some("listeners not accepting".into());
    }
    let rt = shared.runtime.load();
    let now = crate::clock::now_ns();
    for name in &g.track_clusters {
        let down = rt
            .cluster_named(name)
            .is_some_and(|c| !c.endpoints.iter().any(|e| e.stats.health.eligible(now)));
        if down {
            return Some(format!("cluster {name} has no endpoint taking traffic"));
        }
    }
    if g.withdraw_on_no_quorum && shared.pair.as_ref().is_some_and(|p| !p.in_touch_with_majority()) {
        return Some("no quorum".into());
    }
    None
}

/// Starts the anycast guard (see [`crate::cluster::guard`]): when this process ends, however it
/// ends, `tandem guard-anycast` writes an empty fragment and reloads BIRD. Without it
/// BIRD keeps announcing a dead proxy's routes for as long as BIRD itself runs.
fn start_guard(bgp: &BgpConfig) -> std::io::Result<()> {
    crate::cluster::guard::start(&[
        "guard-anycast".into(),
        bgp.fragment.clone().into(),
        bgp.control_socket.clone().into(),
        bgp.birdc.clone().into(),
        bgp.protocol.clone().into(),
    ])
}

/// The guard's side (`tandem guard-anycast FRAGMENT SOCKET BIRDC PROTOCOL`): waits until
/// its standard input closes, then withdraws every route. Signals that stop the proxy
/// are ignored: the guard ends only after its work.
pub fn guard(fragment: &str, socket: &str, birdc: &str, protocol: &str) -> std::process::ExitCode {
    crate::cluster::guard::wait_for_parent_exit();
    let cfg = BgpConfig {
        fragment: fragment.into(),
        control_socket: socket.into(),
        birdc: birdc.into(),
        protocol: protocol.into(),
    };
    match bird::apply(&cfg, &[]) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem guard-anycast: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
