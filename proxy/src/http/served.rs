//! What an HTTP connection owns whichever task serves it, or none: an idle HTTP/1.1
//! connection gives hyper's buffers back and waits for its next bytes outside the task
//! that served it ([`super::serve`], [`super::idle_lot`]), then a new serving task takes
//! it over.

use std::rc::Rc;

use crate::http::conn::ConnState;
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
