//! Idle plain HTTP/1.1 connections of one worker, parked outside tokio.
//!
//! An idle keep-alive connection that gave hyper's buffers back ([`super::serve`])
//! still held a task (the wait for its next bytes) and tokio's registration of its
//! socket: about 650 of the 1,100 bytes it kept. A plain connection leaves tokio
//! instead and waits here: its socket in the lot's own epoll set (one shot), the rest
//! of it in a slot of the lot's slab. When its next bytes arrive, a new serving task
//! takes it over in tokio again (and reads them); the end of the stream, a socket
//! error or the watch (idle timeout, drain, maintenance) close it here. A TLS
//! connection keeps its session in memory and parks in a task of its own.
//!
//! The lot is one task per worker thread, woken by its epoll fd and by the watch: the
//! waker a parked connection leaves for the watch names its slot and allocates nothing.
//! An idle spell costs four syscalls more than a parked task does (out of tokio's epoll
//! set, into the lot's, out of it, into tokio's), paid only after half a second idle.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::http::conn::{Action, HeadFlags};
use crate::http::served::Served;

// A slot's token (generation and key) travels in a waker's data pointer.
const _: () = assert!(usize::BITS == 64, "the idle lot packs a u64 into a pointer");

/// Events taken from the lot's epoll set per `epoll_wait`.
const EVENTS: usize = 64;

/// One parked connection.
struct Slot {
    /// Tells this connection's events and wake-ups from those of a slot's earlier user.
    gen: u32,
    conn: Served,
    sock: std::net::TcpStream,
    flags: Arc<HeadFlags>,
}

/// What takes a woken connection over: a new serving task, in tokio again.
pub(super) type Resume = fn(Served, std::net::TcpStream, Arc<HeadFlags>);

/// One worker's parked connections.
struct Lot {
    /// The lot's epoll set, registered in tokio: readable when a parked socket is.
    ep: AsyncFd<OwnedFd>,
    slots: RefCell<Slab<Slot>>,
    next_gen: Cell<u32>,
    /// Slots the watch asked for an action (idle timeout, drain, maintenance).
    attention: RefCell<Vec<u64>>,
    wake: Notify,
    resume: Resume,
}

thread_local! {
    /// This worker thread's lot, while its task runs (the task owns it: when the
    /// worker's runtime ends, the lot and its connections go with the task).
    static LOT: RefCell<Weak<Lot>> = const { RefCell::new(Weak::new()) };
}

/// Parks an idle connection whose socket left tokio ([`crate::send_batch::ReadReady::detach`])
/// until its next bytes, its end or the watch's next action. The connection comes back
/// when the lot cannot take it (no epoll set could be made or joined).
pub(super) fn park(
    conn: Served,
    sock: std::net::TcpStream,
    flags: Arc<HeadFlags>,
    resume: Resume,
) -> Result<(), (Served, std::net::TcpStream, Arc<HeadFlags>)> {
    let lot = match this_lot(resume) {
        Ok(lot) => lot,
        Err(e) => {
            tracing::debug!(error = %e, "no idle lot; the connection parks in a task");
            return Err((conn, sock, flags));
        }
    };
    lot.insert(
        Slot {
            gen: 0,
            conn,
            sock,
            flags,
        },
        libc::EPOLL_CTL_ADD,
    )
    .map_err(|s| (s.conn, s.sock, s.flags))
}

