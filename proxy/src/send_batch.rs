//! Sends gathered per worker tick.
//!
//! A worker serves many connections from one thread. When every task wrote its bytes the
//! moment it produced them, each write reached a peer (client, backend) that had just
//! gone back to sleep, and each such write paid for waking it. Here a task's small
//! writes are queued on its connection's [`Outbox`] and the worker's flusher task, which
//! runs after the tasks that were ready with it, writes every queued connection in one
//! pass: the peers are woken once per pass instead of once per write, as an event-loop
//! proxy (HAProxy, nginx) does by design.
//!
//! What the caller sees stays that of a socket: a write is accepted (and its bytes will
//! go out in order) or refused with backpressure; a flush reports only a failure already
//! known. Large writes, and writes behind bytes the flusher could not place, go out
//! directly from the connection's own task, which then waits for the socket as usual.
//! Threads without a flusher (the admin and control runtimes, tests) write directly.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes a connection keeps queued; a write that would pass it goes out directly,
/// after what is queued (bulk transfers gain nothing from waiting).
pub(crate) const QUEUE_LIMIT: usize = 16 * 1024;
/// Queue capacity a connection keeps once its queue is sent; a larger one is freed, so
/// idle keep-alive connections do not each hold the largest answer they once queued.
const KEEP_CAPACITY: usize = 4 * 1024;

/// A TCP stream whose writes wait, queued, for the end of the worker's tick.
#[derive(Debug)]
pub(crate) struct BatchedStream {
    sock: TcpStream,
    out: Arc<Outbox>,
}

/// The bytes a connection has written that are not yet on the socket, shared with the
/// worker's batch (behind a mutex only because hyper wants `Send` streams: a worker's
/// connections never leave its thread, so it is never contended).
#[derive(Debug)]
struct Outbox {
    fd: RawFd,
    /// The flusher stalled or failed on this connection: its task must look.
    attention: AtomicBool,
    state: Mutex<OutState>,
}

#[derive(Debug, Default)]
struct OutState {
    /// Written by the task, not yet sent.
    buf: Vec<u8>,
    /// In the worker's batch, waiting for the flusher.
    queued: bool,
    /// The socket was full when the flusher came: the task sends `buf` itself.
    stalled: bool,
    /// The flusher's send failed; every later operation reports it.
    error: Option<io::ErrorKind>,
    /// The stream is gone; the fd may already belong to another socket.
    closed: bool,
    /// The connection's task, woken when the flusher stalls or fails.
    waker: Option<Waker>,
}

impl OutState {
    /// Everything queued was sent.
    fn emptied(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// This worker's connections with queued bytes, and its flusher.
struct Batch {
    queue: Vec<Arc<Outbox>>,
    flusher: Option<Waker>,
    /// The flusher has been woken and has not run yet.
    scheduled: bool,
}

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { queue: Vec::new(), flusher: None, scheduled: false })
    };
}

/// The worker's flusher: spawned once on each worker's `LocalSet`, it writes the
/// queued connections whenever some are queued. Woken by the first write of a pass, it
/// runs after the tasks already ready, so one pass carries all their writes. Never
/// returns; dropping it (the worker's runtime ends) sends what is queued and lets this
/// thread's streams write directly again.
pub(crate) async fn run_flusher() {
    struct Unregister;
    impl Drop for Unregister {
        fn drop(&mut self) {
            let queue = BATCH.with(|b| {
                let mut b = b.borrow_mut();
                b.flusher = None;
                b.scheduled = false;
                std::mem::take(&mut b.queue)
            });
            for out in queue {
                out.flush();
            }
        }
    }
    let _unregister = Unregister;
    let mut work: Vec<Arc<Outbox>> = Vec::new();
    std::future::poll_fn(|cx| {
        BATCH.with(|b| {
            let mut b = b.borrow_mut();
            if !b.flusher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                b.flusher = Some(cx.waker().clone());
            }
            b.scheduled = false;
            std::mem::swap(&mut b.queue, &mut work);
        });
        for out in work.drain(..) {
            out.flush();
        }
        Poll::<()>::Pending
    })
    .await
}

/// Puts `out` in this thread's batch; false if the thread has no flusher.
fn enqueue(out: &Arc<Outbox>) -> bool {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let Some(flusher) = &b.flusher else { return false };
        if !b.scheduled {
            flusher.wake_by_ref();
            b.scheduled = true;
        }
        b.queue.push(out.clone());
        true
    })
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flusher's part: sends the queued bytes without waiting. A full socket leaves
    /// the rest to the connection's task (woken), as does a failure.
    fn flush(&self) {
        let mut s = self.lock();
        s.queued = false;
        if s.closed || s.stalled || s.buf.is_empty() {
            return;
        }
        match send_now(self.fd, &s.buf) {
            Ok(n) if n == s.buf.len() => return s.emptied(),
            Ok(n) => {
                s.buf.drain(..n);
                s.stalled = true;
            }
            Err(e) => {
                s.buf.clear();
                s.error = Some(e.kind());
            }
        }
        self.attention.store(true, Relaxed);
        if let Some(w) = &s.waker {
            w.wake_by_ref();
        }
    }
}

