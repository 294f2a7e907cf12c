//! Boxing large futures without copying them.
//!
//! `Box::pin(f())` builds the future on the stack and then copies its whole size into
//! the allocation; an async fn's future is as large as its largest state, kilobytes
//! for a request stage, of which only the arguments are set when it is created. A
//! parent that awaits a child stores it inline and pays the same copy. Writing the
//! future straight into its allocation avoids both: the parent holds a pointer.

use std::future::Future;
use std::pin::Pin;

/// The future `make` returns, built in its own heap slot.
#[inline(always)]
pub(crate) fn box_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: `write` initialised the slot just above.
    Box::into_pin(unsafe { slot.assume_init() })
}
