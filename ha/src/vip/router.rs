//! One virtual router on one interface: drives the RFC 5798 [`Machine`] with adverts
//! from the raw socket and its timers, and carries out its actions — adverts to the
//! group (or unicast peers), VIPs added through netlink with a lifetime refreshed while
//! master (a killed holder's VIP expires by itself), gratuitous ARPs on takeover, when
//! another master is heard and periodically, and VIPs removed on release. Stale VIPs are
//! removed at start. A release (maintenance, shutdown) sends priority 0 so the peer
//! takes over at once.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fence::{Acquired, Expired, Fence, Renewed};
use super::machine::{Action, Machine, RouterConfig, State};
use super::net::{self, Announcer, Interface, NetError, Received, VrrpSocket};
use super::packet::{group_for, Advert, AdvertError, Version};
use super::sync_group::{self, SyncMember};
use crate::lease::{LeaseClient, LeaseError};
use crate::types::Lease;

/// Settings of one virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    /// Name (logs, metrics).
    pub name: String,
    /// Interface the VIPs live on.
    pub interface: String,
    /// VRID (1–255).
    pub vrid: u8,
    /// This node's priority (1–254; 255 = address owner).
    pub priority: u8,
    /// Advertisement interval, centiseconds.
    pub interval_cs: u16,
    /// Take over from a lower-priority master.
    pub preempt: bool,
    /// The VIPs with their prefix length (all IPv4 or all IPv6).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Send adverts to these peers instead of the multicast group.
    pub unicast_peers: Vec<IpAddr>,
    /// Gratuitous ARPs sent on takeover.
    pub garp_repeat: u32,
    /// Gratuitous ARPs repeated this often while master (0 = never).
    pub garp_refresh: Duration,
    /// Valid lifetime of a held VIP, refreshed while master.
    pub address_lifetime: Duration,
    /// Script run on state changes with arguments NAME STATE (or keepalived's
    /// `INSTANCE NAME STATE PRIORITY` with `notify_keepalived`).
    pub notify: Option<PathBuf>,
    /// Call `notify` with keepalived's arguments and state names (MASTER, BACKUP, FAULT,
    /// STOP), so scripts written for keepalived run unchanged.
    pub notify_keepalived: bool,
    /// A FIFO that receives a line `INSTANCE "NAME" STATE PRIORITY` per change, as
    /// keepalived's `notify_fifo` writes it (created when missing; skipped without a reader).
    pub notify_fifo: Option<PathBuf>,
    /// Extra time a backup waits past Master_Down before taking over (not after a
    /// priority-0 release): a lossy link then needs that many more lost adverts in a
    /// row to cause a false takeover.
    pub hold_down: Duration,
    /// Clusters tracked: while any has no endpoint taking traffic, the priority drops
    /// by `track_weight`.
    pub track_clusters: Vec<String>,
    /// How much a failed track lowers the priority.
    pub track_weight: u8,
    /// With a fence (the node is in a Raft group): what a node that cannot reach a quorum
    /// does.
    pub on_no_quorum: NoQuorum,
    /// With a fence: how long a lease request may wait for a commit before the group
    /// counts as unreachable (covers the election of a new leader).
    pub quorum_wait: Duration,
    /// Accept adverts whose address list differs from `addresses` (keepalived's
    /// `vrrp_skip_check_adv_addr`); by default they are refused, as keepalived does.
    pub skip_check_adv_addr: bool,
    /// After a start (or a FAULT's end) a higher-priority backup waits this long before
    /// it preempts a lower master (keepalived's `preempt_delay`): a node that just came
    /// back gets time to settle (caches, health checks) before it takes traffic.
    pub preempt_delay: Duration,
    /// Interfaces that must be usable (up, with carrier); while one is not, the priority
    /// drops by `track_weight` (keepalived's `track_interface` with a weight).
    pub track_interfaces: Vec<String>,
    /// Commands run periodically; while one is failing, the priority drops by its weight.
    pub track_scripts: Vec<TrackScript>,
    /// Files holding an integer added to the priority (keepalived's `track_file` with
    /// weight 1; a missing or unreadable file counts 0): an external agent's say.
    pub track_files: Vec<PathBuf>,
    /// Processes that must be running; while one has fewer instances than its quorum,
    /// the priority drops by its weight (keepalived's `track_process`).
    pub track_processes: Vec<TrackProcess>,
    /// The sync group this VIP belongs to (see [`super::sync_group`]).
    pub sync_group: Option<String>,
    /// VRRPv3 (default), or VRRPv2 for peers that speak only that (IPv4, whole-second
    /// intervals).
    pub version: Version,
    /// Hold the VIPs on a macvlan with the VRRP virtual MAC (see [`super::vmac`]).
    pub use_vmac: bool,
}