/// Sends as much of `buf` as the socket takes now; `Ok(n < len)` when it is full.
fn send_now(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        let rest = &buf[sent..];
        // SAFETY: `fd` is the open socket of a live `BatchedStream` (checked by the
        // caller through `closed` under the lock); `rest` is valid for its length.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(sent),
                _ => return Err(e),
            }
        }
        sent += n as usize;
    }
    Ok(sent)
}

impl BatchedStream {
    /// Wraps a connected stream.
    pub(crate) fn new(sock: TcpStream) -> Self {
        let fd = sock.as_raw_fd();
        BatchedStream {
            sock,
            out: Arc::new(Outbox {
                fd,
                attention: AtomicBool::new(false),
                state: Mutex::new(OutState::default()),
            }),
        }
    }

    /// A socket [`ReadReady::detach`] took out of tokio, back in it (on this thread's
    /// runtime), with a new, empty write queue.
    pub(crate) fn attach(sock: std::net::TcpStream) -> io::Result<Self> {
        TcpStream::from_std(sock).map(Self::new)
    }

    /// Waits until a read would not block, to read the first bytes without a buffer
    /// held across the wait ([`crate::tls::accept`]).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    /// Reads what the socket holds now into `buf`, which need not be initialised (a
    /// zeroed 4 KiB buffer would cost more than the read's copy), and returns the
    /// bytes read: empty at the end of the stream, `WouldBlock` when there were none
    /// (readiness was stale).
    pub(crate) fn try_read_uninit<'b>(&self, buf: &'b mut [std::mem::MaybeUninit<u8>]) -> io::Result<&'b [u8]> {
        let n = self.sock.try_read_buf(&mut &mut buf[..])?;
        // SAFETY: `try_read_buf` read `n` bytes into the start of `buf` (it advances
        // the slice by what `read(2)` returned), so they are initialised.
        Ok(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) })
    }

    /// Sends what is queued from this task, waiting for the socket if it is full.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.out.lock();
        if let Some(k) = s.error {
            return Poll::Ready(Err(k.into()));
        }
        while !s.buf.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.sock).poll_write(cx, &s.buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            s.buf.drain(..n);
        }
        s.emptied();
        s.stalled = false;
        self.out.attention.store(false, Relaxed);
        Poll::Ready(Ok(()))
    }

    /// Queues `bufs` (total `len`) if they fit; `None` when they must go out directly
    /// (after what is queued) because they are large or nobody would flush them.
    fn try_queue(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>], len: usize) -> Option<io::Result<usize>> {
        let mut s = self.out.lock();
        if let Some(k) = s.error {
            return Some(Err(k.into()));
        }
        if s.stalled || s.buf.len() + len > QUEUE_LIMIT {
            return None;
        }
        if !s.queued {
            if !enqueue(&self.out) {
                return None;
            }
            s.queued = true;
        }
        for b in bufs {
            s.buf.extend_from_slice(b);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Some(Ok(len))
    }

    /// The write path shared by plain and vectored writes: `Some(n)` when `bufs` were
    /// queued, `None` when they must be written directly (what was queued is sent first).
    fn poll_queue(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        len: usize,
    ) -> Poll<io::Result<Option<usize>>> {
        if let Some(r) = self.try_queue(cx, bufs, len) {
            return Poll::Ready(r.map(Some));
        }
        std::task::ready!(self.poll_drain(cx))?;
        if len < QUEUE_LIMIT {
            if let Some(r) = self.try_queue(cx, bufs, len) {
                return Poll::Ready(r.map(Some));
            }
        }
        Poll::Ready(Ok(None))
    }
}

/// A byte stream that can say it has bytes to read without being handed a buffer to
/// read them into (an idle connection waits for its next request holding none).
pub(crate) trait ReadReady {
    /// Ready once a read would not block (bytes, end of stream or an error).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The connection goes idle and its serving task ends: let go of that task's waker
    /// (a waker keeps its task's memory) and of write-queue capacity, when nothing is
    /// queued. The next write takes both again.
    fn shed(&mut self);

    /// Leaves tokio for good: the plain socket, for an idle connection to wait for its
    /// next bytes in the worker's lot ([`crate::http::idle_lot`]) holding nothing else.
    /// `Err(self)` when the stream cannot (a TLS session lives in memory; bytes are
    /// still queued); `Ok(Err(_))` when the socket failed to leave (it is closed).
    fn detach(self) -> Result<io::Result<std::net::TcpStream>, Self>
    where
        Self: Sized,
    {
        Err(self)
    }
}

