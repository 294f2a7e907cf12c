//! Tandem's shared state for an active-active pair (plus an optional witness): a small
//! Raft group built on openraft 0.9 that replicates what the nodes learn — endpoint
//! health verdicts, sticky bindings, rate-limit ledgers and cluster-scoped shared data.
//!
//! The data plane never waits on it: a node reads its local copy of the replicated
//! [`Tables`], and publishes its own observations through [`HaNode::publish`], which
//! batches them into one proposal per `sync_interval`. Without quorum the batch stays
//! in a bounded buffer and is proposed on heal.
//!
//! Peer traffic is TCP with mutual TLS; messages are framed with bincode 2.
//! This crate never depends on the proxy.

#![warn(missing_docs)]

pub mod client;
pub mod handback;
pub mod lease;
pub mod link;
pub mod network;
pub mod node;
pub mod peer_tls;
pub mod protocol;
pub mod server;
pub mod state_machine;
pub mod store;
pub mod tables;
pub mod types;
pub mod vip;
pub mod watch;
pub mod wire;

pub use lease::{LeaseClient, LeaseError};
pub use node::{HaConfig, HaError, HaNode, Publisher};
pub use openraft;
pub use openraft::RaftMetrics;
pub use peer_tls::PeerTls;
pub use tables::Tables;
pub use types::{Batch, Change, Lease, NodeId, Peer, TypeConfig};

/// Raises the calling thread's scheduling priority (nice −10) when allowed (root or
/// CAP_SYS_NICE); whether it was raised. For the threads that run the group, the
/// VRRP routers and the leases: a lease is a promise kept by the clock, and a thread
/// that waits behind busy workers past its fence margin would hold a VIP it no longer
/// has (keepalived raises its VRRP process for the same reason).
pub fn raise_thread_priority() -> bool {
    // SAFETY: setpriority on this thread's own id; no memory is touched.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) == 0 }
}

/// Milliseconds since the Unix epoch (lease times).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
