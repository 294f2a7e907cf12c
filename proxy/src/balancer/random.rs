//! random: weighted uniform random pick.

use super::Candidate;

/// Picks with probability proportional to weight.
pub fn pick<C: Candidate>(eps: &[C]) -> usize {
    let total: u64 = eps.iter().map(|e| u64::from(e.weight())).sum();
    let mut r = fastrand::u64(0..total.max(1));
    for (i, e) in eps.iter().enumerate() {
        let w = u64::from(e.weight());
        if r < w {
            return i;
        }
        r -= w;
    }
    eps.len() - 1
}

#[cfg(test)]
mod tests {
    use super::super::testing::weights;

    #[test]
    fn weighted_random_within_two_percent() {
        let eps = weights(&[2, 1, 1]);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[super::pick(&eps)] += 1;
        }
        let share = f64::from(counts[0]) / 10_000.0;
        assert!((share - 0.5).abs() < 0.02, "{share}");
    }
}
