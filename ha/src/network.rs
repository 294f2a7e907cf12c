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

use std::sync::Arc;
use std::time::Duration;

use openraft::network::RaftNetworkFactory;
use openraft::BasicNode;

use crate::client::Contacts;
use crate::client::PeerClient;
use crate::peer_tls::PeerTlsError;
use crate::peer_tls::PEER_NAME;
use crate::peer_tls::{server_name, PeerTls};
use crate::protocol::Reply;
use crate::protocol::Request;
use crate::types::{NodeId, Raft, TypeConfig};

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

impl Network {
    /// Whether `ip` is a member's address: configured for this node, or in the group's
    /// membership. Connections from there get handshake slots of their own.
    pub(crate) fn member_ip(&self, raft: &Raft, ip: std::net::IpAddr) -> bool {
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
    pub fn new(tls: &PeerTls, peers: &[crate::types::Peer]) -> Result<Network, PeerTlsError> {
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
        PeerClient::new(
            target,
            self.addresses.get(&target).cloned().unwrap_or_else(|| addr.to_string()),
            self.tls.clone(),
            self.name_of(target),
            Arc::default(),
        )
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
        let addr = self
            .addresses
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone());
        PeerClient::new(
            target,
            addr,
            self.tls.clone(),
            self.name_of(target),
            self.contacts.clone(),
        )
    }
}

impl Network {
    /// Opens and keeps a link to every member in `peers` but `me`; the returned tasks
    /// end when the network's last clone is dropped or they are aborted.
    pub fn start_links(&self, me: NodeId, peers: &[crate::types::Peer]) -> Vec<tokio::task::JoinHandle<()>> {
        self.links.start(me, peers, |id, addr| self.link_client(id, addr))
    }
}
