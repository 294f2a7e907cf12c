//! The worker threads and their listeners: each worker binds its own `SO_REUSEPORT`
//! socket per listener, runs a current-thread runtime, accepts (with the listener's
//! connection cap and the SYN gate of addresses this node may be asked to release), and
//! takes each accepted connection through its front stages — a PROXY header from a
//! trusted source, then L4, or TLS and HTTP.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::config::ListenerConfig;
use crate::shared::{OpenConn, Shared};
use crate::syn_gate::SynGate;
use crate::upstream::Pool;

use std::time::Duration;

use tokio::net::TcpStream;

use crate::http::conn::TlsInfo;
use crate::http::serve::serve;
use crate::stats::ListenerStats;
use crate::worker::Worker;
use std::net::SocketAddr;

/// Why workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// A worker thread or runtime could not be created.
    #[error("cannot start worker: {0}")]
    Thread(std::io::Error),
}

/// Binds one listener socket for one worker: `SO_REUSEPORT` so every worker has its
/// own accept queue, `SO_REUSEADDR` for fast restarts, non-blocking for tokio;
/// `freebind` binds an address the node does not hold yet (a VIP), so the listener is
/// ready before the address arrives; `defer_accept` sets `TCP_DEFER_ACCEPT` (see
/// [`ListenerConfig::defer_accept`]).
pub(crate) fn bind_with(
    addr: SocketAddr,
    freebind: bool,
    defer_accept: bool,
) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if freebind {
        if addr.is_ipv4() {
            sock.set_freebind_v4(true)?;
        } else {
            sock.set_freebind_v6(true)?;
        }
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    if defer_accept {
        set_defer_accept(&sock, crate::config::DEFER_ACCEPT_SECONDS)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// `TCP_DEFER_ACCEPT` (socket2 has no setter for it).
fn set_defer_accept(sock: &Socket, seconds: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value is a c_int that lives across the call, its size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds every listener for every worker and starts the worker threads. Bind errors
/// are returned before any thread starts.
pub(crate) fn start(shared: Arc<Shared>) -> Result<Vec<std::thread::JoinHandle<()>>, StartError> {
    let listeners: Arc<[ListenerConfig]> = shared.runtime.load().config.listeners.clone().into();
    let mut per_worker = Vec::new();
    for _ in 0..shared.workers {
        let mut socks = Vec::new();
        for l in listeners.iter() {
            // A listener on one of this node's VIPs binds before the node holds it.
            let vip = shared
                .runtime
                .load()
                .config
                .released_addresses()
                .any(|a| a == l.listen.ip());
            let s = bind_with(l.listen, vip, l.defer_accept).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            socks.push(s);
        }
        per_worker.push(socks);
    }
    let mut handles = Vec::new();
    for (id, socks) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let listeners = listeners.clone();
        let h = std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || run_worker(id, shared, listeners, socks))
            .map_err(StartError::Thread)?;
        handles.push(h);
    }
    Ok(handles)
}

fn run_worker(id: usize, shared: Arc<Shared>, listeners: Arc<[ListenerConfig]>, socks: Vec<std::net::TcpListener>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot build worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let worker = Rc::new(Worker::new(id, shared.clone(), listeners));
        tokio::task::spawn_local(keep_filters(Rc::downgrade(&worker)));
        tokio::task::spawn_local(sweep_pool(worker.pool.clone(), shared.clone()));
        tokio::task::spawn_local(crate::send_batch::run_flusher());
        crate::http::watch::start(shared.clone(), worker.listeners.clone());
        let mut tasks = Vec::new();
        for (idx, sock) in socks.into_iter().enumerate() {
            let listener = match TcpListener::from_std(sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = id, error = %e, "cannot register listener");
                    return;
                }
            };
            tasks.push(tokio::task::spawn_local(accept_loop(worker.clone(), idx, listener)));
        }
        shared.workers_ready.fetch_add(1, Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        // Listeners are closed; keep serving open connections until the process exits.
        std::future::pending::<()>().await;
    });
}

/// Keeps this worker's filter instances in step with the runtime: on a new
/// generation, instances of filters that are gone retire and every current filter is
/// started (so its ticks and queues run without waiting for a request). Wakes on a
/// reload only (the instances' memory gauge is kept as they grow).
async fn keep_filters(worker: std::rc::Weak<Worker>) {
    let mut seen = 0;
    let Some(mut reloads) = worker.upgrade().map(|w| w.shared.reloaded.subscribe()) else {
        return;
    };
    loop {
        let Some(w) = worker.upgrade() else { return };
        let rt = w.shared.runtime.load_full();
        if rt.generation != seen {
            seen = rt.generation;
            let mut inst = w.wasm.borrow_mut();
            inst.retain(&rt.plugins);
            for p in &rt.plugins {
                let _ = inst.get(p, worker.clone() as std::rc::Weak<dyn crate::wasm::link::WorkerLink>);
            }
        }
        drop((w, rt));
        if reloads.changed().await.is_err() {
            return;
        }
    }
}

/// Once a second: closes this worker's idle upstream connections that outlived their
/// idle timeout or were closed by their upstream (nothing else polls an idle HTTP/1.1
/// connection), then gives the worker's free memory back to the system. With no
/// connection open in the process and none pooled, there is nothing to close and
/// nothing more to free: it sleeps until this worker accepts a connection or pools one.
async fn sweep_pool(pool: Rc<Pool>, shared: Arc<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        pool.sweep(crate::clock::now_ns());
        crate::allocator::release_free_memory();
        if pool.is_empty() && shared.connections.load(Relaxed) == 0 {
            pool.sweeper_sleeps().await;
        }
    }
}

