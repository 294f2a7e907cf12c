//! The proxy's side of the pair's shared state: starts this node's Raft member (on its
//! own thread), publishes local health verdicts and sticky bindings, and reads what the
//! peers published. The request path never waits on it: publishing queues, reading takes
//! a short read lock on the replicated tables only when the local view has no answer.

use std::sync::{Arc, RwLock};

use tandem_ha::{Change, HaNode, Publisher, Tables};

use crate::config::HaConfigSection;

/// What the rest of the proxy sees of the group.
pub struct Pair {
    /// This node's id.
    pub id: u64,
    /// Queues local changes.
    pub publisher: Publisher,
    /// The replicated tables.
    pub tables: Arc<RwLock<Tables>>,
    /// Raft metrics (leader, term, log positions, replication).
    pub metrics: tokio::sync::watch::Receiver<tandem_ha::RaftMetrics<u64, tandem_ha::openraft::BasicNode>>,
    /// Peer handshakes refused.
    pub refused: Arc<tandem_ha::server::PeerStats>,
    /// Commits VIP leases (the fence of the floating VIPs).
    pub leases: tandem_ha::LeaseClient,
    /// Quorum and core state.
    pub health: Arc<tandem_ha::watch::GroupHealth>,
    /// Snapshot counters.
    pub snapshots: Arc<tandem_ha::state_machine::SnapshotStats>,
    /// Local changes not yet committed.
    pub pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Last contact with each member.
    pub contacts: Arc<tandem_ha::client::Contacts>,
    /// This member's election timeout.
    pub election_timeout: std::time::Duration,
    /// When this member joined the process (a fresh start is treated with care).
    pub started: std::time::Instant,
    /// Settings.
    pub config: HaConfigSection,
    /// The Raft handle and peer clients, for membership changes (run on `runtime`).
    group: (tandem_ha::types::Raft, tandem_ha::network::Network),
    /// The HA thread's runtime.
    runtime: tokio::runtime::Handle,
    /// Whether this member has been in touch with the group for [`TRUSTED_AFTER`] since
    /// it started (set by `judge_trust`).
    ever_in_touch: std::sync::atomic::AtomicBool,
    /// When (ms after the start, plus one; 0: not in touch) this member's current
    /// stretch in touch with the group began.
    in_touch_since: std::sync::atomic::AtomicU64,
}

