//! One downstream connection: hyper HTTP/1.1 (and h2c prior knowledge) with the
//! listener's limits, an idle keep-alive watchdog, request-head deadlines, the
//! per-connection request cap, and graceful close on drain.
//!
//! Deadlines live in one watcher task per connection rather than in per-request timers:
//! the first request's head must arrive within `header_read_timeout` of the accept; a
//! later head, once its first bytes arrived, within one to two `header_read_timeout`s
//! (the watcher looks once per period); an idle connection closes after `idle_timeout`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use tokio::sync::Notify;

use crate::exec::LocalExec;
use crate::http::conn::Action;
use crate::http::conn::ConnState;
use crate::http::conn::HeadFlags;
use crate::http::conn::TlsInfo;
use crate::stats::ListenerStats;
use crate::upstream::BoxError;
use crate::worker::Worker;

/// Serves HTTP on one (possibly TLS) connection until it closes. `h2` says ALPN chose
/// HTTP/2 (h2c with prior knowledge is detected from the preface instead).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<IO>(
    worker: &Rc<Worker>,
    idx: usize,
    io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    h2: bool,
    stats: &Arc<ListenerStats>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let lcfg = &worker.listeners[idx];
    let state = Rc::new(ConnState {
        id: worker.shared.conn_ids.fetch_add(1, Relaxed),
        tls,
        local,
        client: peer,
        listener: idx,
        requests: Cell::new(0),
        in_flight: Cell::new(0),
        last_active: Cell::new(Instant::now()),
        head: Arc::default(),
        close: Cell::new(false),
        wake: Notify::new(),
        action: Cell::new(Action::Serve),
        waker: RefCell::new(None),
        filter_facts: Default::default(),
    });

    // Timers and drain live in a separate watcher task, so the hot connection task only
    // polls hyper; the watcher flags an action and wakes it.
    // HTTP/2's GOAWAY tells the client which streams were not taken, so an idle h2
    // connection closes at once in maintenance; see `watch` for HTTP/1.1.
    let idle_grace = if h2 {
        Duration::ZERO
    } else {
        worker.shared.runtime.load().config.server.maintenance_handover / 2
    };
    let watcher = tokio::task::spawn_local(watch(
        state.clone(),
        worker.shared.shutdown.subscribe(),
        worker.shared.phase.subscribe(),
        idle_grace,
        Deadlines {
            header_read: lcfg.header_read_timeout,
            idle: lcfg.idle_timeout,
        },
        stats.clone(),
    ));
    let mut io = HeadWatch {
        io,
        flags: state.head.clone(),
        first: Bytes::new(),
    };
    // HTTP/2 over TLS is chosen by ALPN alone (RFC 9113 §3.3); a cleartext listener
    // that takes h2c looks at the first bytes for the preface.
    let h2 = if !h2 && lcfg.http2 && state.tls.is_none() {
        match until_action(&state, io.sniff_preface()).await {
            Some(Ok(h2)) => h2,
            // A read error, or the watcher's header deadline or drain before any byte.
            _ => return watcher.abort(),
        }
    } else {
        h2
    };
    let io = TokioIo::new(io);
    let (w, st) = (worker.clone(), state.clone());
    // Each request's future (a few KiB) is built in a heap slot that lives as long as
    // the request: hyper keeps room for one service future per HTTP/1.1 connection for
    // the connection's whole life, idle keep-alive included, and HTTP/2 moves it into a
    // task per stream. In a slot, both keep and move a pointer; the worker reuses the
    // slots of finished requests.
    let svc = service_fn(move |req| {
        crate::inplace::recycle_in_place(|| crate::http::request::handle(w.clone(), st.clone(), req))
    });
    // The connection task keeps the room of its largest state for its whole life: the
    // HTTP/2 connection (the larger) is boxed, the HTTP/1.1 one sits in the task.
    let result = if h2 {
        let mut builder = http2::Builder::new(LocalExec);
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(lcfg.max_header_bytes as u32)
            .max_concurrent_streams(256);
        let mut conn = Box::pin(builder.serve_connection(io, svc));
        drive(&state, conn.as_mut()).await
    } else {
        // No hyper header-read timer: it would cost a timer per request and also cut
        // idle keep-alive connections at `header_read_timeout`; the watcher keeps the
        // deadlines.
        let mut builder = http1::Builder::new();
        builder
            .max_buf_size(lcfg.max_header_bytes)
            .max_headers(lcfg.max_headers)
            .keep_alive(true)
            .writev(false);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        drive(&state, conn.as_mut()).await
    };
    watcher.abort();
    if let Err(e) = result {
        classify(&e, stats);
    }
}

