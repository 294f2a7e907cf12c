//! One downstream connection: hyper HTTP/1.1 (and h2c prior knowledge) with the
//! listener's limits, an idle keep-alive watchdog, request-head deadlines, the
//! per-connection request cap, and graceful close on drain.
//!
//! Deadlines are kept by the worker's watch ([`crate::http::watch`]) rather than by
//! per-request timers; it asks the connection's task for an action ([`Action`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::exec::LocalExec;
use crate::http::body::ProxyBody;
use crate::http::conn::Action;
use crate::http::conn::ConnState;
use crate::http::conn::HeadFlags;
use crate::http::conn::TlsInfo;
use crate::http::idle_lot::Parked;
use crate::http::served::Served;
use crate::send_batch::{BatchedStream, ReadReady};
use crate::shared::OpenConn;
use crate::stats::ListenerStats;
use crate::upstream::BoxError;
use crate::worker::Worker;

/// Serves HTTP on one (possibly TLS) connection until it closes, or until an idle
/// HTTP/1.1 connection parks and other tasks take it over ([`serve_http1`]). `h2` says
/// ALPN chose HTTP/2 (h2c with prior knowledge is detected from the preface instead).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<IO>(
    worker: &Rc<Worker>,
    idx: usize,
    io: IO,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    h2: bool,
    open: OpenConn,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let lcfg = &worker.listeners[idx];
    let id = worker.shared.conn_ids.fetch_add(1, Relaxed);
    let state = Rc::new(ConnState::accepted(id, peer, local, idx as u32, tls.map(Box::new), h2));

    // Deadlines, drain and maintenance are the worker's watch's: it flags an action
    // and wakes this task, which only polls hyper.
    let watched = crate::http::watch::watch(&state);
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
            // A read error, or the header deadline or drain before any byte.
            _ => return,
        }
    } else {
        h2
    };
    state.http1.set(!h2);
    let conn = Served {
        worker: worker.clone(),
        state,
        open,
        _watched: watched,
    };
    if !h2 {
        return serve_http1(conn, io).await;
    }
    // The connection task keeps the room of its largest state for its whole life, so
    // hyper's connection is boxed.
    let mut builder = http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(lcfg.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let mut hyper_conn = Box::pin(builder.serve_connection(TokioIo::new(io), conn.service()));
    if let Err(e) = drive(&conn.state, hyper_conn.as_mut()).await {
        classify(&e, &conn.open.stats);
    }
}

impl Served {
    /// The request handler as hyper's service. Each request's future (a few KiB) is
    /// built in a heap slot that lives as long as the request: hyper keeps room for one
    /// service future per HTTP/1.1 connection for the connection's whole life, and
    /// HTTP/2 moves it into a task per stream. In a slot, both keep and move a pointer;
    /// the worker reuses the slots of finished requests.
    fn service(
        &self,
    ) -> impl hyper::service::HttpService<Incoming, ResBody = ProxyBody, Error = std::convert::Infallible, Future: Unpin>
           + Unpin
           + 'static {
        let (w, st) = (self.worker.clone(), self.state.clone());
        service_fn(move |req| {
            crate::inplace::recycle_in_place(|| crate::http::request::handle(w.clone(), st.clone(), req))
        })
    }
}

/// Polls a hyper connection until it ends, starting a graceful close or aborting when
/// the watch asks for it. The connection stays where the caller pinned it (moved in,
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

