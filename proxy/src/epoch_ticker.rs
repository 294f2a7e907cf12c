//! The epoch ticker: the thread that advances wasmtime's epoch every [`EPOCH_TICK`] so
//! a guest callback past its CPU limit is interrupted, and that sleeps while no guest
//! runs, so a node whose filters are idle is not woken 100 times a second.
//!
//! A guest call marks itself on its thread's slot ([`GuestCall`]) and wakes the ticker
//! if it sleeps. The ticker goes to sleep only after [`IDLE_TICKS`] ticks in which it
//! found no guest running, and then only by a handshake that no call can slip through:
//! it raises `SLEEPING`, forces a memory barrier on every thread of the process
//! (`membarrier`), and looks at the slots again. A call that marked its slot before
//! the barrier is seen there; one that marks it after sees `SLEEPING` and wakes the
//! ticker. So the call path pays two plain stores and a load, no fence and no atomic
//! read-modify-write. Where `membarrier` is not available the ticker never sleeps.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How often the epoch advances while a guest may run; CPU limits are rounded up to it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Ticks in a row without a running guest after which the ticker sleeps until the next
/// guest call (one second: a steady trickle of filtered requests keeps it awake).
const IDLE_TICKS: u32 = 100;

/// `membarrier(2)` commands (linux/membarrier.h).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// The ticker thread, for calls to wake; it publishes itself before it can sleep.
static TICKER: OnceLock<std::thread::Thread> = OnceLock::new();

/// Set while the ticker sleeps (or is about to); the first call that finds it set
/// clears it and wakes the ticker.
static SLEEPING: AtomicBool = AtomicBool::new(false);

/// One slot per thread that has run a guest.
static SLOTS: Mutex<Vec<Weak<CallSlot>>> = Mutex::new(Vec::new());

/// The guest calls in progress on one thread (a host function may call back into the
/// guest, so calls nest). Written only by its thread; read by the ticker. On a cache
/// line of its own, so threads' calls do not contend.
#[repr(align(64))]
#[derive(Default)]
struct CallSlot {
    depth: AtomicU32,
}

thread_local! {
    /// This thread's slot, for the call path: a constant-initialised pointer is one
    /// load away.
    static SLOT: Cell<*const CallSlot> = const { Cell::new(std::ptr::null()) };
    /// What keeps the slot alive while the thread lives.
    static SLOT_OWNER: Cell<Option<Arc<CallSlot>>> = const { Cell::new(None) };
}

/// Starts the ticker for `engine` (once per process); it ends when the engine is gone.
pub(crate) fn start(engine: wasmtime::EngineWeak) {
    let can_sleep = register_membarrier();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            let _ = TICKER.set(std::thread::current());
            run(&engine, can_sleep);
        })
        .expect("the epoch thread starts");
}

fn run(engine: &wasmtime::EngineWeak, can_sleep: bool) {
    let mut idle = 0u32;
    loop {
        let Some(e) = engine.upgrade() else { return };
        e.increment_epoch();
        drop(e);
        std::thread::sleep(EPOCH_TICK);
        if any_running() {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle < IDLE_TICKS || !can_sleep {
            continue;
        }
        idle = 0;
        SLEEPING.store(true, SeqCst);
        // Every thread's earlier slot stores are visible after this, and every later
        // call sees `SLEEPING`.
        if !membarrier() || any_running() {
            SLEEPING.store(false, SeqCst);
            continue;
        }
        while SLEEPING.load(SeqCst) {
            std::thread::park();
        }
    }
}

/// Whether some thread is inside a guest call (forgets the slots of ended threads).
fn any_running() -> bool {
    let Ok(mut slots) = SLOTS.lock() else { return true };
    let mut running = false;
    slots.retain(|w| match w.upgrade() {
        Some(s) => {
            running |= s.depth.load(Relaxed) > 0;
            true
        }
        None => false,
    });
    running
}

/// Makes and registers this thread's slot (its first guest call).
#[cold]
#[inline(never)]
fn register_slot() -> *const CallSlot {
    let s = Arc::new(CallSlot::default());
    let p = Arc::as_ptr(&s);
    SLOTS.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&s));
    SLOT_OWNER.with(|o| o.set(Some(s)));
    SLOT.with(|c| c.set(p));
    p
}

/// Wakes the sleeping ticker (the first call after it slept).
#[cold]
#[inline(never)]
fn wake() {
    if SLEEPING.swap(false, SeqCst) {
        if let Some(t) = TICKER.get() {
            t.unpark();
        }
    }
}

/// A guest call in progress on this thread: the ticker keeps ticking until it ends.
/// Made before entering the guest (a callback, `_initialize`, a module's start
/// function), dropped after it returned or trapped.
pub(crate) struct GuestCall {
    slot: *const CallSlot,
}

impl GuestCall {
    /// Marks the call and wakes the ticker if it sleeps.
    #[inline]
    pub(crate) fn enter() -> GuestCall {
        let mut slot = SLOT.with(Cell::get);
        if slot.is_null() {
            slot = register_slot();
        }
        // SAFETY: SLOT_OWNER keeps the slot alive for this thread's life, and a
        // GuestCall (not Send) cannot leave the thread.
        let depth = unsafe { &(*slot).depth };
        depth.store(depth.load(Relaxed) + 1, Relaxed);
        // The store must not move after the load below in the compiled code; the
        // ticker's membarrier orders them on the CPU.
        compiler_fence(SeqCst);
        if SLEEPING.load(Relaxed) {
            wake();
        }
        GuestCall { slot }
    }
}

impl Drop for GuestCall {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        let depth = unsafe { &(*self.slot).depth };
        depth.store(depth.load(Relaxed) - 1, Relaxed);
    }
}

/// Registers the process for private expedited barriers (Linux 4.14 and later).
fn register_membarrier() -> bool {
    // SAFETY: membarrier takes no pointers.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

/// A full memory barrier on every running thread of the process.
fn membarrier() -> bool {
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
}
