//! The process clock: monotonic nanoseconds since the process started, as one `u64`
//! that fits an atomic. Health verdicts, ejections, EWMA stamps, rate-limit windows and
//! sticky-binding ages are kept in it, so every part of the proxy compares times read
//! from the same origin.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since process start.
pub(crate) fn now_ns() -> u64 {
    ns_at(Instant::now())
}

/// `at` as nanoseconds since process start (no clock read).
pub(crate) fn ns_at(at: Instant) -> u64 {
    at.saturating_duration_since(*BASE.get_or_init(Instant::now)).as_nanos() as u64
}

/// The `Instant` `ns` nanoseconds after process start.
fn instant_at(ns: u64) -> Instant {
    *BASE.get_or_init(Instant::now) + std::time::Duration::from_nanos(ns)
}

/// An `Instant` in 8 bytes instead of 16 (nanoseconds since process start): for records
/// kept per connection for as long as it stays open, where every byte counts.
#[derive(Debug)]
pub(crate) struct InstantCell(Cell<u64>);

impl InstantCell {
    /// A cell holding `at`.
    pub(crate) fn new(at: Instant) -> InstantCell {
        InstantCell(Cell::new(ns_at(at)))
    }

    /// The instant held (to the nanosecond).
    pub(crate) fn get(&self) -> Instant {
        instant_at(self.0.get())
    }

    /// Holds `at` from now on.
    pub(crate) fn set(&self, at: Instant) {
        self.0.set(ns_at(at));
    }
}

/// An `Option<Instant>` in 8 bytes (see [`InstantCell`]); `u64::MAX` is `None`, an
/// instant 584 years after process start.
#[derive(Debug)]
pub(crate) struct OptInstantCell(Cell<u64>);

impl OptInstantCell {
    /// An empty cell.
    pub(crate) const fn none() -> OptInstantCell {
        OptInstantCell(Cell::new(u64::MAX))
    }

    /// The instant held, if any.
    pub(crate) fn get(&self) -> Option<Instant> {
        let ns = self.0.get();
        (ns != u64::MAX).then(|| instant_at(ns))
    }

    /// Holds `at` from now on.
    pub(crate) fn set(&self, at: Option<Instant>) {
        self.0.set(at.map_or(u64::MAX, |t| ns_at(t).min(u64::MAX - 1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn compact_instant_cells_give_back_what_they_were_given() {
        now_ns(); // the base is set before the instants below
        let now = Instant::now();
        let later = now + Duration::from_millis(1500);
        let c = InstantCell::new(now);
        assert_eq!(c.get(), now);
        c.set(later);
        assert_eq!(c.get(), later);
        let o = OptInstantCell::none();
        assert_eq!(o.get(), None);
        o.set(Some(later));
        assert_eq!(o.get(), Some(later));
        o.set(None);
        assert_eq!(o.get(), None);
        assert_eq!(
            std::mem::size_of::<InstantCell>() + std::mem::size_of::<OptInstantCell>(),
            16
        );
    }
}
