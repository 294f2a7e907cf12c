//! Calling a member: a logged-in connection made on demand (and kept for openraft's
//! own clients), and the time of the last contact with each member.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use tokio::net::TcpStream;

use crate::protocol::Reply;
use crate::protocol::Request;
use crate::types::{NodeId, TypeConfig};
use crate::wire::{read_frame, write_frame, WireError};

/// Connecting (TCP and TLS) to a peer may take this long before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// When this node last heard from each member (a reply to its call, or a request that
/// speaks for that member): the basis of "last contact" and of knowing whether the
/// leader (and so a quorum) is within reach.
#[derive(Debug, Default)]
pub struct Contacts(Mutex<std::collections::HashMap<NodeId, Instant>>);

impl Contacts {
    /// Notes contact with `id` now.
    pub fn touch(&self, id: NodeId) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Instant::now());
    }

    /// How long ago `id` was last heard from.
    pub fn since(&self, id: NodeId) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map(Instant::elapsed)
    }
}

/// A logged-in connection to a peer.
type PeerConn = tokio_rustls::client::TlsStream<TcpStream>;

/// A connection to one peer, opened on first use and after any error.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    name: rustls_pki_types::ServerName<'static>,
    /// Idle between calls; taken out while a call runs (see the module doc).
    conn: Option<PeerConn>,
    contacts: Arc<Contacts>,
}

impl PeerClient {
    /// A client for member `target` at `addr`, whose certificate must carry `name`;
    /// replies count as contact in `contacts`. It connects at its first call.
    pub(crate) fn new(
        target: NodeId,
        addr: String,
        tls: Arc<rustls::ClientConfig>,
        name: rustls_pki_types::ServerName<'static>,
        contacts: Arc<Contacts>,
    ) -> PeerClient {
        PeerClient {
            target,
            addr,
            tls,
            name,
            conn: None,
            contacts,
        }
    }

    /// Whether a connection is open (kept from the last whole call).
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Sends one request and waits for its reply. Cancel-safe: a call dropped half-way
    /// takes its connection with it.
    pub async fn call(&mut self, req: &Request) -> Result<Reply, WireError> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let connect = async {
                    let tcp = TcpStream::connect(&self.addr).await?;
                    let _ = tcp.set_nodelay(true);
                    tokio_rustls::TlsConnector::from(self.tls.clone())
                        .connect(self.name.clone(), tcp)
                        .await
                };
                tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
            }
        };
        write_frame(&mut conn, req).await?;
        let reply = read_frame(&mut conn).await?;
        self.conn = Some(conn);
        self.contacts.touch(self.target);
        Ok(reply)
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
