//! Per-worker upstream connections: a keep-alive pool per endpoint (HTTP/1.1: a LIFO
//! stack of idle connections driven by the request task, see [`h1`]; h2c: one
//! multiplexed hyper connection), with an idle cap, idle timeout and maximum age. Owned
//! by one worker thread, so no locks.

pub(crate) mod h1;
pub(crate) mod request_body;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::stats::ClusterStats;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
pub(crate) use request_body::{BoxError, UpstreamBody};
use std::sync::Arc;
use tokio::net::TcpStream;

use crate::config::UpstreamProtocol;
use crate::error::{Failure, ProxyError};
use crate::exec::LocalExec;
use crate::runtime::PoolSettings;
use crate::send_batch::BatchedStream;
use crate::stats::EndpointStats;

/// The request-sending side of an upstream connection.
#[derive(Debug)]
pub(crate) enum Sender {
    /// HTTP/1.1: one request at a time, on the request's task.
    H1(h1::H1Conn),
    /// h2c: multiplexed, cloned per request.
    H2(http2::SendRequest<UpstreamBody>),
}

/// A checked-out upstream connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The sender.
    pub sender: Sender,
    /// Whether it came from the pool (a failure on it may be a stale keep-alive).
    pub reused: bool,
}

#[derive(Debug, Default)]
struct EndpointConns {
    /// Idle HTTP/1.1 connections, oldest first.
    idle: Vec<h1::H1Conn>,
    /// Idle timeout of the settings they were checked in under (for the sweep).
    idle_timeout: Duration,
    h2: Option<(http2::SendRequest<UpstreamBody>, Instant)>,
}

/// One worker's upstream pool.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Keyed by endpoint and connection profile; looked up twice per request, so with a
    /// fast hasher (the keys are the operator's endpoints, not client input).
    by_endpoint: RefCell<HashMap<(SocketAddr, u64), EndpointConns, foldhash::fast::RandomState>>,
    /// The worker's sweeper (`listen::sweep_pool`) sleeps: a connection pooled or
    /// accepted wakes it.
    sweeper_asleep: Cell<bool>,
    sweeper_wake: tokio::sync::Notify,
}

