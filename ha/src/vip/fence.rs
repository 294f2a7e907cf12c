//! The lease fence of one VIP as a pure machine: what a fenced router does with the
//! group's answers to its lease requests and with its lease's expiry. The router owns the
//! requests in flight (tasks) and carries out the verdicts; every decision is made here,
//! from the answer, the clocks and the VRRP state it is given, so each can be tested
//! without a group or a network. See LIFECYCLE.md beside this file.

use std::time::{Duration, Instant};

use crate::lease::LeaseError;
use crate::types::Lease;
use crate::types::NodeId;

/// What a fenced node does when no quorum answers its lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoQuorum {
    /// Plain VRRP decides: a backup takes over on Master_Down (availability first; two
    /// holders are possible when the witness is also cut off).
    Vrrp,
    /// Nothing moves: a backup never takes over; a master keeps its VIPs while the other
    /// members are known unable to grant the lease elsewhere.
    Hold,
}

/// A fenced master gives its VIPs up this long before its lease runs out by its own
/// clock (the members' clocks must agree to well within it).
pub const MARGIN: Duration = Duration::from_millis(25);

/// The lease this node holds for one VIP, as far as it knows, and when to renew it.
#[derive(Debug)]
pub struct Fence {
    me: NodeId,
    ttl: Duration,
    /// Expiry of the lease last committed to this node (ms since the Unix epoch); 0: none
    /// (never had one, lost, released, or kept past it without one).
    until_ms: u64,
    next_renew: Instant,
}

/// What to do with the answer to a takeover's lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// Granted and still due: become master now.
    Take,
    /// Granted, but a master was heard meanwhile (not due): give the lease back.
    GiveBack,
    /// Granted on a request that waited so long the lease is nearly over: ask again at
    /// once rather than take the VIPs and drop them again (`Some`: put the takeover off
    /// until then; `None`: not due anyway).
    AskAgain(Option<Instant>),
    /// Another node holds it: try again once it could have run out (`None`: not due).
    Refused {
        /// Its holder.
        holder: NodeId,
        /// When to try again.
        retry: Option<Instant>,
    },
    /// No quorum answered and `on_no_quorum = "vrrp"`: take over by VRRP alone (if due).
    TakeWithoutQuorum(bool),
    /// No quorum answered and `on_no_quorum = "hold"`: stay backup, try again then.
    Hold(Option<Instant>),
}

/// What to do with the answer to a master's renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Renewed: nothing to do.
    Kept,
    /// This node stepped down while the renewal was in flight and was granted it
    /// anyway: give it back.
    GiveBack,
    /// Not master any more and nothing to give back.
    Ignore,
    /// Committed to another node: step down.
    Lost {
        /// The node that holds it now.
        holder: NodeId,
    },
    /// A higher-priority node wants it: hand the VIPs over.
    Yield {
        /// The node that wants it.
        to: NodeId,
    },
    /// No quorum answered; the lease (if any) still runs, or the others cannot form a
    /// quorum: keep the VIPs for now.
    NoQuorum,
    /// No quorum answered, this node holds its VIPs without a lease, and the others may
    /// form a quorum again: step down before they grant the lease elsewhere.
    StepDown,
}

/// What to do when the lease runs out without a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// The others may still form a quorum and grant the lease to another node.
    StepDown,
    /// They are known unable to (down): keep the VIPs without a lease.
    KeepWithoutLease,
}

impl Fence {
    /// A fence for node `me`, leases of `ttl`, renewed every third of it.
    pub fn new(me: NodeId, ttl: Duration, now: Instant) -> Fence {
        Fence {
            me,
            ttl,
            until_ms: 0,
            next_renew: now,
        }
    }

    /// The lease time asked for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether a lease committed to this node still runs (0: holding without one).
    pub fn holds_lease(&self) -> bool {
        self.until_ms > 0
    }

    /// When a master renews next (`None`: not a master, or a renewal is in flight).
    pub fn renew_at(&self, master: bool, renewing: bool) -> Option<Instant> {
        (master && !renewing).then_some(self.next_renew)
    }

    /// When a master must give up its VIPs unless renewed: [`MARGIN`] before its lease
    /// runs out by this node's clock (`None`: not a master, or no lease to run out).
    pub fn expires_at(&self, master: bool, now: Instant, now_ms: u64) -> Option<Instant> {
        (master && self.until_ms > 0).then(|| {
            let left = Duration::from_millis(self.until_ms.saturating_sub(now_ms));
            now + left.saturating_sub(MARGIN)
        })
    }