/// A tracked script (keepalived's `vrrp_script`): exit status 0 is success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackScript {
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// Time between runs.
    pub interval: Duration,
    /// A run that takes longer is killed and counts as a failure.
    pub timeout: Duration,
    /// Successes in a row that make a failing script good again.
    pub rise: u32,
    /// Failures in a row that make a good script failing.
    pub fall: u32,
    /// How much the priority drops while it is failing.
    pub weight: u8,
}

/// A tracked process (keepalived's `vrrp_track_process`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackProcess {
    /// The process name as `/proc/PID/comm` has it (15 characters at most), or with
    /// `full_command` the start of its command line (`/usr/sbin/bird -c /etc/bird.conf`).
    pub name: String,
    /// Match `name` against the command line (arguments joined by spaces).
    pub full_command: bool,
    /// Instances that must run.
    pub quorum: u32,
    /// How much the priority drops while fewer run.
    pub weight: u8,
    /// A change must last this long before it counts (a restart by its supervisor does
    /// not move the VIP).
    pub delay: Duration,
}

pub use super::fence::NoQuorum;

impl VipConfig {
    /// The interface the VIPs are added to: the VRRP MAC interface with `use_vmac`.
    pub fn address_interface(&self) -> String {
        super::vmac::address_interface(
            &self.interface,
            self.vrid,
            self.use_vmac,
            self.addresses.first().map(|a| a.0),
        )
    }

    /// Lifetime of a lease: a backup checks after about 3 adverts plus the hold-down,
    /// so a dead holder's lease has run out by then.
    pub fn lease_ttl(&self) -> Duration {
        (Duration::from_millis(30 * u64::from(self.interval_cs)) + self.hold_down).max(Duration::from_millis(150))
    }
}

/// Live counters of a virtual router.
#[derive(Debug, Default)]
pub struct VipStats {
    /// 0 initialize, 1 backup, 2 master, 3 fault.
    pub state: AtomicU8,
    /// Priority in use (configured, or lowered by tracking).
    pub priority: AtomicU8,
    /// Advertisements sent.
    pub adverts_sent: AtomicU64,
    /// Advertisements accepted for this VRID.
    pub adverts_received: AtomicU64,
    /// Dropped, by [`DROP_REASONS`].
    pub dropped: [AtomicU64; DROP_REASONS.len()],
    /// Times the interface went down (FAULT).
    pub faults: AtomicU64,
    /// Transitions to master.
    pub became_master: AtomicU64,
    /// Gratuitous ARPs sent.
    pub garps: AtomicU64,
    /// Takeovers the fence refused (the lease is held by a live peer).
    pub lease_refused: AtomicU64,
    /// Times a master lost its lease to another node and stepped down.
    pub lease_lost: AtomicU64,
    /// Times a master yielded its lease to a higher-priority node (preemption).
    pub lease_yielded: AtomicU64,
    /// Lease requests no quorum answered.
    pub no_quorum: AtomicU64,
}

/// How long released VIPs stay on the interface after the priority-0 advert.
const RELEASE_GRACE: Duration = Duration::from_millis(250);

/// Names of the `dropped` slots: undecodable (truncated, version other than 3, TTL or
/// hop limit not 255, protocol, checksum, malformed address list), a VRRPv2 advert,
/// another VRID, and refused as keepalived refuses them (an address list other than
/// ours, a unicast advert in multicast mode, a source that is not a unicast peer).
pub const DROP_REASONS: [&str; 11] = [
    "truncated",
    "version",
    "ttl",
    "protocol",
    "checksum",
    "vrid",
    "addresses",
    "vrrp_v2",
    "address_list",
    "destination",
    "source",
];

/// The `dropped` slot of an advert that did not decode.
fn drop_slot(e: AdvertError) -> usize {
    match e {
        AdvertError::Truncated => 0,
        AdvertError::Version => 1,
        AdvertError::Ttl => 2,
        AdvertError::Protocol => 3,
        AdvertError::Checksum => 4,
        AdvertError::Fields => 6,
        AdvertError::V2 => 7,
        AdvertError::V3 => 1,
    }
}