/// How long a closing connection may take to send its TLS close_notify and FIN.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Serves HTTP/1.1 until the connection closes, is upgraded, or parks.
///
/// When the watch finds the connection idle for [`RELEASE_IDLE_AFTER`](crate::http::watch::RELEASE_IDLE_AFTER) and nothing
/// of an exchange is in progress ([`ConnState::between_messages`]), hyper's connection
/// is taken apart (its buffers, its cached header map) and the connection parks
/// ([`park`]): outside tokio in the worker's lot, or (TLS) in a small task of its own,
/// and this task ends, for a task keeps the room of its largest state (most of a KiB
/// here) for its whole life.
/// The next bytes start a new serving task, whose fresh hyper connection reads them
/// first. An upgrade (101, or 2xx to CONNECT) hands the byte stream, with any bytes
/// hyper read past the request, to the tunnel waiting in [`ConnState::upgrade`].
async fn serve_http1<IO>(conn: Served, mut io: HeadWatch<IO>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let state = &*conn.state;
    let lcfg = &conn.worker.listeners[state.listener as usize];
    let mut svc = conn.service();
    loop {
        // Boxed: in the task, hyper's connection would keep its room (most of a KiB)
        // while a closing connection shuts down; this costs an allocation per rebuild.
        // The builder is a temporary, so it takes no room in the task either.
        let mut hyper_conn = Box::new(http1_builder(lcfg).serve_connection(TokioIo::new(io), svc));
        let end = drive_http1(state, &mut hyper_conn).await;
        let http1::Parts {
            io: tokio_io,
            read_buf,
            service,
            ..
        } = hyper_conn.into_parts();
        (io, svc) = (tokio_io.into_inner(), service);
        // Bytes hyper read and did not parse are read again first. An empty `read_buf`
        // still owns hyper's whole read buffer: it goes now, not with the connection.
        if read_buf.is_empty() {
            drop(read_buf);
        } else {
            io.first = read_buf;
        }
        match end {
            Http1End::Aborted => return,
            Http1End::Closed(Err(e)) => return classify(&e, &conn.open.stats),
            Http1End::Closed(Ok(())) => {
                if let Some(tunnel) = state.take_upgrade() {
                    let _ = tunnel.send(Box::new(io));
                    return;
                }
                return shut_down(&mut io).await;
            }
            Http1End::Release => {
                conn.open.stats.idle_releases.fetch_add(1, Relaxed);
                if !io.first.is_empty() {
                    continue;
                }
                io.io.shed();
                return park(conn, io);
            }
        }
    }
}

/// An idle HTTP/1.1 connection waits for its next bytes: a plain one in the worker's
/// lot, outside tokio and without its connection state ([`crate::http::idle_lot`]); a
/// TLS one (its session stays in memory), or one the lot cannot take, in a small task of
/// its own ([`parked`]).
fn park<IO>(conn: Served, io: HeadWatch<IO>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let HeadWatch { io, flags, first } = io;
    match io.detach() {
        Err(io) => {
            tokio::task::spawn_local(parked(conn, HeadWatch { io, flags, first }));
        }
        Ok(Ok(sock)) => {
            drop(flags);
            let (worker, idle) = conn.into_parked();
            let rules = crate::http::watch::idle_rules();
            if let Err((idle, sock)) = crate::http::idle_lot::park(&worker, idle, sock, resume, rules) {
                match BatchedStream::attach(sock) {
                    Ok(io) => {
                        let conn = Served::revive(worker, idle, false);
                        let flags = conn.state.head.clone();
                        tokio::task::spawn_local(parked(conn, HeadWatch { io, flags, first }));
                    }
                    Err(e) => tracing::debug!(error = %e, "an idle connection could not park"),
                }
            }
        }
        Ok(Err(e)) => tracing::debug!(error = %e, "an idle connection could not leave tokio"),
    }
}

/// A connection parked in the worker's lot has bytes to read: back in tokio, with its
/// state made again, watched again (the head deadline, the next release), and a new
/// serving task takes it over.
fn resume(worker: &Rc<Worker>, idle: Parked, sock: std::net::TcpStream) {
    match BatchedStream::attach(sock) {
        Ok(io) => {
            let conn = Served::revive(worker.clone(), idle, true);
            let flags = conn.state.head.clone();
            let first = Bytes::new();
            tokio::task::spawn_local(serve_http1(conn, HeadWatch { io, flags, first }));
        }
        Err(e) => tracing::debug!(error = %e, "a parked connection could not come back"),
    }
}

/// An HTTP/1.1 connection parked in a task (TLS, or one the worker's lot could not
/// take): no hyper connection, no buffer, and a task only as large as the wait for
/// readability. Its next bytes start a new [`serve_http1`] task;
/// the end of the stream, a socket error or the watch (idle timeout, drain,
/// maintenance) close it.
///
/// A function returning an async block rather than an async fn: an async fn keeps a
/// second copy of its arguments in its state, and this state is what every parked
/// connection holds.
#[allow(clippy::manual_async_fn)]
fn parked<IO>(conn: Served, mut io: HeadWatch<IO>) -> impl Future<Output = ()> + 'static
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    async move {
        let state = &*conn.state;
        state.released.set(true);
        let next = until_action(state, io.read_first()).await;
        state.released.set(false);
        match next {
            // The next request's first bytes: the watch looks again (the head deadline,
            // the next release), and a serving task takes the connection over.
            Some(Ok(true)) => {
                crate::http::watch::look_now(state);
                tokio::task::spawn_local(serve_http1(conn, io));
            }
            // The client closed, or the socket failed.
            Some(Ok(false) | Err(_)) => {}
            // Idle timeout, drain, maintenance: an idle connection just closes. Boxed: the
            // timer would otherwise take room in every parked connection's task.
            None => {
                if state.action.get() == Action::Graceful {
                    Box::pin(shut_down(&mut io)).await;
                }
            }
        }
    }
}

