//! Idle plain HTTP/1.1 connections of one worker, parked outside tokio.
//!
//! An idle keep-alive connection that gave hyper's buffers back ([`super::serve`])
//! still held a task (the wait for its next bytes) and tokio's registration of its
//! socket: about 650 of the 1,100 bytes it kept. A plain connection leaves tokio
//! instead and waits here: its socket in the lot's own epoll set (one shot), what it
//! needs to go on as the same connection in a 72-byte slot of the lot's slab. Its
//! connection state, head flags and place in the worker's watch go while it waits
//! (about 220 bytes) and are made again when its next bytes arrive: a new serving task
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
use std::time::Duration;

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

/// One parked connection, as small as it can be: it is what an idle connection costs.
struct Slot {
    /// Tells this connection's events and heap entries from those of a slot's earlier
    /// user.
    gen: u32,
    /// Requests started on the connection so far (up to `u32::MAX`: only "none yet" and
    /// the low 32 bits matter to the watch).
    requests: u32,
    listener: u32,
    sock: std::net::TcpStream,
    id: u64,
    last_active_ns: u64,
    client: PackedAddr,
    local: PackedAddr,
}

/// A socket address in 20 bytes instead of 32: an IPv4 one as its IPv4-mapped IPv6
/// form and a flag. An IPv6 address with a flow label or a scope (a link-local client)
/// does not pack, and its connection parks in a task instead.
#[derive(Clone, Copy)]
struct PackedAddr {
    ip: [u8; 16],
    port: u16,
    v6: bool,
}

impl PackedAddr {
    fn pack(addr: SocketAddr) -> Option<PackedAddr> {
        match addr {
            SocketAddr::V4(a) => Some(PackedAddr {
                ip: a.ip().to_ipv6_mapped().octets(),
                port: a.port(),
                v6: false,
            }),
            SocketAddr::V6(a) if a.flowinfo() == 0 && a.scope_id() == 0 => Some(PackedAddr {
                ip: a.ip().octets(),
                port: a.port(),
                v6: true,
            }),
            SocketAddr::V6(_) => None,
        }
    }

    fn unpack(self) -> SocketAddr {
        let ip = std::net::Ipv6Addr::from(self.ip);
        match ip.to_ipv4_mapped() {
            Some(v4) if !self.v6 => SocketAddr::from((v4, self.port)),
            _ => SocketAddr::from((ip, self.port)),
        }
    }
}

impl Slot {
    /// `conn` in a slot: its open-connection guard is let go of (the counts stay; the lot
    /// makes the guard again when the connection leaves). `conn` comes back when its
    /// addresses do not pack.
    fn keep(conn: Parked, sock: std::net::TcpStream) -> Result<Slot, (Parked, std::net::TcpStream)> {
        let (Some(client), Some(local)) = (PackedAddr::pack(conn.client), PackedAddr::pack(conn.local)) else {
            return Err((conn, sock));
        };
        let Parked {
            id,
            requests,
            last_active_ns,
            listener,
            open,
            ..
        } = conn;
        open.keep_counted();
        Ok(Slot {
            gen: 0,
            requests: u32::try_from(requests).unwrap_or(u32::MAX),
            listener,
            sock,
            id,
            last_active_ns,
            client,
            local,
        })
    }
}

/// What takes a woken connection over: a new serving task, in tokio again.
pub(super) type Resume = fn(&Rc<Worker>, Parked, std::net::TcpStream);

/// What the worker's watch asks of idle HTTP/1.1 connections (see [`rules_changed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IdleRules {
    /// The process drains: every connection closes.
    pub(crate) draining: bool,
    /// The node is in maintenance: a keep-alive connection idle this long (half the
    /// handover, as it was when maintenance began) closes.
    pub(crate) maintenance_grace: Option<Duration>,
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
    /// The rules the slots' deadlines follow (the watch's, see [`rules_changed`]).
    rules: Cell<IdleRules>,
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
/// joined, or an address with a scope or flow label does not fit its slot). `rules`
/// are the watch's now: a lot made for this connection starts with them, and the watch
/// tells it of every change after ([`rules_changed`]).
pub(super) fn park(
    worker: &Rc<Worker>,
    conn: Parked,
    sock: std::net::TcpStream,
    resume: Resume,
    rules: IdleRules,
) -> Result<(), (Parked, std::net::TcpStream)> {
    let lot = match this_lot(worker, resume, rules) {
        Ok(lot) => lot,
        Err(e) => {
            tracing::debug!(error = %e, "no idle lot; the connection parks in a task");
            return Err((conn, sock));
        }
    };
    if lot.rules.get().draining {
        // Closes now, as drain closes every idle connection.
        let _ = sock.shutdown(std::net::Shutdown::Write);
        return Ok(());
    }
    let slot = Slot::keep(conn, sock)?;
    lot.insert(slot, libc::EPOLL_CTL_ADD).map_err(|s| lot.release(s))
}