/// Starts this node's member on a dedicated thread and returns once it runs. The
/// member lives as long as the process (its thread keeps it).
pub fn start(cfg: &HaConfigSection) -> Result<Arc<Pair>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let group = cfg.group.clone();
    let config = cfg.clone();
    std::thread::Builder::new()
        .name("ha".into())
        .spawn(move || {
            // Heartbeats, lease renewals and their relays must not wait behind busy
            // workers (see `raise_thread_priority`).
            if !tandem_ha::raise_thread_priority() {
                tracing::debug!("HA thread keeps the default priority (no CAP_SYS_NICE)");
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .on_thread_start(|| {
                    tandem_ha::raise_thread_priority();
                })
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let handle = rt.handle().clone();
            rt.block_on(async move {
                match HaNode::start(group).await {
                    Ok(node) => {
                        let pair = Pair {
                            id: node.id,
                            publisher: node.publisher(),
                            tables: node.tables.clone(),
                            metrics: node.raft.metrics(),
                            refused: node.peer_stats.clone(),
                            leases: node.lease_client(),
                            health: node.health.clone(),
                            snapshots: node.snapshots.clone(),
                            pending: node.pending.clone(),
                            contacts: node.network.contacts.clone(),
                            election_timeout: node.election_timeout,
                            started: std::time::Instant::now(),
                            config,
                            group: (node.raft.clone(), node.network.clone()),
                            runtime: handle,
                            ever_in_touch: Default::default(),
                            in_touch_since: Default::default(),
                        };
                        let _ = tx.send(Ok(pair));
                        // Keep the member (and its runtime) alive for the life of the process.
                        std::future::pending::<()>().await;
                        drop(node);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(rx.recv().map_err(|e| e.to_string())??))
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Pair {
    /// Changes the group's members (on the leader), waiting for the result; for the
    /// admin API's thread, never the data plane's.
    pub fn change_membership(&self, change: tandem_ha::protocol::MembershipChange) -> Result<Vec<u64>, String> {
        let (raft, network) = self.group.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(tandem_ha::node::membership_via_leader(&raft, &network, change).await);
        });
        rx.recv_timeout(std::time::Duration::from_secs(90))
            .map_err(|_| "the membership change did not finish within 90 s".to_string())?
    }

    /// Whether this member reaches a quorum now.
    pub fn has_quorum(&self) -> bool {
        self.health.quorum.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this member is in touch with a majority of the voters: the Raft quorum,
    /// or a majority heard on the standing links within two election timeouts (which
    /// holds while the others elect a new leader, so losing one member's leadership
    /// does not make every member look cut off).
    pub fn in_touch_with_majority(&self) -> bool {
        self.has_quorum() || self.leases.hears_majority(self.election_timeout * 2)
    }
}

/// Milliseconds since the Unix epoch (verdict and binding timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the data plane publishes to the group and reads from it.
impl Pair {
    /// Publishes an active-check verdict (called from the verdict module only).
    pub fn publish_verdict(&self, cluster: &str, endpoint: std::net::SocketAddr, healthy: bool) {
        self.publisher.publish(Change::Verdict {
            cluster: cluster.to_string(),
            endpoint: endpoint.to_string(),
            healthy,
            observed_at_ms: now_ms(),
        });
    }

    /// Publishes a learned sticky binding (or its refresh); `replaces` names the binding a
    /// rebind replaces, the one this node found unfit. The group keeps one binding per key:
    /// the first committed, until replaced by name (see `tandem_ha::Change::StickyBind`).
    pub fn publish_sticky(
        &self,
        key: u64,
        endpoint: std::net::SocketAddr,
        idle: std::time::Duration,
        replaces: Option<std::net::SocketAddr>,
    ) {
        let at_ms = now_ms();
        self.publisher.publish(Change::StickyBind {
            key,
            endpoint: endpoint.to_string(),
            at_ms,
            expires_at_ms: at_ms + idle.as_millis() as u64,
            replaces: replaces.map(|r| r.to_string()),
        });
    }

    /// Publishes a passive outlier ejection of this node (ending at `until_ms`).
    pub fn publish_ejection(&self, cluster: &str, endpoint: std::net::SocketAddr, until_ms: u64) {
        self.publisher.publish(Change::Ejection {
            cluster: cluster.to_string(),
            endpoint: endpoint.to_string(),
            until_ms,
            observed_at_ms: now_ms(),
        });
    }

    /// A binding a peer learned, if it has not expired.
    pub fn replicated_sticky(&self, key: u64) -> Option<std::net::SocketAddr> {
        let t = self.tables.read().ok()?;
        let (ep, exp) = t.sticky.get(&key)?;
        (*exp > now_ms()).then(|| ep.parse().ok()).flatten()
    }

    /// Publishes a cluster-scoped shared-data write of a filter (`None` removes the key).
    pub fn publish_shared(&self, key: &str, value: Option<Vec<u8>>) {
        self.publisher.publish(Change::Shared {
            key: key.to_string(),
            value,
        });
    }

    /// A cluster-scoped shared-data value as replicated in the group.
    pub fn replicated_shared(&self, key: &str) -> Option<Vec<u8>> {
        let t = self.tables.read().ok()?;
        t.shared.get(key).cloned()
    }
}

/// How long a (re)started node must have been in touch before it counts the peers' counts
/// it holds (the catch-up the leader sends is applied by then).
const TRUSTED_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a (re)started node, not yet in touch with a group of three or more, admits
/// nothing on cluster-scope limits before it falls back to its share.
const FRESH_START_DENY: std::time::Duration = std::time::Duration::from_secs(5);

/// Notes whether this node has been in touch for [`TRUSTED_AFTER`] since it started:
/// hearing the leader comes before the catch-up it sends is applied, and until then the
/// peers' state here is that of before the restart.
fn judge_trust(p: &Pair) {
    use std::sync::atomic::Ordering::Relaxed;
    let since = p.started.elapsed().as_millis() as u64 + 1;
    if !p.health.in_touch.load(Relaxed) {
        p.in_touch_since.store(0, Relaxed);
    } else if p.in_touch_since.load(Relaxed) == 0 {
        p.in_touch_since.store(since, Relaxed);
    } else if since - p.in_touch_since.load(Relaxed) >= TRUSTED_AFTER.as_millis() as u64 {
        p.ever_in_touch.store(true, Relaxed);
    }
}

/// Cluster-scope rate limits: publishes this node's changed window counts, feeds the
/// ledger's counts (the peers', and this node's own as the group has them) into the
/// limiters, and tells them whether this node is in touch with the group. Called every
/// health tick (50 ms).
///
/// Out of touch (the leader or a majority not heard within three heartbeats) in a
/// group of three or more voters, the peers' counts here are stale while they keep
/// admitting (this node is the one cut off, or an election is on): the limiters then
/// admit this node's share only, and nothing in the first seconds after a start until
/// it has been in touch for [`TRUSTED_AFTER`]. In a pair without a witness a lost quorum is most often a
/// peer that is down, and the node keeps the whole limit.
pub fn sync_rate_limits(p: &Pair, limiters: &[Arc<crate::ratelimit::Limiter>]) {
    judge_trust(p);
    let cluster: Vec<_> = limiters
        .iter()
        .filter(|l| l.config.scope == crate::config::Scope::Cluster)
        .collect();
    if cluster.is_empty() {
        return;
    }
    let (voters, proxies) = {
        let m = p.metrics.borrow();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count();
        let proxies = membership
            .voter_ids()
            .filter(|id| !p.config.witnesses.contains(id))
            .count();
        (voters, proxies.max(1))
    };
    let touch = p.health.in_touch.load(std::sync::atomic::Ordering::Relaxed)
        && p.ever_in_touch.load(std::sync::atomic::Ordering::Relaxed);
    let in_touch = touch || voters < 3;
    // Restarted and not yet in touch: the peer admitted what this node cannot see yet;
    // admit nothing for a few seconds rather than the share on top of it.
    let fresh = !p.ever_in_touch.load(std::sync::atomic::Ordering::Relaxed) && p.started.elapsed() < FRESH_START_DENY;
    let share = if fresh { 0.0 } else { 1.0 / proxies as f64 };
    for l in &cluster {
        l.set_in_touch(in_touch, share);
        for (key, window_ms, count) in l.take_dirty() {
            p.publisher.publish(Change::RateCount { key, window_ms, count });
        }
    }
    let Ok(t) = p.tables.read() else { return };
    let horizon = now_ms().saturating_sub(120_000);
    for ((key, window_ms), per_node) in t.rate.iter() {
        if *window_ms < horizon {
            continue;
        }
        let (mut own, mut peers) = (0, 0);
        for (n, c) in per_node {
            if *n == p.id {
                own = *c;
            } else {
                peers += *c;
            }
        }
        if own > 0 || peers > 0 {
            for l in &cluster {
                l.set_counts(*key, *window_ms, own, peers);
            }
        }
    }
}

/// One member as this node sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerView {
    /// Node id.
    pub id: u64,
    /// Peer address (from the membership).
    pub address: String,
    /// Votes (else a learner).
    pub voter: bool,
    /// Raft only, no proxy.
    pub witness: bool,
    /// Leader only: the last log index it holds.
    pub matched: Option<u64>,
    /// Leader only: entries it is behind.
    pub lag: Option<u64>,
    /// Seconds since this node last heard from it (this node itself: 0).
    pub last_contact_seconds: Option<f64>,
}

/// A VIP lease as replicated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseView {
    /// VRID.
    pub vrid: u8,
    /// Holder node id.
    pub holder: u64,
    /// Seconds left (0 when expired or released).
    pub remaining_seconds: f64,
    /// A higher-priority node asked for it.
    pub wanted_by: Option<u64>,
}

/// This node's view of the group: what `/cluster`, `/status`, `/metrics`, the status
/// page and `tandem ctl cluster` show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupView {
    /// This node's id.
    pub id: u64,
    /// `leader`, `follower`, `candidate`, `learner`, or `stopped` (the Raft core quit).
    pub role: &'static str,
    /// Whether a quorum is within reach (an isolated leader says false).
    pub quorum: bool,
    /// Whether what is replicated reaches this node right now (the leader, or as
    /// leader a majority, heard within three heartbeats, and its own changes
    /// committing): false during an election, while cut off from the leader, and in
    /// the first half second in touch after a start. Cluster rate limits count the
    /// peers only then.
    pub in_touch: bool,
    /// Current term.
    pub term: u64,
    /// The leader this node follows (none while it has no quorum view of one).
    pub leader: Option<u64>,
    /// Last log index held here.
    pub last_log_index: Option<u64>,
    /// Last index applied to the tables here.
    pub last_applied: Option<u64>,
    /// Last index the current snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Last index purged from the log.
    pub purged_index: Option<u64>,
    /// Members with a vote.
    pub voters: Vec<u64>,
    /// Members without one (catching up, or kept as learners).
    pub learners: Vec<u64>,
    /// Raft-only members.
    pub witnesses: Vec<u64>,
    /// Every member.
    pub members: Vec<PeerView>,
    /// Snapshots built here.
    pub snapshots_built: u64,
    /// Snapshots installed here (sent by a leader).
    pub snapshots_installed: u64,
    /// Seconds the last snapshot build took.
    pub snapshot_last_build_seconds: f64,
    /// Size of the current snapshot.
    pub snapshot_bytes: u64,
    /// Local changes not committed yet.
    pub pending_changes: usize,
    /// Peer connections or frames refused, by reason.
    pub peer_refused: std::collections::BTreeMap<&'static str, u64>,
    /// Replicated table sizes.
    pub tables: std::collections::BTreeMap<&'static str, usize>,
    /// VIP leases.
    pub leases: Vec<LeaseView>,
}

impl Pair {
    /// The group as this node sees it now.
    pub fn view(&self) -> GroupView {
        use std::sync::atomic::Ordering::Relaxed;
        let m = self.metrics.borrow().clone();
        let stopped = self.health.stopped.load(Relaxed) || m.running_state.is_err();
        let role = if stopped {
            "stopped"
        } else {
            match m.state {
                tandem_ha::openraft::ServerState::Leader => "leader",
                tandem_ha::openraft::ServerState::Follower => "follower",
                tandem_ha::openraft::ServerState::Candidate => "candidate",
                tandem_ha::openraft::ServerState::Learner => "learner",
                tandem_ha::openraft::ServerState::Shutdown => "stopped",
            }
        };
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let learners: Vec<u64> = membership.learner_ids().collect();
        let last_log = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).map(|l| l.map_or(0, |l| l.index)));
                PeerView {
                    id: *id,
                    address: node.addr.clone(),
                    voter: voters.contains(id),
                    witness: self.config.witnesses.contains(id),
                    matched,
                    lag: matched.map(|x| last_log.saturating_sub(x)),
                    last_contact_seconds: if *id == self.id {
                        Some(0.0)
                    } else {
                        self.contacts.since(*id).map(|d| d.as_secs_f64())
                    },
                }
            })
            .collect();
        let s = &self.snapshots;
        let r = &self.refused;
        let now = now_ms();
        let (tables, leases) = match self.tables.read() {
            Ok(t) => (
                [
                    ("verdicts", t.verdicts.len()),
                    ("sticky", t.sticky.len()),
                    ("rate_windows", t.rate.len()),
                    ("shared", t.shared.len()),
                    ("ejections", t.ejections.len()),
                ]
                .into_iter()
                .collect(),
                t.leases
                    .values()
                    .map(|l| LeaseView {
                        vrid: l.vrid,
                        holder: l.holder,
                        remaining_seconds: l.until_ms.saturating_sub(now) as f64 / 1000.0,
                        wanted_by: l.wanted_by,
                    })
                    .collect(),
            ),
            Err(_) => (Default::default(), Vec::new()),
        };
        GroupView {
            id: self.id,
            role,
            quorum: !stopped && self.has_quorum(),
            in_touch: !stopped
                && self.health.in_touch.load(std::sync::atomic::Ordering::Relaxed)
                && (self.config.witnesses.contains(&self.id)
                    || self.ever_in_touch.load(std::sync::atomic::Ordering::Relaxed)),
            term: m.current_term,
            leader: if stopped { None } else { m.current_leader },
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
            learners,
            witnesses: self.config.witnesses.clone(),
            members,
            snapshots_built: s.built.load(Relaxed),
            snapshots_installed: s.installed.load(Relaxed),
            snapshot_last_build_seconds: s.last_build_us.load(Relaxed) as f64 / 1e6,
            snapshot_bytes: s.bytes.load(Relaxed),
            pending_changes: self.pending.load(Relaxed),
            peer_refused: [
                ("handshake", r.refused.load(Relaxed)),
                ("capacity", r.over_capacity.load(Relaxed)),
                ("malformed", r.malformed.load(Relaxed)),
                ("identity", r.wrong_identity.load(Relaxed)),
            ]
            .into_iter()
            .collect(),
            tables,
            leases,
        }
    }
}
