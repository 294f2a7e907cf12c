//! least_request: power of two random choices on active requests divided by weight
//! (Envoy's default). Cheaper than a full scan and avoids the herd effect of
//! every worker choosing the same least-loaded endpoint.

use super::{Candidate, Choice};

/// Two distinct random candidates; the one with fewer weighted active requests wins.
pub(crate) fn pick<C: Candidate>(c: &Choice<'_, C>) -> usize {
    let (a, b) = two_distinct(c);
    let load = |i: usize| (c.eps[i].active() as f64 + 1.0) / c.eps[i].weight(c.now_ns) as f64;
    if load(b) < load(a) {
        b
    } else {
        a
    }
}

/// Two different candidates (endpoint indices), uniformly; needs ≥ 2 candidates.
pub(crate) fn two_distinct<C>(c: &Choice<'_, C>) -> (usize, usize) {
    let n = c.idx.len();
    let a = fastrand::usize(0..n);
    let mut b = fastrand::usize(0..n - 1);
    if b >= a {
        b += 1;
    }
    (c.idx[a], c.idx[b])
}

#[cfg(test)]
mod tests {
    use super::super::testing::{all, weights};

    #[test]
    fn avoids_the_busy_endpoint() {
        let mut eps = weights(&[1, 1, 1]);
        eps[1].active = 50;
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[all(&eps, super::pick)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[0] > 4000 && counts[2] > 4000);
    }
}
