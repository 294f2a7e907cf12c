//! weighted: smooth weighted round robin (nginx's algorithm). Every pick adds each
//! candidate's weight to its current value, takes the largest, and subtracts the total
//! from it, which interleaves picks instead of bursting the heaviest endpoint.

use super::{Candidate, Choice, WorkerState};

/// Picks by smooth WRR over the worker's current weights.
pub(crate) fn pick<C: Candidate>(state: &mut WorkerState, c: &Choice<'_, C>) -> usize {
    if state.current.len() != c.eps.len() {
        state.current = vec![0; c.eps.len()];
    }
    let mut total = 0i64;
    let mut best = c.idx[0];
    let mut best_val = i64::MIN;
    for &i in c.idx {
        let w = c.eps[i].weight(c.now_ns) as i64;
        total += w;
        let cur = &mut state.current[i];
        *cur += w;
        if *cur > best_val {
            best_val = *cur;
            best = i;
        }
    }
    state.current[best] -= total;
    best
}

#[cfg(test)]
mod tests {
    use super::super::testing::{all, weights};
    use super::*;

    #[test]
    fn weighted_within_two_percent_over_10k() {
        let eps = weights(&[5, 3, 1, 1]);
        let mut s = WorkerState::default();
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            counts[all(&eps, |c| pick(&mut s, c))] += 1;
        }
        for (i, w) in [5.0, 3.0, 1.0, 1.0].iter().enumerate() {
            let share = f64::from(counts[i]) / 10_000.0;
            assert!((share - w / 10.0).abs() <= 0.02, "endpoint {i}: {share}");
        }
    }

    #[test]
    fn interleaves_rather_than_bursts() {
        let eps = weights(&[5, 1, 1]);
        let mut s = WorkerState::default();
        let seq: Vec<usize> = (0..7).map(|_| all(&eps, |c| pick(&mut s, c))).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }
}
