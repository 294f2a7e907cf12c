//! Sync groups (keepalived's `vrrp_sync_group`): VIPs that must be held by the same node,
//! such as a public address and the internal gateway address behind it. The members'
//! routers run on one thread and share a [`SyncGroup`]; each publishes its state there
//! and follows three rules:
//!
//! - **Fault together.** While one member's interface is unusable, every member is in
//!   FAULT (its VIPs released); they recover together.
//! - **Take over together.** A backup whose Master_Down timer ran out takes over only
//!   once every other member is master or wants to take over too (its own timer ran
//!   out). A member that still hears a better master holds the whole group back, so the
//!   group never splits over two nodes because one VRID lost to a higher priority.
//! - **Track together.** Every member's priority moves by the lowest tracking change of
//!   any member (a failing script on one lowers them all alike), so a peer preempts the
//!   whole group or none of it.
//! - **Step down together.** A master that steps down (it heard a higher priority, lost
//!   its lease, or yielded it) makes the other members step down as well, with a
//!   priority-0 advert so the peer takes them over at once.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use super::machine::State;

/// One member's published state.
#[derive(Debug, Default)]
struct Slot {
    /// 0 initialize, 1 backup, 2 master, 3 fault.
    state: AtomicU8,
    /// A backup whose Master_Down ran out and that waits for the others.
    wants: AtomicBool,
    /// Its own interface is unusable (not a fault caused by another member).
    own_fault: AtomicBool,
    /// Times it stepped down from master by itself.
    demotions: AtomicU64,
    /// What its trackers add to its configured priority (≤ 0 when something failed).
    delta: AtomicI32,
}

/// The shared state of one sync group.
#[derive(Debug)]
pub struct SyncGroup {
    name: String,
    slots: Vec<Slot>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl SyncGroup {
    /// A group named `name` with `members` routers (indexes `0..members`).
    pub fn new(name: &str, members: usize) -> Arc<SyncGroup> {
        Arc::new(SyncGroup {
            name: name.to_string(),
            slots: (0..members).map(|_| Slot::default()).collect(),
            changed: tokio::sync::watch::channel(0).0,
        })
    }

    /// The group's name (logs).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handle of member `index`, for its router.
    pub fn member(self: &Arc<SyncGroup>, index: usize) -> SyncMember {
        SyncMember {
            group: self.clone(),
            index,
            rx: self.changed.subscribe(),
            seen: vec![0; self.slots.len()],
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// One router's view of its sync group.
#[derive(Debug)]
pub struct SyncMember {
    group: Arc<SyncGroup>,
    index: usize,
    rx: tokio::sync::watch::Receiver<u64>,
    /// The other members' demotion counts last acted on.
    seen: Vec<u64>,
}

impl SyncMember {
    /// The group's name.
    pub fn group_name(&self) -> &str {
        self.group.name()
    }

    fn others(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.group
            .slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != self.index)
    }

    /// Publishes this router's state; the others are woken when it changed.
    pub fn publish(&self, state: State, wants: bool, own_fault: bool) {
        let s = &self.group.slots[self.index];
        let a = s.state.swap(state.code(), Relaxed) != state.code();
        let b = s.wants.swap(wants, Relaxed) != wants;
        let c = s.own_fault.swap(own_fault, Relaxed) != own_fault;
        if a || b || c {
            self.group.bump();
        }
    }

    /// Publishes what this router's trackers add to its configured priority.
    pub fn publish_delta(&self, delta: i32) {
        if self.group.slots[self.index].delta.swap(delta, Relaxed) != delta {
            self.group.bump();
        }
    }

    /// The priority every member uses: `configured` plus the lowest tracking change of
    /// any member, within 1–254 (an owner's 255 stays).
    pub fn priority(&self, configured: u8) -> u8 {
        if configured == 255 {
            return 255;
        }
        let min = self
            .group
            .slots
            .iter()
            .map(|s| s.delta.load(Relaxed))
            .min()
            .unwrap_or(0);
        (i32::from(configured) + min).clamp(1, 254) as u8
    }

    /// This router stepped down from master by itself: the others follow.
    pub fn demoted(&self) {
        self.group.slots[self.index].demotions.fetch_add(1, Relaxed);
        self.group.bump();
    }

    /// Whether another member's own interface is unusable (the group is in FAULT).
    pub fn other_faulted(&self) -> bool {
        self.others().any(|(_, s)| s.own_fault.load(Relaxed))
    }

    /// Whether every other member is master or wants to take over, and none is in FAULT.
    pub fn others_ready(&self) -> bool {
        self.others().all(|(_, s)| {
            !s.own_fault.load(Relaxed) && (s.state.load(Relaxed) == State::Master.code() || s.wants.load(Relaxed))
        })
    }

    /// Whether another member stepped down since the last call.
    pub fn take_demotion(&mut self) -> bool {
        let mut any = false;
        for (i, s) in self.group.slots.iter().enumerate() {
            let d = s.demotions.load(Relaxed);
            if i != self.index && d != self.seen[i] {
                any = true;
            }
            self.seen[i] = d;
        }
        any
    }

    /// Waits until a member publishes a change.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for a change of `sync`'s group (forever without a group).
pub async fn changed(sync: &mut Option<SyncMember>) {
    match sync {
        Some(s) => s.changed().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_waits_until_every_other_wants_to_take_over_or_is_master() {
        let g = SyncGroup::new("edge", 3);
        let (a, b, c) = (g.member(0), g.member(1), g.member(2));
        for m in [&a, &b, &c] {
            m.publish(State::Backup, false, false);
        }
        a.publish(State::Backup, true, false);
        assert!(!a.others_ready(), "b and c still hear a master");
        b.publish(State::Backup, true, false);
        assert!(!a.others_ready());
        c.publish(State::Master, false, false);
        assert!(a.others_ready());
        assert!(b.others_ready());
        b.publish(State::Fault, false, true);
        assert!(!a.others_ready(), "a faulted member holds the group back");
        assert!(a.other_faulted() && c.other_faulted() && !b.other_faulted());
    }

    #[test]
    fn the_lowest_tracking_change_of_any_member_applies_to_all() {
        let g = SyncGroup::new("edge", 2);
        let (a, b) = (g.member(0), g.member(1));
        a.publish_delta(-100);
        b.publish_delta(20);
        assert_eq!((a.priority(150), b.priority(150)), (50, 50));
        assert_eq!(b.priority(90), 1, "never below 1");
        assert_eq!(b.priority(255), 255, "an owner stays an owner");
        a.publish_delta(0);
        assert_eq!(b.priority(150), 150);
    }

    #[test]
    fn a_demotion_is_seen_once_by_each_other_member_and_not_by_itself() {
        let g = SyncGroup::new("edge", 2);
        let (mut a, mut b) = (g.member(0), g.member(1));
        a.demoted();
        assert!(!a.take_demotion());
        assert!(b.take_demotion());
        assert!(!b.take_demotion());
    }
}
