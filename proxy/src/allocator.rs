//! The process's memory allocator: mimalloc, asked the way its fast path wants.
//!
//! mimalloc's per-thread free lists suit share-nothing workers that allocate and free
//! small buffers on every request. The `mimalloc` crate's `GlobalAlloc` sends every
//! request through `mi_malloc_aligned`, whose fast path only serves a block when the
//! thread's free list for that size is non-empty and already aligned; otherwise
//! (buffers of a few KiB, sizes that are not a power of two) it falls back to an
//! over-allocating generic path. Every Rust type of alignment 16 or less fits
//! `mi_malloc`'s guarantee, so those go to `mi_malloc`, as Rust's own system allocator
//! does with `malloc`, and only larger alignments (tokio's cache-padded task cells) to
//! the aligned calls. On the HTTP/1.1 request path this removed ~190 instructions per
//! request (callgrind: the aligned path's functions left the profile).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment `mi_malloc` guarantees for blocks of at least that size
/// (`MI_MAX_ALIGN_SIZE`).
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator (`#[global_allocator]` in the `tandem` binary).
pub struct Allocator;

/// True when `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to `mi_free`, which takes
// blocks of the plain and the aligned calls alike; the aligned calls are used
// whenever `mi_malloc`'s alignment guarantee does not cover the layout.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_malloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_zalloc(layout.size()) as *mut u8 }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8 }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8 }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8 }
        }
    }
}

/// Hands the calling thread's wholly free memory back to the system. mimalloc frees
/// pages and returns them to the kernel only when the thread calls into it; a worker
/// whose connections went idle (and gave their buffers back) makes no such calls, so
/// its resident memory would stay at its busiest. Each worker calls this once a second
/// (`listen::sweep_pool`); it walks the thread's pages and costs microseconds. A no-op
/// for a process whose global allocator is not [`Allocator`].
pub fn release_free_memory() {
    // Declared here: libmimalloc-sys declares it only with its `extended` feature.
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: mi_collect takes no pointers; `false` collects this thread's heap only.
    unsafe { mi_collect(false) }
}

/// Keeps the kernel from backing this process's memory with transparent huge pages
/// (`PR_SET_THP_DISABLE`; children inherit it). A huge page stays resident as long as
/// any block in its 2 MiB is live: after a burst of connections went idle and gave
/// their buffers back, the few records each keeps held whole huge pages, and RSS per
/// idle connection was two to three times what it is in 4 KiB pages (`bench/README.md`).
/// mimalloc is built without asking for huge pages (its `no_thp` feature); this covers
/// hosts where the kernel gives them unasked (`transparent_hugepage/enabled = always`).
/// Called first thing in `main`: pages faulted in as huge stay so. `Err` when the
/// kernel refuses.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    let (disable, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
    // SAFETY: PR_SET_THP_DISABLE takes integers only and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, disable, unused, unused, unused) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of every alignment up to a page come back aligned, keep their contents
    /// through growth and shrinking, and are zeroed when asked.
    #[test]
    fn blocks_are_aligned_and_keep_their_contents() {
        let a = Allocator;
        for align in [1usize, 2, 8, 16, 32, 64, 128, 4096] {
            for size in [1usize, 7, 8, 15, 16, 24, 100, 1000, 8192, 8200, 70_000] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown: size {size} align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xa5));
                    let big = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = a.realloc(grown, big, size.div_ceil(2));
                    assert_eq!(shrunk as usize % align, 0);
                    assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == 0xa5));
                    a.dealloc(shrunk, Layout::from_size_align(size.div_ceil(2), align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
