//! Answering members: the peer listener lets only members in (bounded handshakes, a
//! slot per connection), and each request goes to Raft, the leader's relay, the lease
//! hand-back or a membership change.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::RaftError;
use openraft::BasicNode;
use tokio::net::TcpListener;

use crate::network::Network;
use crate::peer_tls::cert_has_name;
use crate::protocol::MembershipChange;
use crate::protocol::Reply;
use crate::protocol::Request;
use crate::types::{Batch, NodeId, Raft};
use crate::wire::{read_frame, write_frame, WireError};

/// Most peer connections open at once (a group has at most a handful of members, each
/// with a few connections).
pub const MAX_PEER_CONNECTIONS: usize = 64;

/// Most peer connections still in their TLS handshake.
pub const MAX_UNAUTHENTICATED: usize = 16;

/// Time a connecting peer has to complete its TLS login.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// A logged-in connection that sends no frame for this long is closed (members send
/// heartbeats every few tens of milliseconds).
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Refused peers are logged at WARN at most this often (the rest are counted).
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters of the peer listener.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Connections refused at the TLS handshake (no or bad certificate, wrong name,
    /// handshake timeout).
    pub refused: AtomicU64,
    /// Connections closed at accept because the listener's caps were reached.
    pub over_capacity: AtomicU64,
    /// Frames that did not decode, or that claimed more than the frame cap.
    pub malformed: AtomicU64,
    /// Requests for another node id than the certificate names (`verify_node_id`).
    pub wrong_identity: AtomicU64,
    /// When a refusal was last logged at WARN, and how many were not logged since.
    log: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl PeerStats {
    /// Logs a refusal at WARN at most once per [`REFUSED_LOG_EVERY`] (with the number
    /// of refusals not logged since), and at debug otherwise.
    fn refusal(&self, peer: std::net::SocketAddr, what: &str, error: &dyn std::fmt::Display) {
        let mut last = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSED_LOG_EVERY) {
            self.unlogged.fetch_add(1, Relaxed);
            tracing::debug!(%peer, %error, "{what}");
            return;
        }
        *last = Some(now);
        let earlier = self.unlogged.swap(0, Relaxed);
        tracing::warn!(%peer, %error, not_logged_since_last = earlier, "{what}");
    }
}

/// Counts one open connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Relaxed) >= max {
            count.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The node id a request speaks for, where the protocol says it: the vote's candidate
/// or leader for Raft RPCs, the batch's origin for a relay. A `Propose` may be relayed
/// on behalf of another member, so its origin is not the sender's.
fn speaks_for(req: &Request) -> Option<NodeId> {
    match req {
        Request::Append(r) => r.vote.leader_id().voted_for(),
        Request::Vote(r) => r.vote.leader_id().voted_for(),
        Request::Snapshot(r) => r.vote.leader_id().voted_for(),
        Request::Relay(b) => Some(b.origin),
        Request::Propose(_) | Request::Hello | Request::Membership(_) | Request::Handback { .. } | Request::Ping => {
            None
        }
    }
}