/// Polls a hyper connection until it ends, starting a graceful close or aborting when
/// the watcher asks for it. The connection stays where the caller pinned it (moved in,
/// it would take its room twice in the caller's task).
pub(crate) async fn drive<C, E>(state: &ConnState, mut conn: Pin<&mut C>) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + Graceful,
{
    let mut closing = false;
    std::future::poll_fn(|cx| {
        match state.action.get() {
            Action::Abort => return Poll::Ready(Ok(())),
            Action::Graceful if !closing => {
                conn.as_mut().graceful();
                closing = true;
            }
            _ => {}
        }
        let r = conn.as_mut().poll(cx);
        if r.is_pending() {
            state.keep_waker(cx.waker());
        }
        r
    })
    .await
}

/// Polls `fut` until it ends, or gives up (None) as soon as the watcher asks for any
/// action: before a protocol is chosen there is no exchange to finish gracefully.
async fn until_action<F: Future>(state: &ConnState, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if state.action.get() != Action::Serve {
            return Poll::Ready(None);
        }
        let r = fut.as_mut().poll(cx);
        if r.is_pending() {
            state.keep_waker(cx.waker());
        }
        r.map(Some)
    })
    .await
}

/// The listener's deadlines the watcher keeps (copied: a connection holds no copy of
/// the listener's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// `header_read_timeout`.
    pub(crate) header_read: Duration,
    /// `idle_timeout`.
    pub(crate) idle: Duration,
}

