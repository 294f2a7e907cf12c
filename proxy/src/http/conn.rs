//! One downstream connection as the request path sees it: who the client is, what the
//! TLS handshake established, and the counters and flags the request handler and the
//! worker's connection watch share.

use std::cell::{Cell, OnceCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::clock::{InstantCell, OptInstantCell};

/// Per-connection facts and counters the request handler reads and updates.
pub(crate) struct ConnState {
    /// Client address (from the PROXY header when a trusted front sent one).
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// Listener index.
    pub listener: u32,
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
    /// HTTP/1.1: gives its buffers back when idle, and in maintenance closes only once
    /// idle for half the handover (HTTP/2's GOAWAY tells the client which streams were
    /// not taken, so an idle HTTP/2 connection closes at once). HTTP/1.1 until a
    /// protocol choice says otherwise.
    pub(crate) http1: Cell<bool>,
    /// Last time a request started or its response headers went out.
    pub last_active: InstantCell,
    /// Whether a request head is on its way, shared with the byte stream wrapper.
    pub head: Arc<HeadFlags>,
    /// Set when the connection should close after the current exchange.
    pub close: Cell<bool>,
    /// What the worker's watch keeps for this connection's deadlines.
    pub(crate) watch: WatchSlot,
    /// What the watch (or the request handler) asks the connection task to do.
    pub(crate) action: Cell<Action>,
    /// The connection task's waker, for the watch.
    pub(crate) waker: Cell<Option<Waker>>,
    /// TLS facts when the listener terminates TLS (boxed: a plain connection keeps a
    /// pointer, not the room of the facts, for its whole life).
    pub tls: Option<Box<TlsInfo>>,
    /// Process-unique connection number (`connection.id` for filters).
    pub id: u64,
    /// What few connections need (an upgrade, filters): made on first use, so the
    /// others keep one pointer for it.
    pub(crate) extras: OnceCell<Box<ConnExtras>>,
}

/// The parts of a connection's state most connections never use.
#[derive(Default)]
pub(crate) struct ConnExtras {
    /// Where an HTTP/1.1 upgrade's tunnel waits for the client's byte stream: set with
    /// the 101 (or CONNECT's 2xx), taken when hyper has sent it.
    pub(crate) upgrade: Cell<Option<tokio::sync::oneshot::Sender<DownstreamTunnel>>>,
    /// The connection's facts for filters, made by the first filtered request.
    pub filter_facts: OnceCell<Rc<crate::wasm::state::ConnFacts>>,
}

/// [`WatchSlot::head_seen_at`] when no pending head was seen.
pub(crate) const NO_HEAD_SEEN: u32 = u32::MAX;

/// What the worker's connection watch (`http::watch`) keeps per connection.
#[derive(Debug)]
pub(crate) struct WatchSlot {
    /// The connection's key in the watch's slab.
    pub(crate) key: Cell<u32>,
    /// The request count (its low 32 bits) when a pending head was last seen at a
    /// deadline ([`NO_HEAD_SEEN`] when none was): the same count at the next one means
    /// that head has been arriving for a whole period.
    pub(crate) head_seen_at: Cell<u32>,
    /// When the connection's next look is due; None once it was asked to close. A heap
    /// entry with another time is stale.
    pub(crate) next: OptInstantCell,
    /// The regular deadline worked out when it last passed (or at a `look_now`): the
    /// first head's, a later head's, or the idle one.
    pub(crate) deadline: InstantCell,
    /// When a release was last asked for (the connection may have been mid-message).
    pub(crate) release_asked: OptInstantCell,
}

impl WatchSlot {
    /// A slot for a connection accepted now, not yet watched.
    pub(crate) fn new() -> WatchSlot {
        WatchSlot {
            key: Cell::new(u32::MAX),
            head_seen_at: Cell::new(NO_HEAD_SEEN),
            next: OptInstantCell::none(),
            deadline: InstantCell::new(Instant::now()),
            release_asked: OptInstantCell::none(),
        }
    }
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

/// What the watch asks the connection task to do.
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

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState")
            .field("id", &self.id)
            .field("client", &self.client)
            .field("local", &self.local)
            .field("listener", &self.listener)
            .field("requests", &self.requests.get())
            .field("in_flight", &self.in_flight.get())
            .field("action", &self.action.get())
            .finish_non_exhaustive()
    }
}

impl ConnState {
    /// The state of a connection accepted now (HTTP/2 when `h2`), before its first
    /// request.
    pub(crate) fn accepted(
        id: u64,
        client: SocketAddr,
        local: SocketAddr,
        listener: u32,
        tls: Option<Box<TlsInfo>>,
        h2: bool,
    ) -> ConnState {
        ConnState {
            id,
            tls,
            local,
            client,
            listener,
            requests: Cell::new(0),
            in_flight: Cell::new(0),
            open_bodies: Cell::new(0),
            released: Cell::new(false),
            http1: Cell::new(!h2),
            last_active: InstantCell::new(Instant::now()),
            head: Arc::default(),
            close: Cell::new(false),
            watch: WatchSlot::new(),
            action: Cell::new(Action::Serve),
            waker: Cell::new(None),
            extras: OnceCell::new(),
        }
    }

    /// The connection's rarely used parts, made on first use.
    pub(crate) fn extras(&self) -> &ConnExtras {
        self.extras.get_or_init(Box::default)
    }

    /// The tunnel sender an HTTP/1.1 upgrade left, if any.
    pub(crate) fn take_upgrade(&self) -> Option<tokio::sync::oneshot::Sender<DownstreamTunnel>> {
        self.extras.get().and_then(|x| x.upgrade.take())
    }

    /// Remembers the connection task's waker for the watch (cloned only when it
    /// changed).
    pub(crate) fn keep_waker(&self, waker: &Waker) {
        let kept = match self.waker.take() {
            Some(w) if w.will_wake(waker) => w,
            _ => waker.clone(),
        };
        self.waker.set(Some(kept));
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

    /// Asks the connection task for `action` and wakes it.
    pub(crate) fn request(&self, action: Action) {
        self.action.set(action);
        if let Some(w) = self.waker.take() {
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

#[cfg(test)]
mod tests {
    /// An idle connection keeps its `ConnState` (in an `Rc`, two counts ahead of it)
    /// for as long as it stays open: 192 bytes is an allocator size class (the next is
    /// 224), and a field more would put every idle connection in the next one.
    #[test]
    fn a_connections_state_fits_in_192_bytes_with_its_counts() {
        let counts = 2 * std::mem::size_of::<usize>();
        assert!(counts + std::mem::size_of::<super::ConnState>() <= 192);
    }
}
