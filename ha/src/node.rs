//! A member of the group: opens its store, starts Raft and the peer listener, forms the
//! group on first start (the lowest id initialises it), and batches local changes into
//! one proposal per `sync_interval` — forwarded to the leader when this node is not it,
//! and kept (bounded) while there is no quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::mpsc;

use crate::client::PeerClient;
use crate::lease::LeaseClient;
use crate::network::Network;
pub use crate::peer_tls::PeerTls;
use crate::protocol::{MembershipChange, Request};
use crate::server::{serve, PeerStats};
use crate::state_machine::StateMachine;
use crate::store::LogStore;
use crate::tables::Tables;
use crate::types::Change;
use crate::types::{Batch, NodeId, Raft};
use crate::watch::GroupHealth;
use crate::Peer;
use std::sync::atomic::AtomicUsize;

/// Local changes kept while they cannot be proposed; the oldest are dropped beyond this.
pub const MAX_BUFFERED: usize = 100_000;

/// Most changes in one proposal (a log entry); a longer backlog goes out as several.
pub const MAX_BATCH_CHANGES: usize = 1_000;

/// Most (estimated) bytes in one proposal.
pub const MAX_BATCH_BYTES: usize = 64 << 10;

/// Most log entries in one append. openraft 0.9 gives an append one heartbeat interval
/// (50 ms) to complete, sending, writing and syncing included: an append that cannot
/// is cut and sent again, forever, and a member far behind never catches up. With
/// [`MAX_BATCH_BYTES`] per entry an append is at most 512 KiB.
pub const MAX_ENTRIES_PER_APPEND: u64 = 8;

/// Snapshots travel in chunks of this size, each with [`SNAPSHOT_CHUNK_TIMEOUT`].
pub const SNAPSHOT_CHUNK: u64 = 1 << 20;

/// Time for one snapshot chunk to be sent, written and (the last one) installed.
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);

/// A single change larger than this is not published (it could not cross the wire).
pub const MAX_CHANGE_BYTES: usize = 1 << 20;

/// How long a fresh node that found a formed group waits for the leader before it says
/// it must be added.
const NOT_ADDED_WARNING: Duration = Duration::from_secs(10);

/// How long a follower's batch may wait on the leader before it goes through the other
/// members instead.
const LEADER_WAIT: Duration = Duration::from_millis(60);

/// How to run this node.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// This node's id (must be in `peers`).
    pub id: NodeId,
    /// All members, this node included (a witness is a normal member).
    pub peers: Vec<Peer>,
    /// Where the log, vote and snapshot live.
    pub data_dir: PathBuf,
    /// Peer certificates.
    pub tls: PeerTls,
    /// Batching period for local changes.
    pub sync_interval: Duration,
    /// Raft heartbeat.
    pub heartbeat: Duration,
    /// Election timeout range (min; max is twice it).
    pub election_timeout: Duration,
    /// Snapshot after this many log entries (log compaction).
    pub snapshot_every: u64,
    /// The member that should lead (the witness of a pair): it forms the group, and the
    /// others wait twice as long before they stand for election, so after a failure it
    /// is the likely new leader. A VIP lease then moves without waiting for an election
    /// when a proxy dies. `None`: the lowest id forms the group, all wait alike.
    pub preferred_leader: Option<NodeId>,
}