/// The watch's rules for idle connections changed (maintenance began or ended, drain
/// began): this thread's parked connections are looked at again.
pub(crate) fn rules_changed(rules: IdleRules) {
    if let Some(lot) = LOT.with(|l| l.borrow().upgrade()) {
        lot.apply(rules);
    }
}

/// This thread's lot, started on first use (on the worker's `LocalSet`) with `rules`.
fn this_lot(worker: &Rc<Worker>, resume: Resume, rules: IdleRules) -> io::Result<Rc<Lot>> {
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
        rules: Cell::new(rules),
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
    /// When a parked connection closes unless its next bytes come first: at its
    /// listener's idle timeout, or in maintenance once idle for half the handover.
    /// It depends on the slot and the lot's rules alone (no reloadable setting), so a
    /// heap entry stays current until the rules change.
    fn due(&self, slot: &Slot) -> u64 {
        let idle_timeout = self.worker.listeners[slot.listener as usize].idle_timeout;
        let after = match self.rules.get().maintenance_grace {
            Some(grace) => idle_timeout.min(grace),
            None => idle_timeout,
        };
        slot.last_active_ns.saturating_add(after.as_nanos() as u64)
    }

    /// Whether heap entry `(at, token)` is its slot's current deadline.
    fn current(&self, slots: &Slab<Slot>, at: u64, token: u64) -> bool {
        let (gen, key) = split(token);
        slots.get(key).is_some_and(|s| s.gen == gen && self.due(s) == at)
    }

    /// A slot leaving the lot, as the connection it was (with its open-connection guard
    /// made again).
    fn release(&self, slot: Slot) -> (Parked, std::net::TcpStream) {
        let shared = &self.worker.shared;
        let stats = shared.listeners[slot.listener as usize].1.clone();
        let conn = Parked {
            id: slot.id,
            requests: u64::from(slot.requests),
            last_active_ns: slot.last_active_ns,
            client: slot.client.unpack(),
            local: slot.local.unpack(),
            listener: slot.listener,
            open: OpenConn::already_counted(stats, shared.clone()),
        };
        (conn, slot.sock)
    }

    /// Puts `slot` in the slab, arms its socket (`op`: add, or modify to re-arm) and
    /// queues its deadline.
    fn insert(&self, mut slot: Slot, op: i32) -> Result<(), Slot> {
        let gen = self.next_gen.get();
        self.next_gen.set(gen.wrapping_add(1));
        slot.gen = gen;
        let mut slots = self.slots.borrow_mut();
        let entry = slots.vacant_entry();
        let token = token(gen, entry.key());
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `ev` is valid for the call.
        if unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), op, slot.sock.as_raw_fd(), &mut ev) } < 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "a socket could not join the idle lot");
            return Err(slot);
        }
        self.stats(&slot).parked.fetch_add(1, Relaxed);
        let due_ns = self.due(&slot);
        entry.insert(slot);
        drop(slots);
        self.queue(due_ns, token);
        Ok(())
    }

    /// Queues a close due at `at` for slot `token`, waking the task if it sleeps past it.
    fn queue(&self, at: u64, token: u64) {
        let mut due = self.due.borrow_mut();
        due.push(Reverse((at, token)));
        let slots = self.slots.borrow();
        let current = |Reverse((at, token)): &Reverse<(u64, u64)>| self.current(&slots, *at, *token);
        crate::http::due_heap::compact(&mut due, slots.len(), current);
        drop(slots);
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
        self.stats(&slot).parked.fetch_sub(1, Relaxed);
        Some(slot)
    }

    /// The counters of a slot's listener.
    fn stats(&self, slot: &Slot) -> &crate::stats::ListenerStats {
        &self.worker.shared.listeners[slot.listener as usize].1
    }

    /// Closes a parked connection gracefully (a FIN, then the socket closes, and it is
    /// no longer counted open); the lot's epoll set forgets it with its last fd.
    fn close(&self, slot: Slot) {
        let (_conn, sock) = self.release(slot);
        let _ = sock.shutdown(std::net::Shutdown::Write);
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
                if !self.current(&self.slots.borrow(), at, token) {
                    continue;
                }
                token
            };
            if let Some(slot) = self.take(token) {
                self.close(slot);
            }
        }
    }

    /// The watch's rules changed: on drain every parked connection closes; otherwise
    /// each gets its deadline under the new rules (those already past close now; an
    /// entry whose deadline did not change is queued twice, and the second finds its
    /// slot gone).
    fn apply(&self, rules: IdleRules) {
        self.rules.set(rules);
        if rules.draining {
            self.due.borrow_mut().clear();
            for (_, slot) in self.take_all() {
                self.close(slot);
            }
            return;
        }
        let requeue: Vec<(u64, u64)> = self
            .slots
            .borrow()
            .iter()
            .map(|(key, slot)| (self.due(slot), token(slot.gen, key)))
            .collect();
        for (at, token) in requeue {
            self.queue(at, token);
        }
    }

    /// Takes every slot out of the slab.
    fn take_all(&self) -> Slab<Slot> {
        let slots = self.slots.take();
        for (_, slot) in &slots {
            self.stats(slot).parked.fetch_sub(1, Relaxed);
        }
        slots
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
            Ok(n) if n > 0 => {
                self.leave(slot.sock.as_raw_fd());
                let (conn, sock) = self.release(slot);
                (self.resume)(&self.worker, conn, sock);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                if let Err(slot) = self.insert(slot, libc::EPOLL_CTL_MOD) {
                    self.release(slot);
                }
            }
            // The end of the stream, or a socket error: it closes.
            _ => {
                self.release(slot);
            }
        }
    }

    /// Takes `fd` out of the lot's epoll set (before tokio's takes it).
    fn leave(&self, fd: RawFd) {
        // SAFETY: both fds are open; a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }
}

