//! The Raft type configuration: what a log entry carries.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::tables::Change;

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
            && self.changes.iter().all(|c| {
                matches!(
                    c,
                    crate::tables::Change::VipLease { .. } | crate::tables::Change::VipRelease { .. }
                )
            })
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
        R = Option<crate::lease::Lease>,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
