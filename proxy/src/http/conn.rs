//! One downstream connection as the request path sees it: who the client is, what the
//! TLS handshake established, and the counters and flags the request handler and the
//! connection's watcher share.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
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
    /// Bodies of this connection still moving after their handler returned: responses
    /// not yet sent whole, and request bodies still streaming upstream. While one is
    /// open, hyper is mid-message and the connection's buffers cannot be released.
    pub open_bodies: Cell<u32>,
    /// An idle HTTP/1.1 connection gave its buffers back and waits for its next bytes
    /// without hyper (see `serve`).
    pub released: Cell<bool>,
    /// Last time a request started or its response headers went out.
    pub last_active: Cell<Instant>,
    /// Whether a request head is on its way, shared with the byte stream wrapper.
    pub head: Arc<HeadFlags>,
    /// Set when the connection should close after the current exchange.
    pub close: Cell<bool>,
    /// Wakes the watcher when `close` is set, the first request arrives (so its timer
    /// switches from the header deadline to the idle deadline), or a released
    /// connection's next bytes arrive.
    pub wake: Notify,
    /// What the watcher asks the connection task to do.
    pub(crate) action: Cell<Action>,
    /// The connection task's waker, for the watcher.
    pub(crate) waker: RefCell<Option<Waker>>,
    /// Where an HTTP/1.1 upgrade's tunnel waits for the client's byte stream: set with
    /// the 101 (or CONNECT's 2xx), taken when hyper has sent it.
    pub(crate) upgrade: RefCell<Option<tokio::sync::oneshot::Sender<DownstreamTunnel>>>,
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

/// What the watcher asks the connection task to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Carry on.
    Serve,
    /// Finish the exchange in progress, then close.
    Graceful,
    /// Close now.
    Abort,
    /// Idle long enough: give hyper's buffers back if the connection is between
    /// messages (HTTP/1.1 only; a no-op otherwise).
    Release,
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

    /// Whether nothing of an HTTP/1.1 exchange is in progress: no handler running, no
    /// body moving either way, no new head arriving, every written byte flushed. Then
    /// hyper's connection holds nothing but its buffers and can be taken apart.
    pub(crate) fn between_messages(&self) -> bool {
        self.in_flight.get() == 0
            && self.open_bodies.get() == 0
            && !self.head.pending.load(Relaxed)
            && !self.head.unflushed.load(Relaxed)
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
    /// Bytes were written since the last completed flush.
    pub unflushed: std::sync::atomic::AtomicBool,
}

impl crate::upstream::request_body::BodyCount for ConnState {
    fn add_open(&self, delta: i32) {
        self.open_bodies.set(self.open_bodies.get().wrapping_add_signed(delta));
    }
}

/// The client's side of an HTTP/1.1 tunnel: the connection's byte stream, with any
/// bytes hyper read past the request head first.
pub(crate) type DownstreamTunnel = Box<dyn Tunnel>;

/// A byte stream a tunnel copies.
pub(crate) trait Tunnel: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Tunnel for T {}

impl std::fmt::Debug for dyn Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}
