//! One downstream connection: hyper HTTP/1.1 (and h2c prior knowledge) with the
//! listener's limits, an idle keep-alive watchdog, a first-request deadline, the
//! per-connection request cap, and graceful close on drain.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::ListenerStats;
use crate::worker::{LocalExec, Worker};

/// Per-connection facts and counters the request handler reads and updates.
#[derive(Debug)]
pub struct ConnState {
    /// Client address.
    pub client: SocketAddr,
    /// Listener index.
    pub listener: usize,
    /// Requests started on this connection.
    pub requests: Cell<u64>,
    /// Requests whose handler has not returned yet.
    pub in_flight: Cell<u32>,
    /// Last time a request started or its response headers went out.
    pub last_active: Cell<Instant>,
    /// Set when the connection should close after the current exchange.
    pub close: Cell<bool>,
    /// Wakes the connection loop when `close` is set or the first request arrives
    /// (so its timer switches from the header deadline to the idle deadline).
    pub wake: Notify,
}

/// Serves one accepted connection until it closes.
pub async fn serve(worker: Rc<Worker>, idx: usize, stream: TcpStream, peer: SocketAddr, stats: Arc<ListenerStats>) {
    let shared = worker.shared.clone();
    shared.connections.fetch_add(1, Relaxed);
    let lcfg = worker.listeners[idx].clone();
    let state = Rc::new(ConnState {
        client: peer,
        listener: idx,
        requests: Cell::new(0),
        in_flight: Cell::new(0),
        last_active: Cell::new(Instant::now()),
        close: Cell::new(false),
        wake: Notify::new(),
    });

    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(lcfg.header_read_timeout)
        .max_buf_size(lcfg.max_header_bytes)
        .max_headers(lcfg.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(lcfg.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let builder = if lcfg.http2 { builder } else { builder.http1_only() };

    let svc = {
        let worker = worker.clone();
        let state = state.clone();
        service_fn(move |req| crate::proxy::handle(worker.clone(), state.clone(), req))
    };
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);

    let mut shutdown = shared.shutdown.subscribe();
    let mut closing = false;
    let born = Instant::now();
    let result = loop {
        let idle_at = if state.requests.get() == 0 {
            born + lcfg.header_read_timeout
        } else if state.in_flight.get() > 0 {
            // Busy: look again later (a response in progress is never idle).
            Instant::now() + lcfg.idle_timeout
        } else {
            state.last_active.get() + lcfg.idle_timeout
        };
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = shutdown.wait_for(|d| *d), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = state.wake.notified(), if !closing => {
                if state.close.get() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep_until(idle_at.into()), if !closing => {
                if state.requests.get() == 0 {
                    // Nothing complete arrived in time (slowloris or an idle opener).
                    stats.header_timeouts.fetch_add(1, Relaxed);
                    break Ok(());
                }
                if state.in_flight.get() == 0 && state.last_active.get() + lcfg.idle_timeout <= Instant::now() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    };
    if let Err(e) = result {
        classify(&*e, &stats);
    }
    stats.active.fetch_sub(1, Relaxed);
    shared.connections.fetch_sub(1, Relaxed);
}

/// Counts malformed, oversized and timed-out requests (hyper already answered 400/431
/// or closed the connection).
fn classify(e: &(dyn std::error::Error + 'static), stats: &ListenerStats) {
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
