//! The Raft log and vote, persisted in a directory: `vote.bin`, and `log.bin` holding
//! length-prefixed bincode entries. An append returns only after `fsync`. Truncation and
//! purging rewrite the (snapshot-compacted, so small) file atomically.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::types::{NodeId, TypeConfig};
use crate::wire;

#[derive(Debug, Default)]
struct Inner {
    log: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The persistent log store (cheap to clone; clones share state).
#[derive(Debug, Clone)]
pub struct LogStore {
    dir: PathBuf,
    inner: Arc<Mutex<Inner>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl LogStore {
    /// Opens (or creates) the store in `dir`, reading what a previous run left.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut inner = Inner::default();
        if let Ok(b) = std::fs::read(dir.join("meta.bin")) {
            let m: Meta = wire::decode(&b).map_err(io_err)?;
            inner.last_purged = m.last_purged;
            inner.vote = m.vote;
            inner.committed = m.committed;
        }
        if let Ok(b) = std::fs::read(dir.join("log.bin")) {
            let mut p = 0;
            while p + 4 <= b.len() {
                let n = u32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]]) as usize;
                if p + 4 + n > b.len() {
                    break; // a torn last write: it was never acknowledged
                }
                let e: Entry<TypeConfig> = wire::decode(&b[p + 4..p + 4 + n]).map_err(io_err)?;
                inner.log.insert(e.log_id.index, e);
                p += 4 + n;
            }
        }
        if let Some(p) = inner.last_purged {
            inner.log.retain(|i, _| *i > p.index);
        }
        Ok(LogStore {
            dir: dir.to_path_buf(),
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log store poisoned")
    }

    fn save_meta(&self, inner: &Inner) -> std::io::Result<()> {
        let m = Meta {
            last_purged: inner.last_purged,
            vote: inner.vote,
            committed: inner.committed,
        };
        write_atomic(&self.dir.join("meta.bin"), &wire::encode(&m).map_err(io_err)?)
    }

    fn rewrite_log(&self, inner: &Inner) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for e in inner.log.values() {
            let b = wire::encode(e).map_err(io_err)?;
            buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
            buf.extend_from_slice(&b);
        }
        write_atomic(&self.dir.join("log.bin"), &buf)
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.lock().log.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner.log.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.vote = Some(*vote);
        self.save_meta(&inner).map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.committed = committed;
        self.save_meta(&inner).map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut buf = Vec::new();
        let mut inner = self.lock();
        for e in entries {
            let b = wire::encode(&e).map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
            buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
            buf.extend_from_slice(&b);
            inner.log.insert(e.log_id.index, e);
        }
        let res = (|| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("log.bin"))?;
            f.write_all(&buf)?;
            f.sync_data()
        })();
        drop(inner);
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(e));
                Err(StorageIOError::write_logs(&io_err(msg)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.log.retain(|i, _| *i < log_id.index);
        self.rewrite_log(&inner).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.last_purged = Some(log_id);
        inner.log.retain(|i, _| *i > log_id.index);
        self.save_meta(&inner).map_err(|e| StorageIOError::write_logs(&e))?;
        self.rewrite_log(&inner).map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
