//! The state machine: applies committed batches to the [`Tables`] the proxy reads, and
//! snapshots them (to `snapshot.bin`, so a restarted node starts from its last snapshot
//! and replays only the log after it).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

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

/// What a snapshot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    tables: Tables,
    snapshot_id: String,
}

/// [`Stored`] as written before ejections were shared.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredV1 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    tables: crate::tables::TablesV1,
    snapshot_id: String,
}

impl Stored {
    /// Decodes a snapshot of this version, or of the one before it.
    fn decode(b: &[u8]) -> Result<Stored, wire::WireError> {
        wire::decode_snapshot(b).or_else(|e| {
            let old: StoredV1 = wire::decode_snapshot(b).map_err(|_| e)?;
            Ok(Stored {
                last_applied: old.last_applied,
                membership: old.membership,
                tables: old.tables.into(),
                snapshot_id: old.snapshot_id,
            })
        })
    }
}

/// Snapshot counters, for metrics.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Snapshots built here.
    pub built: AtomicU64,
    /// Snapshots received from the leader and installed here.
    pub installed: AtomicU64,
    /// How long the last build took (encode and write), microseconds.
    pub last_build_us: AtomicU64,
    /// Size of the current snapshot, bytes.
    pub bytes: AtomicU64,
}

/// The current snapshot: its metadata and bytes.
type Current = Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>;

/// The state machine.
#[derive(Debug)]
pub struct StateMachine {
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The replicated tables; the proxy reads them, only `apply` writes them.
    pub tables: Arc<RwLock<Tables>>,
    /// The current snapshot, shared with the builders: a snapshot a builder makes is the
    /// one this state machine serves from then on (to followers that fell behind the
    /// purged log, and after a restart).
    snapshot: Arc<Mutex<Current>>,
    /// Snapshot counters.
    pub stats: Arc<SnapshotStats>,
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
            snapshot: Arc::new(Mutex::new(None)),
            stats: Arc::new(SnapshotStats::default()),
        };
        if let Ok(b) = std::fs::read(dir.join("snapshot.bin")) {
            let s = Stored::decode(&b).map_err(|e| std::io::Error::other(e.to_string()))?;
            sm.last_applied = s.last_applied;
            sm.membership = s.membership.clone();
            *sm.tables.write().expect("tables poisoned") = s.tables;
            sm.stats.bytes.store(b.len() as u64, Relaxed);
            *sm.current() = Some((
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

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn persist(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = dir.join("snapshot.bin");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Builds one snapshot from a copy of the state taken when openraft asked for it (so
/// its data is exactly the state at its log id), then makes it the state machine's.
pub struct SnapshotBuilder {
    dir: PathBuf,
    stored: Stored,
    snapshot: Arc<Mutex<Current>>,
    stats: Arc<SnapshotStats>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let t = std::time::Instant::now();
        let n = self.stats.built.fetch_add(1, Relaxed) + 1;
        let last = self.stored.last_applied;
        self.stored.snapshot_id = format!(
            "{}-{}-{n}",
            last.map_or(0, |l| l.leader_id.term),
            last.map_or(0, |l| l.index)
        );
        let bytes = wire::encode(&self.stored)
            .map_err(|e| StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())))?;
        persist(&self.dir, &bytes).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.stored.membership.clone(),
            snapshot_id: self.stored.snapshot_id.clone(),
        };
        self.stats.bytes.store(bytes.len() as u64, Relaxed);
        self.stats.last_build_us.store(t.elapsed().as_micros() as u64, Relaxed);
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<crate::types::Lease>>, StorageError<NodeId>>
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
        // Called between applies: the copy is the state at `last_applied`, exactly.
        SnapshotBuilder {
            dir: self.dir.clone(),
            stored: Stored {
                last_applied: self.last_applied,
                membership: self.membership.clone(),
                tables: self.tables.read().expect("tables poisoned").clone(),
                snapshot_id: String::new(),
            },
            snapshot: self.snapshot.clone(),
            stats: self.stats.clone(),
        }
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
        let s = Stored::decode(&bytes).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(e.to_string()))
        })?;
        persist(&self.dir, &bytes).map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        *self.tables.write().expect("tables poisoned") = s.tables;
        self.stats.installed.fetch_add(1, Relaxed);
        self.stats.bytes.store(bytes.len() as u64, Relaxed);
        *self.current() = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.current().as_ref().map(|(meta, bytes)| Snapshot {
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
            crate::types::Change::Verdict { observed_at_ms, .. } => Some(*observed_at_ms),
            crate::types::Change::RateCount { window_ms, .. } => Some(*window_ms),
            _ => None,
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_of_the_previous_format_still_opens() {
        let mut t = crate::tables::TablesV1::default();
        let _ = &mut t;
        let old = StoredV1 {
            last_applied: None,
            membership: StoredMembership::default(),
            tables: t,
            snapshot_id: "1-20-3".into(),
        };
        let bytes = wire::encode(&old).unwrap();
        let s = Stored::decode(&bytes).unwrap();
        assert_eq!(s.snapshot_id, "1-20-3");
        assert!(s.tables.ejections.is_empty());
        let new = wire::encode(&s).unwrap();
        assert_eq!(Stored::decode(&new).unwrap().snapshot_id, "1-20-3");
    }
}