/// This thread's lot, started on first use (on the worker's `LocalSet`).
fn this_lot(resume: Resume) -> io::Result<Rc<Lot>> {
    if let Some(lot) = LOT.with(|l| l.borrow().upgrade()) {
        return Ok(lot);
    }
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else; an `OwnedFd` keeps
    // it open and the same for as long as the `AsyncFd` owns it.
    let ep = unsafe { AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let lot = Rc::new(Lot {
        ep,
        slots: RefCell::new(Slab::new()),
        next_gen: Cell::new(1),
        attention: RefCell::new(Vec::new()),
        wake: Notify::new(),
        resume,
    });
    LOT.with(|l| *l.borrow_mut() = Rc::downgrade(&lot));
    tokio::task::spawn_local(run(lot.clone()));
    Ok(lot)
}

/// The lot's task: takes parked sockets that became readable, and acts on what the
/// watch asked. Runs as long as the worker's runtime.
async fn run(lot: Rc<Lot>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    loop {
        tokio::select! {
            _ = lot.wake.notified() => lot.attend(),
            r = lot.ep.readable() => match r {
                Ok(mut ready) => {
                    if lot.collect(&mut events) {
                        ready.clear_ready();
                    }
                }
                Err(e) => {
                    // Never seen; the parked connections close with the lot.
                    tracing::error!(error = %e, "the idle lot's epoll set failed");
                    return;
                }
            },
        }
    }
}

impl Lot {
    /// Puts `slot` in the slab and arms its socket (`op`: add, or modify to re-arm).
    fn insert(&self, mut slot: Slot, op: i32) -> Result<(), Slot> {
        let gen = self.next_gen.get();
        self.next_gen.set(gen.wrapping_add(1));
        slot.gen = gen;
        let mut slots = self.slots.borrow_mut();
        let entry = slots.vacant_entry();
        let token = u64::from(gen) << 32 | entry.key() as u64;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `ev` is valid for the call.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, slot.sock.as_raw_fd(), &mut ev) } < 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "a socket could not join the idle lot");
            return Err(slot);
        }
        let state = &slot.conn.state;
        state.released.set(true);
        state.keep_waker(&slot_waker(token));
        slot.conn.open.stats.parked.fetch_add(1, Relaxed);
        entry.insert(slot);
        Ok(())
    }

    /// Takes the slot `token` names out of the slab, if it is still that slot's.
    fn take(&self, token: u64) -> Option<Slot> {
        let (gen, key) = split(token);
        let mut slots = self.slots.borrow_mut();
        if slots.get(key).is_none_or(|s| s.gen != gen) {
            return None;
        }
        let slot = slots.remove(key);
        slot.conn.open.stats.parked.fetch_sub(1, Relaxed);
        Some(slot)
    }

    /// Acts on what the watch asked of parked connections.
    fn attend(&self) {
        let tokens = std::mem::take(&mut *self.attention.borrow_mut());
        for token in tokens {
            let (gen, key) = split(token);
            let action = match self.slots.borrow().get(key) {
                Some(s) if s.gen == gen => {
                    let state = &s.conn.state;
                    let action = state.action.get();
                    if matches!(action, Action::Serve | Action::Release) {
                        // Nothing to do: the watch took the waker, it gets it back.
                        state.keep_waker(&slot_waker(token));
                    }
                    action
                }
                _ => continue,
            };
            // An idle connection just closes (with a FIN first when graceful).
            if matches!(action, Action::Graceful | Action::Abort) {
                if let Some(slot) = self.take(token) {
                    if action == Action::Graceful {
                        let _ = slot.sock.shutdown(std::net::Shutdown::Write);
                    }
                }
            }
        }
    }

    /// Takes every ready event from the lot's epoll set; true once it is empty.
    fn collect(&self, events: &mut [libc::epoll_event]) -> bool {
        loop {
            // SAFETY: `events` is valid for `events.len()` entries; timeout 0.
            let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "epoll_wait on the idle lot failed");
                return true;
            }
            let n = n as usize;
            for ev in &events[..n] {
                let token = ev.u64;
                self.ready(token);
            }
            if n < events.len() {
                return true;
            }
        }
    }

    /// A parked socket is readable: bytes (looked at, left in the socket for hyper)
    /// send it to a new serving task; its end or an error closes it; nothing to read
    /// re-arms it.
    fn ready(&self, token: u64) {
        let Some(slot) = self.take(token) else { return };
        let mut first = [MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&slot.sock).peek(&mut first) {
            Ok(0) => {}
            Ok(_) => {
                // Bytes between messages: a request head is on its way (the watch's
                // head deadline).
                slot.flags.pending.store(true, Relaxed);
                self.leave(slot.sock.as_raw_fd());
                (self.resume)(slot.conn, slot.sock, slot.flags);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                let _ = self.insert(slot, libc::EPOLL_CTL_MOD);
            }
            Err(_) => {}
        }
    }

    /// Takes `fd` out of the lot's epoll set (before tokio's takes it).
    fn leave(&self, fd: RawFd) {
        // SAFETY: both fds are open; a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }
}

impl Drop for Lot {
    /// The worker's runtime ended: its parked connections close uncounted.
    fn drop(&mut self) {
        for (_, slot) in self.slots.get_mut().iter() {
            slot.conn.open.stats.parked.fetch_sub(1, Relaxed);
        }
    }
}

/// A slot's token as (generation, slab key).
fn split(token: u64) -> (u32, usize) {
    ((token >> 32) as u32, token as u32 as usize)
}

/// The waker a parked connection leaves for the watch: it names the slot, so a wake-up
/// queues that slot for the lot's task. It only ever runs on the worker's thread (a
/// connection's state never leaves it); a slot's next user has another generation.
fn slot_waker(token: u64) -> Waker {
    // SAFETY: the vtable's functions never dereference the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(token as usize as *const (), &SLOT_WAKER)) }
}

static SLOT_WAKER: RawWakerVTable = RawWakerVTable::new(
    |p| RawWaker::new(p, &SLOT_WAKER),
    |p| attend_later(p as usize as u64),
    |p| attend_later(p as usize as u64),
    |_| {},
);

/// Queues slot `token` for the lot's task (nothing once the thread is ending).
fn attend_later(token: u64) {
    if let Some(lot) = LOT.try_with(|l| l.borrow().upgrade()).ok().flatten() {
        lot.attention.borrow_mut().push(token);
        lot.wake.notify_one();
    }
}