/// Answers peers on `listener` until the task is dropped; its connections go with it
/// (a stopped node must not keep answering on old connections).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    raft: Raft,
    network: Network,
    stats: Arc<PeerStats>,
    hold: Arc<crate::handback::Hold>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    let open = Arc::new(AtomicUsize::new(0));
    // Handshakes in progress from members' addresses, and from anywhere else.
    let (members_handshaking, handshaking) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or another transient failure): do not spin on it.
                tracing::debug!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pool = if network.member_ip(&raft, peer.ip()) {
            &members_handshaking
        } else {
            &handshaking
        };
        let (Some(slot), Some(login)) = (
            Slot::take(&open, MAX_PEER_CONNECTIONS),
            Slot::take(pool, MAX_UNAUTHENTICATED),
        ) else {
            stats.over_capacity.fetch_add(1, Relaxed);
            drop(tcp);
            continue;
        };
        let (acceptor, raft, stats, network, hold) = (
            acceptor.clone(),
            raft.clone(),
            stats.clone(),
            network.clone(),
            hold.clone(),
        );
        conns.spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // The peer gave up before the end (its connect timeout passed):
                    // nothing was refused.
                    tracing::debug!(%peer, "peer left during the TLS handshake");
                    return;
                }
                Ok(Err(e)) => {
                    stats.refused.fetch_add(1, Relaxed);
                    stats.refusal(peer, "peer refused at TLS handshake", &e);
                    return;
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Relaxed);
                    stats.refusal(
                        peer,
                        "peer refused at TLS handshake",
                        &"no login within the handshake timeout",
                    );
                    return;
                }
            };
            drop(login);
            let cert = conn.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
            // The node id this connection's certificate was found to speak for.
            let mut proven: Option<NodeId> = None;
            loop {
                let req: Request = match tokio::time::timeout(PEER_IDLE_TIMEOUT, read_frame(&mut conn)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e @ (WireError::Decode(_) | WireError::TooLarge(_)))) => {
                        stats.malformed.fetch_add(1, Relaxed);
                        stats.refusal(peer, "malformed peer frame", &e);
                        return;
                    }
                    Ok(Err(_)) | Err(_) => return,
                };
                if network.identity.verify_node_id {
                    if let Some(id) = speaks_for(&req).filter(|id| proven != Some(*id)) {
                        let ok = cert
                            .as_ref()
                            .is_some_and(|c| cert_has_name(c, &network.identity.node_name(id)));
                        if !ok {
                            stats.wrong_identity.fetch_add(1, Relaxed);
                            let why = format!("its certificate does not name node{id}.{}", network.identity.name);
                            stats.refusal(peer, "peer spoke for another node id", &why);
                            return;
                        }
                        proven = Some(id);
                    }
                }
                if let Some(id) = speaks_for(&req) {
                    network.contacts.touch(id);
                }
                let reply = match req {
                    Request::Append(r) => Reply::Append(raft.append_entries(r).await),
                    Request::Vote(r) => Reply::Vote(raft.vote(r).await),
                    Request::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
                    Request::Propose(b) if held(&hold, &b) => Reply::Propose(Err(HELD.into())),
                    Request::Propose(b) => {
                        Reply::Propose(raft.client_write(b).await.map(|r| r.data).map_err(|e| e.to_string()))
                    }
                    Request::Relay(b) if held(&hold, &b) => Reply::Propose(Err(HELD.into())),
                    Request::Relay(b) => relay(&raft, &network, b).await,
                    Request::Hello => Reply::Hello {
                        initialized: raft.is_initialized().await.unwrap_or(false),
                    },
                    Request::Membership(m) => Reply::Membership(change_membership(&raft, m).await),
                    Request::Handback { last_log_index } => {
                        Reply::Handback(crate::handback::stand(&raft, last_log_index).await)
                    }
                    Request::Ping => Reply::Pong(network.links.views()),
                };
                if write_frame(&mut conn, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Carries out a membership change here (this node must be the leader): an added
/// member joins as a learner and becomes a voter once it caught up; a removed one
/// leaves the voters and the group.
pub async fn change_membership(raft: &Raft, change: MembershipChange) -> Result<Vec<NodeId>, String> {
    use openraft::ChangeMembers;
    use std::collections::BTreeSet;
    match change {
        MembershipChange::Add { id, address } => {
            raft.add_learner(id, BasicNode::new(address), true)
                .await
                .map_err(|e| e.to_string())?;
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        MembershipChange::Remove { id } => {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect())
}

/// Why a member's batch was refused while this leader hands over.
const HELD: &str = "the leader is handing leadership back; propose again shortly";

/// Whether `batch` waits out a handback: everything but VIP lease changes, which keep
/// their timing.
fn held(hold: &crate::handback::Hold, batch: &Batch) -> bool {
    !batch.is_lease() && hold.active()
}

/// Proposes `batch` here, or passes it to the leader once (never further).
async fn relay(raft: &Raft, network: &Network, batch: Batch) -> Reply {
    let err = match raft.client_write(batch.clone()).await {
        Ok(r) => return Reply::Propose(Ok(r.data)),
        Err(e) => e,
    };
    if let RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)) = &err {
        if let (Some(id), Some(node)) = (f.leader_id, f.leader_node.as_ref()) {
            let timeout = std::time::Duration::from_millis(250);
            // Lease changes on the standing link; bulk batches on a connection of their
            // own, so they never hold a lease renewal up behind them.
            let reply = if batch.is_lease() {
                network.ask(id, node, Request::Propose(batch), timeout).await
            } else {
                network.call_once(id, node, &Request::Propose(batch), timeout).await
            };
            if let Some(reply) = reply {
                return reply;
            }
        }
    }
    Reply::Propose(Err(err.to_string()))
}