    /// Judges the answer to a takeover's request. `due`: the node is still a running
    /// backup whose Master_Down has passed; `master_down`: its Master_Down interval.
    pub fn on_acquired(
        &mut self,
        answer: Result<Lease, LeaseError>,
        due: bool,
        on_no_quorum: NoQuorum,
        master_down: Duration,
        now: Instant,
        now_ms: u64,
    ) -> Acquired {
        let retry = |at: Instant| due.then_some(at);
        match answer {
            Ok(lease)
                if lease.held_by(self.me, now_ms)
                    && !lease.held_by(self.me, now_ms + MARGIN.as_millis() as u64 * 2) =>
            {
                Acquired::AskAgain(retry(now + Duration::from_millis(10)))
            }
            Ok(lease) if lease.held_by(self.me, now_ms) => {
                if due {
                    self.until_ms = lease.until_ms;
                    self.next_renew = now + self.ttl / 3;
                    Acquired::Take
                } else {
                    Acquired::GiveBack
                }
            }
            Ok(lease) => {
                let left = Duration::from_millis(lease.until_ms.saturating_sub(now_ms));
                Acquired::Refused {
                    holder: lease.holder,
                    retry: retry(now + left.clamp(Duration::from_millis(10), master_down)),
                }
            }
            Err(LeaseError::NoQuorum) => match on_no_quorum {
                NoQuorum::Vrrp => {
                    if due {
                        self.next_renew = now + self.ttl / 3;
                    }
                    Acquired::TakeWithoutQuorum(due)
                }
                NoQuorum::Hold => Acquired::Hold(retry(now + master_down)),
            },
        }
    }

    /// Judges the answer to a renewal. `master`: still master; `others_may_grant`: asked
    /// only when it matters (see [`crate::lease::LeaseClient::others_may_grant`]).
    pub fn on_renewed(
        &mut self,
        answer: Result<Lease, LeaseError>,
        master: bool,
        now: Instant,
        now_ms: u64,
        others_may_grant: impl FnOnce() -> bool,
    ) -> Renewed {
        self.next_renew = now + self.ttl / 3;
        match answer {
            Ok(lease) if !master => {
                if lease.held_by(self.me, now_ms) {
                    Renewed::GiveBack
                } else {
                    Renewed::Ignore
                }
            }
            _ if !master => Renewed::Ignore,
            Ok(lease) if !lease.held_by(self.me, now_ms) => {
                self.until_ms = 0;
                Renewed::Lost { holder: lease.holder }
            }
            Ok(Lease {
                wanted_by: Some(to), ..
            }) if to != self.me => Renewed::Yield { to },
            Ok(lease) => {
                self.until_ms = lease.until_ms;
                Renewed::Kept
            }
            Err(_) if self.until_ms == 0 && others_may_grant() => Renewed::StepDown,
            Err(_) => Renewed::NoQuorum,
        }
    }

    /// Judges the lease's expiry without a renewal; afterwards the node holds no lease.
    pub fn on_expiry(&mut self, others_may_grant: bool) -> Expired {
        self.until_ms = 0;
        if others_may_grant {
            Expired::StepDown
        } else {
            Expired::KeepWithoutLease
        }
    }

