//! random: weighted uniform random pick.

use super::{Candidate, Choice};

/// Picks with probability proportional to effective weight.
pub(crate) fn pick<C: Candidate>(c: &Choice<'_, C>) -> usize {
    let total: u64 = c.idx.iter().map(|&i| c.eps[i].weight(c.now_ns)).sum();
    let mut r = fastrand::u64(0..total.max(1));
    for &i in c.idx {
        let w = c.eps[i].weight(c.now_ns);
        if r < w {
            return i;
        }
        r -= w;
    }
    c.idx[c.idx.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::super::testing::{all, weights};

    #[test]
    fn weighted_random_within_two_percent() {
        let eps = weights(&[2, 1, 1]);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[all(&eps, super::pick)] += 1;
        }
        let share = f64::from(counts[0]) / 10_000.0;
        assert!((share - 0.5).abs() < 0.02, "{share}");
    }
}