impl Drop for Lot {
    /// The worker's runtime ended: its parked connections close.
    fn drop(&mut self) {
        for (_, slot) in self.take_all() {
            self.release(slot);
        }
    }
}

/// The token of slot `key` in its generation `gen`: what epoll events and heap entries
/// carry.
fn token(gen: u32, key: usize) -> u64 {
    u64::from(gen) << 32 | key as u64
}

/// A slot's token as (generation, slab key).
fn split(token: u64) -> (u32, usize) {
    ((token >> 32) as u32, token as u32 as usize)
}

#[cfg(test)]
mod tests {
    /// A parked connection keeps its slot for as long as it waits, so every byte of it
    /// is a byte per idle connection: 72 (with its state kept, the slot was 64 bytes
    /// and the state 192 more).
    #[test]
    fn a_parked_connections_slot_fits_in_72_bytes() {
        // How the slab keeps each slot: with its vacant form, in the room the slot's
        // socket addresses leave for a tag.
        #[allow(dead_code)]
        enum SlabEntry {
            Vacant(usize),
            Occupied(super::Slot),
        }
        assert!(std::mem::size_of::<SlabEntry>() <= 72);
    }

    /// A packed address unpacks to the address it was, IPv4, IPv6 and IPv4-mapped IPv6
    /// alike; one with a scope or flow label does not pack.
    #[test]
    fn packed_addresses_unpack_to_what_they_were() {
        use std::net::{SocketAddr, SocketAddrV6};
        for text in [
            "192.0.2.7:40000",
            "[2001:db8::7]:443",
            "[::ffff:192.0.2.7]:80",
            "0.0.0.0:0",
            "[::]:1",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let packed = super::PackedAddr::pack(addr).unwrap();
            assert_eq!(packed.unpack(), addr, "{text}");
            assert_eq!(packed.unpack().to_string(), text);
        }
        let scoped = SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, 2);
        assert!(super::PackedAddr::pack(scoped.into()).is_none());
        let labelled = SocketAddrV6::new("2001:db8::1".parse().unwrap(), 80, 7, 0);
        assert!(super::PackedAddr::pack(labelled.into()).is_none());
    }
}
