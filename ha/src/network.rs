//! Peer transport: TCP with mutual TLS, one request/reply frame at a time per
//! connection. Clients are made per target by openraft; the server answers Raft RPCs
//! and forwarded proposals.
//!
//! Only members get in: a peer's certificate must be signed by the group's CA *and*
//! carry the group's peer name (`tandem-peer` by default); with `verify_node_id`, it
//! must also carry `node<ID>.<peer name>` for the node id it speaks for, on both sides
//! of the connection. The listener is a control port and bounded as one: at most
//! [`MAX_PEER_CONNECTIONS`] open and [`MAX_UNAUTHENTICATED`] still in their handshake
//! (more are closed at accept) — counted apart for connections from members' addresses
//! (configured or in the membership) and from anywhere else, so strangers that keep the
//! handshake slots full cannot keep members out —, [`HANDSHAKE_TIMEOUT`] for the TLS login,
//! [`PEER_IDLE_TIMEOUT`] without a frame, frames read incrementally (see `wire`).
//! Refused peers are counted and logged at most once per [`REFUSED_LOG_EVERY`].
//!
//! A call cancelled half-way (openraft's RPC timeouts drop the future) never leaves its
//! connection behind: the connection is out of the client while a call uses it and goes
//! back only after a whole reply was read, so a later call can never read an earlier
//! call's reply or wait behind a stalled one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The DNS name every peer certificate carries by default (and that peers verify).
pub const PEER_NAME: &str = "tandem-peer";

/// Most peer connections open at once (a group has at most a handful of members, each
/// with a few connections).
pub const MAX_PEER_CONNECTIONS: usize = 64;
/// Most peer connections still in their TLS handshake.
pub const MAX_UNAUTHENTICATED: usize = 16;
/// Time a connecting peer has to complete its TLS login.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// A logged-in connection that sends no frame for this long is closed (members send
/// heartbeats every few tens of milliseconds).
pub const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Refused peers are logged at WARN at most this often (the rest are counted).
pub const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);
/// Connecting (TCP and TLS) to a peer may take this long before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Certificate files for peer traffic, and the identity peers must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// CA that signs every member's certificate.
    pub ca: PathBuf,
    /// This node's certificate (with DNS name `name`).
    pub cert: PathBuf,
    /// This node's key.
    pub key: PathBuf,
    /// The DNS name every member's certificate carries ([`PEER_NAME`] by default).
    pub name: String,
    /// Also require `node<ID>.<name>` for the node id a peer speaks for.
    pub verify_node_id: bool,
}

impl PeerTls {
    /// Files with the default peer name and no node-id check.
    pub fn new(ca: PathBuf, cert: PathBuf, key: PathBuf) -> PeerTls {
        PeerTls {
            ca,
            cert,
            key,
            name: PEER_NAME.to_string(),
            verify_node_id: false,
        }
    }

    /// The name a certificate must carry to speak for node `id` (with `verify_node_id`).
    pub fn node_name(&self, id: NodeId) -> String {
        format!("node{id}.{}", self.name)
    }
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

/// The group's client-certificate check: the CA's signature (webpki), then the peer
/// name, which the CA alone does not prove (a CA may sign other certificates too).
#[derive(Debug)]
struct PeerCertVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    name: rustls_pki_types::ServerName<'static>,
}

impl rustls::server::danger::ClientCertVerifier for PeerCertVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, &self.name)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Whether `cert` carries DNS name `name`.
fn cert_has_name(cert: &rustls_pki_types::CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else {
        return false;
    };
    rustls::server::ParsedCertificate::try_from(cert)
        .is_ok_and(|p| rustls::client::verify_server_name(&p, &server_name).is_ok())
}

fn server_name(name: &str) -> Result<rustls_pki_types::ServerName<'static>, PeerTlsError> {
    rustls_pki_types::ServerName::try_from(name.to_string())
        .map_err(|_| PeerTlsError(format!("`{name}` is not a valid DNS name for peer certificates")))
}

