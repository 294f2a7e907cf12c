//! Boxing large futures without copying them.
//!
//! `Box::pin(f())` builds the future on the stack and then copies its whole size into
//! the allocation; an async fn's future is as large as its largest state, kilobytes
//! for a request stage, of which only the arguments are set when it is created. A
//! parent that awaits a child stores it inline and pays the same copy. Writing the
//! future straight into its allocation avoids both: the parent holds a pointer.
//!
//! A future made once per request can also take its slot from the worker's free slots
//! (`recycle_in_place`), so the allocator is not asked at all in the steady state.

use std::alloc::Layout;
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

/// Most free slots a thread keeps per layout (a burst's worth; past it, slots go back
/// to the allocator).
const MAX_FREE_SLOTS: usize = 256;

/// The future `make` returns, built in a heap slot like [`box_in_place`], with the slot
/// taken from this thread's free slots of its layout and given back when the future is
/// dropped. For a future made and dropped once per request: a request's future is a
/// few KiB, and an allocator retires and refetches the page of so large a block as the
/// requests in flight rise and fall, at about 450 instructions per request here
/// (callgrind), where a free list costs a few.
#[inline(always)]
pub(crate) fn recycle_in_place<F: Future>(make: impl FnOnce() -> F) -> Recycled<F> {
    const { assert!(std::mem::size_of::<F>() > 0, "no slot for a zero-sized future") };
    let slot = slots::take(Layout::new::<F>()).cast::<F>();
    // SAFETY: `slot` is a live allocation of F's layout that nothing else points to.
    unsafe { slot.as_ptr().write(make()) };
    Recycled { slot }
}

/// A future in a recycled heap slot (see [`recycle_in_place`]). It never moves while it
/// lives, so `Recycled` itself is `Unpin`.
pub(crate) struct Recycled<F> {
    slot: std::ptr::NonNull<F>,
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        // SAFETY: the slot holds a live F that stays at this address until `drop`.
        unsafe { Pin::new_unchecked(&mut *self.slot.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        // SAFETY: the slot holds a live F, dropped once, here; then its memory, of F's
        // layout, goes back without being read again.
        unsafe {
            std::ptr::drop_in_place(self.slot.as_ptr());
            slots::give_back(Layout::new::<F>(), self.slot.cast());
        }
    }
}

/// The thread's free slots, by layout.
mod slots {
    use std::alloc::Layout;
    use std::cell::RefCell;
    use std::ptr::NonNull;

    /// Free slots of one layout.
    struct Free {
        layout: Layout,
        slots: Vec<NonNull<u8>>,
    }

    impl Drop for Free {
        fn drop(&mut self) {
            for p in self.slots.drain(..) {
                // SAFETY: every slot was allocated with `self.layout` and is unused.
                unsafe { std::alloc::dealloc(p.as_ptr(), self.layout) };
            }
        }
    }

    thread_local! {
        static FREE: RefCell<Vec<Free>> = const { RefCell::new(Vec::new()) };
    }

    /// A slot of `layout` (non-zero size): a free one of this thread, else a new one.
    #[inline]
    pub(super) fn take(layout: Layout) -> NonNull<u8> {
        let reused = FREE
            .try_with(|f| {
                let mut f = f.borrow_mut();
                f.iter_mut().find(|x| x.layout == layout).and_then(|x| x.slots.pop())
            })
            .ok()
            .flatten();
        reused.unwrap_or_else(|| {
            // SAFETY: the caller's layout has a non-zero size.
            NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        })
    }

    /// Keeps `p` for reuse, or frees it when this thread keeps enough (or is exiting).
    ///
    /// # Safety
    /// `p` was allocated with `layout` and nothing uses it any more.
    #[inline]
    pub(super) unsafe fn give_back(layout: Layout, p: NonNull<u8>) {
        let kept = FREE
            .try_with(|f| {
                let mut f = f.borrow_mut();
                let free = match f.iter().position(|x| x.layout == layout) {
                    Some(i) => &mut f[i],
                    None => {
                        f.push(Free {
                            layout,
                            slots: Vec::new(),
                        });
                        f.last_mut().expect("just pushed")
                    }
                };
                if free.slots.len() < super::MAX_FREE_SLOTS {
                    free.slots.push(p);
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if !kept {
            // SAFETY: the caller's contract.
            unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
        }
    }

    /// This thread's free slots of `layout` (for tests).
    #[cfg(test)]
    pub(super) fn count(layout: Layout) -> usize {
        FREE.with(|f| {
            f.borrow()
                .iter()
                .find(|x| x.layout == layout)
                .map_or(0, |x| x.slots.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::{Context, Poll, Waker};

    /// A future of a given size that counts its drops and finishes on its second poll.
    struct Big {
        _room: [u64; 700],
        polled: bool,
        drops: Rc<Cell<u32>>,
    }

    impl Future for Big {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            if self.polled {
                Poll::Ready(self._room.len())
            } else {
                self.polled = true;
                Poll::Pending
            }
        }
    }

    impl Drop for Big {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn big(drops: &Rc<Cell<u32>>) -> Big {
        Big {
            _room: [7; 700],
            polled: false,
            drops: drops.clone(),
        }
    }

    #[test]
    fn slots_are_reused_contents_dropped_and_the_free_list_bounded() {
        let layout = Layout::new::<Big>();
        let drops = Rc::new(Cell::new(0));
        let mut cx = Context::from_waker(Waker::noop());

        let mut f = recycle_in_place(|| big(&drops));
        let first = f.slot.as_ptr() as usize;
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(Pin::new(&mut f).poll(&mut cx), Poll::Ready(700));
        drop(f);
        assert_eq!(drops.get(), 1, "the future's own drop ran");
        assert_eq!(slots::count(layout), 1);

        // The next future of the same layout takes the same slot; a dropped unfinished
        // future gives its slot back too.
        let g = recycle_in_place(|| big(&drops));
        assert_eq!(g.slot.as_ptr() as usize, first);
        assert_eq!(slots::count(layout), 0);
        drop(g);
        assert_eq!(drops.get(), 2);

        // A burst: all live at once get distinct slots; at most MAX_FREE_SLOTS are kept.
        let burst: Vec<_> = (0..MAX_FREE_SLOTS + 10)
            .map(|_| recycle_in_place(|| big(&drops)))
            .collect();
        let mut addrs: Vec<usize> = burst.iter().map(|f| f.slot.as_ptr() as usize).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), MAX_FREE_SLOTS + 10);
        drop(burst);
        assert_eq!(drops.get(), 2 + MAX_FREE_SLOTS as u32 + 10);
        assert_eq!(slots::count(layout), MAX_FREE_SLOTS);
    }

    #[test]
    fn slots_of_another_layout_are_kept_apart() {
        let drops = Rc::new(Cell::new(0));
        let a = recycle_in_place(|| big(&drops));
        let b = recycle_in_place(|| async { 5u8 });
        let (pa, pb) = (a.slot.as_ptr() as usize, b.slot.as_ptr() as usize);
        drop((a, b));
        let a2 = recycle_in_place(|| big(&drops));
        assert_eq!(a2.slot.as_ptr() as usize, pa);
        let b2 = recycle_in_place(|| async { 6u8 });
        assert_eq!(b2.slot.as_ptr() as usize, pb);
    }
}