/// hyper's HTTP/1.1 settings for a listener. No hyper header-read timer: it would cost
/// a timer per request and also cut idle keep-alive connections at
/// `header_read_timeout`; the watch keeps the deadlines.
fn http1_builder(lcfg: &crate::config::ListenerConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(lcfg.max_header_bytes)
        .max_headers(lcfg.max_headers)
        .keep_alive(true)
        .writev(false);
    builder
}

/// Closes the byte stream (TLS close_notify, FIN), waiting at most [`SHUTDOWN_WAIT`].
async fn shut_down<IO: tokio::io::AsyncWrite + Unpin>(io: &mut IO) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, io.shutdown()).await;
}

/// How one hyper HTTP/1.1 connection stopped being polled.
enum Http1End {
    /// hyper finished (keep-alive off, the client closed, an upgrade, or an error).
    Closed(Result<(), hyper::Error>),
    /// The watch aborted the connection.
    Aborted,
    /// Idle between messages: its buffers can go.
    Release,
}

/// [`drive`] for HTTP/1.1, which also stops between messages when the watch asks for
/// a release, and does not shut the byte stream down (an upgrade takes it over).
async fn drive_http1<I, S>(state: &ConnState, conn: &mut http1::Connection<I, S>) -> Http1End
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody> + Unpin,
    S::Future: Unpin,
    S::Error: Into<BoxError>,
{
    let mut closing = false;
    std::future::poll_fn(|cx| {
        match state.action.get() {
            Action::Abort => return Poll::Ready(Http1End::Aborted),
            Action::Graceful if !closing => {
                Pin::new(&mut *conn).graceful_shutdown();
                closing = true;
            }
            _ => {}
        }
        if let Poll::Ready(r) = conn.poll_without_shutdown(cx) {
            return Poll::Ready(Http1End::Closed(r));
        }
        if state.action.get() == Action::Release {
            state.action.set(Action::Serve);
            if !closing && state.between_messages() {
                return Poll::Ready(Http1End::Release);
            }
        }
        state.keep_waker(cx.waker());
        Poll::Pending
    })
    .await
}

/// Polls `fut` until it ends, or gives up (None) as soon as the watch asks for any
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

/// A connection that can be asked to finish its exchanges and close.
pub(crate) trait Graceful {
    fn graceful(self: Pin<&mut Self>);
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

/// The downstream byte stream, noting when bytes arrive between requests (the start of
/// the next request head) for the watch's head deadline. One flag write per read; no
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

    /// Waits for the next bytes of a connection that gave its buffers back, and keeps
    /// them for the next reads; false at end of stream. The read buffer is taken only
    /// once the socket is readable, so a waiting connection holds none. The bytes are
    /// the start of a request head, as far as the watch's head deadline is concerned.
    async fn read_first(&mut self) -> std::io::Result<bool>
    where
        IO: ReadReady,
    {
        std::future::poll_fn(|cx| {
            std::task::ready!(self.io.poll_read_ready(cx))?;
            let mut buf = bytes::BytesMut::with_capacity(FIRST_READ);
            let mut rb = tokio::io::ReadBuf::uninit(buf.spare_capacity_mut());
            // Pending: the readiness was stale (or TLS has only part of a record); the
            // read registered for the next.
            std::task::ready!(std::pin::Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(false));
            }
            // SAFETY: the read initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(n) };
            self.flags.pending.store(true, Relaxed);
            self.first = buf.freeze();
            Poll::Ready(Ok(true))
        })
        .await
    }
}

impl<IO: ReadReady> ReadReady for tokio_rustls::server::TlsStream<IO> {
    /// The socket's readiness: a connection waits here only after hyper found no
    /// plaintext left in the TLS session.
    fn poll_read_ready(&self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }

    fn shed(&mut self) {
        self.get_mut().0.shed();
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

impl<IO> HeadWatch<IO> {
    /// Notes bytes written and not yet flushed (see [`ConnState::between_messages`]).
    fn note_written(&self, r: &Poll<std::io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.flags.unflushed.store(true, Relaxed);
        }
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HeadWatch<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_written(&r);
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_written(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.flags.unflushed.store(false, Relaxed);
        }
        r
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