impl PeerTls {
    /// Server side: client certificates required, signed by the CA and carrying the
    /// peer name.
    pub fn server(&self) -> Result<Arc<rustls::ServerConfig>, PeerTlsError> {
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&self.ca)?, provider())
            .build()
            .map_err(|e| PeerTlsError(e.to_string()))?;
        let verifier = Arc::new(PeerCertVerifier {
            inner,
            name: server_name(&self.name)?,
        });
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| PeerTlsError(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&self.cert)?, key(&self.key)?)
            .map_err(|e| PeerTlsError(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    /// Client side: the peer must present a CA-signed certificate with the peer name
    /// (or, with `verify_node_id`, the target's node name: see [`Network`]).
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Whether the member has joined a group (a node about to form a new group asks
    /// first, so a wiped or late node never starts a second group beside the first).
    /// Appended after the older requests, so their encoding is unchanged.
    Hello,
    /// A membership change, for the leader to carry out.
    Membership(MembershipChange),
    /// From a leader that is not the preferred one: stand for election once your log
    /// reaches `last_log_index` (see [`crate::handback`]).
    Handback {
        /// The leader's last log index when it asked.
        last_log_index: u64,
    },
    /// Whether the connection carries replies (a standing link's check, see
    /// [`crate::link`]); answered at once, without the Raft core.
    Ping,
}

/// A change of the group's members (`tandem ctl cluster add|remove|replace`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a member: first as a learner that catches up, then as a voter.
    Add {
        /// Its node id (never used before).
        id: NodeId,
        /// Its peer address.
        address: String,
    },
    /// Remove a member.
    Remove {
        /// Its node id.
        id: NodeId,
    },
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
    /// To `Hello`: whether this member belongs to a formed group.
    Hello {
        /// The member has joined a group (its log or membership is not empty).
        initialized: bool,
    },
    /// To `Membership`: the voters afterwards, or why it failed.
    Membership(Result<Vec<NodeId>, String>),
    /// To `Handback`: whether this member stood for election.
    Handback(bool),
    /// To `Ping`: the replier's links to the other members, as it sees them.
    Pong(Vec<crate::link::LinkView>),
}

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

/// Makes clients for openraft.
#[derive(Clone)]
pub struct Network {
    /// TLS client settings.
    pub tls: Arc<rustls::ClientConfig>,
    /// The names peers' certificates must carry.
    pub identity: Arc<PeerTls>,
    /// Where this node reaches each member it knows from its own configuration; a
    /// member added later is reached at the address its membership entry gives.
    addresses: Arc<std::collections::HashMap<NodeId, String>>,
    /// Last contact with each member.
    pub contacts: Arc<Contacts>,
    /// Standing connections to the configured members (see [`crate::link`]).
    pub links: Arc<crate::link::Links>,
}

/// A logged-in connection to a peer.
type PeerConn = tokio_rustls::client::TlsStream<TcpStream>;

impl Network {
    /// Whether `ip` is a member's address: configured for this node, or in the group's
    /// membership. Connections from there get handshake slots of their own.
    fn member_ip(&self, raft: &Raft, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let is = |a: &str| {
            a.parse::<std::net::SocketAddr>()
                .is_ok_and(|s| s.ip().to_canonical() == ip)
        };
        self.addresses.values().any(|a| is(a))
            || raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .any(|(_, n)| is(&n.addr))
    }

    /// Client settings for the group described by `tls`, reaching `peers` at their
    /// configured addresses.
    pub fn new(tls: &PeerTls, peers: &[crate::node::Peer]) -> Result<Network, PeerTlsError> {
        server_name(&tls.name)?;
        Ok(Network {
            tls: tls.client()?,
            identity: Arc::new(tls.clone()),
            addresses: Arc::new(peers.iter().map(|p| (p.id, p.address.to_string())).collect()),
            contacts: Arc::default(),
            links: Arc::default(),
        })
    }

    /// Sends one request to `target` outside openraft's own clients: on the standing
    /// link to it while that is fresh, else on a connection of its own; `None` if it
    /// could not be sent or answered within `within`.
    pub async fn ask(&self, target: NodeId, node: &BasicNode, req: Request, within: Duration) -> Option<Reply> {
        match self.links.call(target, req, within).await {
            Ok(reply) => reply,
            Err(req) => self.call_once(target, node, &req, within).await,
        }
    }

    /// A client for `target`'s standing link: its replies are not counted as Raft
    /// contact (a ping says the process answers, not that its Raft core does).
    pub(crate) fn link_client(&self, target: NodeId, addr: &str) -> PeerClient {
        PeerClient {
            target,
            addr: self.addresses.get(&target).cloned().unwrap_or_else(|| addr.to_string()),
            tls: self.tls.clone(),
            name: self.name_of(target),
            conn: None,
            contacts: Arc::default(),
        }
    }

    /// Sends one request to `target` outside openraft's own clients, on a connection of
    /// its own; `None` if it could not be sent or answered within `within`. A fresh
    /// connection each time: an idle one kept from before a cut may sit behind TCP's
    /// retransmission backoff after the heal, and a lease renewal cannot wait for it.
    pub async fn call_once(&self, target: NodeId, node: &BasicNode, req: &Request, within: Duration) -> Option<Reply> {
        let mut client = self.clone().new_client(target, node).await;
        tokio::time::timeout(within, client.call(req)).await.ok()?.ok()
    }

    /// The name node `target`'s certificate must carry.
    fn name_of(&self, target: NodeId) -> rustls_pki_types::ServerName<'static> {
        let name = if self.identity.verify_node_id {
            self.identity.node_name(target)
        } else {
            self.identity.name.clone()
        };
        rustls_pki_types::ServerName::try_from(name)
            .unwrap_or_else(|_| rustls_pki_types::ServerName::try_from(PEER_NAME).expect("a valid static name"))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: self
                .addresses
                .get(&target)
                .cloned()
                .unwrap_or_else(|| node.addr.clone()),
            tls: self.tls.clone(),
            name: self.name_of(target),
            conn: None,
            contacts: self.contacts.clone(),
        }
    }
}

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