/// Checks a decoded advert as keepalived does before it may touch the election; the
/// `dropped` slot when it is refused. In unicast mode only the configured peers are
/// heard; in multicast mode only adverts sent to the group (a unicast one to this node
/// is forged or misconfigured); the address list must be ours, unless
/// `skip_check_adv_addr`.
fn screen(cfg: &VipConfig, r: &Received) -> Result<(), usize> {
    if r.advert.vrid != cfg.vrid {
        return Err(5);
    }
    if cfg.unicast_peers.is_empty() {
        if r.dst != group_for(r.src) {
            return Err(9);
        }
    } else if !cfg.unicast_peers.contains(&r.src) {
        return Err(10);
    }
    let same_list = r.advert.addrs.len() == cfg.addresses.len()
        && r.advert.addrs.iter().all(|a| cfg.addresses.iter().any(|(c, _)| c == a));
    if !same_list && !cfg.skip_check_adv_addr {
        return Err(8);
    }
    Ok(())
}

/// How often the interface is checked for FAULT.
const LINK_CHECK_EVERY: Duration = Duration::from_millis(100);
/// VRRPv2 adverts are logged at most this often (they are all counted).
const V2_LOG_EVERY: Duration = Duration::from_secs(30);

/// What the owner asks of the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Take part in the election.
    Run,
    /// Release now with priority 0 and stay out (maintenance).
    Release,
    /// Release and end (process stop).
    Stop,
}

impl VipStats {
    /// Whether the router is master (holds the VIPs).
    pub fn is_master(&self) -> bool {
        self.state.load(Relaxed) == State::Master.code()
    }
}

struct Holder {
    cfg: VipConfig,
    iface: Interface,
    sock: VrrpSocket,
    announcer: Announcer,
    stats: Arc<VipStats>,
}

impl Holder {
    /// Carries out the machine's actions; true when the VIPs were just announced (a
    /// takeover, or another master heard) and a short burst of repeats should follow.
    async fn apply(&self, actions: Vec<Action>, m: &Machine) -> bool {
        let mut announced = false;
        for a in actions {
            match a {
                Action::SendAdvert(priority) => {
                    let advert = Advert {
                        vrid: self.cfg.vrid,
                        priority,
                        interval_cs: self.cfg.interval_cs,
                        addrs: self.cfg.addresses.iter().map(|a| a.0).collect(),
                    };
                    let dsts: Vec<IpAddr> = if self.cfg.unicast_peers.is_empty() {
                        vec![group_for(self.iface.address)]
                    } else {
                        self.cfg.unicast_peers.clone()
                    };
                    for d in dsts {
                        match self.sock.send(&advert, d).await {
                            Ok(()) => {
                                self.stats.adverts_sent.fetch_add(1, Relaxed);
                            }
                            Err(e) => tracing::warn!(vip = %self.cfg.name, error = %e, "advert not sent"),
                        }
                    }
                }
                Action::TakeVips => {
                    self.hold();
                    for _ in 0..self.cfg.garp_repeat.max(1) {
                        self.garp();
                    }
                    self.stats.became_master.fetch_add(1, Relaxed);
                    announced = true;
                    tracing::info!(vip = %self.cfg.name, vrid = self.cfg.vrid, "became master; VIPs held");
                    self.notify("master");
                }
                Action::ReleaseVips => {
                    self.release();
                    tracing::info!(vip = %self.cfg.name, vrid = self.cfg.vrid, state = ?m.state(), "VIPs released");
                    self.notify(match m.state() {
                        State::Backup => "backup",
                        State::Fault => "fault",
                        _ => "released",
                    });
                }
                Action::Garp => {
                    self.garp();
                    announced = true;
                }
            }
        }
        self.stats.state.store(m.state().code(), Relaxed);
        self.stats.priority.store(m.priority(), Relaxed);
        announced
    }

    /// Adds (or refreshes the lifetime of) every VIP.
    fn hold(&self) {
        if self.cfg.use_vmac {
            if let Err(e) = super::vmac::set_up(self.iface.index, true) {
                tracing::error!(vip = %self.cfg.name, interface = %self.iface.name, error = %e, "cannot set the VRRP MAC interface up");
            }
        }
        for &(a, p) in &self.cfg.addresses {
            let lifetime = Some(self.cfg.address_lifetime);
            if let Err(e) = net::add_address_with(self.iface.index, a, p, lifetime, self.cfg.use_vmac) {
                tracing::error!(vip = %self.cfg.name, address = %a, error = %e, "cannot add VIP");
            }
        }
    }