impl Pool {
    /// Whether no connection is pooled.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_endpoint.borrow().is_empty()
    }

    /// The sweeper's wait while nothing is pooled or open: until [`Pool::wake_sweeper`].
    pub(crate) async fn sweeper_sleeps(&self) {
        self.sweeper_asleep.set(true);
        self.sweeper_wake.notified().await;
    }

    /// Wakes the sweeper if it sleeps (a `Cell` read otherwise).
    pub(crate) fn wake_sweeper(&self) {
        if self.sweeper_asleep.replace(false) {
            self.sweeper_wake.notify_one();
        }
    }

    /// A ready pooled connection to `addr`, if there is one.
    /// `now_ns` is the request's start on the process clock (idle and age limits are
    /// seconds-scale).
    pub(crate) fn checkout(
        &self,
        addr: SocketAddr,
        proto: UpstreamProtocol,
        s: &PoolSettings,
        now_ns: u64,
    ) -> Option<Conn> {
        let mut map = self.by_endpoint.borrow_mut();
        let slot = map.get_mut(&(addr, s.profile))?;
        let too_old = |born: Instant| {
            s.max_age
                .is_some_and(|m| now_ns.saturating_sub(crate::clock::ns_at(born)) >= m.as_nanos() as u64)
        };
        match proto {
            UpstreamProtocol::H2c => {
                let (tx, born) = slot.h2.as_ref()?;
                if tx.is_closed() || too_old(*born) {
                    slot.h2 = None;
                    return None;
                }
                Some(Conn {
                    sender: Sender::H2(tx.clone()),
                    reused: true,
                })
            }
            UpstreamProtocol::Http1 => {
                // Newest first; drop closed, expired and aged connections on the way.
                while let Some(mut c) = slot.idle.pop() {
                    if now_ns.saturating_sub(c.used_ns) >= s.idle_timeout.as_nanos() as u64 {
                        // The rest are older still.
                        slot.idle.clear();
                        return None;
                    }
                    if too_old(c.born) || !c.is_reusable() {
                        continue;
                    }
                    c.used_ns = now_ns;
                    return Some(Conn {
                        sender: Sender::H1(c),
                        reused: true,
                    });
                }
                None
            }
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange is complete.
    pub(crate) fn checkin_h1(&self, conn: h1::H1Conn, s: &PoolSettings) {
        if conn.private || s.max_age.is_some_and(|m| conn.born.elapsed() >= m) {
            return;
        }
        self.wake_sweeper();
        let mut map = self.by_endpoint.borrow_mut();
        let slot = map.entry((conn.addr, conn.profile)).or_default();
        slot.idle_timeout = s.idle_timeout;
        if slot.idle.len() >= s.max_idle {
            // Evict the oldest idle connection.
            slot.idle.remove(0);
        }
        slot.idle.push(conn);
    }

    /// Closes idle HTTP/1.1 connections past their idle timeout or closed by the
    /// upstream (nothing polls them while they wait in the pool).
    pub(crate) fn sweep(&self, now_ns: u64) {
        let mut map = self.by_endpoint.borrow_mut();
        map.retain(|_, slot| {
            let timeout = slot.idle_timeout.as_nanos() as u64;
            slot.idle
                .retain_mut(|c| now_ns.saturating_sub(c.used_ns) < timeout && c.is_reusable());
            !slot.idle.is_empty() || slot.h2.as_ref().is_some_and(|(tx, _)| !tx.is_closed())
        });
    }

    /// Opens a new connection to endpoint `addr` of `cluster`: TCP, then the PROXY
    /// header if the cluster sends one (such a connection serves only this client), then
    /// TLS if the cluster originates it, then (h2c) the HTTP/2 handshake. h2c
    /// connections are shared in the pool.
    pub(crate) async fn connect(
        self: &Rc<Self>,
        addr: SocketAddr,
        cluster: &crate::runtime::Cluster,
        stats: &EndpointStats,
        origin: Origin,
    ) -> Result<Conn, Failure> {
        let stream = BatchedStream::new(dial(addr, cluster, stats, origin).await?);
        let born = Instant::now();
        let private = cluster.proxy_protocol.is_some();
        let io = match &cluster.tls {
            Some((t, cfg)) => h1::Io::Tls(Box::new(
                tls_connect(addr, t, cfg, stream, cluster.connect_timeout).await?,
            )),
            None => h1::Io::Plain(stream),
        };
        let open = OpenGuard::new(&cluster.stats);
        let sender = match cluster.protocol {
            UpstreamProtocol::Http1 => Sender::H1(h1::H1Conn::new(io, addr, cluster.pool.profile, born, private, open)),
            UpstreamProtocol::H2c => {
                let tx = match io {
                    h1::Io::Plain(s) => self.handshake_h2(TokioIo::new(s), open).await?,
                    h1::Io::Tls(s) => self.handshake_h2(TokioIo::new(*s), open).await?,
                };
                if !private {
                    self.wake_sweeper();
                    self.by_endpoint
                        .borrow_mut()
                        .entry((addr, cluster.pool.profile))
                        .or_default()
                        .h2 = Some((tx.clone(), born));
                }
                Sender::H2(tx)
            }
        };
        Ok(Conn { sender, reused: false })
    }

    async fn handshake_h2<IO>(&self, io: IO, open: OpenGuard) -> Result<http2::SendRequest<UpstreamBody>, ProxyError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (tx, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|_| ProxyError::UpstreamReset)?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
            drop(open);
        });
        Ok(tx)
    }
}

/// Where a proxied connection came from, for PROXY protocol headers.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The client.
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

