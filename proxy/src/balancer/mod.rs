//! Endpoint selection. Each balancer is a small, separately tested piece:
//! stateless or per-worker state ([`WorkerState`]) for the round-robin family, shared
//! atomics for load-aware ones (active requests, peak EWMA), and immutable tables built
//! once per runtime for consistent hashing.

pub(crate) mod least_request;
pub(crate) mod maglev;
pub(crate) mod p2c_ewma;
pub(crate) mod random;
pub(crate) mod ring_hash;
pub(crate) mod round_robin;
pub(crate) mod weighted;

use crate::config::BalancerKind;

pub(crate) use p2c_ewma::PeakEwma;

/// What a balancer sees of one endpoint when picking.
pub(crate) trait Candidate {
    /// Effective weight at `now_ns` in milli-units (configured weight × 1000, reduced
    /// during slow start; always ≥ 1).
    fn weight(&self, now_ns: u64) -> u64;
    /// Requests in flight to it, across all workers.
    fn active(&self) -> u64;
    /// Peak-EWMA latency estimate in nanoseconds.
    fn ewma_ns(&self) -> f64;
    /// Whether it may take new requests (not unhealthy, ejected or draining).
    fn eligible(&self, now_ns: u64) -> bool;
    /// Whether it is being drained (never picked, not even in panic mode).
    fn draining(&self) -> bool;
}

/// The endpoints a pick chooses among: indices into the cluster's endpoint list.
pub(crate) struct Choice<'a, C> {
    /// All endpoints of the cluster.
    pub eps: &'a [C],
    /// Indices of the candidates (non-empty).
    pub idx: &'a [usize],
    /// Pick time.
    pub now_ns: u64,
}

/// Fills `out` with the indices of the endpoints a request may go to, and returns
/// whether the cluster is in panic mode. Ejected, unhealthy and draining endpoints are
/// left out, as are the ones in `tried` (a bit per index, for retries) unless nothing
/// else is left. When fewer than `panic_threshold` of the endpoints are eligible, every
/// endpoint that is not draining is used instead, so a partial outage does not
/// overload the survivors.
pub(crate) fn candidates<C: Candidate>(
    eps: &[C],
    now_ns: u64,
    panic_threshold: f64,
    tried: u64,
    out: &mut Vec<usize>,
) -> bool {
    out.clear();
    let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
    out.extend((0..eps.len()).filter(|&i| eps[i].eligible(now_ns) && untried(i)));
    if out.is_empty() && tried != 0 {
        out.extend((0..eps.len()).filter(|&i| eps[i].eligible(now_ns)));
    }
    let eligible = out.len();
    if (eligible as f64) < panic_threshold * eps.len() as f64 || eligible == 0 {
        out.clear();
        out.extend((0..eps.len()).filter(|&i| !eps[i].draining() && untried(i)));
        if out.is_empty() {
            out.extend((0..eps.len()).filter(|&i| !eps[i].draining()));
        }
        return true;
    }
    false
}

/// Immutable lookup structure shared by all workers, built when the runtime compiles.
#[derive(Debug)]
pub enum Table {
    /// No table needed.
    None,
    /// ring_hash.
    Ring(ring_hash::Ring),
    /// maglev.
    Maglev(maglev::Maglev),
}

impl Table {
    /// Builds the table a balancer needs over endpoints `(key, weight)`.
    pub fn build(kind: BalancerKind, endpoints: &[(String, u32)], vnodes: u32, maglev_size: u32) -> Table {
        match kind {
            BalancerKind::RingHash => Table::Ring(ring_hash::Ring::new(endpoints, vnodes)),
            BalancerKind::Maglev => Table::Maglev(maglev::Maglev::new(endpoints, maglev_size as usize)),
            _ => Table::None,
        }
    }
}

/// Per-worker, per-cluster balancer state (never shared, never locked).
#[derive(Debug, Default, Clone)]
pub(crate) struct WorkerState {
    /// Round-robin cursor.
    pub cursor: usize,
    /// Smooth weighted round-robin current weights.
    pub current: Vec<i64>,
}

