//! least_request: power of two random choices on active requests divided by weight
//! (Envoy's default). Cheaper than a full scan and avoids the herd effect of
//! every worker choosing the same least-loaded endpoint.

use super::Candidate;

/// Two distinct random candidates; the one with fewer weighted active requests wins.
pub fn pick<C: Candidate>(eps: &[C]) -> usize {
    let (a, b) = two_distinct(eps.len());
    let load = |i: usize| (eps[i].active() as f64 + 1.0) / f64::from(eps[i].weight());
    if load(b) < load(a) {
        b
    } else {
        a
    }
}

/// Two different indices in `0..n` (n ≥ 2), uniformly.
pub fn two_distinct(n: usize) -> (usize, usize) {
    let a = fastrand::usize(0..n);
    let mut b = fastrand::usize(0..n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::super::testing::Fixed;

    #[test]
    fn avoids_the_busy_endpoint() {
        let mut eps = vec![
            Fixed {
                weight: 1,
                active: 0,
                ewma_ns: 0.0
            };
            3
        ];
        eps[1].active = 50;
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[super::pick(&eps)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[0] > 4000 && counts[2] > 4000);
    }
}
