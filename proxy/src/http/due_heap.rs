//! The heaps of due times the worker's watch and its idle lot keep: a connection that
//! is rescheduled or gone leaves its old entry behind (taking it out would cost a
//! search), and such stale entries are dropped in bulk once they outnumber the live
//! ones.

use std::collections::BinaryHeap;

/// Below this many entries a heap is never compacted.
const SMALL: usize = 64;

/// Keeps only the entries `current` accepts once `due` holds more than twice `live`,
/// so a burst of short connections does not leave the heap large; the room the burst
/// took goes too, once it is four times what is left.
pub(crate) fn compact<T: Ord>(due: &mut BinaryHeap<T>, live: usize, current: impl FnMut(&T) -> bool) {
    if due.len() <= SMALL || due.len() <= 2 * live {
        return;
    }
    due.retain(current);
    let keep = 2 * due.len().max(SMALL);
    if due.capacity() > 2 * keep {
        due.shrink_to(keep);
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// Stale entries stay while they are few, go once they outnumber the live ones
    /// twice over, and the room they took goes with them.
    #[test]
    fn stale_entries_go_once_they_outnumber_the_live_ones() {
        let mut due: BinaryHeap<Reverse<u64>> = (0..1000).map(Reverse).collect();
        let live = |e: &Reverse<u64>| e.0.is_multiple_of(100);
        super::compact(&mut due, 600, live);
        assert_eq!(due.len(), 1000, "not yet twice the live entries");
        super::compact(&mut due, 10, live);
        assert_eq!(due.len(), 10);
        assert!(due.capacity() <= 4 * super::SMALL);
        let mut small: BinaryHeap<Reverse<u64>> = (0..50).map(Reverse).collect();
        super::compact(&mut small, 0, |_| false);
        assert_eq!(small.len(), 50, "a small heap is left alone");
    }
}
