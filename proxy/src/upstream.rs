//! Per-worker upstream connections: a keep-alive pool per endpoint (HTTP/1.1: a LIFO
//! stack of idle connections; h2c: one multiplexed connection), with an idle cap, idle
//! timeout and maximum age. Owned by one worker thread, so no locks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hyper::body::Incoming;

use crate::body::UpstreamBody;
use crate::metrics::ClusterStats;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::net::TcpStream;

use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::metrics::EndpointStats;
use crate::runtime::PoolSettings;
use crate::worker::LocalExec;

/// The request-sending half of an upstream connection.
#[derive(Debug)]
pub enum Sender {
    /// HTTP/1.1: one request at a time.
    H1(http1::SendRequest<UpstreamBody>),
    /// h2c: multiplexed, cloned per request.
    H2(http2::SendRequest<UpstreamBody>),
}

/// A checked-out upstream connection.
#[derive(Debug)]
pub struct Conn {
    /// Where it goes.
    pub addr: SocketAddr,
    /// The sender.
    pub sender: Sender,
    /// When it was opened (for max age).
    pub born: Instant,
    /// Start of the request using it; its idle time counts from here.
    pub used: Instant,
    /// Whether it came from the pool (a failure on it may be a stale keep-alive).
    pub reused: bool,
    /// Bound to one client (it carried that client's PROXY header): never pooled.
    pub private: bool,
}

#[derive(Debug)]
struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    born: Instant,
    since: Instant,
}

#[derive(Debug, Default)]
struct EndpointConns {
    idle: Vec<Idle>,
    h2: Option<(http2::SendRequest<UpstreamBody>, Instant)>,
}

/// One worker's upstream pool.
#[derive(Debug, Default)]
pub struct Pool {
    by_endpoint: RefCell<HashMap<(SocketAddr, u64), EndpointConns>>,
}

impl Pool {
    /// A ready pooled connection to `addr`, if there is one.
    /// `now` is the request's start time (idle and age limits are seconds-scale).
    pub fn checkout(&self, addr: SocketAddr, proto: UpstreamProtocol, s: &PoolSettings, now: Instant) -> Option<Conn> {
        let mut map = self.by_endpoint.borrow_mut();
        let slot = map.get_mut(&(addr, s.profile))?;
        let too_old = |born: Instant| s.max_age.is_some_and(|m| now.duration_since(born) >= m);
        match proto {
            UpstreamProtocol::H2c => {
                let (tx, born) = slot.h2.as_ref()?;
                if tx.is_closed() || too_old(*born) {
                    slot.h2 = None;
                    return None;
                }
                Some(Conn {
                    addr,
                    sender: Sender::H2(tx.clone()),
                    born: *born,
                    used: now,
                    reused: true,
                    private: false,
                })
            }
            UpstreamProtocol::Http1 => {
                // Newest first; drop closed, expired and aged connections on the way.
                while let Some(i) = slot.idle.iter().rposition(|c| c.tx.is_ready() || c.tx.is_closed()) {
                    let c = slot.idle.remove(i);
                    if c.tx.is_closed() || now.duration_since(c.since) >= s.idle_timeout || too_old(c.born) {
                        continue;
                    }
                    return Some(Conn {
                        addr,
                        sender: Sender::H1(c.tx),
                        born: c.born,
                        used: now,
                        reused: true,
                        private: false,
                    });
                }
                None
            }
        }
    }

    /// Returns an HTTP/1.1 connection whose response has been fully read. h2c
    /// connections stay in the pool while in use and are not checked in.
    pub fn checkin(&self, conn: Conn, s: &PoolSettings) {
        if conn.private {
            return;
        }
        let Sender::H1(tx) = conn.sender else { return };
        if tx.is_closed() || s.max_age.is_some_and(|m| conn.born.elapsed() >= m) {
            return;
        }
        let mut map = self.by_endpoint.borrow_mut();
        let slot = map.entry((conn.addr, s.profile)).or_default();
        if slot.idle.len() >= s.max_idle {
            // Evict the oldest idle connection.
            slot.idle.remove(0);
        }
        slot.idle.push(Idle {
            tx,
            born: conn.born,
            since: conn.used,
        });
    }