/// TCP connect within the cluster's connect timeout, then the PROXY header if the
/// cluster sends one. Shared by L7 and L4.
pub(crate) async fn dial(
    addr: SocketAddr,
    cluster: &crate::runtime::Cluster,
    stats: &EndpointStats,
    origin: Origin,
) -> Result<TcpStream, Failure> {
    use tokio::io::AsyncWriteExt;
    let mut stream = match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            stats.connect_failures.fetch_add(1, Relaxed);
            return Err(Failure::new(ProxyError::ConnectFailure, e));
        }
        Err(_) => {
            stats.connect_failures.fetch_add(1, Relaxed);
            stats.timeouts.fetch_add(1, Relaxed);
            return Err(ProxyError::ConnectTimeout.into());
        }
    };
    let _ = stream.set_nodelay(true);
    stats.connections_opened.fetch_add(1, Relaxed);
    if let Some(v) = cluster.proxy_protocol {
        let header = match v {
            crate::config::ProxyProtocolVersion::V1 => crate::proxy_protocol::encode_v1(origin.client, origin.local),
            crate::config::ProxyProtocolVersion::V2 => crate::proxy_protocol::encode_v2(origin.client, origin.local),
        };
        stream
            .write_all(&header)
            .await
            .map_err(|e| Failure::new(ProxyError::UpstreamReset, e))?;
    }
    Ok(stream)
}

/// TLS to an upstream: SNI from the cluster (or the endpoint IP), verified against the
/// cluster's CA or the system roots.
pub(crate) async fn tls_connect<IO>(
    addr: SocketAddr,
    t: &crate::tls::UpstreamTls,
    cfg: &Arc<rustls::ClientConfig>,
    stream: IO,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<IO>, Failure>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = match &t.sni {
        Some(n) => rustls_pki_types::ServerName::try_from(n.clone())
            .map_err(|e| Failure::new(ProxyError::ConnectFailure, e))?,
        None => rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    match tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(cfg.clone()).connect(name, stream),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream TLS handshake failed");
            Err(Failure::new(ProxyError::ConnectFailure, e))
        }
        Err(_) => Err(ProxyError::ConnectTimeout.into()),
    }
}

/// Counts an open upstream connection for its cluster until dropped.
#[derive(Debug)]
pub(crate) struct OpenGuard(Arc<ClusterStats>);

impl OpenGuard {
    fn new(c: &Arc<ClusterStats>) -> Self {
        c.upstream_connections.fetch_add(1, Relaxed);
        OpenGuard(c.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.upstream_connections.fetch_sub(1, Relaxed);
    }
}

/// Sends `req` on a multiplexed h2c connection. On failure the flag says whether the
/// request (put back in `req`) may go out again on a fresh connection.
pub(crate) async fn send_h2(
    mut tx: http2::SendRequest<UpstreamBody>,
    req: &mut http::Request<UpstreamBody>,
) -> Result<http::Response<ResponseBody>, (hyper::Error, bool)> {
    // Boxed: hyper's send future is large and only h2c upstreams need it.
    match Box::pin(tx.try_send_request(std::mem::take(req))).await {
        Ok(resp) => Ok(resp.map(|b| ResponseBody::Hyper(b, Some(tx)))),
        Err(mut e) => {
            let back = e.take_message();
            let again = back.is_some();
            if let Some(back) = back {
                *req = back;
            }
            Err((e.into_error(), again))
        }
    }
}

/// An upstream response body as the proxy streams it downstream.
pub enum ResponseBody {
    /// No body.
    Empty,
    /// The whole body arrived with the head; `None` once taken.
    Full(Option<Bytes>),
    /// An HTTP/1.1 body read from the upstream socket on demand.
    H1(Box<h1::Body>),
    /// A hyper body (h2c, upgrades); the sender keeps a private h2 connection open
    /// until the body ends.
    Hyper(Incoming, Option<http2::SendRequest<UpstreamBody>>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponseBody::Empty => "Empty",
            ResponseBody::Full(_) => "Full",
            ResponseBody::H1(_) => "H1",
            ResponseBody::Hyper(..) => "Hyper",
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::H1(b) => Pin::new(&mut **b).poll_frame(cx).map_err(Into::into),
            ResponseBody::Hyper(b, _) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::H1(b) => b.is_end_stream(),
            ResponseBody::Hyper(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ResponseBody::H1(b) => b.size_hint(),
            ResponseBody::Hyper(b, _) => b.size_hint(),
        }
    }
}
