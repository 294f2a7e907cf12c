//! L4 (TCP) proxying: pick a cluster (by the TLS ClientHello's server name for
//! passthrough, or the listener's default), optionally terminate TLS, pick an endpoint
//! with the cluster's balancer and health (another endpoint is tried when a connect is
//! refused), optionally send a PROXY header and originate TLS, then copy both ways with
//! half-close, an idle timeout and a maximum connection age.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{HashOn, HostPattern};
use crate::runtime::{Cluster, Runtime};
use crate::send_batch::BatchedStream;
use crate::tls::sni::{peek_hello, Hello};
use crate::stats::ListenerStats;
use crate::upstream::Origin;
use crate::worker::Worker;

/// Serves one L4 connection until either side is done.
pub async fn serve(
    worker: &Rc<Worker>,
    idx: usize,
    stream: TcpStream,
    origin: Origin,
    rt: &Arc<Runtime>,
    stats: &Arc<ListenerStats>,
) {
    let lcfg = &worker.listeners[idx];
    let hot = &rt.config.listeners[idx];
    stats.tcp_connections.fetch_add(1, Relaxed);
    let mut name = hot.cluster.as_deref();
    if !hot.sni_routes.is_empty() {
        if let Hello::Sni(sni) = peek_hello(&stream, lcfg.header_read_timeout).await {
            if let Some((_, c)) = hot
                .sni_routes
                .iter()
                .find(|(pats, _)| pats.iter().any(|p| sni_matches(p, &sni)))
            {
                name = Some(c);
            }
        }
    }
    let Some(cluster) = name.and_then(|n| rt.cluster_named(n)) else {
        worker.shared.stats.process.no_route.fetch_add(1, Relaxed);
        return;
    };
    let filters = match rt.listener_filters.get(idx).filter(|f| !f.is_empty()) {
        Some(plugins) => {
            let id = crate::downstream::CONN_IDS.fetch_add(1, Relaxed);
            let facts = crate::wasm::l4::facts(&origin, &Arc::from(hot.name.as_str()), id);
            match crate::wasm::l4::NetChain::start(worker, plugins, facts) {
                Some(c) => Some(c),
                None => return,
            }
        }
        None => None,
    };
    let idle = lcfg.idle_timeout;
    let max_age = hot.max_connection_age;
    let buffer = hot.tcp_buffer_bytes;
    // Both sides write with the worker's send batch (see `send_batch`).
    let stream = BatchedStream::new(stream);
    match &hot.tls_server {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.0.clone());
            match tokio::time::timeout(lcfg.header_read_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    stats.tls_handshakes.fetch_add(1, Relaxed);
                    forward(worker, rt, cluster, tls, origin, buffer, idle, max_age, stats, filters).await
                }
                _ => {
                    stats.tls_handshake_failures.fetch_add(1, Relaxed);
                }
            }
        }
        None => {
            forward(
                worker, rt, cluster, stream, origin, buffer, idle, max_age, stats, filters,
            )
            .await
        }
    }
}

