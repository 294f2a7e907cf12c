//! What an HTTP connection owns whichever task serves it, or none: an idle HTTP/1.1
//! connection gives hyper's buffers back and waits for its next bytes outside the task
//! that served it ([`super::serve`], [`super::idle_lot`]), then a new serving task takes
//! it over.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use crate::http::conn::ConnState;
use crate::http::idle_lot::Parked;
use crate::http::watch::Watched;
use crate::shared::OpenConn;
use crate::worker::Worker;

/// One HTTP connection's worker, state and guards, moved from task to lot to task.
pub(crate) struct Served {
    /// The worker serving it.
    pub(super) worker: Rc<Worker>,
    /// Its facts and the flags it shares with the watch and the request handler.
    pub(super) state: Rc<ConnState>,
    /// Counts the connection open until it closes.
    pub(super) open: OpenConn,
    /// Keeps the connection in the worker's watch until it closes.
    pub(super) _watched: Watched,
}

impl Served {
    /// What the connection keeps while it waits in the worker's lot: its state, head
    /// flags and place in the watch go (the watch forgets it here).
    pub(super) fn into_parked(self) -> (Rc<Worker>, Parked) {
        let Served {
            worker, state, open, ..
        } = self;
        let parked = Parked {
            id: state.id,
            requests: state.requests.get(),
            last_active_ns: state.last_active.ns(),
            client: state.client,
            local: state.local,
            listener: state.listener,
            open,
        };
        (worker, parked)
    }

    /// A plain HTTP/1.1 connection back from the worker's lot: its state made again
    /// from what it kept, and watched again. `bytes_waiting`: its next request's first
    /// bytes arrived (a head is on its way, for the watch's head deadline).
    pub(super) fn revive(worker: Rc<Worker>, idle: Parked, bytes_waiting: bool) -> Served {
        let state = ConnState::accepted(idle.id, idle.client, idle.local, idle.listener, None, false);
        state.requests.set(idle.requests);
        state.last_active.set_ns(idle.last_active_ns);
        state.head.pending.store(bytes_waiting, Relaxed);
        let state = Rc::new(state);
        let watched = crate::http::watch::watch(&state);
        Served {
            worker,
            state,
            open: idle.open,
            _watched: watched,
        }
    }
}