async fn accept_loop(worker: Rc<Worker>, idx: usize, listener: TcpListener) {
    let mut shutdown = worker.shared.shutdown.subscribe();
    let stats = worker.shared.listeners[idx].1.clone();
    let max = worker.listeners[idx].max_connections as u64;
    let vips: Vec<std::net::IpAddr> = worker.shared.runtime.load().config.released_addresses().collect();
    let gate = SynGate::for_listener(worker.listeners[idx].listen, &vips);
    let mut phase = worker.shared.phase.subscribe();
    let mut gate_watch = gate.is_some();
    let mut gate_closed = phase.borrow_and_update().closes_syn_gate();
    if gate_watch && gate_closed {
        set_gate(gate.as_ref(), &listener, true, &worker.listeners[idx].name);
    }
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|d| *d) => break,
            r = phase.changed(), if gate_watch => {
                gate_watch = r.is_ok();
                let close = phase.borrow_and_update().closes_syn_gate();
                if close != gate_closed {
                    gate_closed = close;
                    set_gate(gate.as_ref(), &listener, close, &worker.listeners[idx].name);
                }
                continue;
            }
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if stats.active.fetch_add(1, Relaxed) >= max {
            stats.active.fetch_sub(1, Relaxed);
            stats.refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        }
        stats.accepted.fetch_add(1, Relaxed);
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(accept(worker.clone(), idx, stream, peer, stats.clone()));
    }
}

/// Closes or opens a listener's SYN gate (see [`crate::syn_gate`]).
fn set_gate(gate: Option<&SynGate>, listener: &TcpListener, close: bool, name: &str) {
    use std::os::fd::AsRawFd;
    let Some(gate) = gate else { return };
    let fd = listener.as_raw_fd();
    let r = if close { gate.close(fd) } else { SynGate::open(fd) };
    match r {
        Ok(()) => tracing::debug!(listener = name, close, "SYN gate set"),
        Err(e) => tracing::warn!(listener = name, error = %e, "cannot set the SYN gate"),
    }
}

/// Takes an accepted connection through its listener's front stages — a PROXY protocol
/// header from a trusted source, then TLS or L4 — and serves it.
pub(crate) async fn accept(
    worker: Rc<Worker>,
    idx: usize,
    mut stream: TcpStream,
    peer: SocketAddr,
    stats: Arc<ListenerStats>,
) {
    worker.pool.wake_sweeper();
    let open = OpenConn::new(stats, worker.shared.clone());
    let (stats, shared) = (&open.stats, &open.shared);
    let lcfg = &worker.listeners[idx];
    let mut client = peer;
    let mut local = stream.local_addr().unwrap_or(peer);
    if lcfg.proxy_protocol_from.iter().any(|c| c.contains(peer.ip())) {
        match crate::proxy_protocol::read_header(&mut stream, lcfg.header_read_timeout).await {
            Ok(Some((src, dst))) => {
                client = src;
                local = dst;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "PROXY header refused");
                stats.malformed.fetch_add(1, Relaxed);
                return;
            }
        }
    }
    let rt = shared.runtime.load_full();
    // A task keeps the room of its largest state for its whole life, idle keep-alive
    // included: the L4 and TLS paths (a rustls session, its handshake) are boxed, so a
    // plain HTTP connection's task is the size of its own path only.
    if lcfg.protocol == crate::config::ListenerProtocol::Tcp {
        let origin = crate::upstream::Origin { client, local };
        Box::pin(crate::l4::serve(&worker, idx, stream, origin, &rt, stats)).await;
        return;
    }
    // HTTP answers leave with the worker's send batch (see `send_batch`).
    let stream = crate::send_batch::BatchedStream::new(stream);
    match &rt.listener_tls[idx] {
        None => serve(&worker, idx, stream, client, local, None, false, open).await,
        Some(tls) => Box::pin(serve_tls(&worker, idx, stream, tls, client, local, open)).await,
    }
}

/// The TLS handshake of a terminating listener, then HTTP over it.
async fn serve_tls(
    worker: &Rc<Worker>,
    idx: usize,
    stream: crate::send_batch::BatchedStream,
    tls: &crate::tls::ServerTls,
    client: SocketAddr,
    local: SocketAddr,
    open: OpenConn,
) {
    let (lcfg, stats) = (&worker.listeners[idx], &open.stats);
    let tls = match tokio::time::timeout(lcfg.header_read_timeout, crate::tls::accept(stream, tls)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            stats.tls_handshake_failures.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            stats.tls_handshake_failures.fetch_add(1, Relaxed);
            return;
        }
    };
    let (_, session) = tls.get_ref();
    let info = TlsInfo {
        version: match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        },
        sni: session.server_name().map(str::to_string),
        client_subject: session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::tls::subject_of)
            .and_then(|s| http::HeaderValue::from_str(&s).ok()),
    };
    let h2 = session.alpn_protocol() == Some(b"h2");
    stats.tls_handshakes.fetch_add(1, Relaxed);
    if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        stats.tls_resumed.fetch_add(1, Relaxed);
    }
    serve(worker, idx, tls, client, local, Some(info), h2, open).await
}
