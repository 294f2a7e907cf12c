//! VIP leases: the fence that keeps two nodes from holding one VIP while the group has
//! quorum. A backup whose Master_Down timer fires becomes master only after the group
//! committed a lease for the VIP to it; the master renews it. During an A↔B partition in
//! which both still reach the witness, the holder keeps renewing through the witness, so
//! the other node's request is refused and it stays backup.
//!
//! Grants are decided when the entry is applied, from the entry alone, so every member
//! agrees. Times are the proposer's wall clock (ms since the Unix epoch): members must
//! keep their clocks in sync (NTP) to well under the lease time.

use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};

use crate::network::Network;
use crate::protocol::{Reply, Request};
use crate::types::{Batch, Change, Lease, NodeId, Peer, Raft};

/// Why a lease operation has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// No member could commit within the wait: the group has no quorum reachable from here.
    #[error("no quorum reachable")]
    NoQuorum,
}

/// Proposes lease changes and waits for their commit; cheap to clone, usable from any
/// tokio runtime. A follower's proposal goes to the leader; when the leader cannot be
/// reached directly it is relayed through another member (the witness during an A↔B
/// partition).
#[derive(Clone)]
pub struct LeaseClient {
    id: NodeId,
    raft: Raft,
    network: Network,
    peers: Vec<Peer>,
}

/// How long one attempt at one member may take.
const ATTEMPT: Duration = Duration::from_millis(250);

/// How long the leader may take before the same change is also relayed through the
/// other members.
const RELAY_AFTER: Duration = Duration::from_millis(40);

/// Pause between rounds while there is no leader.
const ROUND_GAP: Duration = Duration::from_millis(20);