impl ReadReady for BatchedStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sock.poll_read_ready(cx)
    }

    fn shed(&mut self) {
        let mut s = self.out.lock();
        if s.buf.is_empty() && !s.queued && !s.stalled {
            s.buf = Vec::new();
            s.waker = None;
        }
    }

    /// The write queue goes too ([`BatchedStream::attach`] makes a new one): only when
    /// it is empty, not in the batch and has not failed.
    fn detach(self) -> Result<io::Result<std::net::TcpStream>, Self> {
        {
            let mut s = self.out.lock();
            if !s.buf.is_empty() || s.queued || s.stalled || s.error.is_some() {
                drop(s);
                return Err(self);
            }
            // The flusher never touches this fd through this queue again.
            s.closed = true;
        }
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so each field is moved out
        // exactly once (`Drop for BatchedStream` would only mark the queue closed and
        // send nothing: it is empty).
        let (sock, out) = unsafe { (std::ptr::read(&this.sock), std::ptr::read(&this.out)) };
        drop(out);
        Ok(sock.into_std())
    }
}

impl AsyncRead for BatchedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.out.attention.load(Relaxed) {
            // Waiting on the socket to send the rest registers this task for it too.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.sock).poll_read(cx, buf)
    }
}

impl AsyncWrite for BatchedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match std::task::ready!(this.poll_queue(cx, &[IoSlice::new(buf)], buf.len()))? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut this.sock).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        match std::task::ready!(this.poll_queue(cx, bufs, len))? {
            Some(n) => Poll::Ready(Ok(n)),
            None => Pin::new(&mut this.sock).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Done once nothing is stalled: queued bytes leave with the worker's pass.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.out.attention.load(Relaxed) {
            std::task::ready!(this.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Sends everything queued, then shuts the write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.sock).poll_shutdown(cx)
    }
}

