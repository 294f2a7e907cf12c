//! The deadlines of a worker's downstream connections, kept by one task per worker
//! rather than by a watcher task per connection: a connection costs the watch a slot
//! and a heap entry (about 30 bytes) instead of a task of its own (about 1 KiB, and a
//! spawn per connection), which is most of what an idle keep-alive connection held.
//!
//! The watch looks at a connection when its next look is due and asks its task for an
//! action ([`Action`]): the first request's head must arrive within
//! `header_read_timeout` of the accept; a later head, once its first bytes arrived,
//! within one to two `header_read_timeout`s (a look once per period); an idle connection
//! closes after `idle_timeout`; an idle HTTP/1.1 connection gives hyper's buffers back
//! after [`RELEASE_IDLE_AFTER`]; in maintenance an idle keep-alive connection closes;
//! on drain every connection closes gracefully.
//!
//! Looks are lazy: a connection's state changes (requests, bytes) without telling the
//! watch, and each look works out from that state when the next is due. Only a change
//! that brings a deadline closer looks at once ([`look_now`]): the first request (the
//! idle deadline may be shorter than the head one) and the first bytes after a release.

use std::cell::{Cell, OnceCell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::sync::Notify;

use crate::config::ListenerConfig;
use crate::http::conn::{Action, ConnState, NO_HEAD_SEEN};
use crate::http::idle_lot::IdleRules;
use crate::shared::Shared;

/// An HTTP/1.1 connection idle this long (up to twice this long: it is looked at once
/// per period) gives hyper's buffers back (8 KiB to read and 8 KiB to write, kept by
/// hyper for a connection's whole life): HAProxy and nginx hold no buffer for an idle
/// keep-alive connection either. Long enough that a busy connection, idle for
/// microseconds between requests, never pays for the rebuild.
pub(crate) const RELEASE_IDLE_AFTER: Duration = Duration::from_millis(500);

thread_local! {
    /// This worker thread's watch, set when the worker starts.
    static WATCH: OnceCell<Rc<ConnWatch>> = const { OnceCell::new() };
}

/// One worker's connection deadlines: the watched connections, a heap of due looks,
/// and the task that makes them.
pub(crate) struct ConnWatch {
    /// Watched connections; a connection leaves when its task ends ([`Watched`]).
    conns: RefCell<Slab<Rc<ConnState>>>,
    /// Due looks, earliest first: (when, in ns since `epoch`; the connection id's low
    /// 32 bits; slab key), 16 bytes each. Entries of gone or rescheduled connections stay
    /// until they come up (or the heap is compacted).
    due: RefCell<BinaryHeap<Reverse<(u64, u32, u32)>>>,
    /// When the watch started: what the heap's times count from.
    epoch: Instant,
    /// What the task sleeps until; None while it runs. A look due earlier wakes it.
    armed: Cell<Option<Instant>>,
    wake: Notify,
    /// The process drains: every connection was asked to close, and new ones are.
    draining: Cell<bool>,
    /// The node is in maintenance: idle keep-alive connections close.
    maintenance: Cell<bool>,
    shared: Arc<Shared>,
    listeners: Arc<[ListenerConfig]>,
}

/// Starts this worker thread's watch (once per worker, on its `LocalSet`).
pub(crate) fn start(shared: Arc<Shared>, listeners: Arc<[ListenerConfig]>) {
    let watch = Rc::new(ConnWatch {
        conns: RefCell::new(Slab::new()),
        due: RefCell::new(BinaryHeap::new()),
        epoch: Instant::now(),
        armed: Cell::new(None),
        wake: Notify::new(),
        draining: Cell::new(false),
        maintenance: Cell::new(false),
        shared,
        listeners,
    });
    if WATCH.with(|w| w.set(watch.clone())).is_ok() {
        tokio::task::spawn_local(watch.run());
    }
}

/// Watches `state` until the returned guard drops (when the connection's task ends).
pub(crate) fn watch(state: &Rc<ConnState>) -> Watched {
    let Some(watch) = WATCH.with(|w| w.get().cloned()) else {
        // Not on a worker thread: nothing keeps this connection's deadlines.
        debug_assert!(false, "a connection served outside a worker");
        return Watched(None);
    };
    let key = watch.conns.borrow_mut().insert(state.clone());
    state.watch.key.set(key as u32);
    if watch.draining.get() {
        state.request(Action::Graceful);
    } else {
        watch.reschedule(state, Instant::now());
    }
    Watched(Some((watch, key)))
}

/// Looks at `state` now (on this worker's watch) because one of its deadlines may have
/// come closer: its first request started, or a released connection's bytes arrived.
pub(crate) fn look_now(state: &ConnState) {
    if state.watch.next.get().is_none() {
        return;
    }
    if let Some(watch) = WATCH.with(|w| w.get().cloned()) {
        watch.reschedule(state, Instant::now());
    }
}

/// What this worker's watch asks of idle connections now; a connection parked outside
/// the watch ([`crate::http::idle_lot`]) follows the same rules.
pub(crate) fn idle_rules() -> IdleRules {
    WATCH.with(|w| w.get().map(|w| w.idle_rules())).unwrap_or_default()
}

/// Keeps a connection watched; dropping it forgets the connection.
pub(crate) struct Watched(Option<(Rc<ConnWatch>, usize)>);

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some((watch, key)) = self.0.take() {
            if let Some(state) = watch.conns.borrow_mut().try_remove(key) {
                state.watch.next.set(None);
            }
        }
    }
}

