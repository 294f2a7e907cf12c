//! ring_hash: a consistent-hash ring with `virtual_nodes × weight` points per endpoint
//! (ketama style). Removing one of N endpoints moves only the keys it owned (≈ 1/N).

use super::{hash_key, mix64};

/// The ring: sorted (point, endpoint index).
#[derive(Debug)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds the ring over `(endpoint key, weight)`; keys must be stable across reloads
    /// (the endpoint address) so the same endpoint lands on the same points.
    pub fn new(endpoints: &[(String, u32)], vnodes: u32) -> Ring {
        let mut points = Vec::new();
        for (idx, (key, weight)) in endpoints.iter().enumerate() {
            let base = hash_key(key.as_bytes());
            for v in 0..u64::from(vnodes) * u64::from(*weight) {
                points.push((mix64(base ^ mix64(v + 1)), idx as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint owning `hash`: the first point at or after it, wrapping.
    pub fn lookup(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|(p, _)| *p < hash);
        self.points[i % self.points.len()].1 as usize
    }

    /// Like `lookup`, walking on along the ring past endpoints `allowed` rejects, so
    /// keys of an unavailable endpoint spread over its neighbours and come back when it
    /// does.
    pub fn lookup_where(&self, hash: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|&i| allowed(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    #[test]
    fn removing_one_of_n_moves_at_most_one_nth_plus_five_percent() {
        let n = 5;
        let full = eps(n);
        let before = Ring::new(&full, 160);
        let removed = 2;
        let rest: Vec<_> = full
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, e)| e.clone())
            .collect();
        let after = Ring::new(&rest, 160);
        let mut moved = 0;
        let keys = 10_000;
        for k in 0..keys {
            let h = hash_key(format!("user-{k}").as_bytes());
            let a = &full[before.lookup(h)].0;
            let b = &rest[after.lookup(h)].0;
            if a != b {
                moved += 1;
            }
        }
        let frac = f64::from(moved) / f64::from(keys);
        assert!(frac <= 1.0 / n as f64 + 0.05, "moved {frac}");
    }

    #[test]
    fn spreads_keys_evenly_enough() {
        let ring = Ring::new(&eps(4), 160);
        let mut counts = [0u32; 4];
        for k in 0..10_000 {
            counts[ring.lookup(hash_key(format!("k{k}").as_bytes()))] += 1;
        }
        for c in counts {
            assert!((1800..3200).contains(&c), "{counts:?}");
        }
    }
}