/// Counters of the peer listener.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Connections refused at the TLS handshake (no or bad certificate, wrong name,
    /// handshake timeout).
    pub refused: AtomicU64,
    /// Connections closed at accept because the listener's caps were reached.
    pub over_capacity: AtomicU64,
    /// Frames that did not decode, or that claimed more than the frame cap.
    pub malformed: AtomicU64,
    /// Requests for another node id than the certificate names (`verify_node_id`).
    pub wrong_identity: AtomicU64,
    /// When a refusal was last logged at WARN, and how many were not logged since.
    log: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl PeerStats {
    /// Logs a refusal at WARN at most once per [`REFUSED_LOG_EVERY`] (with the number
    /// of refusals not logged since), and at debug otherwise.
    fn refusal(&self, peer: std::net::SocketAddr, what: &str, error: &dyn std::fmt::Display) {
        let mut last = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSED_LOG_EVERY) {
            self.unlogged.fetch_add(1, Relaxed);
            tracing::debug!(%peer, %error, "{what}");
            return;
        }
        *last = Some(now);
        let earlier = self.unlogged.swap(0, Relaxed);
        tracing::warn!(%peer, %error, not_logged_since_last = earlier, "{what}");
    }
}

/// Counts one open connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if count.fetch_add(1, Relaxed) >= max {
            count.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// The node id a request speaks for, where the protocol says it: the vote's candidate
