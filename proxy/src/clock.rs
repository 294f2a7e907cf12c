//! The process clock: monotonic nanoseconds since the process started, as one `u64`
//! that fits an atomic. Health verdicts, ejections, EWMA stamps, rate-limit windows and
//! sticky-binding ages are kept in it, so every part of the proxy compares times read
//! from the same origin.
//!
//! Reading it is one `clock_gettime(CLOCK_MONOTONIC)` (the vDSO's, no syscall) and an
//! add: the request path takes its times here rather than as an `Instant` converted
//! afterwards (`Instant::duration_since` alone costs about 50 instructions).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The process's start: as an `Instant`, and as the monotonic clock's reading of that
/// same instant in nanoseconds.
struct Base {
    at: Instant,
    raw_ns: u64,
}

static BASE: OnceLock<Base> = OnceLock::new();

fn base() -> &'static Base {
    BASE.get_or_init(|| {
        let before = raw_ns();
        let at = Instant::now();
        // `Instant` is a reading of CLOCK_MONOTONIC on Linux; its debug form shows the
        // reading (`Instant { tv_sec: 1548, tv_nsec: 346042977 }`), which makes both
        // forms of a time agree to the nanosecond. Should that form ever change, the
        // clock read just before stands in (a few tens of nanoseconds early).
        let raw_ns = debug_reading(&format!("{at:?}")).unwrap_or(before);
        Base { at, raw_ns }
    })
}

/// The monotonic clock reading in `Instant`'s debug form, in nanoseconds.
fn debug_reading(debug: &str) -> Option<u64> {
    let field = |name: &str| -> Option<u64> {
        let rest = &debug[debug.find(name)? + name.len()..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest, |end| &rest[..end]);
        digits.parse().ok()
    };
    let (secs, nanos) = (field("tv_sec: ")?, field("tv_nsec: ")?);
    (nanos < 1_000_000_000).then(|| secs.checked_mul(1_000_000_000)?.checked_add(nanos))?
}

/// CLOCK_MONOTONIC in nanoseconds.
fn raw_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Monotonic nanoseconds since process start.
pub(crate) fn now_ns() -> u64 {
    raw_ns().saturating_sub(base().raw_ns)
}

/// The time since `start_ns` (see [`now_ns`]); zero for a time not yet come.
pub(crate) fn since(start_ns: u64) -> Duration {
    Duration::from_nanos(now_ns().saturating_sub(start_ns))
}

/// `at` as nanoseconds since process start (no clock read).
pub(crate) fn ns_at(at: Instant) -> u64 {
    at.saturating_duration_since(base().at).as_nanos() as u64
}

/// The `Instant` `ns` nanoseconds after process start.
pub(crate) fn instant_at(ns: u64) -> Instant {
    base().at + Duration::from_nanos(ns)
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

    /// The instant held, as nanoseconds since process start (see [`now_ns`]).
    pub(crate) fn ns(&self) -> u64 {
        self.0.get()
    }

    /// Holds the time `ns` nanoseconds after process start (see [`now_ns`]).
    pub(crate) fn set_ns(&self, ns: u64) {
        self.0.set(ns);
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

    #[test]
    fn the_clock_read_directly_agrees_with_instants() {
        // Each form read between two of the other sees a time between them.
        for _ in 0..1000 {
            let a = now_ns();
            let b = Instant::now();
            let c = now_ns();
            let b_ns = ns_at(b);
            assert!(a <= b_ns && b_ns <= c, "{a} <= {b_ns} <= {c}");
            let d = Instant::now();
            let e = now_ns();
            let f = Instant::now();
            assert!(instant_at(e) >= d && instant_at(e) <= f);
        }
        assert_eq!(
            debug_reading("Instant { tv_sec: 1548, tv_nsec: 346042977 }"),
            Some(1_548_346_042_977)
        );
        assert_eq!(debug_reading("Instant { t: 5 }"), None);
        assert_eq!(debug_reading("Instant { tv_sec: 1, tv_nsec: 1000000000 }"), None);
    }
}