    /// Opens a new connection to endpoint `addr` of `cluster`: TCP, then the PROXY
    /// header if the cluster sends one (such a connection serves only this client), then
    /// TLS if the cluster originates it, then the HTTP handshake. h2c connections are
    /// shared in the pool.
    pub async fn connect(
        self: &Rc<Self>,
        addr: SocketAddr,
        cluster: &crate::runtime::Cluster,
        stats: &EndpointStats,
        origin: Origin,
    ) -> Result<Conn, ProxyError> {
        let stream = dial(addr, cluster, stats, origin).await?;
        let born = Instant::now();
        let private = cluster.proxy_protocol.is_some();
        let sender = match &cluster.tls {
            Some((t, cfg)) => {
                let tls = tls_connect(addr, t, cfg, stream, cluster.connect_timeout).await?;
                self.handshake(TokioIo::new(tls), addr, cluster, born, private).await?
            }
            None => {
                self.handshake(TokioIo::new(stream), addr, cluster, born, private)
                    .await?
            }
        };
        Ok(Conn {
            addr,
            sender,
            born,
            used: born,
            reused: false,
            private,
        })
    }

    async fn handshake<IO>(
        self: &Rc<Self>,
        io: IO,
        addr: SocketAddr,
        cluster: &crate::runtime::Cluster,
        born: Instant,
        private: bool,
    ) -> Result<Sender, ProxyError>
    where
        IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let open = OpenGuard::new(&cluster.stats);
        match cluster.protocol {
            UpstreamProtocol::Http1 => {
                let (tx, conn) = http1::Builder::new()
                    .writev(false)
                    .handshake(io)
                    .await
                    .map_err(|_| ProxyError::UpstreamReset)?;
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                    drop(open);
                });
                Ok(Sender::H1(tx))
            }
            UpstreamProtocol::H2c => {
                let (tx, conn) = http2::Builder::new(LocalExec)
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|_| ProxyError::UpstreamReset)?;
                tokio::task::spawn_local(async move {
                    let _ = conn.await;
                    drop(open);
                });
                if !private {
                    self.by_endpoint
                        .borrow_mut()
                        .entry((addr, cluster.pool.profile))
                        .or_default()
                        .h2 = Some((tx.clone(), born));
                }
                Ok(Sender::H2(tx))
            }
        }
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
pub async fn dial(
    addr: SocketAddr,
    cluster: &crate::runtime::Cluster,
    stats: &EndpointStats,
    origin: Origin,
) -> Result<TcpStream, ProxyError> {
    use tokio::io::AsyncWriteExt;
    let mut stream = match tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            stats.connect_failures.fetch_add(1, Relaxed);
            return Err(ProxyError::ConnectFailure);
        }
        Err(_) => {
            stats.connect_failures.fetch_add(1, Relaxed);
            stats.timeouts.fetch_add(1, Relaxed);
            return Err(ProxyError::ConnectTimeout);
        }
    };
    let _ = stream.set_nodelay(true);
    stats.connections_opened.fetch_add(1, Relaxed);
    if let Some(v) = cluster.proxy_protocol {
        let header = match v {
            crate::config::ProxyProtocolVersion::V1 => crate::proxy_protocol::encode_v1(origin.client, origin.local),
            crate::config::ProxyProtocolVersion::V2 => crate::proxy_protocol::encode_v2(origin.client, origin.local),
        };
        stream.write_all(&header).await.map_err(|_| ProxyError::UpstreamReset)?;
    }
    Ok(stream)
}

/// TLS to an upstream: SNI from the cluster (or the endpoint IP), verified against the
/// cluster's CA or the system roots.
pub async fn tls_connect(
    addr: SocketAddr,
    t: &crate::tls::UpstreamTls,
    cfg: &crate::config::Built<rustls::ClientConfig>,
    stream: TcpStream,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
    let name = match &t.sni {
        Some(n) => rustls_pki_types::ServerName::try_from(n.clone()).map_err(|_| ProxyError::ConnectFailure)?,
        None => rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    match tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(cfg.0.clone()).connect(name, stream),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream TLS handshake failed");
            Err(ProxyError::ConnectFailure)
        }
        Err(_) => Err(ProxyError::ConnectTimeout),
    }
}

/// Counts an open upstream connection for its cluster until dropped.
struct OpenGuard(Arc<ClusterStats>);

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

/// Sends `req` on `conn`. On failure before the request was written, the request is
/// handed back so the caller can try a fresh connection.
pub async fn send(
    conn: &mut Conn,
    req: http::Request<UpstreamBody>,
) -> Result<http::Response<Incoming>, (hyper::Error, Option<http::Request<UpstreamBody>>)> {
    let result = match &mut conn.sender {
        Sender::H1(tx) => tx.try_send_request(req).await,
        Sender::H2(tx) => tx.try_send_request(req).await,
    };
    result.map_err(|mut e| {
        let msg = e.take_message();
        (e.into_error(), msg)
    })
}
