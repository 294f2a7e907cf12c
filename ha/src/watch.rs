//! What the group looks like from this member, said once per change: its role, the
//! leader, whether a quorum is within reach, a Raft core that stopped. openraft's own
//! logs are routine chatter (a vote error every election timeout while peers are down);
//! these lines are the ones an operator reads, and [`GroupHealth`] is what `/status`,
//! `/metrics` and `tandem ctl cluster` show.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;

use crate::client::Contacts;
use crate::types::{NodeId, Raft};

/// This member's view of the group, as the watcher last judged it.
#[derive(Debug, Default)]
pub struct GroupHealth {
    /// A quorum is within reach: as leader, a majority acknowledged recently; as a
    /// follower, the leader was heard from recently.
    pub quorum: AtomicBool,
    /// The Raft core stopped (a fatal storage or network error); nothing replicates.
    pub stopped: AtomicBool,
    /// Like `quorum`, judged within three heartbeats instead of three election
    /// timeouts: what is replicated right now reaches this member (the leader heard
    /// from, or a majority acknowledging it). Cluster rate limits use it: a count frozen for a second is
    /// already wrong.
    pub in_touch: AtomicBool,
    /// When (ms, wall clock) the oldest of this node's changes still waiting for a
    /// commit was first proposed; 0 when none waits. A node whose own changes do not
    /// commit is not in touch either: the leader it hears may itself be unable to
    /// commit (it lost its quorum acknowledgements), so what the peers publish does not
    /// arrive here.
    pub pending_since_ms: AtomicU64,
}

/// How recent contact must be to count (a few election timeouts).
fn horizon(election_timeout: Duration) -> Duration {
    election_timeout * 3
}

/// Whether this member reaches a quorum, by the rules of [`GroupHealth::quorum`].
pub fn judge_quorum(
    m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    contacts: &Contacts,
    election_timeout: Duration,
) -> bool {
    reaches_quorum_within(m, contacts, horizon(election_timeout))
}

/// Whether the leader (as a follower) or a majority (as the leader) was heard from
/// within `within`.
fn reaches_quorum_within(
    m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>,
    contacts: &Contacts,
    within: Duration,
) -> bool {
    if m.running_state.is_err() || m.state == ServerState::Shutdown {
        return false;
    }
    match m.state {
        ServerState::Leader => m
            .millis_since_quorum_ack
            .is_some_and(|ms| Duration::from_millis(ms) <= within),
        _ => match m.current_leader {
            Some(l) if l == m.id => true,
            Some(l) => contacts.since(l).is_some_and(|d| d <= within),
            None => false,
        },
    }
}

/// Watches `raft` until it shuts down: updates `health` and logs role, leader and
/// quorum changes at info (a lost quorum at warn, a stopped core at error), once each.
/// `in_touch_within` is the horizon of [`GroupHealth::in_touch`] (a few heartbeats).
pub async fn run(
    raft: Raft,
    contacts: Arc<Contacts>,
    health: Arc<GroupHealth>,
    election_timeout: Duration,
    in_touch_within: Duration,
) {
    let mut rx = raft.metrics();
    let mut last_state = None;
    let mut last_leader = None;
    let mut last_quorum = None;
    let mut lost_since: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let m = rx.borrow_and_update().clone();
        if let Err(e) = &m.running_state {
            if !health.stopped.swap(true, Relaxed) {
                tracing::error!(error = %e, "ha: the Raft core stopped; nothing replicates until this node restarts");
            }
            health.quorum.store(false, Relaxed);
            health.in_touch.store(false, Relaxed);
            return;
        }
        if last_state != Some(m.state) {
            tracing::info!(state = ?m.state, term = m.current_term, leader = ?m.current_leader, "ha: this member's role changed");
            last_state = Some(m.state);
        }
        if last_leader != Some(m.current_leader) {
            if let Some(l) = m.current_leader {
                tracing::info!(leader = l, term = m.current_term, "ha: leader");
            }
            last_leader = Some(m.current_leader);
        }
        let quorum = judge_quorum(&m, &contacts, election_timeout);
        health.quorum.store(quorum, Relaxed);
        let pending_since = health.pending_since_ms.load(Relaxed);
        let stalled =
            pending_since != 0 && crate::now_ms().saturating_sub(pending_since) > in_touch_within.as_millis() as u64;
        health.in_touch.store(
            quorum && !stalled && reaches_quorum_within(&m, &contacts, in_touch_within),
            Relaxed,
        );
        // The log says a loss only once it lasted (a leader handing over or an election
        // after a member's restart is a blip of a few hundred milliseconds).
        let now = std::time::Instant::now();
        match (quorum, lost_since) {
            (false, None) => lost_since = Some(now),
            (true, _) => lost_since = None,
            _ => {}
        }
        let judged = match lost_since {
            Some(t) if now.duration_since(t) < horizon(election_timeout) * 2 => last_quorum,
            _ => Some(quorum),
        };
        if judged != last_quorum {
            match (last_quorum, judged) {
                (Some(true), Some(false)) => tracing::warn!(
                    state = ?m.state,
                    "ha: quorum lost: this node serves from its local view; shared state and VIP leases wait for the heal"
                ),
                (Some(false), Some(true)) => tracing::info!(leader = ?m.current_leader, "ha: quorum regained"),
                (None, Some(false)) => tracing::info!("ha: waiting for a quorum"),
                _ => tracing::info!(leader = ?m.current_leader, "ha: quorum reached"),
            }
            last_quorum = judged;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
