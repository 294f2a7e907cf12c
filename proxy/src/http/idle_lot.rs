//! Idle plain HTTP/1.1 connections of one worker, parked outside tokio.
//!
//! An idle keep-alive connection that gave hyper's buffers back ([`super::serve`])
//! still held a task (the wait for its next bytes) and tokio's registration of its
//! socket: about 650 of the 1,100 bytes it kept. A plain connection leaves tokio
//! instead and waits here: its socket in the lot's own epoll set (one shot), what it
//! needs to go on as the same connection in a slot of the lot's slab ([`Parked`]). Its
//! connection state, head flags and place in the worker's watch go while it waits
//! (about 250 bytes) and are made again when its next bytes arrive: a new serving task
//! takes it over in tokio again (and reads them). The end of the stream, a socket
//! error, its idle deadline, maintenance and drain close it here. A TLS connection
//! keeps its session in memory and parks in a task of its own.
//!
//! The lot is one task per worker thread, woken by its epoll fd, by its earliest
//! deadline (a heap of 16-byte entries, as the watch keeps) and by the watch when
//! maintenance or drain begins. An idle spell costs four syscalls more than a parked
//! task does (out of tokio's epoll set, into the lot's, out of it, into tokio's), paid
//! only after half a second idle.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering::Relaxed;

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use crate::clock::{instant_at, now_ns};
use crate::shared::OpenConn;
use crate::worker::Worker;

/// Events taken from the lot's epoll set per `epoll_wait`.
const EVENTS: usize = 64;

/// What a parked connection keeps of itself: enough to serve its next request as the
/// same connection (its number, addresses and request count, for filters, logs and the
/// head deadline) and to close it at its idle deadline.
pub(super) struct Parked {
    /// Process-unique connection number.
    pub(super) id: u64,
    /// Requests started on the connection so far.
    pub(super) requests: u64,
    /// Last time a request started or its response headers went out, in nanoseconds
    /// since process start.
    pub(super) last_active_ns: u64,
    /// Client address (after the PROXY header, if any).
    pub(super) client: SocketAddr,
    /// The address the client connected to.
    pub(super) local: SocketAddr,
    /// Listener index.
    pub(super) listener: u32,
    /// Counts the connection open until it closes.
    pub(super) open: OpenConn,
}

/// One parked connection.
struct Slot {
    /// Tells this connection's events and heap entries from those of a slot's earlier
    /// user.
    gen: u32,
    sock: std::net::TcpStream,
    /// When it closes unless its next bytes come first (ns since process start); a heap
    /// entry with another time is stale.
    due_ns: u64,
    conn: Parked,
}

/// What takes a woken connection over: a new serving task, in tokio again.
pub(super) type Resume = fn(&Rc<Worker>, Parked, std::net::TcpStream);

/// What the worker's watch asks of idle connections (see [`rules_changed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdleRules {
    /// The process drains: every connection closes.
    pub(crate) draining: bool,
    /// The node is in maintenance: a keep-alive connection idle for half the handover
    /// closes.
    pub(crate) maintenance: bool,
}

/// One worker's parked connections.
struct Lot {
    /// The lot's epoll set, registered in tokio: readable when a parked socket is.
    ep: AsyncFd<OwnedFd>,
    slots: RefCell<Slab<Slot>>,
    next_gen: Cell<u32>,
    /// Due closes, earliest first: (when, in ns since process start; slot token).
    due: RefCell<BinaryHeap<Reverse<(u64, u64)>>>,
    /// What the task sleeps until (ns; `u64::MAX`: no close due); 0 while it runs. A
    /// close due earlier wakes it.
    armed: Cell<u64>,
    wake: Notify,
    worker: Rc<Worker>,
    resume: Resume,
}

thread_local! {
    /// This worker thread's lot, while its task runs (the task owns it: when the
    /// worker's runtime ends, the lot and its connections go with the task).
    static LOT: RefCell<Weak<Lot>> = const { RefCell::new(Weak::new()) };
}

/// Parks an idle connection whose socket left tokio ([`crate::send_batch::ReadReady::detach`])
/// until its next bytes, its end, its idle deadline, maintenance or drain. The
/// connection comes back when the lot cannot take it (no epoll set could be made or
/// joined).
pub(super) fn park(
    worker: &Rc<Worker>,
    conn: Parked,
    sock: std::net::TcpStream,
    resume: Resume,
) -> Result<(), (Parked, std::net::TcpStream)> {
    let lot = match this_lot(worker, resume) {
        Ok(lot) => lot,
        Err(e) => {
            tracing::debug!(error = %e, "no idle lot; the connection parks in a task");
            return Err((conn, sock));
        }
    };
    let rules = crate::http::watch::idle_rules();
    if rules.draining {
        // Closes now, as drain closes every idle connection.
        let _ = sock.shutdown(std::net::Shutdown::Write);
        return Ok(());
    }
    let due_ns = lot.due(&conn, rules);
    let slot = Slot {
        gen: 0,
        sock,
        due_ns,
        conn,
    };
    lot.insert(slot, libc::EPOLL_CTL_ADD).map_err(|s| (s.conn, s.sock))
}

/// The watch's rules for idle connections changed (maintenance began or ended, drain
/// began): this thread's parked connections are looked at again.
pub(crate) fn rules_changed(rules: IdleRules) {
    if let Some(lot) = LOT.with(|l| l.borrow().upgrade()) {
        lot.apply(rules);
    }
}

