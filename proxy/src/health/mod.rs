//! Endpoint health: the state every balancer consults, the verdicts that change it,
//! and the probes that produce verdicts (run by the health thread, `health_thread.rs`).
//!
//! # Endpoint lifecycle
//!
//! ```text
//!            active check passes `rise` times
//!   unknown ───────────────────────────────▶ healthy ◀──────┐
//!      │                                       │            │ passes `rise` times
//!      │ fails `fall` times                    │ fails `fall` times
//!      ▼                                       ▼            │
//!  unhealthy ◀───────────────────────────── unhealthy ──────┘
//!
//!  any state ── consecutive 5xx / gateway errors / success-rate outlier ──▶ ejected
//!  ejected ── ejection time elapsed, or an active check passes ──▶ previous state
//!  any state ── ctl endpoint drain / removed by reload ──▶ draining ──▶ drained (0 active)
//! ```
//!
//! `unknown` endpoints take traffic (a fresh node must serve before its first probe).
//! Recovered or new endpoints ramp their weight over the cluster's `slow_start`.
//! Every transition goes through [`verdict::apply`], the single place later work
//! publishes to the pair.

pub(crate) mod probe;
pub(crate) mod verdict;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use tandem_abi::EndpointState;

use crate::config::SlowStart;

/// Active-check state: not yet probed.
pub(crate) const UNKNOWN: u8 = 0;
/// Active-check state: passing.
pub(crate) const HEALTHY: u8 = 1;
/// Active-check state: failing.
pub(crate) const UNHEALTHY: u8 = 2;

/// The health of one endpoint, shared by all workers and kept across reloads.
#[derive(Debug)]
pub struct EndpointHealth {
    /// Active-check state (`UNKNOWN`, `HEALTHY`, `UNHEALTHY`).
    pub active: AtomicU8,
    /// Who set `active` last: a [`verdict::Source`] as `u8` (shown as the health source).
    pub active_from: AtomicU8,
    /// The current (or last) ejection was adopted from a peer, not judged here.
    pub ejected_by_peer: AtomicBool,
    /// Ejected until this time (ns since process start); 0 = not ejected.
    pub ejected_until_ns: AtomicU64,
    /// Ejections so far (multiplies the next ejection time).
    pub times_ejected: AtomicU32,
    /// Consecutive 5xx responses seen on real traffic.
    pub consecutive_5xx: AtomicU32,
    /// Consecutive gateway errors seen on real traffic.
    pub consecutive_gateway: AtomicU32,
    /// When it last became able to take traffic (slow start counts from here).
    pub ready_since_ns: AtomicU64,
    /// Set while it is drained: no new requests.
    pub draining: AtomicBool,
    /// When the drain began (ns since start; 0 = never).
    pub drain_started_ns: AtomicU64,
    /// When the drain found no request in flight (0 = not yet).
    pub drained_ns: AtomicU64,
    /// Ejections by reason: consecutive 5xx.
    pub ejections_5xx: AtomicU64,
    /// Ejections by reason: consecutive gateway errors.
    pub ejections_gateway: AtomicU64,
    /// Ejections by reason: success-rate outlier.
    pub ejections_success_rate: AtomicU64,
    /// Ejections adopted from a peer of the pair.
    pub ejections_peer: AtomicU64,
    /// Ejections refused by max_ejection_percent.
    pub ejections_refused: AtomicU64,
    /// Active probes passed.
    pub checks_passed: AtomicU64,
    /// Active probes failed.
    pub checks_failed: AtomicU64,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        Self {
            active: AtomicU8::new(UNKNOWN),
            active_from: AtomicU8::new(verdict::Source::ActiveCheck as u8),
            ejected_by_peer: AtomicBool::new(false),
            ejected_until_ns: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_gateway: AtomicU32::new(0),
            ready_since_ns: AtomicU64::new(crate::clock::now_ns()),
            draining: AtomicBool::new(false),
            drain_started_ns: AtomicU64::new(0),
            drained_ns: AtomicU64::new(0),
            ejections_5xx: AtomicU64::new(0),
            ejections_gateway: AtomicU64::new(0),
            ejections_success_rate: AtomicU64::new(0),
            ejections_peer: AtomicU64::new(0),
            ejections_refused: AtomicU64::new(0),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
        }
    }
}

impl EndpointHealth {
    /// Whether the endpoint is currently ejected by outlier detection.
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        self.ejected_until_ns.load(Relaxed) > now_ns
    }

    /// Whether it may take new requests.
    pub fn eligible(&self, now_ns: u64) -> bool {
        self.active.load(Relaxed) != UNHEALTHY && !self.is_ejected(now_ns) && !self.draining.load(Relaxed)
    }

    /// The fraction (min..=1) of its weight it gets now under slow start.
    pub fn slow_start_factor(&self, now_ns: u64, ss: &SlowStart) -> f64 {
        let since = self
            .ready_since_ns
            .load(Relaxed)
            .max(self.ejected_until_ns.load(Relaxed));
        let elapsed = now_ns.saturating_sub(since) as f64;
        let window = ss.window.as_nanos() as f64;
        if elapsed >= window {
            return 1.0;
        }
        (elapsed / window).powf(1.0 / ss.aggression).max(ss.min_weight)
    }

    /// Who decided the current state, for status pages: `passive` (this node's outlier
    /// detection), `peer` (adopted from the pair), `active` (health checks), `filter`,
    /// `operator`, or `-` while nothing has judged it.
    pub fn source_name(&self, now_ns: u64) -> &'static str {
        if self.is_ejected(now_ns) {
            return if self.ejected_by_peer.load(Relaxed) {
                "peer"
            } else {
                "passive"
            };
        }
        if self.active.load(Relaxed) == UNKNOWN {
            return "-";
        }
        match self.active_from.load(Relaxed) {
            x if x == verdict::Source::Peer as u8 => "peer",
            x if x == verdict::Source::Filter as u8 => "filter",
            x if x == verdict::Source::Operator as u8 => "operator",
            x if x == verdict::Source::Passive as u8 || x == verdict::Source::Sweep as u8 => "passive",
            _ => "active",
        }
    }

    /// The endpoint's state now, as status pages, metrics and filters name it.
    pub fn state(&self, now_ns: u64) -> EndpointState {
        if self.draining.load(Relaxed) {
            return if self.drained_ns.load(Relaxed) > 0 {
                EndpointState::Drained
            } else {
                EndpointState::Draining
            };
        }
        if self.is_ejected(now_ns) {
            return EndpointState::Ejected;
        }
        match self.active.load(Relaxed) {
            HEALTHY => EndpointState::Healthy,
            UNHEALTHY => EndpointState::Unhealthy,
            _ => EndpointState::Unknown,
        }
    }

    /// The name of [`Self::state`] (one of [`EndpointState::ALL`]'s names).
    pub fn state_name(&self, now_ns: u64) -> &'static str {
        self.state(now_ns).name()
    }
}
