//! What the group's members agree on and talk about: node ids and peers, the changes
//! a log entry carries, VIP leases, and the Raft type configuration.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Node identifiers are small integers from the configuration; never reuse one.
pub type NodeId = u64;

/// One proposal: the changes one node batched during one `sync_interval`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The node that observed these changes.
    pub origin: NodeId,
    /// The changes, in the order they were observed.
    pub changes: Vec<Change>,
}

impl Batch {
    /// Whether it carries only VIP lease changes: those travel on the members' standing
    /// links, which must not queue them behind bulk batches (see [`crate::link`]).
    pub fn is_lease(&self) -> bool {
        !self.changes.is_empty()
            && self
                .changes
                .iter()
                .all(|c| matches!(c, Change::VipLease { .. } | Change::VipRelease { .. }))
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch from {} ({} changes)", self.origin, self.changes.len())
    }
}

openraft::declare_raft_types!(
    /// Tandem's Raft types: entries carry [`Batch`]es; a response is the lease a
    /// lease change left (none for other batches).
    pub TypeConfig:
        D = Batch,
        R = Option<Lease>,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// One observation or decision a node publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// An endpoint health verdict.
    Verdict {
        /// Cluster name.
        cluster: String,
        /// Endpoint address.
        endpoint: String,
        /// Healthy or not.
        healthy: bool,
        /// When the reporter observed it (ms since the Unix epoch).
        observed_at_ms: u64,
    },
    /// A sticky binding (key → endpoint) that expires unless refreshed.
    Sticky {
        /// Binding key (hash of cluster and session key).
        key: u64,
        /// Endpoint address.
        endpoint: String,
        /// Expiry (ms since the Unix epoch).
        expires_at_ms: u64,
    },
    /// A node's request count for a rate-limit key in one window. Each node reports only
    /// its own count, so counts from different nodes are summed, never overwritten.
    RateCount {
        /// Limit key (hash of route and client key).
        key: u64,
        /// Window start (ms since the Unix epoch).
        window_ms: u64,
        /// The node's count so far in that window.
        count: u64,
    },
    /// A cluster-scoped shared-data value (proxy-wasm keys under the configured prefix).
    Shared {
        /// Key.
        key: String,
        /// Value (None deletes).
        value: Option<Vec<u8>>,
    },
    /// A request for (or renewal of) a VIP's lease by the batch's origin.
    VipLease {
        /// VRID of the VIP.
        vrid: u8,
        /// The requester's VRRP priority.
        priority: u8,
        /// Whether the requester may preempt a lower-priority holder.
        preempt: bool,
        /// Request time (proposer's clock, ms since the Unix epoch).
        at_ms: u64,
        /// Lease lifetime from `at_ms`.
        ttl_ms: u64,
    },
    /// The batch's origin gives a VIP's lease up.
    VipRelease {
        /// VRID of the VIP.
        vrid: u8,
    },
    /// A sticky binding with one truth: the first binding committed for a key wins
    /// while it lives; a later one for another endpoint takes effect only when it names
    /// the binding it `replaces` (its proposer saw that endpoint unfit), and the same
    /// endpoint extends the expiry. (Appended after the older variants, so logs written
    /// before it still decode.)
    StickyBind {
        /// Binding key (hash of cluster and session key).
        key: u64,
        /// Endpoint address.
        endpoint: String,
        /// When the proposer bound it (ms since the Unix epoch).
        at_ms: u64,
        /// Expiry (ms since the Unix epoch).
        expires_at_ms: u64,
        /// The endpoint of the binding this one replaces, if it replaces one.
        replaces: Option<String>,
    },
    /// A passive outlier ejection, shared so the other members eject a gray endpoint too.
    Ejection {
        /// Cluster name.
        cluster: String,
        /// Endpoint address.
        endpoint: String,
        /// When the ejection ends (ms since the Unix epoch).
        until_ms: u64,
        /// When the reporter ejected it.
        observed_at_ms: u64,
    },
}

impl Change {
    /// About how many bytes the change takes on the wire (for batch sizing).
    pub fn wire_size(&self) -> usize {
        16 + match self {
            Change::Verdict { cluster, endpoint, .. } => 16 + cluster.len() + endpoint.len(),
            Change::Sticky { endpoint, .. } => 24 + endpoint.len(),
            Change::RateCount { .. } => 24,
            Change::Shared { key, value } => 8 + key.len() + value.as_ref().map_or(0, Vec::len),
            Change::VipLease { .. } => 24,
            Change::VipRelease { .. } => 2,
            Change::StickyBind { endpoint, replaces, .. } => {
                40 + endpoint.len() + replaces.as_ref().map_or(0, String::len)
            }
            Change::Ejection { cluster, endpoint, .. } => 16 + cluster.len() + endpoint.len(),
        }
    }
}

/// A VIP's lease as replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// VRID of the VIP.
    pub vrid: u8,
    /// The node allowed to hold it.
    pub holder: NodeId,
    /// The holder's VRRP priority when it last renewed.
    pub priority: u8,
    /// Expiry (proposer's clock, ms since the Unix epoch); 0 once released.
    pub until_ms: u64,
    /// Newest request time seen for this VIP; a request older than its own lifetime
    /// compared with it is stale (delayed in a partition) and refused.
    pub clock_ms: u64,
    /// A higher-priority node with preemption asked for it: the holder yields.
    pub wanted_by: Option<NodeId>,
}

impl Lease {
    /// Whether `node` may hold the VIP at `now_ms` according to this lease.
    pub fn held_by(&self, node: NodeId, now_ms: u64) -> bool {
        self.holder == node && self.until_ms > now_ms
    }
}

/// A member of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id (unique, never reused).
    pub id: NodeId,
    /// Peer address (`IP:port`).
    pub address: SocketAddr,
}
