//! maglev: Google's Maglev consistent hashing. Each endpoint fills a prime-sized lookup
//! table following its own permutation (offset, skip), in turns weighted by weight; a
//! lookup is one index. Removing one endpoint disturbs little more than its own slots.

use super::{hash_key, mix64};

/// The lookup table.
#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    /// Builds a table of `size` (prime) slots over `(endpoint key, weight)`.
    pub fn new(endpoints: &[(String, u32)], size: usize) -> Maglev {
        let n = endpoints.len();
        let m = size as u64;
        let perms: Vec<(u64, u64)> = endpoints
            .iter()
            .map(|(k, _)| {
                let h = hash_key(k.as_bytes());
                let offset = h % m;
                let skip = mix64(h ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = endpoints.iter().map(|e| e.1).max().unwrap_or(1);
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; size];
        let mut filled = 0usize;
        // Weighted turns: in round r, endpoint i takes a slot if weight_i ≥ r (mod max).
        let mut round = 0u32;
        while filled < size {
            round = round % max_w + 1;
            for i in 0..n {
                if endpoints[i].1 < round {
                    continue;
                }
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Maglev { table }
    }

    /// The endpoint for `hash`.
    pub fn lookup(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }

    /// Like `lookup`, re-hashing (a bounded number of times) while `allowed` rejects
    /// the slot's endpoint, so an unavailable endpoint's keys spread deterministically.
    pub fn lookup_where(&self, hash: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        (0..32u64)
            .map(|k| {
                if k == 0 {
                    hash
                } else {
                    super::mix64(hash ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                }
            })
            .map(|h| self.lookup(h))
            .find(|&i| allowed(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.1.{i}:80"), 1)).collect()
    }

    #[test]
    fn removing_one_of_n_moves_at_most_one_nth_plus_five_percent() {
        for n in [3usize, 5, 8] {
            let full = eps(n);
            let before = Maglev::new(&full, 65_537);
            let rest: Vec<_> = full[1..].to_vec();
            let after = Maglev::new(&rest, 65_537);
            let keys = 10_000;
            let moved = (0..keys)
                .filter(|k| {
                    let h = hash_key(format!("session-{k}").as_bytes());
                    full[before.lookup(h)].0 != rest[after.lookup(h)].0
                })
                .count();
            let frac = moved as f64 / f64::from(keys);
            assert!(frac <= 1.0 / n as f64 + 0.05, "n={n} moved {frac}");
        }
    }

    #[test]
    fn weights_shape_the_table() {
        let mut e = eps(2);
        e[0].1 = 3;
        let m = Maglev::new(&e, 10_007);
        let zero = m.table.iter().filter(|&&i| i == 0).count() as f64 / 10_007.0;
        assert!((zero - 0.75).abs() < 0.02, "{zero}");
    }
}