impl ConnWatch {
    /// The watch's task: makes the due looks, and tells every connection about drain
    /// and maintenance.
    async fn run(self: Rc<Self>) {
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut phase = self.shared.phase.subscribe();
        let mut phase_open = true;
        loop {
            let maintenance = phase.borrow_and_update().asks_clients_to_close();
            if maintenance != self.maintenance.replace(maintenance) {
                self.look_at_all();
                crate::http::idle_lot::rules_changed(self.idle_rules());
            }
            self.fire(Instant::now());
            let next = self.due.borrow().peek().map(|Reverse((at, _, _))| self.instant(*at));
            // With nothing due, any look scheduled wakes the task.
            self.armed.set(Some(
                next.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
            ));
            tokio::select! {
                _ = shutdown.wait_for(|d| *d) => return self.drain(),
                r = phase.changed(), if phase_open => phase_open = r.is_ok(),
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {}
                _ = self.wake.notified() => {}
            }
            self.armed.set(None);
        }
    }

    /// What idle HTTP/1.1 connections must do now.
    fn idle_rules(&self) -> IdleRules {
        let handover = || self.shared.runtime.load().config.server.maintenance_handover;
        IdleRules {
            draining: self.draining.get(),
            maintenance_grace: self.maintenance.get().then(|| handover() / 2),
        }
    }

    /// A time as the heap keeps it.
    fn tick(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A time the heap keeps, as an `Instant`.
    fn instant(&self, tick: u64) -> Instant {
        self.epoch + Duration::from_nanos(tick)
    }

    /// Whether heap entry `(at, id)` is `state`'s current look.
    fn current(&self, state: &ConnState, at: u64, id: u32) -> bool {
        state.id as u32 == id && state.watch.next.get().map(|n| self.tick(n)) == Some(at)
    }

    /// Makes every look due by `now`.
    fn fire(&self, now: Instant) {
        let now_tick = self.tick(now);
        loop {
            let (at, id, key) = {
                let mut due = self.due.borrow_mut();
                match due.peek() {
                    Some(Reverse((at, _, _))) if *at <= now_tick => {}
                    _ => return,
                }
                let Some(Reverse(entry)) = due.pop() else { return };
                entry
            };
            let state = self.conns.borrow().get(key as usize).cloned();
            let Some(state) = state.filter(|s| self.current(s, at, id)) else {
                continue;
            };
            // Never due again within this call: each look moves a connection on.
            let next = self
                .look(&state, now, true)
                .map(|t| t.max(now + Duration::from_millis(1)));
            self.schedule(&state, next);
        }
    }

    /// Looks at `state` without a deadline having passed, and schedules its next look.
    fn reschedule(&self, state: &ConnState, now: Instant) {
        let next = self.look(state, now, false);
        self.schedule(state, next);
    }

    /// Records `state`'s next look (None: never again) and queues it.
    fn schedule(&self, state: &ConnState, next: Option<Instant>) {
        state.watch.next.set(next);
        let Some(at) = next else { return };
        let mut due = self.due.borrow_mut();
        due.push(Reverse((self.tick(at), state.id as u32, state.watch.key.get())));
        let conns = self.conns.borrow();
        let current = |Reverse((at, id, key)): &Reverse<(u64, u32, u32)>| {
            conns.get(*key as usize).is_some_and(|s| self.current(s, *at, *id))
        };
        crate::http::due_heap::compact(&mut due, conns.len(), current);
        drop(conns);
        drop(due);
        if self.armed.get().is_some_and(|armed| at < armed) {
            self.armed.set(None);
            self.wake.notify_one();
        }
    }

    /// The connections still looked at (not yet asked to close), taken out of the slab
    /// so that looking at them may change it.
    fn looked_at(&self) -> Vec<Rc<ConnState>> {
        let conns = self.conns.borrow();
        conns
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.watch.next.get().is_some())
            .cloned()
            .collect()
    }

