//! The state machine: applies committed batches to the [`Tables`] the proxy reads, and
//! snapshots them (to `snapshot.bin`, so a restarted node starts from its last snapshot
//! and replays only the log after it).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::tables::Tables;
use crate::types::{NodeId, TypeConfig};
use crate::wire;

/// How long rate-limit windows are kept in the replicated tables.
const RATE_KEEP_MS: u64 = 120_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    tables: Tables,
    snapshot_id: String,
}

/// The state machine (cheap to clone; clones share the tables).
#[derive(Debug, Clone)]
pub struct StateMachine {
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The replicated tables; the proxy reads them, only `apply` writes them.
    pub tables: Arc<RwLock<Tables>>,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from the last snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut sm = StateMachine {
            dir: dir.to_path_buf(),
            last_applied: None,
            membership: StoredMembership::default(),
            tables: Arc::new(RwLock::new(Tables::default())),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Ok(b) = std::fs::read(dir.join("snapshot.bin")) {
            let s: Stored = wire::decode_snapshot(&b).map_err(|e| std::io::Error::other(e.to_string()))?;
            sm.last_applied = s.last_applied;
            sm.membership = s.membership.clone();
            *sm.tables.write().expect("tables poisoned") = s.tables;
            sm.snapshot = Some((
                SnapshotMeta {
                    last_log_id: s.last_applied,
                    last_membership: s.membership,
                    snapshot_id: s.snapshot_id,
                },
                b,
            ));
        }
        Ok(sm)
    }

    fn persist(&self, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.dir.join("snapshot.bin");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, path)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.snapshots_built += 1;
        let snapshot_id = format!(
            "{}-{}-{}",
            self.last_applied.map_or(0, |l| l.leader_id.term),
            self.last_applied.map_or(0, |l| l.index),
            self.snapshots_built
        );
        let stored = Stored {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            tables: self.tables.read().expect("tables poisoned").clone(),
            snapshot_id: snapshot_id.clone(),
        };
        let bytes = wire::encode(&stored)
            .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())))?;
        self.persist(&bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        self.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<crate::lease::Lease>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut out = Vec::new();
        let mut tables = self.tables.write().expect("tables poisoned");
        for e in entries {
            self.last_applied = Some(e.log_id);
            let mut answer = None;
            match e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    answer = tables.apply(&batch);
                    if let Some(t) = batch_time(&batch) {
                        tables.prune(t, RATE_KEEP_MS);
                    }
                }
                EntryPayload::Membership(m) => self.membership = StoredMembership::new(Some(e.log_id), m),
            }
            out.push(answer);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let s: Stored = wire::decode_snapshot(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e.to_string()))
        })?;
        self.persist(&bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        *self.tables.write().expect("tables poisoned") = s.tables;
        self.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

/// The newest observation time in a batch, so pruning is the same on every member.
fn batch_time(b: &crate::types::Batch) -> Option<u64> {
    b.changes
        .iter()
        .filter_map(|c| match c {
            crate::tables::Change::Verdict { observed_at_ms, .. } => Some(*observed_at_ms),
            crate::tables::Change::RateCount { window_ms, .. } => Some(*window_ms),
            _ => None,
        })
        .max()
}