/// This thread's lot, started on first use (on the worker's `LocalSet`).
fn this_lot(worker: &Rc<Worker>, resume: Resume) -> io::Result<Rc<Lot>> {
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
        due: RefCell::new(BinaryHeap::new()),
        armed: Cell::new(0),
        wake: Notify::new(),
        worker: worker.clone(),
        resume,
    });
    LOT.with(|l| *l.borrow_mut() = Rc::downgrade(&lot));
    tokio::task::spawn_local(run(lot.clone()));
    Ok(lot)
}

/// The lot's task: takes parked sockets that became readable and closes those whose
/// deadline passed. Runs as long as the worker's runtime.
async fn run(lot: Rc<Lot>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    loop {
        lot.expire(now_ns());
        let next = lot.due.borrow().peek().map(|Reverse((at, _))| *at);
        lot.armed.set(next.unwrap_or(u64::MAX));
        tokio::select! {
            _ = lot.wake.notified() => {}
            _ = tokio::time::sleep_until(instant_at(next.unwrap_or(0)).into()), if next.is_some() => {}
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
        lot.armed.set(0);
    }
}

impl Lot {
    /// When parked connection `conn` closes unless its next bytes come first: at its
    /// listener's idle timeout, or in maintenance once idle for half the handover.
    fn due(&self, conn: &Parked, rules: IdleRules) -> u64 {
        let lcfg = &self.worker.listeners[conn.listener as usize];
        let mut after = lcfg.idle_timeout;
        if rules.maintenance {
            after = after.min(self.worker.shared.runtime.load().config.server.maintenance_handover / 2);
        }
        conn.last_active_ns.saturating_add(after.as_nanos() as u64)
    }

    /// Puts `slot` in the slab, arms its socket (`op`: add, or modify to re-arm) and
    /// queues its deadline.
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
        slot.conn.open.stats.parked.fetch_add(1, Relaxed);
        let due_ns = slot.due_ns;
        entry.insert(slot);
        drop(slots);
        self.queue(due_ns, token);
        Ok(())
    }

    /// Queues a close due at `at` for slot `token`, waking the task if it sleeps past it.
    fn queue(&self, at: u64, token: u64) {
        let mut due = self.due.borrow_mut();
        due.push(Reverse((at, token)));
        // Entries of woken or rescheduled connections: dropped once they outnumber the
        // parked ones (and the room a burst took, once it is four times what is left).
        if due.len() > 64 && due.len() > 2 * self.slots.borrow().len() {
            let slots = self.slots.borrow();
            due.retain(|Reverse((at, token))| current(&slots, *at, *token));
            let keep = 2 * due.len().max(64);
            if due.capacity() > 2 * keep {
                due.shrink_to(keep);
            }
        }
        drop(due);
        if at < self.armed.get() {
            self.armed.set(0);
            self.wake.notify_one();
        }
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

    /// Closes the connections whose deadline is `now` or earlier (with a FIN first:
    /// an idle connection closes gracefully).
    fn expire(&self, now: u64) {
        loop {
            let token = {
                let mut due = self.due.borrow_mut();
                match due.peek() {
                    Some(Reverse((at, _))) if *at <= now => {}
                    _ => return,
                }
                let Some(Reverse((at, token))) = due.pop() else { return };
                if !current(&self.slots.borrow(), at, token) {
                    continue;
                }
                token
            };
            if let Some(slot) = self.take(token) {
                close(slot);
            }
        }
    }

    /// The watch's rules changed: on drain every parked connection closes; otherwise
    /// each gets its deadline under the new rules (those already past close now).
    fn apply(&self, rules: IdleRules) {
        if rules.draining {
            let slots = std::mem::take(&mut *self.slots.borrow_mut());
            self.due.borrow_mut().clear();
            for (_, slot) in slots {
                slot.conn.open.stats.parked.fetch_sub(1, Relaxed);
                close(slot);
            }
            return;
        }
        let mut requeue = Vec::new();
        for (key, slot) in self.slots.borrow_mut().iter_mut() {
            let due_ns = self.due(&slot.conn, rules);
            if due_ns != slot.due_ns {
                slot.due_ns = due_ns;
                requeue.push((due_ns, u64::from(slot.gen) << 32 | key as u64));
            }
        }
        for (at, token) in requeue {
            self.queue(at, token);
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
                self.leave(slot.sock.as_raw_fd());
                (self.resume)(&self.worker, slot.conn, slot.sock);
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

/// Closes a parked connection gracefully (a FIN, then the socket closes); the lot's
/// epoll set forgets it with its last fd.
fn close(slot: Slot) {
    let _ = slot.sock.shutdown(std::net::Shutdown::Write);
}

/// Whether heap entry `(at, token)` is its slot's current deadline.
fn current(slots: &Slab<Slot>, at: u64, token: u64) -> bool {
    let (gen, key) = split(token);
    slots.get(key).is_some_and(|s| s.gen == gen && s.due_ns == at)
}

/// A slot's token as (generation, slab key).
fn split(token: u64) -> (u32, usize) {
    ((token >> 32) as u32, token as u32 as usize)
}

#[cfg(test)]
mod tests {
    /// A parked connection keeps its slot for as long as it waits: 128 bytes, half of
    /// what its connection state, head flags and watch entries took.
    #[test]
    fn a_parked_connections_slot_fits_in_128_bytes() {
        // How the slab keeps each slot: with its vacant form, in the room the slot's
        // socket addresses leave for a tag.
        #[allow(dead_code)]
        enum SlabEntry {
            Vacant(usize),
            Occupied(super::Slot),
        }
        assert!(std::mem::size_of::<SlabEntry>() <= 128);
    }
}