impl Drop for BatchedStream {
    /// Queued bytes still go out if the socket takes them now (a response the
    /// connection was closed right after); the flusher never touches the fd again.
    fn drop(&mut self) {
        let mut s = self.out.lock();
        s.closed = true;
        if !s.buf.is_empty() && s.error.is_none() {
            let _ = send_now(self.out.fd, &s.buf);
        }
        s.buf = Vec::new();
        s.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    /// Runs `f` on a worker-like thread: current-thread runtime, `LocalSet`, and (if
    /// `flusher`) the send batch's flusher; bounded in time.
    fn on_worker<F: std::future::Future<Output = ()>>(flusher: bool, f: F) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            if flusher {
                tokio::task::spawn_local(run_flusher());
                tokio::task::yield_now().await;
            }
            tokio::time::timeout(Duration::from_secs(20), f)
                .await
                .expect("test timed out");
        });
    }

    /// A connected pair: (batched writer side, plain reader side).
    async fn pair(small_buffers: bool) -> (BatchedStream, TcpStream) {
        let ls = TcpSocket::new_v4().unwrap();
        if small_buffers {
            ls.set_recv_buffer_size(4096).unwrap();
        }
        ls.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = ls.listen(16).unwrap();
        let cs = TcpSocket::new_v4().unwrap();
        if small_buffers {
            cs.set_send_buffer_size(4096).unwrap();
        }
        let (client, accepted) = tokio::join!(cs.connect(listener.local_addr().unwrap()), listener.accept());
        (BatchedStream::new(client.unwrap()), accepted.unwrap().0)
    }

    fn queued(s: &BatchedStream) -> usize {
        s.out.lock().buf.len()
    }

    #[test]
    fn small_writes_wait_for_the_pass_and_arrive_in_order() {
        on_worker(true, async {
            let mut conns = Vec::new();
            for _ in 0..8 {
                conns.push(pair(false).await);
            }
            let mut expected = vec![Vec::new(); conns.len()];
            for round in 0..20u32 {
                for (i, (w, _)) in conns.iter_mut().enumerate() {
                    let small = format!("conn {i} round {round};").into_bytes();
                    w.write_all(&small).await.unwrap();
                    expected[i].extend_from_slice(&small);
                    if round % 7 == 3 {
                        // Large: goes out directly, after what is queued.
                        let big = vec![b'a' + (round % 26) as u8; QUEUE_LIMIT + 100];
                        w.write_all(&big).await.unwrap();
                        expected[i].extend_from_slice(&big);
                    }
                    let parts = [IoSlice::new(b"<v1>"), IoSlice::new(b"<v2>")];
                    let n = w.write_vectored(&parts).await.unwrap();
                    assert_eq!(n, 8, "a small vectored write is taken whole");
                    expected[i].extend_from_slice(b"<v1><v2>");
                    w.flush().await.unwrap();
                }
                // Before the flusher's pass the small writes are still queued.
                assert!(conns.iter().all(|(w, _)| queued(w) > 0));
                tokio::task::yield_now().await;
                assert!(conns.iter().all(|(w, _)| queued(w) == 0), "one pass sent every queue");
            }
            for (i, (mut w, mut r)) in conns.into_iter().enumerate() {
                w.shutdown().await.unwrap();
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, expected[i], "connection {i}");
            }
        });
    }

    #[test]
    fn a_full_socket_pushes_back_and_loses_nothing() {
        on_worker(true, async {
            let (mut w, mut r) = pair(true).await;
            let mut sent = Vec::new();
            let mut i = 0u32;
            let mut cx = Context::from_waker(Waker::noop());
            // The reader sleeps: writes are taken until the flusher finds the socket full.
            let stalled = loop {
                assert!(sent.len() < 64 << 20, "the socket never filled");
                let chunk = vec![(i % 251) as u8; 1000];
                match Pin::new(&mut w).poll_write(&mut cx, &chunk) {
                    Poll::Ready(Ok(n)) => sent.extend_from_slice(&chunk[..n]),
                    Poll::Ready(Err(e)) => panic!("write failed: {e}"),
                    Poll::Pending => break true,
                }
                i += 1;
                tokio::task::yield_now().await;
            };
            assert!(stalled);
            assert!(w.out.lock().stalled, "the flusher left the rest to the connection");
            let reader = tokio::task::spawn_local(async move {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            });
            for _ in 0..200 {
                let chunk = vec![(i % 251) as u8; 1000];
                w.write_all(&chunk).await.unwrap();
                sent.extend_from_slice(&chunk);
                i += 1;
            }
            w.shutdown().await.unwrap();
            let got = reader.await.unwrap();
            assert_eq!(got.len(), sent.len());
            assert!(got == sent, "bytes arrived in order");
        });
    }

    #[test]
    fn a_sent_queue_gives_back_a_large_capacity() {
        on_worker(true, async {
            let (mut w, mut r) = pair(false).await;
            let big = vec![7u8; 10_000];
            w.write_all(&big).await.unwrap();
            assert!(w.out.lock().buf.capacity() >= 10_000);
            tokio::task::yield_now().await;
            assert_eq!(w.out.lock().buf.capacity(), 0);
            w.write_all(b"small").await.unwrap();
            tokio::task::yield_now().await;
            assert!(w.out.lock().buf.capacity() > 0, "a small queue keeps its capacity");
            let mut got = vec![0u8; 10_005];
            r.read_exact(&mut got).await.unwrap();
            assert_eq!(&got[10_000..], b"small");
        });
    }

    /// An idle connection's stream lets go of its task's waker and its queue's capacity
    /// once everything is sent (not while bytes wait), and writes as before afterwards.
    #[test]
    fn a_shed_stream_holds_no_waker_and_no_capacity_and_still_writes() {
        on_worker(true, async {
            let (mut w, mut r) = pair(false).await;
            w.write_all(b"answer").await.unwrap();
            w.shed();
            assert!(w.out.lock().waker.is_some(), "bytes still queued: nothing is shed");
            tokio::task::yield_now().await;
            assert_eq!(queued(&w), 0);
            w.shed();
            {
                let s = w.out.lock();
                assert!(s.waker.is_none() && s.buf.capacity() == 0);
            }
            w.write_all(b" again").await.unwrap();
            tokio::task::yield_now().await;
            let mut got = [0u8; 12];
            r.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"answer again");
        });
    }

    #[test]
    fn without_a_flusher_writes_go_out_at_once() {
        on_worker(false, async {
            let (mut w, mut r) = pair(false).await;
            w.write_all(b"now").await.unwrap();
            assert_eq!(queued(&w), 0);
            let mut got = [0u8; 3];
            r.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"now");
        });
    }

    #[test]
    fn a_dropped_stream_still_sends_what_it_queued() {
        on_worker(true, async {
            let (mut w, mut r) = pair(false).await;
            w.write_all(b"last words").await.unwrap();
            assert!(queued(&w) > 0);
            drop(w);
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"last words");
        });
    }

    #[test]
    fn a_reset_peer_fails_the_next_operation() {
        on_worker(true, async {
            let (mut w, r) = pair(false).await;
            socket2::SockRef::from(&r).set_linger(Some(Duration::ZERO)).unwrap();
            drop(r);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Accepted into the queue; the flusher's send meets the reset.
            let _ = w.write_all(b"into the void").await;
            tokio::task::yield_now().await;
            let mut failed = false;
            for _ in 0..10 {
                if w.write_all(b"more").await.is_err() {
                    failed = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(failed, "a write after the reset reports it");
        });
    }
}
