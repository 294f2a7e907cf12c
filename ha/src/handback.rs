//! Leadership back to the preferred leader (the witness of a pair).
//!
//! The witness leads so that a proxy's death never waits for an election before its VIP
//! lease can move, and so that an A↔B cut leaves both proxies in contact with the
//! leader. When the witness was away, a proxy was elected; without this it would keep
//! leading until it fails, and every later failover of its VIP or cut between the
//! proxies would cost an election. So a leader that is not the preferred one hands
//! leadership back once the preferred member is a voter and has been caught up for a
//! while: it asks it to stand for election ([`Request::Handback`]); the preferred member
//! waits until its log holds everything the leader had, then starts the election. The
//! old leader's own vote has aged past its lease (it has been leading for longer), so
//! it grants the vote and follows; that is a majority of three at once.
//!
//! openraft 0.9 has no leadership transfer; this is the classic "timeout now" built from
//! `trigger().elect()`. As in Raft's leadership transfer, the leader stops taking new
//! proposals while it hands over ([`Hold`]): under steady traffic the members publish
//! a batch every `sync_interval`, and one appended between the request and the vote
//! would make the old leader refuse the vote (the candidate's log is behind). Changes
//! refused during the hold stay in their node's buffer for the next round; VIP lease
//! changes are never held. Should the vote still fail, the group holds one ordinary
//! election (the preferred member, with the shortest timeout, usually wins it) and the
//! leader tries again later.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::network::RaftNetworkFactory;
use openraft::ServerState;

use crate::network::Network;
use crate::protocol::{Reply, Request};
use crate::types::{NodeId, Raft};

/// How long the preferred member must have been caught up before leadership moves.
const SETTLED: Duration = Duration::from_secs(1);
/// At most one attempt per this period.
const RETRY: Duration = Duration::from_secs(3);
/// How long the preferred member waits for its log to reach the leader's.
const CATCH_UP: Duration = Duration::from_millis(200);
/// The longest the leader holds proposals for one handback.
const HOLD: Duration = Duration::from_millis(600);
/// How long the leader's log must stand still, once held, before it names its end.
const QUIET: Duration = Duration::from_millis(20);

/// The leader's hold on new proposals while it hands leadership back. Shared by the
/// handback task (which takes and releases it) and the places that propose on the
/// leader's behalf (the publisher and the answers to members' proposals), which refuse
/// rather than wait: a refused batch stays with its node and is proposed again, while
/// one that waited could be proposed twice (its sender gives up and retries).
#[derive(Debug, Default)]
pub struct Hold {
    until: Mutex<Option<Instant>>,
}

impl Hold {
    /// Whether proposals are held right now.
    pub fn active(&self) -> bool {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.is_some_and(|t| Instant::now() < t)
    }

    fn take(&self, d: Duration) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + d);
    }

    fn release(&self) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Runs on every member that is not the preferred leader until the task is dropped:
/// while this member leads, hands leadership back to `preferred` when it can.
/// `lease` is how long this member's own vote protects it (openraft's leader lease);
/// `hold` is this member's proposal hold.
pub async fn run(raft: Raft, network: Network, preferred: NodeId, lease: Duration, hold: std::sync::Arc<Hold>) {
    let mut rx = raft.metrics();
    let mut leading_since: Option<Instant> = None;
    let mut caught_up_since: Option<Instant> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let m = rx.borrow_and_update().clone();
        if m.running_state.is_err() {
            return;
        }
        if m.state != ServerState::Leader {
            leading_since = None;
            caught_up_since = None;
            continue;
        }
        let now = Instant::now();
        let since = *leading_since.get_or_insert(now);
        let membership = m.membership_config.membership();
        let voter = membership.voter_ids().any(|v| v == preferred);
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).cloned().flatten())
            .map_or(0, |l| l.index);
        if !voter || matched + 2 < last {
            caught_up_since = None;
            continue;
        }
        let caught_up = *caught_up_since.get_or_insert(now);
        let ready = now.duration_since(caught_up) >= SETTLED
            && now.duration_since(since) >= lease + Duration::from_millis(100)
            && last_attempt.is_none_or(|t| now.duration_since(t) >= RETRY);
        if !ready {
            continue;
        }
        let Some(node) = membership.get_node(&preferred).cloned() else {
            continue;
        };
        last_attempt = Some(now);
        hold.take(HOLD);
        let last = settled_end(&raft).await;
        let mut net = network.clone();
        let mut client = net.new_client(preferred, &node).await;
        let req = Request::Handback { last_log_index: last };
        match tokio::time::timeout(Duration::from_secs(1), client.call(&req)).await {
            Ok(Ok(Reply::Handback(true))) => {
                // Held until the vote has come and gone: this member follows, or the
                // hold runs out.
                let mut watch = raft.metrics();
                let _ = tokio::time::timeout(
                    HOLD.saturating_sub(now.elapsed()),
                    watch.wait_for(|m| m.state != ServerState::Leader),
                )
                .await;
                tracing::info!(
                    to = preferred,
                    term = m.current_term,
                    "ha: leadership handed back to the preferred leader"
                );
            }
            other => {
                tracing::debug!(to = preferred, answer = ?other.map(|r| r.map(|_| ())), "ha: leadership handback not taken");
            }
        }
        hold.release();
    }
}

/// The end of the leader's log once proposals already under way have landed: the last
/// index after it stood still for [`QUIET`] (or at the end of the hold).
async fn settled_end(raft: &Raft) -> u64 {
    let start = Instant::now();
    let mut last = raft.metrics().borrow().last_log_index.unwrap_or(0);
    let mut since = Instant::now();
    while since.elapsed() < QUIET && start.elapsed() < HOLD / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = raft.metrics().borrow().last_log_index.unwrap_or(0);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// On the preferred member, the answer to [`Request::Handback`]: waits (briefly) until
/// this member's log reaches `last_log_index`, then stands for election. Whether it did.
pub async fn stand(raft: &Raft, last_log_index: u64) -> bool {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let m = raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            return true;
        }
        if m.running_state.is_err() || !matches!(m.state, ServerState::Follower) {
            return false;
        }
        if m.last_log_index.unwrap_or(0) >= last_log_index {
            break;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    raft.trigger().elect().await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_until_released_or_run_out() {
        let hold = Hold::default();
        assert!(!hold.active());
        hold.take(Duration::from_secs(60));
        assert!(hold.active());
        hold.release();
        assert!(!hold.active());
        hold.take(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!hold.active(), "a hold nobody released ends by itself");
    }
}