    fn release(&self) {
        for &(a, p) in &self.cfg.addresses {
            if let Err(e) = net::remove_address(self.iface.index, a, p) {
                tracing::error!(vip = %self.cfg.name, address = %a, error = %e, "cannot remove VIP");
            }
        }
        if self.cfg.use_vmac {
            // Down: a backup sends nothing from the virtual MAC.
            if let Err(e) = super::vmac::set_up(self.iface.index, false) {
                tracing::warn!(vip = %self.cfg.name, interface = %self.iface.name, error = %e, "cannot set the VRRP MAC interface down");
            }
        }
    }

    fn garp(&self) {
        for &(a, _) in &self.cfg.addresses {
            match self.announcer.announce(a) {
                Ok(()) => {
                    self.stats.garps.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::warn!(vip = %self.cfg.name, error = %e, "gratuitous ARP not sent"),
            }
        }
    }

    /// Tells the notify script and FIFO that the router is now in `state` (`master`,
    /// `backup`, `fault` or `released`).
    fn notify(&self, state: &str) {
        let upper = match state {
            "master" => "MASTER",
            "backup" => "BACKUP",
            "fault" => "FAULT",
            _ => "STOP",
        };
        let priority = self.stats.priority.load(Relaxed);
        if let Some(fifo) = &self.cfg.notify_fifo {
            write_fifo(fifo, &format!("INSTANCE \"{}\" {upper} {priority}\n", self.cfg.name));
        }
        if let Some(script) = &self.cfg.notify {
            let mut cmd = std::process::Command::new(script);
            if self.cfg.notify_keepalived {
                cmd.args(["INSTANCE", &self.cfg.name, upper, &priority.to_string()]);
            } else {
                cmd.arg(&self.cfg.name).arg(state);
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    std::thread::spawn(move || child.wait());
                }
                Err(e) => {
                    tracing::warn!(vip = %self.cfg.name, script = %script.display(), error = %e, "notify script failed")
                }
            }
        }
    }
}

/// Writes `line` to the FIFO at `path` without blocking: created when missing; nothing
/// is written while no process reads it (keepalived's `notify_fifo` behaves alike).
fn write_fifo(path: &std::path::Path, line: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if !path.exists() {
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(mut f) => {
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::debug!(fifo = %path.display(), error = %e, "notify FIFO not written");
            }
        }
        Err(e) => tracing::debug!(fifo = %path.display(), error = %e, "notify FIFO has no reader"),
    }
}

/// A lease request in flight.
type Pending = Option<tokio::task::JoinHandle<Result<Lease, LeaseError>>>;

/// Gives the lease of `vrid` back without waiting (a node that is not master must not
/// keep it: the master's renewal would be refused).
fn release_later(fence: &Option<LeaseClient>, vrid: u8, wait: Duration) {
    if let Some(f) = fence {
        let f = f.clone();
        tokio::spawn(async move { f.release(vrid, wait).await });
    }
}

/// Puts a due takeover off until `at` (`None`: it was not due): Master_Down fires again
/// then, without the hold-down, which was waited already.
fn put_off(m: &mut Machine, retry_at: &mut Option<Instant>, at: Option<Instant>) {
    if let Some(at) = at {
        *retry_at = Some(at);
        m.defer(at);
    }
}

/// Waits for the request in `p` (forever when there is none).
async fn settle(p: &mut Pending) -> Result<Lease, LeaseError> {
    match p {
        Some(h) => {
            let r = h.await.unwrap_or(Err(LeaseError::NoQuorum));
            *p = None;
            r
        }
        None => std::future::pending().await,
    }
}

/// A master hands its VIPs to the peer and goes back to backup: the addresses go before
/// the lease (once it is released the other node may take them at once, and must not
/// find them here), then priority 0, so the peer takes over without waiting.
async fn hand_over(h: &Holder, m: &mut Machine, fence: &Option<LeaseClient>, ttl: Duration) {
    let (release, announce): (Vec<_>, Vec<_>) = m.shutdown().into_iter().partition(|a| *a == Action::ReleaseVips);
    h.apply(release, m).await;
    if let Some(f) = fence {
        let _ = f.release(h.cfg.vrid, ttl).await;
    }
    h.apply(announce, m).await;
    let acts = m.start(Instant::now());
    h.apply(acts, m).await;
}

/// A router that cannot start (no such interface, no privilege) is in FAULT for its sync
/// group: the other members must not take over without it.
fn or_fault<T>(sync: &Option<SyncMember>, r: Result<T, NetError>) -> Result<T, NetError> {
    if let (Err(_), Some(s)) = (&r, sync) {
        s.publish(State::Fault, false, true);
    }
    r
}

