//! One downstream connection as the request path sees it: who the client is, what the
//! TLS handshake established, and the counters and flags the request handler and the
//! connection's watcher share.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use tokio::sync::Notify;

/// Per-connection facts and counters the request handler reads and updates.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Client address (from the PROXY header when a trusted front sent one).
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Listener index.
    pub listener: usize,
    /// Requests started on this connection.
    pub requests: Cell<u64>,
    /// Requests whose handler has not returned yet.
    pub in_flight: Cell<u32>,
    /// Last time a request started or its response headers went out.
    pub last_active: Cell<Instant>,
    /// Whether a request head is on its way, shared with the byte stream wrapper.
    pub head: Arc<HeadFlags>,
    /// Set when the connection should close after the current exchange.
    pub close: Cell<bool>,
    /// Wakes the watcher when `close` is set or the first request arrives (so its timer
    /// switches from the header deadline to the idle deadline).
    pub wake: Notify,
    /// What the watcher asks the connection task to do.
    pub(crate) action: Cell<Action>,
    /// The connection task's waker, for the watcher.
    pub(crate) waker: RefCell<Option<Waker>>,
    /// TLS facts when the listener terminates TLS.
    pub tls: Option<TlsInfo>,
    /// Process-unique connection number (`connection.id` for filters).
    pub id: u64,
    /// The connection's facts for filters, made by the first filtered request.
    pub filter_facts: std::cell::OnceCell<Rc<crate::wasm::state::ConnFacts>>,
}

/// What the TLS handshake established.
#[derive(Debug, Clone)]
pub(crate) struct TlsInfo {
    /// Server name the client asked for.
    pub sni: Option<String>,
    /// Subject of the verified client certificate (mTLS), as a header value.
    pub client_subject: Option<http::HeaderValue>,
    /// Negotiated protocol version (`TLSv1.3`, `TLSv1.2`).
    pub version: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Serve,
    Graceful,
    Abort,
}

impl ConnState {
    /// Remembers the connection task's waker for the watcher (cloned only when it
    /// changed).
    pub(crate) fn keep_waker(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    pub(crate) fn request(&self, action: Action) {
        self.action.set(action);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Request-head progress of a connection, written by the request handler and the
/// byte stream (atomics: the stream must be `Send` for upgrades; never contended).
#[derive(Debug, Default)]
pub(crate) struct HeadFlags {
    /// A request is in flight (its bytes are body bytes, not a new head).
    pub busy: std::sync::atomic::AtomicBool,
    /// Bytes arrived while no request was in flight: a request head is on its way.
    pub pending: std::sync::atomic::AtomicBool,
}