    /// Counts a request head that did not arrive in time.
    fn header_timeout(&self, state: &ConnState) {
        self.shared.listeners[state.listener as usize]
            .1
            .header_timeouts
            .fetch_add(1, Relaxed);
    }

    /// Maintenance began or ended: every watched connection is looked at.
    fn look_at_all(&self) {
        let now = Instant::now();
        for state in self.looked_at() {
            self.reschedule(&state, now);
        }
    }

    /// The process drains: every watched connection finishes its exchange and closes.
    fn drain(&self) {
        self.draining.set(true);
        for state in self.looked_at() {
            state.watch.next.set(None);
            state.request(Action::Graceful);
        }
        self.due.borrow_mut().clear();
        crate::http::idle_lot::rules_changed(self.idle_rules());
    }

    /// One look at a connection: when `fired` and its regular deadline has passed, the
    /// deadline's checks (first head, a trickling later head, idle); when `fired`
    /// before it, the release check. Then maintenance, and when to look next (None: it
    /// was asked to close).
    ///
    /// Maintenance closes a keep-alive connection once it has been idle for half the
    /// handover (HTTP/1.1). A busy client's connection is never idle that long: its
    /// next response carries `Connection: close` and it reconnects without losing a
    /// request. Closing every idle connection at once would race such a client's next
    /// request, which is lost unless the client retries it.
    fn look(&self, state: &ConnState, now: Instant, fired: bool) -> Option<Instant> {
        let w = &state.watch;
        if matches!(state.action.get(), Action::Graceful | Action::Abort) {
            return None;
        }
        let lcfg = &self.listeners[state.listener as usize];
        let (header_read, idle_timeout) = (lcfg.header_read_timeout, lcfg.idle_timeout);
        let requests = state.requests.get();
        let pending = state.head.pending.load(Relaxed);
        let busy = state.in_flight.get() > 0;
        if fired && now < w.deadline.get() {
            // Due for the release check alone.
            let quiet = state.last_active.get() + RELEASE_IDLE_AFTER <= now;
            let releasable = state.http1.get() && !state.released.get() && state.action.get() == Action::Serve;
            if releasable && quiet && state.between_messages() {
                w.release_asked.set(Some(now));
                state.request(Action::Release);
            }
        } else {
            if fired {
                if requests == 0 {
                    // Nothing complete arrived in time (slowloris or an idle opener).
                    self.header_timeout(state);
                    state.request(Action::Abort);
                    return None;
                }
                if busy || !pending {
                    w.head_seen_at.set(NO_HEAD_SEEN);
                } else if w.head_seen_at.get() == requests as u32 {
                    // A later request's head has been trickling in for a whole period.
                    self.header_timeout(state);
                    state.request(Action::Abort);
                    return None;
                } else {
                    w.head_seen_at.set(requests as u32);
                }
                if !busy && !pending && state.last_active.get() + idle_timeout <= now {
                    state.request(Action::Graceful);
                    return None;
                }
            }
            w.deadline.set(if requests == 0 {
                // Until its first request, a connection's last activity is its accept.
                state.last_active.get() + header_read
            } else if busy {
                // A response in progress is never idle: looked at again later.
                now + idle_timeout.min(header_read)
            } else {
                (state.last_active.get() + idle_timeout).min(now + header_read)
            });
        }
        let mut next = w.deadline.get();
        // Maintenance: a keep-alive connection idle for the grace closes; a busy one
        // after its response (which carries Connection: close); a new one serves its
        // first request with Connection: close. Looked at again every grace period.
        if self.maintenance.get() {
            let grace = match self.idle_rules().maintenance_grace {
                Some(grace) if state.http1.get() => grace,
                _ => Duration::ZERO,
            };
            let idle = requests > 0 && !busy && !pending;
            if idle && state.last_active.get() + grace <= now {
                state.request(Action::Graceful);
                return None;
            }
            let check = if idle {
                state.last_active.get() + grace
            } else {
                now + grace.max(Duration::from_millis(10))
            };
            next = next.min(check);
        }
        // An idle HTTP/1.1 connection gives its buffers back once it has been between
        // messages for RELEASE_IDLE_AFTER; a busy one, or one whose release was
        // refused, is looked at again a period later (a connection's task does not
        // tell the watch when a request ends).
        if state.http1.get() && requests > 0 && !state.released.get() {
            let release_at = if state.between_messages() {
                let last = state.last_active.get();
                w.release_asked.get().map_or(last, |asked| last.max(asked)) + RELEASE_IDLE_AFTER
            } else {
                now + RELEASE_IDLE_AFTER
            };
            next = next.min(release_at.max(now));
        }
        Some(next)
    }
}