/// or leader for Raft RPCs, the batch's origin for a relay. A `Propose` may be relayed
/// on behalf of another member, so its origin is not the sender's.
fn speaks_for(req: &Request) -> Option<NodeId> {
    match req {
        Request::Append(r) => r.vote.leader_id().voted_for(),
        Request::Vote(r) => r.vote.leader_id().voted_for(),
        Request::Snapshot(r) => r.vote.leader_id().voted_for(),
        Request::Relay(b) => Some(b.origin),
        Request::Propose(_) | Request::Hello | Request::Membership(_) | Request::Handback { .. } | Request::Ping => {
            None
        }
    }
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
    let open = Arc::new(AtomicUsize::new(0));
    // Handshakes in progress from members' addresses, and from anywhere else.
    let (members_handshaking, handshaking) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (or another transient failure): do not spin on it.
                tracing::debug!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pool = if network.member_ip(&raft, peer.ip()) {
            &members_handshaking
        } else {
            &handshaking
        };
        let (Some(slot), Some(login)) = (
            Slot::take(&open, MAX_PEER_CONNECTIONS),
            Slot::take(pool, MAX_UNAUTHENTICATED),
        ) else {
            stats.over_capacity.fetch_add(1, Relaxed);
            drop(tcp);
            continue;
        };
        let (acceptor, raft, stats, network) = (acceptor.clone(), raft.clone(), stats.clone(), network.clone());
        conns.spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    // The peer gave up before the end (its connect timeout passed):
                    // nothing was refused.
                    tracing::debug!(%peer, "peer left during the TLS handshake");
                    return;
                }
                Ok(Err(e)) => {
                    stats.refused.fetch_add(1, Relaxed);
                    stats.refusal(peer, "peer refused at TLS handshake", &e);
                    return;
                }
                Err(_) => {
                    stats.refused.fetch_add(1, Relaxed);
                    stats.refusal(
                        peer,
                        "peer refused at TLS handshake",
                        &"no login within the handshake timeout",
                    );
                    return;
                }
            };
            drop(login);
            let cert = conn.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
            // The node id this connection's certificate was found to speak for.
            let mut proven: Option<NodeId> = None;
            loop {
                let req: Request = match tokio::time::timeout(PEER_IDLE_TIMEOUT, read_frame(&mut conn)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e @ (WireError::Decode(_) | WireError::TooLarge(_)))) => {
                        stats.malformed.fetch_add(1, Relaxed);
                        stats.refusal(peer, "malformed peer frame", &e);
                        return;
                    }
                    Ok(Err(_)) | Err(_) => return,
                };
                if network.identity.verify_node_id {
                    if let Some(id) = speaks_for(&req).filter(|id| proven != Some(*id)) {
                        let ok = cert
                            .as_ref()
                            .is_some_and(|c| cert_has_name(c, &network.identity.node_name(id)));
                        if !ok {
                            stats.wrong_identity.fetch_add(1, Relaxed);
                            let why = format!("its certificate does not name node{id}.{}", network.identity.name);
                            stats.refusal(peer, "peer spoke for another node id", &why);
                            return;
                        }
                        proven = Some(id);
                    }
                }
                if let Some(id) = speaks_for(&req) {
                    network.contacts.touch(id);
                }
                let reply = match req {
                    Request::Append(r) => Reply::Append(raft.append_entries(r).await),
                    Request::Vote(r) => Reply::Vote(raft.vote(r).await),
                    Request::Snapshot(r) => Reply::Snapshot(raft.install_snapshot(r).await),
                    Request::Propose(b) => {
                        Reply::Propose(raft.client_write(b).await.map(|r| r.data).map_err(|e| e.to_string()))
                    }
                    Request::Relay(b) => relay(&raft, &network, b).await,
                    Request::Hello => Reply::Hello {
                        initialized: raft.is_initialized().await.unwrap_or(false),
                    },
                    Request::Membership(m) => Reply::Membership(change_membership(&raft, m).await),
                    Request::Handback { last_log_index } => {
                        Reply::Handback(crate::handback::stand(&raft, last_log_index).await)
                    }
                    Request::Ping => Reply::Pong(network.links.views()),
                };
                if write_frame(&mut conn, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Carries out a membership change here (this node must be the leader): an added
/// member joins as a learner and becomes a voter once it caught up; a removed one
/// leaves the voters and the group.
pub async fn change_membership(raft: &Raft, change: MembershipChange) -> Result<Vec<NodeId>, String> {
    use openraft::ChangeMembers;
    use std::collections::BTreeSet;
    match change {
        MembershipChange::Add { id, address } => {
            raft.add_learner(id, BasicNode::new(address), true)
                .await
                .map_err(|e| e.to_string())?;
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        MembershipChange::Remove { id } => {
            raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect())
}

/// Proposes `batch` here, or passes it to the leader once (never further).
async fn relay(raft: &Raft, network: &Network, batch: Batch) -> Reply {
    let err = match raft.client_write(batch.clone()).await {
        Ok(r) => return Reply::Propose(Ok(r.data)),
        Err(e) => e,
    };
    if let RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(f)) = &err {
        if let (Some(id), Some(node)) = (f.leader_id, f.leader_node.as_ref()) {
            let timeout = std::time::Duration::from_millis(250);
            // Lease changes on the standing link; bulk batches on a connection of their
            // own, so they never hold a lease renewal up behind them.
            let reply = if batch.is_lease() {
                network.ask(id, node, Request::Propose(batch), timeout).await
            } else {
                network.call_once(id, node, &Request::Propose(batch), timeout).await
            };
            if let Some(reply) = reply {
                return reply;
            }
        }
    }
    Reply::Propose(Err(err.to_string()))
}