/// Picks an endpoint (an index into `c.eps`) among `c.idx` with `kind`.
/// `hash` is the request's key for hashing balancers (None → random fallback).
pub(crate) fn pick<C: Candidate>(
    kind: BalancerKind,
    table: &Table,
    state: &mut WorkerState,
    c: &Choice<'_, C>,
    hash: Option<u64>,
) -> usize {
    debug_assert!(!c.idx.is_empty());
    if c.idx.len() == 1 {
        return c.idx[0];
    }
    match kind {
        BalancerKind::RoundRobin => round_robin::pick(state, c),
        BalancerKind::Weighted => weighted::pick(state, c),
        BalancerKind::LeastRequest => least_request::pick(c),
        BalancerKind::P2cEwma => p2c_ewma::pick(c),
        BalancerKind::Random => random::pick(c),
        BalancerKind::RingHash | BalancerKind::Maglev => {
            let Some(h) = hash else { return random::pick(c) };
            let allowed = |i: usize| c.idx.contains(&i);
            let found = match table {
                Table::Ring(r) => r.lookup_where(h, allowed),
                Table::Maglev(m) => m.lookup_where(h, allowed),
                Table::None => None,
            };
            found.unwrap_or_else(|| random::pick(c))
        }
    }
}

/// 64-bit hash used for keys and table construction: FNV-1a followed by a
/// murmur3-style finaliser so nearby keys spread over the whole range.
pub(crate) fn hash_key(bytes: &[u8]) -> u64 {
    mix64(crate::config::fnv1a(bytes))
}

/// murmur3 fmix64.
pub(crate) fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn ineligible_endpoints_are_left_out_until_panic() {
        let mut eps = weights(&[1, 1, 1, 1]);
        eps[1].eligible = false;
        let mut out = Vec::new();
        assert!(!candidates(&eps, 0, 0.5, 0, &mut out));
        assert_eq!(out, vec![0, 2, 3]);
        eps[2].eligible = false;
        eps[3].eligible = false;
        // 1 of 4 eligible < 50%: panic, spread over all.
        assert!(candidates(&eps, 0, 0.5, 0, &mut out));
        assert_eq!(out, vec![0, 1, 2, 3]);
    }

    #[test]
    fn retries_avoid_tried_endpoints_while_others_remain() {
        let eps = weights(&[1, 1, 1]);
        let mut out = Vec::new();
        candidates(&eps, 0, 0.0, 0b001, &mut out);
        assert_eq!(out, vec![1, 2]);
        candidates(&eps, 0, 0.0, 0b111, &mut out);
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn hashing_skips_ineligible_endpoints_consistently() {
        let keys: Vec<(String, u32)> = (0..4).map(|i| (format!("10.9.0.{i}:80"), 1)).collect();
        for kind in [BalancerKind::RingHash, BalancerKind::Maglev] {
            let table = Table::build(kind, &keys, 160, 65_537);
            let eps = weights(&[1, 1, 1, 1]);
            let idx = [0usize, 2, 3];
            let c = Choice {
                eps: &eps,
                idx: &idx,
                now_ns: 0,
            };
            let mut s = WorkerState::default();
            for k in 0..500 {
                let h = hash_key(format!("k{k}").as_bytes());
                let a = pick(kind, &table, &mut s, &c, Some(h));
                assert_ne!(a, 1);
                assert_eq!(a, pick(kind, &table, &mut s, &c, Some(h)));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Candidate;

    /// A fixed candidate for property tests.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Fixed {
        pub weight: u32,
        pub active: u64,
        pub ewma_ns: f64,
        pub eligible: bool,
    }

    impl Candidate for Fixed {
        fn weight(&self, _now: u64) -> u64 {
            u64::from(self.weight) * 1000
        }
        fn active(&self) -> u64 {
            self.active
        }
        fn ewma_ns(&self) -> f64 {
            self.ewma_ns
        }
        fn eligible(&self, _now: u64) -> bool {
            self.eligible
        }
        fn draining(&self) -> bool {
            false
        }
    }

    /// Runs `f` with a choice over all of `eps`.
    pub(crate) fn all<C: Candidate, R>(eps: &[C], f: impl FnOnce(&super::Choice<'_, C>) -> R) -> R {
        let idx: Vec<usize> = (0..eps.len()).collect();
        f(&super::Choice {
            eps,
            idx: &idx,
            now_ns: 0,
        })
    }

    pub(crate) fn weights(ws: &[u32]) -> Vec<Fixed> {
        ws.iter()
            .map(|&w| Fixed {
                weight: w,
                active: 0,
                ewma_ns: 1e6,
                eligible: true,
            })
            .collect()
    }
}
