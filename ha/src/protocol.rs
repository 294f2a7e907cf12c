//! What members ask each other and answer: the requests and replies of the peer protocol
//! (openraft's own calls, batches relayed to the leader, lease asks, hand-backs,
//! membership changes, the standing links' pings).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::types::{Batch, Lease, NodeId, TypeConfig};

/// A message to a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Raft log replication / heartbeat.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot chunk.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's batch, for the leader to propose.
    Propose(Batch),
    /// A batch for a member to propose, or pass to its leader when it is not it (a
    /// node that cannot reach the leader itself goes through another member).
    Relay(Batch),
    /// Whether the member has joined a group (a node about to form a new group asks
    /// first, so a wiped or late node never starts a second group beside the first).
    /// Appended after the older requests, so their encoding is unchanged.
    Hello,
    /// A membership change, for the leader to carry out.
    Membership(MembershipChange),
    /// From a leader that is not the preferred one: stand for election once your log
    /// reaches `last_log_index` (see [`crate::handback`]).
    Handback {
        /// The leader's last log index when it asked.
        last_log_index: u64,
    },
    /// Whether the connection carries replies (a standing link's check, see
    /// [`crate::link`]); answered at once, without the Raft core.
    Ping,
}

/// A change of the group's members (`tandem ctl cluster add|remove|replace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member: first as a learner that catches up, then as a voter.
    Add {
        /// Its node id (never used before).
        id: NodeId,
        /// Its peer address.
        address: String,
    },
    /// Remove a member.
    Remove {
        /// Its node id.
        id: NodeId,
    },
}

/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To `Propose` and `Relay`: what applying the batch answered.
    Propose(Result<Option<Lease>, String>),
    /// To `Hello`: whether this member belongs to a formed group.
    Hello {
        /// The member has joined a group (its log or membership is not empty).
        initialized: bool,
    },
    /// To `Membership`: the voters afterwards, or why it failed.
    Membership(Result<Vec<NodeId>, String>),
    /// To `Handback`: whether this member stood for election.
    Handback(bool),
    /// To `Ping`: the replier's links to the other members, as it sees them.
    Pong(Vec<LinkView>),
}

/// What one member's link to another says, as reported in a `Pong`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkView {
    /// The member the link goes to.
    pub id: NodeId,
    /// How long ago a reply last came back on it, in ms (`None`: never).
    pub heard_ms: Option<u32>,
    /// Its last connection attempt was refused (the host answers, nothing listens).
    pub refused: bool,
}
