//! Endpoint selection. Each balancer is a small, separately tested piece:
//! stateless or per-worker state ([`WorkerState`]) for the round-robin family, shared
//! atomics for load-aware ones (active requests, peak EWMA), and immutable tables built
//! once per runtime for consistent hashing.

pub mod least_request;
pub mod maglev;
pub mod p2c_ewma;
pub mod random;
pub mod ring_hash;
pub mod round_robin;
pub mod weighted;

use crate::config::BalancerKind;

pub use p2c_ewma::PeakEwma;

/// What a balancer sees of one endpoint when picking.
pub trait Candidate {
    /// Configured weight (> 0).
    fn weight(&self) -> u32;
    /// Requests in flight to it, across all workers.
    fn active(&self) -> u64;
    /// Peak-EWMA latency estimate in nanoseconds.
    fn ewma_ns(&self) -> f64;
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
pub struct WorkerState {
    /// Round-robin cursor.
    pub cursor: usize,
    /// Smooth weighted round-robin current weights.
    pub current: Vec<i64>,
}

/// Picks an endpoint index out of `eps` (non-empty) with `kind`.
/// `hash` is the request's hash key for hashing balancers (None → random fallback).
pub fn pick<C: Candidate>(
    kind: BalancerKind,
    table: &Table,
    state: &mut WorkerState,
    eps: &[C],
    hash: Option<u64>,
) -> usize {
    debug_assert!(!eps.is_empty());
    if eps.len() == 1 {
        return 0;
    }
    match kind {
        BalancerKind::RoundRobin => round_robin::pick(state, eps.len()),
        BalancerKind::Weighted => weighted::pick(state, eps),
        BalancerKind::LeastRequest => least_request::pick(eps),
        BalancerKind::P2cEwma => p2c_ewma::pick(eps),
        BalancerKind::Random => random::pick(eps),
        BalancerKind::RingHash | BalancerKind::Maglev => match (hash, table) {
            (Some(h), Table::Ring(r)) => r.lookup(h),
            (Some(h), Table::Maglev(m)) => m.lookup(h),
            _ => random::pick(eps),
        },
    }
}

/// 64-bit hash used for keys and table construction: FNV-1a followed by a
/// murmur3-style finaliser so nearby keys spread over the whole range.
pub fn hash_key(bytes: &[u8]) -> u64 {
    mix64(crate::config::fnv1a(bytes))
}

/// murmur3 fmix64.
pub fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
pub(crate) mod testing {
    use super::Candidate;

    /// A fixed candidate for property tests.
    #[derive(Debug, Clone, Copy)]
    pub struct Fixed {
        pub weight: u32,
        pub active: u64,
        pub ewma_ns: f64,
    }

    impl Candidate for Fixed {
        fn weight(&self) -> u32 {
            self.weight
        }
        fn active(&self) -> u64 {
            self.active
        }
        fn ewma_ns(&self) -> f64 {
            self.ewma_ns
        }
    }

    pub fn weights(ws: &[u32]) -> Vec<Fixed> {
        ws.iter()
            .map(|&w| Fixed {
                weight: w,
                active: 0,
                ewma_ns: 1e6,
            })
            .collect()
    }
}
