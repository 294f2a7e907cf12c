//! round_robin: each candidate in turn, per worker.

use super::{Candidate, Choice, WorkerState};

/// Next candidate after the worker's cursor.
pub(crate) fn pick<C: Candidate>(state: &mut WorkerState, c: &Choice<'_, C>) -> usize {
    let i = state.cursor % c.idx.len();
    state.cursor = state.cursor.wrapping_add(1);
    c.idx[i]
}

#[cfg(test)]
mod tests {
    use super::super::testing::{all, weights};

    #[test]
    fn cycles_evenly() {
        let mut s = super::WorkerState::default();
        let eps = weights(&[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[all(&eps, |c| super::pick(&mut s, c))] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }
}