/// Runs the virtual router until `control` says [`Control::Stop`]. With a `fence`, a
/// backup becomes master only once the group committed the VIP's lease to it, and the
/// master renews the lease (see [`crate::lease`]). With `sync`, it moves together with
/// the other VIPs of its sync group.
pub async fn run(
    cfg: VipConfig,
    stats: Arc<VipStats>,
    mut control: tokio::sync::watch::Receiver<Control>,
    mut priority: tokio::sync::watch::Receiver<u8>,
    fence: Option<LeaseClient>,
    mut sync: Option<SyncMember>,
) -> Result<(), NetError> {
    let vips: Vec<IpAddr> = cfg.addresses.iter().map(|a| a.0).collect();
    let iface = or_fault(&sync, Interface::lookup(&cfg.interface, &vips))?;
    let sock = or_fault(&sync, VrrpSocket::open(&iface, cfg.version))?;
    // Where the VIPs live and announcements come from: the parent, or its VRRP MAC
    // interface.
    let holds_on = if cfg.use_vmac {
        or_fault(&sync, super::vmac::create(&iface, cfg.vrid))?
    } else {
        iface.clone()
    };
    let h = Holder {
        announcer: or_fault(&sync, Announcer::open(&holds_on))?,
        iface: holds_on,
        sock,
        stats,
        cfg: cfg.clone(),
    };
    // A VIP left by an earlier run (killed, not stopped) is not ours until we win.
    h.release();
    let mut m = Machine::new(RouterConfig {
        vrid: cfg.vrid,
        priority: cfg.priority,
        interval_cs: cfg.interval_cs,
        preempt: cfg.preempt,
        preempt_delay: cfg.preempt_delay,
        address: iface.address,
    });
    let mut running = *control.borrow() == Control::Run;
    // After an announcement, more GARPs follow quickly: a peer that loses the election
    // may have sent its own just before it heard us, and Linux clients ignore an ARP
    // update for 1 s after the last one (neigh locktime), so the burst lasts past that;
    // otherwise clients would stay on the peer's MAC until our next refresh.
    const BURST: u32 = 8;
    const BURST_GAP: Duration = Duration::from_millis(150);
    let mut burst = 0u32;
    let mut next_garp = Instant::now() + cfg.garp_refresh;
    if running {
        let a = m.start(Instant::now());
        if h.apply(a, &m).await {
            burst = BURST;
            next_garp = Instant::now() + BURST_GAP;
        }
        if m.state() == State::Backup {
            h.notify("backup");
        }
    }
    let refresh = (cfg.address_lifetime / 3).max(Duration::from_millis(200));
    let mut next_refresh = Instant::now() + refresh;
    let ttl = cfg.lease_ttl();
    // The lease this node holds, and the verdicts on the group's answers.
    let mut lease = Fence::new(fence.as_ref().map_or(0, |f| f.id()), ttl, Instant::now());
    // A takeover waiting for its lease, and a renewal in flight.
    let mut acquiring: Pending = None;
    let mut renewing: Pending = None;
    let mut buf = vec![0u8; 2048];
    // The last advert heard was a priority-0 release (no hold-down then).
    let mut released = false;
    // A takeover put off until then (the lease was held, or no quorum answered): the
    // hold-down was waited already, the retry does not wait it again. Any advert heard
    // sets a new deadline, which does.
    let mut retry_at: Option<Instant> = None;
    let mut last_v2_log: Option<Instant> = None;
    let mut link_check = tokio::time::interval(LINK_CHECK_EVERY);
    link_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The interface was usable at the last check; FAULT is entered or left at the top
    // of the loop when `recheck` says the link or the sync group changed.
    let mut link_ok = true;
    let mut recheck = false;
    // Master_Down ran out, but the sync group is not ready to take over with us.
    let mut waiting_group = false;
    // The state at the last turn, and whether a step-down since was the group's doing.
    let mut last_state = m.state();
    let mut forced = false;
    // The priority the trackers ask for (a sync group may lower it further).
    let mut tracked = *priority.borrow();
    loop {
        if running && recheck {
            recheck = false;
            let group_fault = sync.as_ref().is_some_and(|s| s.other_faulted());
            match (m.state() == State::Fault, !link_ok || group_fault) {
                (false, true) => {
                    h.stats.faults.fetch_add(1, Relaxed);
                    if link_ok {
                        let group = sync.as_ref().map_or("", |s| s.group_name());
                        tracing::warn!(vip = %cfg.name, group, "another VIP of the sync group is in FAULT: FAULT, VIPs released");
                    } else {
                        tracing::warn!(vip = %cfg.name, interface = %cfg.interface, "interface down or its address gone: FAULT, VIPs released");
                    }
                    let was_master = m.state() == State::Master;
                    if let Some(a) = acquiring.take() {
                        a.abort();
                    }
                    let acts = m.fault();
                    // Releasing notifies "fault" (see `apply`).
                    h.apply(acts, &m).await;
                    if was_master {
                        release_later(&fence, cfg.vrid, ttl);
                    } else {
                        h.notify("fault");
                    }
                    lease.forget();
                }
                (true, false) => {
                    tracing::info!(vip = %cfg.name, interface = %cfg.interface, "interface usable again: leaving FAULT as backup");
                    let acts = m.recover(Instant::now());
                    h.apply(acts, &m).await;
                    h.notify("backup");
                }
                _ => {}
            }
            if sync.as_mut().is_some_and(|s| s.take_demotion()) && m.state() == State::Master {
                tracing::info!(vip = %cfg.name, "another VIP of the sync group stepped down: stepping down with it");
                // As a yield, so the peer takes this VIP over at once, as it took the other.
                hand_over(&h, &mut m, &fence, ttl).await;
                forced = true;
            }
        }
        let p = match &sync {
            Some(s) => {
                s.publish_delta(i32::from(tracked) - i32::from(cfg.priority));
                s.priority(cfg.priority)
            }
            None => tracked,
        };
        if p != m.priority() {
            tracing::info!(vip = %cfg.name, from = m.priority(), to = p, "priority changed (tracking)");
            let acts = m.set_priority(p);
            h.apply(acts, &m).await;
        }
        if let Some(s) = &sync {
            let now = Instant::now();
            if last_state == State::Master && m.state() == State::Backup && !forced {
                s.demoted();
            }
            let wants = running && m.state() == State::Backup && m.deadline().is_some_and(|d| d <= now);
            if waiting_group && (!wants || s.others_ready()) {
                waiting_group = false;
            }
            s.publish(m.state(), wants, !link_ok);
        }
        last_state = m.state();
        forced = false;
        let far = Instant::now() + Duration::from_secs(3600);
        let mut deadline = m.deadline().unwrap_or(far);
        if m.state() == State::Backup && !released && m.deadline() != retry_at {
            deadline += cfg.hold_down;
        }
        let master = m.state() == State::Master;
        let garp_at = if master && !cfg.garp_refresh.is_zero() {
            next_garp
        } else {
            far
        };
        let refresh_at = if master { next_refresh } else { far };
        let fenced_master = master && fence.is_some();
        let renew_at = lease.renew_at(fenced_master, renewing.is_some()).unwrap_or(far);
        // A master must not hold its VIPs past its lease (see the branch below).
        let fence_at = lease
            .expires_at(fenced_master, Instant::now(), crate::now_ms())
            .unwrap_or(far);
        tokio::select! {
            r = h.sock.recv_advert(&mut buf) => {
                let Ok(r) = r else { continue };
                // Screened once: (the advert, whether it may touch the election).
                match r.map(|r| { let verdict = screen(&cfg, &r); (r, verdict) }) {
                    Ok((r, _)) if r.src == iface.address => {}
                    Ok((r, Err(slot))) => {
                        h.stats.dropped[slot].fetch_add(1, Relaxed);
                        if slot != 5 {
                            tracing::debug!(vip = %cfg.name, src = %r.src, dst = %r.dst, reason = DROP_REASONS[slot], "advert refused");
                        }
                    }
                    Ok((Received { src, advert: a, .. }, Ok(()))) => {
                        h.stats.adverts_received.fetch_add(1, Relaxed);
                        released = a.priority == 0;
                        if running {
                            let acts = m.on_advert(Instant::now(), src, &a);
                            if acts.contains(&Action::ReleaseVips) {
                                // A higher-priority master took over: its lease request
                                // must not wait for ours to run out.
                                release_later(&fence, cfg.vrid, ttl);
                            }
                            if h.apply(acts, &m).await {
                                burst = BURST;
                                next_garp = Instant::now() + BURST_GAP;
                            }
                        }
                    }
                    Err(e) => {
                        h.stats.dropped[drop_slot(e)].fetch_add(1, Relaxed);
                        let other_version = matches!(e, AdvertError::V2 | AdvertError::V3);
                        if other_version && last_v2_log.is_none_or(|t| t.elapsed() >= V2_LOG_EVERY) {
                            last_v2_log = Some(Instant::now());
                            if e == AdvertError::V2 {
                                tracing::warn!(
                                    vip = %cfg.name,
                                    "a VRRPv2 advert was received on this interface: this router speaks VRRPv3, so a v2 \
                                     peer and this node do not see each other and may both hold the VIPs; set \
                                     `vrrp_version 3` on the peer (keepalived), or `vrrp_version = 2` here"
                                );
                            } else {
                                tracing::warn!(
                                    vip = %cfg.name,
                                    "a VRRPv3 advert was received on this interface: this router speaks VRRPv2 \
                                     (`vrrp_version = 2`), so a v3 peer and this node do not see each other and may \
                                     both hold the VIPs; use the same version on both"
                                );
                            }
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()), if running && acquiring.is_none() && !waiting_group => {
                if m.state() == State::Backup && sync.as_ref().is_some_and(|s| !s.others_ready()) {
                    // Not without the rest of the group; a change there wakes us.
                    waiting_group = true;
                } else if let (State::Backup, Some(f)) = (m.state(), &fence) {
                    // Master_Down: ask the group for the lease before taking over.
                    let (f, vrid, prio, preempt, wait) = (f.clone(), cfg.vrid, m.priority(), cfg.preempt, cfg.quorum_wait);
                    acquiring = Some(tokio::spawn(async move { f.acquire(vrid, prio, preempt, ttl, wait).await }));
                } else {
                    let acts = m.on_timer(Instant::now());
                    if h.apply(acts, &m).await {
                        burst = BURST;
                        next_garp = Instant::now() + BURST_GAP;
                    }
                }
            }
            answer = settle(&mut acquiring) => {
                let now = Instant::now();
                let due = m.state() == State::Backup && running && m.deadline().is_some_and(|d| d <= now);
                let verdict = lease.on_acquired(answer, due, cfg.on_no_quorum, m.master_down(), now, crate::now_ms());
                let take = match verdict {
                    Acquired::Take => true,
                    Acquired::GiveBack => {
                        // A master was heard meanwhile: give the lease back.
                        release_later(&fence, cfg.vrid, ttl);
                        false
                    }
                    Acquired::AskAgain(at) => {
                        put_off(&mut m, &mut retry_at, at);
                        false
                    }
                    Acquired::Hold(at) => {
                        h.stats.no_quorum.fetch_add(1, Relaxed);
                        tracing::warn!(vip = %cfg.name, "no quorum for the lease; staying backup (on_no_quorum = \"hold\")");
                        put_off(&mut m, &mut retry_at, at);
                        false
                    }
                    Acquired::Refused { holder, retry } => {
                        h.stats.lease_refused.fetch_add(1, Relaxed);
                        tracing::debug!(vip = %cfg.name, holder, "takeover refused: the lease is held");
                        put_off(&mut m, &mut retry_at, retry);
                        false
                    }
                    Acquired::TakeWithoutQuorum(due) => {
                        h.stats.no_quorum.fetch_add(1, Relaxed);
                        tracing::warn!(vip = %cfg.name, "no quorum for the lease; taking over by VRRP alone (on_no_quorum = \"vrrp\")");
                        due
                    }
                };
                if take {
                    let acts = m.on_timer(now);
                    if h.apply(acts, &m).await {
                        burst = BURST;
                        next_garp = Instant::now() + BURST_GAP;
                    }
                }
            }
            _ = tokio::time::sleep_until(renew_at.into()) => {
                if let Some(f) = &fence {
                    let (f, vrid, prio, preempt) = (f.clone(), cfg.vrid, m.priority(), cfg.preempt);
                    renewing = Some(tokio::spawn(async move { f.acquire(vrid, prio, preempt, ttl, ttl).await }));
                }
            }
            answer = settle(&mut renewing) => {
                let now = Instant::now();
                let others_may_grant = || fence.as_ref().is_some_and(|f| f.others_may_grant(ttl / 2));
                match lease.on_renewed(answer, m.state() == State::Master, now, crate::now_ms(), others_may_grant) {
                    Renewed::Kept | Renewed::Ignore => {}
                    // Stepped down while the renewal was in flight: do not keep it.
                    Renewed::GiveBack => release_later(&fence, cfg.vrid, ttl),
                    Renewed::Lost { holder } => {
                        h.stats.lease_lost.fetch_add(1, Relaxed);
                        tracing::warn!(vip = %cfg.name, holder, "lease lost to another node; stepping down");
                        let acts = m.step_down(now);
                        h.apply(acts, &m).await;
                    }
                    Renewed::Yield { to } => {
                        h.stats.lease_yielded.fetch_add(1, Relaxed);
                        tracing::info!(vip = %cfg.name, to, "yielding the VIP to a higher-priority node");
                        hand_over(&h, &mut m, &fence, ttl).await;
                    }
                    // No quorum now: the holder keeps its VIPs until its lease runs
                    // out (then the expiry branch decides).
                    Renewed::NoQuorum => {
                        h.stats.no_quorum.fetch_add(1, Relaxed);
                    }
                    Renewed::StepDown => {
                        // Kept without a lease while the others were known down, and
                        // one of them is back (or a report says so) without this node's
                        // renewal being committed: they may grant the lease elsewhere.
                        h.stats.no_quorum.fetch_add(1, Relaxed);
                        h.stats.lease_lost.fetch_add(1, Relaxed);
                        tracing::warn!(
                            vip = %cfg.name,
                            heard = %fence.as_ref().map(|f| f.heard_summary()).unwrap_or_default(),
                            "holding without a lease and the other members may form a quorum again; stepping down"
                        );
                        let acts = m.step_down(now);
                        h.apply(acts, &m).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(fence_at.into()) => {
                // The lease runs out and no renewal was committed. Unless the others are
                // known unable to form a quorum without this node, they may grant the
                // lease to another: step down now, before that one takes the VIPs. If
                // they cannot (this node may be the last one standing), keep them, as
                // `on_no_quorum` says of a master.
                let f = fence.as_ref().expect("fenced");
                match lease.on_expiry(f.others_may_grant(ttl / 2)) {
                    Expired::StepDown => {
                        h.stats.lease_lost.fetch_add(1, Relaxed);
                        tracing::warn!(
                            vip = %cfg.name,
                            heard = %f.heard_summary(),
                            "lease ran out without a renewal and the other members may still form a quorum; stepping down"
                        );
                        let acts = m.step_down(Instant::now());
                        h.apply(acts, &m).await;
                    }
                    Expired::KeepWithoutLease => {
                        tracing::warn!(
                            vip = %cfg.name,
                            heard = %f.heard_summary(),
                            "lease ran out and the other members cannot form a quorum (known down): keeping the VIPs without a lease (on_no_quorum)"
                        );
                    }
                }
            }
            _ = link_check.tick(), if running => {
                link_ok = net::link_usable(&cfg.interface, iface.address);
                recheck = true;
            }
            _ = sync_group::changed(&mut sync) => {
                recheck = true;
            }
            _ = tokio::time::sleep_until(refresh_at.into()) => {
                h.hold();
                next_refresh = Instant::now() + refresh;
            }
            _ = tokio::time::sleep_until(garp_at.into()) => {
                h.garp();
                if burst > 0 {
                    burst -= 1;
                    next_garp = Instant::now() + BURST_GAP;
                } else {
                    next_garp = Instant::now() + cfg.garp_refresh;
                }
            }
            Ok(()) = priority.changed() => {
                tracked = *priority.borrow_and_update();
            }
            changed = control.changed() => {
                let c = if changed.is_err() { Control::Stop } else { *control.borrow() };
                match c {
                    Control::Run if !running => {
                        running = true;
                        let a = m.start(Instant::now());
                        h.apply(a, &m).await;
                        if m.state() == State::Backup {
                            h.notify("backup");
                        }
                    }
                    Control::Run => {}
                    Control::Release | Control::Stop => {
                        if running {
                            running = false;
                            if let Some(h) = acquiring.take() {
                                h.abort();
                            }
                            // The lease goes first, so the peer's request after our
                            // priority-0 advert is granted at once.
                            if let (State::Master, Some(f)) = (m.state(), &fence) {
                                let _ = f.release(cfg.vrid, Duration::from_millis(300)).await;
                            }
                            // Priority 0 first: the peer takes over after its skew time
                            // and announces itself. The addresses stay a moment longer so
                            // packets from clients that have not followed yet are answered.
                            let (release, announce): (Vec<_>, Vec<_>) =
                                m.shutdown().into_iter().partition(|a| *a == Action::ReleaseVips);
                            h.apply(announce, &m).await;
                            if !release.is_empty() {
                                tokio::time::sleep(RELEASE_GRACE).await;
                            }
                            h.apply(release, &m).await;
                            h.release();
                        }
                        if c == Control::Stop {
                            if cfg.use_vmac {
                                super::vmac::delete(&h.iface.name);
                            }
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}