impl LeaseClient {
    pub(crate) fn new(id: NodeId, raft: Raft, network: Network, peers: Vec<Peer>) -> LeaseClient {
        LeaseClient {
            id,
            raft,
            network,
            peers,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Asks for (or renews) the lease of `vrid` for `ttl`; `Ok` carries the committed
    /// lease, which says whether it was granted.
    pub async fn acquire(
        &self,
        vrid: u8,
        priority: u8,
        preempt: bool,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Lease, LeaseError> {
        let change = Change::VipLease {
            vrid,
            priority,
            preempt,
            at_ms: crate::now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.commit(change, wait).await?.ok_or(LeaseError::NoQuorum)
    }

    /// Gives the lease of `vrid` up (so the peer need not wait for it to expire).
    pub async fn release(&self, vrid: u8, wait: Duration) -> Result<(), LeaseError> {
        self.commit(Change::VipRelease { vrid }, wait).await.map(|_| ())
    }

    /// Commits one change through whichever member can, retrying until `wait` passes.
    async fn commit(&self, change: Change, wait: Duration) -> Result<Option<Lease>, LeaseError> {
        let batch = Batch {
            origin: self.id,
            changes: vec![change],
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LeaseError::NoQuorum);
            }
            if let Ok(Some(answer)) = tokio::time::timeout(left, self.round(&batch)).await {
                return Ok(answer);
            }
            tokio::time::sleep(ROUND_GAP.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// One try: locally if leader, else the leader, and — when the leader has not
    /// answered within [`RELAY_AFTER`] — a relay through each other member at the same
    /// time; the first answer wins. A lease renewal must land well within the lease's
    /// life even while the leader is cut off from this node (an A↔B partition with a
    /// proxy leading): waiting out a blackholed attempt first would let the lease
    /// lapse, and the other node would be granted it while this one still holds the VIP.
    async fn round(&self, batch: &Batch) -> Option<Option<Lease>> {
        let leader = match tokio::time::timeout(ATTEMPT, self.raft.client_write(batch.clone())).await {
            Ok(Ok(r)) => return Some(r.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => f.leader_id,
            _ => None,
        };
        let mut asks = tokio::task::JoinSet::new();
        let leader = leader.filter(|l| *l != self.id);
        if let Some(l) = leader {
            let me = self.clone();
            let batch = batch.clone();
            asks.spawn(async move { me.ask(l, Request::Propose(batch)).await });
            // The usual case: the leader commits within a few milliseconds.
            if let Ok(Some(Ok(Some(answer)))) = tokio::time::timeout(RELAY_AFTER, asks.join_next()).await {
                return Some(answer);
            }
        }
        for p in self.peers.iter().filter(|p| p.id != self.id && Some(p.id) != leader) {
            let (me, batch, id) = (self.clone(), batch.clone(), p.id);
            asks.spawn(async move { me.ask(id, Request::Relay(batch)).await });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok(Some(answer)) = r {
                return Some(answer);
            }
        }
        None
    }

    /// The group's voters as this node's membership says.
    fn voters(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Whether the voters other than this node may still commit a lease to another
    /// node, so a holder whose lease ran out must step down. Silence proves nothing (the
    /// others may be working together behind a cut, or this node's view may lag after a
    /// heal): a voter counts as out of the group only on positive evidence, see
    /// [`may_grant_without`].
    pub fn others_may_grant(&self, within: Duration) -> bool {
        let voters = self.voters();
        let links = &self.network.links;
        may_grant_without(self.id, &voters, within, |id| links.refused(id), |id| links.report(id))
    }

    /// Whether this node hears a majority of the voters (itself included) on its
    /// standing links within `within`. Unlike the Raft quorum flag it stays true while
    /// the others elect a new leader: a member cut off alone turns false, the members
    /// that still hear each other do not.
    pub fn hears_majority(&self, within: Duration) -> bool {
        let voters = self.voters();
        let links = &self.network.links;
        let heard = voters
            .iter()
            .filter(|&&v| v == self.id || links.heard(v).is_some_and(|d| d <= within))
            .count();
        heard > voters.len() / 2
    }

    /// When each other member last answered, on its standing link and on any call, and
    /// what its last report said of the others (for logs: `2: link 12ms, call 340ms,
    /// refused; says 3 18ms`).
    pub fn heard_summary(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{}ms", d.as_millis()));
        let links = &self.network.links;
        self.peers
            .iter()
            .filter(|p| p.id != self.id)
            .map(|p| {
                let says = links.report(p.id).map_or("no report".to_string(), |r| {
                    let views = r.views.iter().map(|v| {
                        let heard = v.heard_ms.map_or("never".to_string(), |h| format!("{h}ms"));
                        format!("{} {heard}{}", v.id, if v.refused { " refused" } else { "" })
                    });
                    format!(
                        "{}ms ago says {}",
                        r.at.elapsed().as_millis(),
                        views.collect::<Vec<_>>().join(", ")
                    )
                });
                format!(
                    "{}: link {}, call {}{}; {says}",
                    p.id,
                    ms(links.heard(p.id)),
                    ms(self.network.contacts.since(p.id)),
                    if links.refused(p.id) { ", refused" } else { "" },
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Relays `batch` through every member but this one and `skip` at once; whether one
    /// of them had it committed. For a follower's publisher whose leader is out of
    /// reach (its changes then still reach the group through the witness).
    pub(crate) async fn relay(&self, batch: &Batch, skip: Option<NodeId>) -> bool {
        let mut asks = tokio::task::JoinSet::new();
        for p in self.peers.iter().filter(|p| p.id != self.id && Some(p.id) != skip) {
            let (me, batch, peer) = (self.clone(), batch.clone(), p.clone());
            // A connection of its own: the standing link is kept free for leases.
            asks.spawn(async move {
                let node = openraft::BasicNode::new(peer.address.to_string());
                me.network
                    .call_once(peer.id, &node, &Request::Relay(batch), ATTEMPT)
                    .await
            });
        }
        while let Some(r) = asks.join_next().await {
            if let Ok(Some(Reply::Propose(Ok(_)))) = r {
                return true;
            }
        }
        false
    }

    async fn ask(&self, target: NodeId, req: Request) -> Option<Option<Lease>> {
        let peer = self.peers.iter().find(|p| p.id == target)?;
        let node = openraft::BasicNode::new(peer.address.to_string());
        match self.network.ask(target, &node, req, ATTEMPT).await {
            Some(Reply::Propose(Ok(answer))) => Some(answer),
            _ => None,
        }
    }
}

/// Whether the voters but `me` can still form a quorum, as far as `me` knows: each of
/// them counts unless it is known down — its host refused `me`'s last connection
/// (`refused`: nothing listens there) *and* no other voter's last report (`report`) said
/// it was heard within `within`. The second half guards against a refusal that is not a
/// death (a firewall that rejects between two live members); reports are kept however
/// old, so an old report errs on the side of stepping down. A voter that is merely
/// silent always counts: behind a cut it may be committing with the others.
pub fn may_grant_without(
    me: NodeId,
    voters: &[NodeId],
    within: Duration,
    refused: impl Fn(NodeId) -> bool,
    report: impl Fn(NodeId) -> Option<crate::link::Report>,
) -> bool {
    let quorum = voters.len() / 2 + 1;
    let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != me).collect();
    let within_ms = within.as_millis() as u64;
    let down = |m: NodeId| {
        refused(m)
            && others.iter().filter(|p| **p != m).all(|p| {
                report(*p).is_none_or(|r| {
                    r.views
                        .iter()
                        .filter(|v| v.id == m)
                        .all(|v| v.heard_ms.is_none_or(|h| u64::from(h) > within_ms))
                })
            })
    };
    others.iter().filter(|m| !down(**m)).count() >= quorum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::Report;
    use crate::protocol::LinkView;
    use crate::tables::Tables;

    fn report(views: &[(NodeId, Option<u32>, bool)]) -> Option<Report> {
        Some(Report {
            at: Instant::now(),
            views: views
                .iter()
                .map(|&(id, heard_ms, refused)| LinkView { id, heard_ms, refused })
                .collect(),
        })
    }

    #[test]
    fn a_holder_keeps_its_vips_only_when_the_others_cannot_form_a_quorum() {
        let half = Duration::from_millis(300);
        let voters = [1, 2, 3];
        // Both others silent (A cut off, or its view lagging after a heal): they may be
        // working together.
        assert!(may_grant_without(1, &voters, half, |_| false, |_| None));
        // The witness (3) refuses (killed) and B's last report agrees: B alone cannot.
        let b_says_w_down = |id| {
            (id == 2)
                .then(|| report(&[(1, Some(5), false), (3, None, true)]))
                .flatten()
        };
        assert!(!may_grant_without(1, &voters, half, |id| id == 3, b_says_w_down));
        // The witness refuses A, but B's last report heard it: a firewall rejecting A,
        // not a death; B and the witness may grant.
        let b_hears_w = |id| {
            (id == 2)
                .then(|| report(&[(1, Some(5), false), (3, Some(10), false)]))
                .flatten()
        };
        assert!(may_grant_without(1, &voters, half, |id| id == 3, b_hears_w));
        // Both refuse (A is the last one standing).
        assert!(!may_grant_without(1, &voters, half, |_| true, |_| None));
        // A pair without a witness: the other alone is never a quorum.
        assert!(!may_grant_without(1, &[1, 2], half, |_| false, |_| None));
        // Five voters, two known down, two silent: two of five cannot commit.
        let five = [1, 2, 3, 4, 5];
        assert!(!may_grant_without(1, &five, half, |id| id >= 4, |_| None));
        assert!(may_grant_without(1, &five, half, |id| id == 5, |_| None));
    }

    #[test]
    fn a_lease_goes_to_one_node_until_it_expires_or_is_released() {
        let mut t = Tables::default();
        let a = t.apply_lease(1, 51, 150, true, 1_000, 200);
        assert!(a.held_by(1, 1_100));
        // B asks while A's lease runs: refused.
        assert!(!t.apply_lease(2, 51, 100, true, 1_100, 200).held_by(2, 1_100));
        // A renews; B asks again after the old expiry but before the renewed one: refused.
        t.apply_lease(1, 51, 150, true, 1_150, 200);
        assert!(!t.apply_lease(2, 51, 100, true, 1_250, 200).held_by(2, 1_250));
        // A stops renewing (killed): after expiry B gets it.
        assert!(t.apply_lease(2, 51, 100, true, 1_351, 200).held_by(2, 1_400));
        // A released lease is free at once.
        t.release_lease(2, 51);
        assert!(t.apply_lease(1, 51, 150, true, 1_402, 200).held_by(1, 1_402));
    }

    #[test]
    fn a_higher_priority_request_marks_the_lease_wanted_and_a_stale_one_is_refused() {
        let mut t = Tables::default();
        t.apply_lease(2, 51, 100, true, 1_000, 200);
        let l = t.apply_lease(1, 51, 150, true, 1_010, 200);
        assert_eq!((l.holder, l.wanted_by), (2, Some(1)));
        // The holder sees it on renewal, releases, and the preemptor gets it.
        assert_eq!(t.apply_lease(2, 51, 100, true, 1_050, 200).wanted_by, Some(1));
        t.release_lease(2, 51);
        let l = t.apply_lease(1, 51, 150, true, 1_060, 200);
        assert_eq!((l.holder, l.wanted_by), (1, None));
        // A lower priority without preemption rights never marks it.
        assert_eq!(t.apply_lease(2, 51, 100, true, 1_070, 200).wanted_by, None);
        // A request delayed past its own lifetime (a partition healed) is refused.
        t.release_lease(1, 51);
        t.apply_lease(1, 51, 150, true, 5_000, 200);
        t.release_lease(1, 51);
        assert!(!t.apply_lease(2, 51, 100, true, 4_000, 200).held_by(2, 4_000));
    }
}