impl HaConfig {
    /// Timers for a LAN pair: 50 ms batches, 50 ms heartbeats, 150–300 ms elections (a
    /// VIP lease cannot move before a dead leader is replaced, so elections are quick).
    pub fn new(id: NodeId, peers: Vec<Peer>, data_dir: PathBuf, tls: PeerTls) -> HaConfig {
        HaConfig {
            id,
            peers,
            data_dir,
            tls,
            sync_interval: Duration::from_millis(50),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(150),
            snapshot_every: 5_000,
            preferred_leader: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// Bad configuration.
    #[error("ha config: {0}")]
    Config(String),
    /// Disk or socket error.
    #[error("ha: {0}")]
    Io(#[from] std::io::Error),
    /// Peer TLS material.
    #[error(transparent)]
    Tls(#[from] crate::peer_tls::PeerTlsError),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// Queues local changes for the next batch; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Publisher(mpsc::UnboundedSender<Change>);

impl Publisher {
    /// Queues `change` (one too large to cross the wire is dropped with a warning).
    pub fn publish(&self, change: Change) {
        if change.wire_size() > MAX_CHANGE_BYTES {
            tracing::warn!(
                bytes = change.wire_size(),
                "ha: a change too large to replicate was dropped"
            );
            return;
        }
        let _ = self.0.send(change);
    }
}

/// A running member.
pub struct HaNode {
    /// This node's id.
    pub id: NodeId,
    /// The Raft handle (metrics, membership, leadership).
    pub raft: Raft,
    /// The replicated tables (read-only for users of this crate).
    pub tables: Arc<RwLock<Tables>>,
    /// Peer listener counters.
    pub peer_stats: Arc<PeerStats>,
    /// Where the peer listener is bound.
    pub listen: SocketAddr,
    /// Snapshot counters (built, installed, last build time, size).
    pub snapshots: Arc<crate::state_machine::SnapshotStats>,
    /// Quorum and core state as the watcher judges them.
    pub health: Arc<GroupHealth>,
    /// Local changes not yet committed.
    pub pending: Arc<AtomicUsize>,
    /// This member's election timeout (min), for "recent contact" judgements.
    pub election_timeout: Duration,
    /// The peer clients' factory (last contact with each member).
    pub network: Network,
    lease_client: LeaseClient,
    tx: mpsc::UnboundedSender<Change>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HaNode {
    /// Starts this member (call inside a tokio runtime).
    pub async fn start(cfg: HaConfig) -> Result<HaNode, HaError> {
        let me = cfg
            .peers
            .iter()
            .find(|p| p.id == cfg.id)
            .ok_or_else(|| HaError::Config(format!("node id {} is not among the peers", cfg.id)))?
            .clone();
        let ids: BTreeSet<NodeId> = cfg.peers.iter().map(|p| p.id).collect();
        if ids.len() != cfg.peers.len() {
            return Err(HaError::Config("peer ids must be unique".into()));
        }
        let preferred = cfg.preferred_leader.filter(|p| ids.contains(p));
        // Members other than the preferred leader stand for election later.
        let election = match preferred {
            Some(p) if p != cfg.id => cfg.election_timeout * 2,
            _ => cfg.election_timeout,
        };
        let config = Config {
            cluster_name: "tandem".into(),
            heartbeat_interval: cfg.heartbeat.as_millis() as u64,
            election_timeout_min: election.as_millis() as u64,
            election_timeout_max: 2 * election.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT.as_millis() as u64,
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| HaError::Config(e.to_string()))?;
        let log = LogStore::open(&cfg.data_dir.join("log"))?;
        let sm = StateMachine::open(&cfg.data_dir.join("state"))?;
        let tables = sm.tables.clone();
        let snapshot_stats = sm.stats.clone();
        let network = Network::new(&cfg.tls, &cfg.peers)?;
        let raft = Raft::new(cfg.id, Arc::new(config), network.clone(), log, sm)
            .await
            .map_err(|e| HaError::Raft(e.to_string()))?;
        // A member that just (re)started must not stand for election before a sitting
        // leader had time to reach it: its higher term would depose a healthy leader
        // (openraft 0.9 has no pre-vote). Forming a new group is not delayed (initialize
        // starts its own election).
        raft.runtime_config().elect(false);
        {
            let raft = raft.clone();
            let quiet = election * 4;
            tokio::spawn(async move {
                tokio::time::sleep(quiet).await;
                raft.runtime_config().elect(true);
            });
        }

        let listener = tokio::net::TcpListener::bind(me.address).await?;
        let listen = listener.local_addr()?;
        let peer_stats = Arc::new(PeerStats::default());
        let hold = Arc::new(crate::handback::Hold::default());
        let mut tasks = vec![tokio::spawn(serve(
            listener,
            cfg.tls.server()?,
            raft.clone(),
            network.clone(),
            peer_stats.clone(),
            hold.clone(),
        ))];

        // The preferred leader (else the lowest id) forms the group on its first start,
        // unless a peer already belongs to one (this node was wiped, or is a new member
        // waiting to be added): then it waits to be reached.
        let former = preferred.or_else(|| ids.iter().next().copied());
        let fresh = !raft.is_initialized().await.unwrap_or(false);
        let group_exists = fresh && any_peer_initialized(&network, &cfg.peers, cfg.id).await;
        if group_exists {
            // A member of the group's first configuration is reached by the leader at
            // once; only a node the group does not know stays empty.
            tracing::info!(
                node = cfg.id,
                "ha: no Raft data here and the group exists: waiting for the leader to reach this node"
            );
            let raft = raft.clone();
            let id = cfg.id;
            tokio::spawn(async move {
                tokio::time::sleep(NOT_ADDED_WARNING).await;
                if !raft.is_initialized().await.unwrap_or(true) {
                    tracing::warn!(
                        node = id,
                        "ha: this node has no Raft data and the group has not reached it: it waits to be added \
                         (tandem ctl cluster add). If it was a member whose data_dir was lost, start it \
                         under a new node_id and run `tandem ctl cluster replace OLD NEW ADDRESS`"
                    );
                }
            });
        }
        if former == Some(cfg.id) && fresh && !group_exists {
            let members: BTreeMap<NodeId, BasicNode> = cfg
                .peers
                .iter()
                .map(|p| (p.id, BasicNode::new(p.address.to_string())))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "group already initialised");
            }
        }
        if let Some(p) = preferred.filter(|p| *p != cfg.id) {
            // openraft's leader lease is the maximum election timeout.
            tasks.push(tokio::spawn(crate::handback::run(
                raft.clone(),
                network.clone(),
                p,
                election * 2,
                hold.clone(),
            )));
        }
        let health = Arc::new(GroupHealth::default());
        tasks.push(tokio::spawn(crate::watch::run(
            raft.clone(),
            network.contacts.clone(),
            health.clone(),
            election,
            cfg.heartbeat * 3,
        )));

        tasks.extend(network.start_links(cfg.id, &cfg.peers));
        let lease_client = LeaseClient::new(cfg.id, raft.clone(), network.clone(), cfg.peers.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        tasks.push(tokio::spawn(publisher(
            Publishing {
                raft: raft.clone(),
                network: network.clone(),
                period: cfg.sync_interval,
                pending_gauge: pending.clone(),
                health: health.clone(),
                relays: lease_client.clone(),
                hold,
            },
            rx,
        )));
        Ok(HaNode {
            id: cfg.id,
            raft,
            tables,
            peer_stats,
            listen,
            snapshots: snapshot_stats,
            health,
            pending,
            election_timeout: election,
            network,
            lease_client,
            tx,
            tasks,
        })
    }

    /// Queues a local change for the next batch. Never blocks.
    pub fn publish(&self, change: Change) {
        self.publisher().publish(change);
    }

    /// A cloneable handle that queues changes from any thread.
    pub fn publisher(&self) -> Publisher {
        Publisher(self.tx.clone())
    }

    /// Proposes VIP lease changes and waits for their commit (the VIP fence).
    pub fn lease_client(&self) -> LeaseClient {
        self.lease_client.clone()
    }

    /// Snapshots built here so far.
    pub fn snapshots_built(&self) -> u64 {
        self.snapshots.built.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current leader, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Changes the group's members: here when this member leads, else through the
    /// leader. Adding waits until the new member caught up (as a learner) and votes.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<Vec<NodeId>, String> {
        membership_via_leader(&self.raft, &self.network, change).await
    }

    /// Stops Raft and the listener (the data stays on disk).
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.raft.shutdown().await;
    }
}

/// Carries out `change` on the leader (this member, or the one it knows).
pub async fn membership_via_leader(
    raft: &Raft,
    network: &Network,
    change: MembershipChange,
) -> Result<Vec<NodeId>, String> {
    let m = raft.metrics().borrow().clone();
    let Some(leader) = m.current_leader else {
        return Err("no leader: the group has no quorum now; try again once it has".into());
    };
    if leader == m.id {
        return crate::server::change_membership(raft, change).await;
    }
    let node = m
        .membership_config
        .membership()
        .get_node(&leader)
        .cloned()
        .ok_or_else(|| format!("the leader {leader} is not in the membership"))?;
    use openraft::network::RaftNetworkFactory;
    let mut client = network.clone().new_client(leader, &node).await;
    let req = Request::Membership(change);
    match tokio::time::timeout(Duration::from_secs(60), client.call(&req)).await {
        Ok(Ok(crate::protocol::Reply::Membership(r))) => r,
        Ok(Ok(_)) => Err("the leader sent an unexpected reply".into()),
        Ok(Err(e)) => Err(format!("cannot reach the leader {leader}: {e}")),
        Err(_) => Err(format!("the leader {leader} did not finish within 60 s")),
    }
}

/// Whether any other member answers (within a second) that it belongs to a formed group.
async fn any_peer_initialized(network: &Network, peers: &[Peer], me: NodeId) -> bool {
    use openraft::network::RaftNetworkFactory;
    let mut asks = tokio::task::JoinSet::new();
    for p in peers.iter().filter(|p| p.id != me).cloned() {
        let mut net = network.clone();
        asks.spawn(async move {
            let mut c = net.new_client(p.id, &BasicNode::new(p.address.to_string())).await;
            matches!(
                tokio::time::timeout(Duration::from_secs(1), c.call(&Request::Hello)).await,
                Ok(Ok(crate::protocol::Reply::Hello { initialized: true }))
            )
        });
    }
    while let Some(r) = asks.join_next().await {
        if r.unwrap_or(false) {
            return true;
        }
    }
    false
}

/// What the publisher works with.
struct Publishing {
    raft: Raft,
    network: Network,
    /// How often a batch is proposed (`sync_interval`).
    period: Duration,
    /// How many changes wait here (for the metrics).
    pending_gauge: Arc<AtomicUsize>,
    health: Arc<GroupHealth>,
    /// Relays through other members when the leader is out of reach.
    relays: LeaseClient,
    /// Proposals wait out a leadership handback.
    hold: Arc<crate::handback::Hold>,
}

/// Drains local changes every `period` into one batch and proposes it; on a follower
/// the batch goes to the leader; without quorum it is kept for the next round.
async fn publisher(p: Publishing, mut rx: mpsc::UnboundedReceiver<Change>) {
    let Publishing {
        raft,
        network,
        period,
        pending_gauge,
        health,
        relays,
        hold,
    } = p;
    let id = relays.id();
    let mut pending: Vec<Change> = Vec::new();
    let mut leader_client: Option<(NodeId, PeerClient)> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while let Ok(c) = rx.try_recv() {
            pending.push(c);
        }
        if pending.len() > MAX_BUFFERED {
            let drop = pending.len() - MAX_BUFFERED;
            pending.drain(..drop);
            tracing::warn!(dropped = drop, "ha: buffer full without quorum; oldest changes dropped");
        }
        pending_gauge.store(pending.len(), std::sync::atomic::Ordering::Relaxed);
        if pending.is_empty() || hold.active() {
            continue;
        }
        if health.pending_since_ms.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            health
                .pending_since_ms
                .store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        // Proposals of bounded size, oldest first; what fails stays for the next round.
        while !pending.is_empty() {
            let n = batch_len(&pending);
            let batch = Batch {
                origin: id,
                changes: pending[..n].to_vec(),
            };
            if !propose(&raft, &relays, &network, &mut leader_client, batch).await {
                break;
            }
            pending.drain(..n);
            pending_gauge.store(pending.len(), std::sync::atomic::Ordering::Relaxed);
        }
        if pending.is_empty() {
            health.pending_since_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// How many of the oldest `pending` changes fit in one proposal (at least one).
fn batch_len(pending: &[Change]) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for c in pending.iter().take(MAX_BATCH_CHANGES) {
        bytes += c.wire_size();
        if n > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// Proposes one batch here or through the leader; whether it was committed.
async fn propose(
    raft: &Raft,
    relays: &LeaseClient,
    network: &Network,
    leader_client: &mut Option<(NodeId, PeerClient)>,
    batch: Batch,
) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), raft.client_write(batch.clone())).await {
        Ok(Ok(_)) => true,
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => match (f.leader_id, f.leader_node) {
            (Some(lid), Some(node)) => {
                use openraft::network::RaftNetworkFactory;
                if leader_client.as_ref().is_none_or(|(l, _)| *l != lid) {
                    let mut n = network.clone();
                    *leader_client = Some((lid, n.new_client(lid, &node).await));
                }
                let (_, c) = leader_client.as_mut().expect("set above");
                let req = Request::Propose(batch.clone());
                let call = tokio::time::timeout(LEADER_WAIT, c.call(&req));
                if matches!(call.await, Ok(Ok(crate::protocol::Reply::Propose(Ok(_))))) {
                    return true;
                }
                // The leader is out of reach from here (an A↔B cut with a proxy leading):
                // through the other members, so the group still hears this node.
                *leader_client = None;
                relays.relay(&batch, Some(lid)).await
            }
            _ => relays.relay(&batch, None).await,
        },
        _ => false,
    }
}
