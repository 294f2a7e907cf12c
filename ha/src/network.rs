//! Peer transport: TCP with mutual TLS, one request/reply frame at a time per
//! connection. Clients are made per target by openraft; the server answers Raft RPCs
//! and forwarded proposals. A peer without a certificate signed by the group's CA never
//! gets past the handshake, and is counted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

use crate::types::{Batch, NodeId, Raft, TypeConfig};
use crate::wire::{read_frame, write_frame, WireError};

/// The DNS name every peer certificate carries (and that peers verify).
pub const PEER_NAME: &str = "tandem-peer";

/// Certificate files for peer traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// CA that signs every member's certificate.
    pub ca: PathBuf,
    /// This node's certificate (with DNS name `tandem-peer`).
    pub cert: PathBuf,
    /// This node's key.
    pub key: PathBuf,
}

/// Why TLS material for peers could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("peer TLS: {0}")]
pub struct PeerTlsError(String);

fn certs(p: &std::path::Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PeerTlsError> {
    let v: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(p)
        .map_err(|e| PeerTlsError(format!("{}: {e}", p.display())))?
        .filter_map(Result::ok)
        .collect();
    if v.is_empty() {
        return Err(PeerTlsError(format!("{} holds no certificate", p.display())));
    }
    Ok(v)
}

fn key(p: &std::path::Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PeerTlsError> {
    rustls_pki_types::PrivateKeyDer::from_pem_file(p).map_err(|e| PeerTlsError(format!("{}: {e}", p.display())))
}

fn roots(ca: &std::path::Path) -> Result<Arc<rustls::RootCertStore>, PeerTlsError> {
    let mut r = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        r.add(c).map_err(|e| PeerTlsError(e.to_string()))?;
    }
    Ok(Arc::new(r))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Server side: client certificates required and verified against the CA.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, PeerTlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&self.ca)?, provider())
            .build()
            .map_err(|e| PeerTlsError(e.to_string()))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| PeerTlsError(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    /// Client side: the peer must present a CA-signed `tandem-peer` certificate.
    pub fn client(&self) -> Result<Arc<rustls::ClientConfig>, PeerTlsError> {
        let roots = roots(&self.ca)?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| PeerTlsError(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

/// A message to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Raft log replication / heartbeat.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft election.
    Vote(VoteRequest<NodeId>),
    /// Raft snapshot chunk.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's batch, for the leader to propose.
    Propose(Batch),
    /// A batch for a member to propose, or pass to its leader when it is not it (a
    /// node that cannot reach the leader itself goes through another member).
    Relay(Batch),
}

/// A peer's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To `Propose` and `Relay`: what applying the batch answered.
    Propose(Result<Option<crate::lease::Lease>, String>),
}

/// Makes clients for openraft.
#[derive(Clone)]
pub struct Network {
    /// TLS client settings.
    pub tls: Arc<rustls::ClientConfig>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            tls: self.tls.clone(),
            conn: None,
        }
    }
}

/// A connection to one peer, opened on first use and after any error.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    conn: Option<tokio_rustls::client::TlsStream<TcpStream>>,
}

impl PeerClient {
    /// Sends one request and waits for its reply.
    pub async fn call(&mut self, req: &Request) -> Result<Reply, WireError> {
        if self.conn.is_none() {
            let tcp = TcpStream::connect(&self.addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls_pki_types::ServerName::try_from(PEER_NAME).expect("static name");
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await?;
            self.conn = Some(tls);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let result = async {
            write_frame(conn, req).await?;
            read_frame(conn).await
        }
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

fn unreachable<E: std::error::Error>(e: WireError) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&e))
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other("unexpected reply")))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&Request::Append(rpc)).await.map_err(unreachable)? {
            Reply::Append(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(&Request::Snapshot(rpc)).await.map_err(unreachable)? {
            Reply::Snapshot(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&Request::Vote(rpc)).await.map_err(unreachable)? {
            Reply::Vote(r) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }
}

/// Counters of the peer listener.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Connections refused at the TLS handshake (no or bad certificate).
    pub refused: AtomicU64,
    /// Frames that did not decode.
    pub malformed: AtomicU64,
}

/// Answers peers on `listener` until the task is dropped; its connections go with it
/// (a stopped node must not keep answering on old connections).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    raft: Raft,
    network: Network,
    stats: Arc<PeerStats>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        let Ok((tcp, peer)) = accepted else { continue };
        let (acceptor, raft, stats, network) = (acceptor.clone(), raft.clone(), stats.clone(), network.clone());
        conns.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut conn = match acceptor.accept(tcp).await {
                Ok(c) => c,
                Err(e) => {
                    stats.refused.fetch_add(1, Relaxed);
                    tracing::warn!(%peer, error = %e, "peer refused at TLS handshake");
                    return;
                }
            };
            loop {
                let req: Request = match read_frame(&mut conn).await {
                    Ok(r) => r,
                    Err(WireError::Decode(e)) => {
                        stats.malformed.fetch_add(1, Relaxed);
                        tracing::warn!(%peer, error = %e, "malformed peer frame");
                        return;
                    }
                    Err(_) => return,
                };
                let reply = match req {
                    Request::Append(r) => Reply::Append(raft.append_entries(r).await),
                    Request::Vote(r) => Reply::Vote(raft.vote(r).await),
                    Request::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
                    Request::Propose(b) => {
                        Reply::Propose(raft.client_write(b).await.map(|r| r.data).map_err(|e| e.to_string()))
                    }
                    Request::Relay(b) => relay(&raft, &network, b).await,
                };
                if write_frame(&mut conn, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Proposes `batch` here, or passes it to the leader once (never further).
async fn relay(raft: &Raft, network: &Network, batch: Batch) -> Reply {
    let err = match raft.client_write(batch.clone()).await {
        Ok(r) => return Reply::Propose(Ok(r.data)),
        Err(e) => e,
    };
    if let RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)) = &err {
        if let (Some(id), Some(node)) = (f.leader_id, f.leader_node.as_ref()) {
            let mut net = network.clone();
            let mut leader = net.new_client(id, node).await;
            let timeout = std::time::Duration::from_millis(250);
            if let Ok(Ok(reply)) = tokio::time::timeout(timeout, leader.call(&Request::Propose(batch))).await {
                return reply;
            }
        }
    }
    Reply::Propose(Err(err.to_string()))
}