fn sni_matches(p: &HostPattern, name: &str) -> bool {
    match p {
        HostPattern::Any => true,
        HostPattern::Exact(h) => h == name,
        HostPattern::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward<D>(
    worker: &Rc<Worker>,
    rt: &Runtime,
    cluster: &Cluster,
    downstream: D,
    origin: Origin,
    buffer: usize,
    idle: Duration,
    max_age: Option<Duration>,
    stats: &ListenerStats,
    filters: Option<crate::wasm::l4::NetChain>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let hash = match cluster.hash_on {
        Some(HashOn::SourceIp) => Some(crate::balancer::hash_key(origin.client.ip().to_string().as_bytes())),
        _ => None,
    };
    let mut tried = 0u64;
    let (upstream, ep_idx) = loop {
        let ep_idx = match crate::proxy::pick_endpoint(worker, rt, cluster, hash, tried) {
            Ok(i) => i,
            Err(_) => return,
        };
        if tried & (1 << ep_idx.min(63)) != 0 {
            return; // every endpoint has been tried
        }
        tried |= 1 << ep_idx.min(63);
        let ep = &cluster.endpoints[ep_idx];
        match crate::upstream::dial(ep.address, cluster, &ep.stats, origin).await {
            Ok(s) => break (BatchedStream::new(s), ep_idx),
            Err(f) => {
                let status = f.kind.status().as_u16();
                ep.stats.responses.record(status);
                crate::health::passive::observe_passive(cluster, ep_idx, status, true);
            }
        }
    };
    let ep = &cluster.endpoints[ep_idx];
    ep.stats.active.fetch_add(1, Relaxed);
    cluster.stats.active.fetch_add(1, Relaxed);
    if let Some(f) = &filters {
        f.set_upstream(&cluster.name, ep.address);
    }
    let (up, down) = match (&cluster.tls, filters) {
        (Some((t, cfg)), filters) => {
            match crate::upstream::tls_connect(ep.address, t, cfg, upstream, cluster.connect_timeout).await {
                Ok(tls) => match filters {
                    Some(f) => splice_filtered(downstream, tls, f, idle, max_age).await,
                    None => splice(downstream, tls, buffer, idle, max_age).await,
                },
                Err(f) => {
                    tracing::debug!(endpoint = %ep.address, error = %f, "upstream TLS failed");
                    crate::health::passive::observe_passive(cluster, ep_idx, f.kind.status().as_u16(), true);
                    (0, 0)
                }
            }
        }
        (None, Some(f)) => splice_filtered(downstream, upstream, f, idle, max_age).await,
        (None, None) => splice(downstream, upstream, buffer, idle, max_age).await,
    };
    stats.tcp_bytes_in.fetch_add(up, Relaxed);
    stats.tcp_bytes_out.fetch_add(down, Relaxed);
    ep.stats.responses.record(200);
    ep.stats.active.fetch_sub(1, Relaxed);
    cluster.stats.active.fetch_sub(1, Relaxed);
}

/// Copies both ways, reading up to `buffer` bytes at once in each direction, until both
/// directions are done (a half-close is passed on and the other direction continues),
/// the connection is idle for `idle`, or it is older than `max_age`. Returns (bytes
/// client→upstream, bytes upstream→client).
pub async fn splice<A, B>(a: A, b: B, buffer: usize, idle: Duration, max_age: Option<Duration>) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Rc::new(Cell::new(Instant::now()));
    let mut a = Active {
        io: a,
        last: last.clone(),
    };
    let mut b = Active {
        io: b,
        last: last.clone(),
    };
    let born = Instant::now();
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, buffer, buffer);
    tokio::pin!(copy);
    loop {
        let idle_at = last.get() + idle;
        let deadline = max_age.map_or(idle_at, |m| idle_at.min(born + m));
        tokio::select! {
            r = &mut copy => return r.unwrap_or((0, 0)),
            _ = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if max_age.is_some_and(|m| now >= born + m) || now >= last.get() + idle {
                    return (0, 0);
                }
            }
        }
    }
}

/// Like [`splice`], with the listener's network filters seeing (and possibly changing,
/// holding or refusing) the bytes each way.
pub async fn splice_filtered<A, B>(
    a: A,
    b: B,
    mut chain: crate::wasm::l4::NetChain,
    idle: Duration,
    max_age: Option<Duration>,
) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    use crate::wasm::l4::Data;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let mut abuf = vec![0u8; 16 << 10];
    let mut bbuf = vec![0u8; 16 << 10];
    let (mut a_open, mut b_open) = (true, true);
    let (mut up, mut down) = (0u64, 0u64);
    let born = Instant::now();
    let mut last = Instant::now();
    loop {
        if !a_open && !b_open {
            break;
        }
        let deadline = max_age.map_or(last + idle, |m| (last + idle).min(born + m));
        // (to upstream?, outcome, eos)
        let (to_upstream, outcome, eos) = tokio::select! {
            r = ar.read(&mut abuf), if a_open => {
                let n = r.unwrap_or(0);
                last = Instant::now();
                (true, chain.on_data(false, &abuf[..n], n == 0), n == 0)
            }
            r = br.read(&mut bbuf), if b_open => {
                let n = r.unwrap_or(0);
                last = Instant::now();
                (false, chain.on_data(true, &bbuf[..n], n == 0), n == 0)
            }
            (from_upstream, d) = chain.resumed(), if chain.is_waiting() => (!from_upstream, d, false),
            _ = tokio::time::sleep_until(deadline.into()) => break,
        };
        match outcome {
            Data::Close => break,
            Data::Hold => {}
            Data::Forward(bytes) if !bytes.is_empty() => {
                let written = if to_upstream {
                    up += bytes.len() as u64;
                    bw.write_all(&bytes).await
                } else {
                    down += bytes.len() as u64;
                    aw.write_all(&bytes).await
                };
                if written.is_err() {
                    break;
                }
            }
            Data::Forward(_) => {}
        }
        if eos {
            if to_upstream {
                let _ = bw.shutdown().await;
                a_open = false;
                chain.on_close(false, 2);
            } else {
                let _ = aw.shutdown().await;
                b_open = false;
                chain.on_close(true, 2);
            }
        }
    }
    (up, down)
}

/// Records the time of the last byte moved in either direction.
struct Active<T> {
    io: T,
    last: Rc<Cell<Instant>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.set(Instant::now());
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
