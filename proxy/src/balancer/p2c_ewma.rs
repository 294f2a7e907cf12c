//! p2c_ewma: power of two choices over peak-EWMA latency × (outstanding + 1), as in
//! Finagle and linkerd. The estimate jumps up at once on a slow response (peak) and
//! decays towards recent latency with time constant [`DECAY_NS`]; an idle endpoint's
//! estimate decays towards zero, so a recovered endpoint is re-probed by real traffic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::least_request::two_distinct;
use super::{Candidate, Choice};
use crate::clock::now_ns;

/// Decay time constant of the estimate (10 s, as Finagle's default).
pub(crate) const DECAY_NS: f64 = 10e9;

/// A lock-free peak-EWMA latency estimate shared by all workers. Concurrent updates may
/// occasionally overwrite one another; an estimate tolerates that.
#[derive(Debug, Default)]
pub struct PeakEwma {
    ewma_bits: AtomicU64,
    stamp_ns: AtomicU64,
}

impl PeakEwma {
    /// Records one observed latency, now.
    pub fn observe(&self, rtt_ns: f64) {
        self.observe_at(rtt_ns, now_ns());
    }

    /// Records one observed latency that ended at `now` (process-clock nanoseconds:
    /// saves a clock read on the request path, which already knows the time).
    pub fn observe_at(&self, rtt_ns: f64, now: u64) {
        let prev = f64::from_bits(self.ewma_bits.load(Relaxed));
        let next = if rtt_ns > prev {
            rtt_ns
        } else {
            let elapsed = now.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
            let w = (-elapsed / DECAY_NS).exp();
            prev * w + rtt_ns * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Relaxed);
        self.stamp_ns.store(now, Relaxed);
    }

    /// The current estimate, decayed for the time since the last observation.
    pub fn get(&self) -> f64 {
        let prev = f64::from_bits(self.ewma_bits.load(Relaxed));
        let elapsed = now_ns().saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        prev * (-elapsed / DECAY_NS).exp()
    }
}

/// Two distinct random candidates; lower latency × load (per weight) wins.
pub(crate) fn pick<C: Candidate>(c: &Choice<'_, C>) -> usize {
    let (a, b) = two_distinct(c);
    let cost = |i: usize| c.eps[i].ewma_ns() * (c.eps[i].active() as f64 + 1.0) / c.eps[i].weight(c.now_ns) as f64;
    if cost(b) < cost(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_taken_at_once_and_decays() {
        let e = PeakEwma::default();
        e.observe(1e6);
        e.observe(50e6);
        assert!(e.get() > 49e6);
        e.observe(1e6);
        // Immediately after, the peak dominates (little time has passed).
        assert!(e.get() > 40e6);
    }
}
