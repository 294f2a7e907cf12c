//! round_robin: each endpoint in turn, per worker.

use super::WorkerState;

/// Next index after the worker's cursor.
pub fn pick(state: &mut WorkerState, n: usize) -> usize {
    let i = state.cursor % n;
    state.cursor = state.cursor.wrapping_add(1);
    i
}

#[cfg(test)]
mod tests {
    #[test]
    fn cycles_evenly() {
        let mut s = super::WorkerState::default();
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[super::pick(&mut s, 3)] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }
}