    /// The VIPs were released (FAULT): whatever lease there was is not this node's to
    /// keep.
    pub fn forget(&mut self) {
        self.until_ms = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: NodeId = 1;
    const TTL: Duration = Duration::from_millis(600);
    const T0: u64 = 1_000_000;

    fn lease(holder: NodeId, until_ms: u64, wanted_by: Option<NodeId>) -> Result<Lease, LeaseError> {
        Ok(Lease {
            vrid: 51,
            holder,
            priority: 100,
            until_ms,
            clock_ms: T0,
            wanted_by,
        })
    }

    #[test]
    fn a_takeover_happens_only_on_a_fresh_grant_while_still_due() {
        let now = Instant::now();
        let md = Duration::from_millis(350);
        let mut f = Fence::new(ME, TTL, now);
        // Granted with plenty of time left: take over, renew in a third of the lease.
        let r = f.on_acquired(lease(ME, T0 + 600, None), true, NoQuorum::Hold, md, now, T0);
        assert_eq!(r, Acquired::Take);
        assert_eq!(f.renew_at(true, false), Some(now + TTL / 3));
        assert_eq!(
            f.expires_at(true, now, T0),
            Some(now + Duration::from_millis(600) - MARGIN)
        );
        // Granted but nearly over: ask again at once, do not take.
        let mut f = Fence::new(ME, TTL, now);
        let r = f.on_acquired(lease(ME, T0 + 40, None), true, NoQuorum::Hold, md, now, T0);
        assert_eq!(r, Acquired::AskAgain(Some(now + Duration::from_millis(10))));
        assert!(!f.holds_lease());
        // Granted after a master was heard: give it back.
        let r = f.on_acquired(lease(ME, T0 + 600, None), false, NoQuorum::Hold, md, now, T0);
        assert_eq!(r, Acquired::GiveBack);
        // Held by B for 200 ms more: retry then (clamped to Master_Down).
        let r = f.on_acquired(lease(2, T0 + 200, None), true, NoQuorum::Hold, md, now, T0);
        let retry = Some(now + Duration::from_millis(200));
        assert_eq!(r, Acquired::Refused { holder: 2, retry });
        let r = f.on_acquired(lease(2, T0 + 5_000, None), true, NoQuorum::Hold, md, now, T0);
        assert_eq!(
            r,
            Acquired::Refused {
                holder: 2,
                retry: Some(now + md)
            }
        );
        // No quorum: the policy decides.
        let r = f.on_acquired(Err(LeaseError::NoQuorum), true, NoQuorum::Hold, md, now, T0);
        assert_eq!(r, Acquired::Hold(Some(now + md)));
        let r = f.on_acquired(Err(LeaseError::NoQuorum), true, NoQuorum::Vrrp, md, now, T0);
        assert_eq!(r, Acquired::TakeWithoutQuorum(true));
    }

    #[test]
    fn a_master_keeps_its_vips_past_the_lease_only_while_the_others_cannot_grant_it() {
        let now = Instant::now();
        let md = Duration::from_millis(350);
        let mut f = Fence::new(ME, TTL, now);
        f.on_acquired(lease(ME, T0 + 600, None), true, NoQuorum::Hold, md, now, T0);
        // Renewed.
        assert_eq!(
            f.on_renewed(lease(ME, T0 + 800, None), true, now, T0 + 200, || unreachable!()),
            Renewed::Kept
        );
        // A failed renewal while the lease still runs changes nothing.
        assert_eq!(
            f.on_renewed(Err(LeaseError::NoQuorum), true, now, T0 + 400, || true),
            Renewed::NoQuorum
        );
        assert!(f.holds_lease());
        // Expiry: step down if the others may grant it, else keep without a lease.
        assert_eq!(f.on_expiry(false), Expired::KeepWithoutLease);
        assert!(!f.holds_lease());
        assert_eq!(f.expires_at(true, now, T0 + 900), None);
        // Holding without a lease: a failed renewal steps down once the others may
        // form a quorum again, and not before.
        assert_eq!(
            f.on_renewed(Err(LeaseError::NoQuorum), true, now, T0 + 1_000, || false),
            Renewed::NoQuorum
        );
        assert_eq!(
            f.on_renewed(Err(LeaseError::NoQuorum), true, now, T0 + 1_200, || true),
            Renewed::StepDown
        );
        // A renewal that says B holds it: lost.
        assert_eq!(
            f.on_renewed(lease(2, T0 + 1_800, None), true, now, T0 + 1_300, || true),
            Renewed::Lost { holder: 2 }
        );
        // Wanted by a higher-priority node: yield.
        let mut f = Fence::new(ME, TTL, now);
        f.on_acquired(lease(ME, T0 + 600, None), true, NoQuorum::Hold, md, now, T0);
        assert_eq!(
            f.on_renewed(lease(ME, T0 + 800, Some(3)), true, now, T0 + 200, || true),
            Renewed::Yield { to: 3 }
        );
        // Stepped down meanwhile: give a granted renewal back, ignore the rest.
        assert_eq!(
            f.on_renewed(lease(ME, T0 + 800, None), false, now, T0 + 200, || true),
            Renewed::GiveBack
        );
        assert_eq!(
            f.on_renewed(Err(LeaseError::NoQuorum), false, now, T0 + 200, || true),
            Renewed::Ignore
        );
        assert_eq!(f.on_expiry(true), Expired::StepDown);
    }
}