/// A connection that can be asked to finish its exchanges and close.
pub(crate) trait Graceful {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E, B> Graceful for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The connection's timers: the first-request deadline (header_read_timeout, which
/// also covers a client that sends nothing), later request heads (checked once per
/// header_read_timeout), the idle keep-alive deadline, the request cap, maintenance and
/// the process drain. Sleeps until one of them matters.
///
/// Maintenance closes a keep-alive connection once it has been idle for `idle_grace`
/// (half the handover for HTTP/1.1). A busy client's connection is never idle that long:
/// its next response carries `Connection: close` and it reconnects without losing a
/// request. Closing every idle connection at once would race such a client's next
/// request, which is lost unless the client retries it.
pub(crate) async fn watch(
    state: Rc<ConnState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut phase: tokio::sync::watch::Receiver<crate::phase::NodePhase>,
    idle_grace: Duration,
    deadlines: Deadlines,
    stats: Arc<ListenerStats>,
) {
    let born = Instant::now();
    // The request count when a pending head was last seen: the same count at the next
    // look means that head has been arriving for at least one period.
    let mut head_seen_at: Option<u64> = None;
    loop {
        let now = Instant::now();
        let deadline = if state.requests.get() == 0 {
            born + deadlines.header_read
        } else if state.in_flight.get() > 0 {
            // Busy: look again later (a response in progress is never idle).
            now + deadlines.idle.min(deadlines.header_read)
        } else {
            (state.last_active.get() + deadlines.idle).min(now + deadlines.header_read)
        };
        // Maintenance: a keep-alive connection idle for `idle_grace` closes; a busy one
        // after its response (which carries Connection: close); a new one serves its
        // first request with Connection: close. Looked at again every `idle_grace`.
        let in_maintenance = phase.borrow_and_update().asks_clients_to_close();
        let idle = state.requests.get() > 0 && state.in_flight.get() == 0 && !state.head.pending.load(Relaxed);
        if in_maintenance && idle && state.last_active.get() + idle_grace <= now {
            return state.request(Action::Graceful);
        }
        let maintenance_check = if idle {
            state.last_active.get() + idle_grace
        } else {
            now + idle_grace.max(Duration::from_millis(10))
        };
        tokio::select! {
            _ = shutdown.wait_for(|d| *d) => return state.request(Action::Graceful),
            _ = phase.changed(), if !in_maintenance => {}
            _ = tokio::time::sleep_until(maintenance_check.into()), if in_maintenance => {}
            _ = state.wake.notified() => {
                if state.close.get() {
                    return state.request(Action::Graceful);
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                let requests = state.requests.get();
                if requests == 0 {
                    // Nothing complete arrived in time (slowloris or an idle opener).
                    stats.header_timeouts.fetch_add(1, Relaxed);
                    return state.request(Action::Abort);
                }
                let pending = state.head.pending.load(Relaxed);
                if state.in_flight.get() > 0 || !pending {
                    head_seen_at = None;
                } else if head_seen_at == Some(requests) {
                    // A later request's head has been trickling in for a whole period.
                    stats.header_timeouts.fetch_add(1, Relaxed);
                    return state.request(Action::Abort);
                } else {
                    head_seen_at = Some(requests);
                }
                if state.in_flight.get() == 0
                    && !pending
                    && state.last_active.get() + deadlines.idle <= Instant::now()
                {
                    return state.request(Action::Graceful);
                }
            }
        }
    }
}

/// The downstream byte stream, noting when bytes arrive between requests (the start of
/// the next request head) for the watcher's head deadline. One flag write per read; no
/// clock read, no timer.
pub(crate) struct HeadWatch<IO> {
    io: IO,
    flags: Arc<HeadFlags>,
    /// Bytes read to choose the protocol, handed to the first reads.
    first: Bytes,
}

/// The client preface that opens HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most the protocol choice reads: hyper's first read buffer, so the whole first
/// read reaches hyper in one piece.
const FIRST_READ: usize = 8192;

impl<IO: tokio::io::AsyncRead + Unpin> HeadWatch<IO> {
    /// Reads until the first bytes either are the HTTP/2 preface (true) or cannot be
    /// (false, also at end of stream). What it read stays to be read again, in one
    /// piece: handing hyper a short first piece would make its read buffer grow to
    /// twice its size for the connection's life.
    async fn sniff_preface(&mut self) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(FIRST_READ);
        loop {
            if self.io.read_buf(&mut buf).await? == 0 {
                self.first = buf.freeze();
                return Ok(false);
            }
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
                let h2 = n == H2_PREFACE.len() && buf[..n] == *H2_PREFACE;
                self.first = buf.freeze();
                return Ok(h2);
            }
        }
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HeadWatch<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first.split_to(n));
            if self.first.is_empty() {
                // Let the read buffer go now, not with the connection.
                self.first = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && !self.flags.busy.load(Relaxed) {
            self.flags.pending.store(true, Relaxed);
        }
        r
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HeadWatch<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts malformed, oversized and timed-out requests (hyper already answered 400/431
/// or closed the connection).
pub(crate) fn classify(e: &(dyn std::error::Error + 'static), stats: &ListenerStats) {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                stats.oversized.fetch_add(1, Relaxed);
            } else if h.is_parse() {
                stats.malformed.fetch_add(1, Relaxed);
            } else if h.is_timeout() {
                stats.header_timeouts.fetch_add(1, Relaxed);
            }
            tracing::debug!(error = %h, "downstream connection error");
            return;
        }
        cur = err.source();
    }
}
