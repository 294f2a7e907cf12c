//! When a node announces an anycast group: a pure machine over time, health and
//! maintenance, so the hold-down rules are tested without a router.
//!
//! ```text
//! Withdrawn ──healthy for hold_down, not in maintenance──▶ Announced
//! Announced ──unhealthy for withdraw_after, or maintenance──▶ Withdrawn
//! ```
//!
//! The hold-down starts again at every unhealthy moment, so a backend whose health
//! flaps faster than `hold_down` costs one withdrawal, not a route flap per flap.
//! Maintenance is the operator's intent, not a symptom: turning it off announces at
//! once if the node has been healthy for `hold_down` meanwhile.

use std::time::{Duration, Instant};

/// One group's announcement state.
#[derive(Debug, Clone)]
pub struct Gate {
    hold_down: Duration,
    withdraw_after: Duration,
    announced: bool,
    healthy_since: Option<Instant>,
    unhealthy_since: Option<Instant>,
}

impl Gate {
    /// A withdrawn group (a node starts unannounced and waits out `hold_down`).
    pub fn new(hold_down: Duration, withdraw_after: Duration) -> Gate {
        Gate {
            hold_down,
            withdraw_after,
            announced: false,
            healthy_since: None,
            unhealthy_since: None,
        }
    }

    /// Whether the group is announced.
    pub fn announced(&self) -> bool {
        self.announced
    }

    /// Whether the node is healthy but still waiting out the hold-down.
    pub fn holding_down(&self) -> bool {
        !self.announced && self.healthy_since.is_some()
    }

    /// Feeds what holds at `now`; whether the group is announced afterwards.
    pub fn step(&mut self, now: Instant, healthy: bool, maintenance: bool) -> bool {
        if healthy {
            self.unhealthy_since = None;
            self.healthy_since.get_or_insert(now);
        } else {
            self.healthy_since = None;
            self.unhealthy_since.get_or_insert(now);
        }
        let lasted = |since: Option<Instant>, d: Duration| since.is_some_and(|s| now.duration_since(s) >= d);
        self.announced = if maintenance {
            false
        } else if self.announced {
            !lasted(self.unhealthy_since, self.withdraw_after)
        } else {
            lasted(self.healthy_since, self.hold_down)
        };
        self.announced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn announces_after_hold_down_and_withdraws_at_once() {
        let t0 = Instant::now();
        let mut g = Gate::new(1000 * MS, Duration::ZERO);
        assert!(!g.step(t0, true, false));
        assert!(g.holding_down());
        assert!(!g.step(t0 + 999 * MS, true, false));
        assert!(g.step(t0 + 1000 * MS, true, false));
        assert!(!g.step(t0 + 1100 * MS, false, false), "unhealthy withdraws at once");
        assert!(!g.holding_down());
    }

    #[test]
    fn flapping_health_costs_one_withdrawal() {
        let t0 = Instant::now();
        let mut g = Gate::new(2000 * MS, Duration::ZERO);
        g.step(t0, true, false);
        assert!(g.step(t0 + 2000 * MS, true, false));
        let mut changes = 0;
        let mut was = true;
        // 10 s of health flapping every 300 ms, seen every 100 ms.
        for i in 1..=100u32 {
            let healthy = (i / 3) % 2 == 1;
            let now = g.step(t0 + 2000 * MS + i * 100 * MS, healthy, false);
            changes += u32::from(now != was);
            was = now;
        }
        assert_eq!(changes, 1, "one withdrawal, no re-announcement while it flaps");
        // Steady again: announced after the hold-down.
        let end = t0 + 12_000 * MS;
        assert!(!g.step(end, false, false));
        assert!(!g.step(end + 100 * MS, true, false));
        assert!(!g.step(end + 2099 * MS, true, false));
        assert!(g.step(end + 2100 * MS, true, false));
    }

    #[test]
    fn withdraw_after_rides_out_short_failures() {
        let t0 = Instant::now();
        let mut g = Gate::new(Duration::ZERO, 500 * MS);
        assert!(g.step(t0, true, false));
        assert!(g.step(t0 + 100 * MS, false, false));
        assert!(g.step(t0 + 400 * MS, true, false), "a 300 ms failure is ridden out");
        assert!(g.step(t0 + 500 * MS, false, false));
        assert!(!g.step(t0 + 1000 * MS, false, false), "a 500 ms failure withdraws");
    }

    #[test]
    fn maintenance_withdraws_and_its_end_announces_a_healthy_node_at_once() {
        let t0 = Instant::now();
        let mut g = Gate::new(5000 * MS, Duration::from_secs(60));
        g.step(t0, true, false);
        assert!(g.step(t0 + 5000 * MS, true, false));
        assert!(
            !g.step(t0 + 6000 * MS, true, true),
            "maintenance ignores withdraw_after"
        );
        assert!(!g.step(t0 + 7000 * MS, true, true));
        assert!(
            g.step(t0 + 7100 * MS, true, false),
            "healthy all along: no new hold-down"
        );
    }
}
