//! The process clock: monotonic nanoseconds since the process started, as one `u64`
//! that fits an atomic. Health verdicts, ejections, EWMA stamps, rate-limit windows and
//! sticky-binding ages are kept in it, so every part of the proxy compares times read
//! from the same origin.

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
