//! The Raft log, vote and committed log id, kept durably in one redb database (`raft.redb`).
//!
//! Every mutation is one redb write transaction committed with [`Durability::Immediate`]
//! (fsynced) before openraft is told it is done. redb is blocking, so each operation runs on
//! tokio's blocking pool.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{any_error, ControlError, ErrorKind};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Log entries by index, each the JSON of an [`Entry`].
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// Small records (vote, committed, last purged), each JSON.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

/// The file name of the log database inside the data dir.
pub const LOG_DB_FILE: &str = "raft.redb";

/// A failure inside the log store, before it is wrapped for openraft.
#[derive(Debug, thiserror::Error)]
enum LogError {
    #[error("redb")]
    Redb(#[source] Box<redb::Error>),
    #[error("encoding or decoding a stored record")]
    Codec(#[from] serde_json::Error),
    #[error("the blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LogError {
            fn from(e: $t) -> Self {
                LogError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
redb_from!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

/// The redb-backed Raft log store. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Open (or create) `raft.redb` in `dir`.
    ///
    /// A database still held by a previous instance in this process (a restart racing the old
    /// instance's teardown) is retried for a couple of seconds.
    pub async fn open(dir: &Path) -> Result<Self, ControlError> {
        let path = dir.join(LOG_DB_FILE);
        let ctx = || format!("opening the raft log {}", path.display());
        let mut attempts = 0;
        loop {
            let p = path.clone();
            let res = tokio::task::spawn_blocking(move || -> Result<Database, LogError> {
                let db = Database::create(&p)?;
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate);
                txn.open_table(LOGS)?;
                txn.open_table(META)?;
                txn.commit()?;
                Ok(db)
            })
            .await
            .map_err(LogError::from)
            .and_then(|r| r);
            match res {
                Ok(db) => return Ok(Self { db: Arc::new(db) }),
                Err(LogError::Redb(e))
                    if matches!(*e, redb::Error::DatabaseAlreadyOpen) && attempts < 40 =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(ControlError::with_source(ErrorKind::Storage, ctx(), e)),
            }
        }
    }

    /// Run `f` against the database on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, LogError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await?
    }

    async fn read_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, LogError> {
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(META)?;
            match table.get(key)? {
                Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), LogError> {
        let bytes = serde_json::to_vec(value)?;
        self.run(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn.open_table(META)?;
                table.insert(key, bytes.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Number of log entries currently stored (for tests and diagnostics).
    pub async fn len(&self) -> Result<u64, ControlError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(LOGS)?.len()?)
        })
        .await
        .map_err(|e| ControlError::with_source(ErrorKind::Storage, "counting log entries", e))
    }

    /// Whether no log entry is stored.
    pub async fn is_empty(&self) -> Result<bool, ControlError> {
        Ok(self.len().await? == 0)
    }
}

fn any(e: LogError) -> AnyError {
    any_error(&e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOGS)?;
            let mut out = Vec::new();
            for item in table.range(bounds)? {
                let (_, v) = item?;
                out.push(serde_json::from_slice::<Entry>(v.value())?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageIOError::read_logs(any(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let res = self
            .run(|db| {
                let txn = db.begin_read()?;
                let meta = txn.open_table(META)?;
                let purged: Option<LogId> = match meta.get(KEY_PURGED)? {
                    Some(v) => Some(serde_json::from_slice(v.value())?),
                    None => None,
                };
                let logs = txn.open_table(LOGS)?;
                let last = match logs.last()? {
                    Some((_, v)) => Some(*serde_json::from_slice::<Entry>(v.value())?.get_log_id()),
                    None => purged,
                };
                Ok(LogState {
                    last_purged_log_id: purged,
                    last_log_id: last,
                })
            })
            .await;
        res.map_err(|e| StorageIOError::read_logs(any(e)).into())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(KEY_VOTE)
            .await
            .map_err(|e| StorageIOError::read_vote(any(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, &committed)
            .await
            .map_err(|e| StorageIOError::write(any(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c: Option<Option<LogId>> = self
            .read_meta(KEY_COMMITTED)
            .await
            .map_err(|e| StorageIOError::read(any(e)))?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Result<Vec<(u64, Vec<u8>)>, serde_json::Error> = entries
            .into_iter()
            .map(|e| Ok((e.get_log_id().index, serde_json::to_vec(&e)?)))
            .collect();
        let res = match encoded {
            Ok(encoded) => {
                self.run(move |db| {
                    let mut txn = db.begin_write()?;
                    txn.set_durability(Durability::Immediate);
                    {
                        let mut table = txn.open_table(LOGS)?;
                        for (index, bytes) in &encoded {
                            table.insert(*index, bytes.as_slice())?;
                        }
                    }
                    txn.commit()?;
                    Ok(())
                })
                .await
            }
            Err(e) => Err(e.into()),
        };
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(any(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncating the raft log from");
        self.run(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            {
                let mut table = txn.open_table(LOGS)?;
                table.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purging the raft log up to");
        let bytes =
            serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(any_error(&e)))?;
        self.run(move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            {
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_PURGED, bytes.as_slice())?;
                let mut table = txn.open_table(LOGS)?;
                table.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use crate::state_machine::StateMachineStore;
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload};
    use tempfile::TempDir;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = LogStore::open(dir.path()).await.expect("open log store");
            let (sm, _rx) = StateMachineStore::open(dir.path()).expect("open state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage test suite, against the redb log store and our state machine.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("storage suite");
    }

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::DeleteVolume {
                name: format!("v{index}"),
            }),
        }
    }

    #[tokio::test]
    async fn entries_vote_and_committed_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).await.unwrap();
            store
                .blocking_append((1..=5).map(|i| entry(1, i)))
                .await
                .unwrap();
            store.save_vote(&Vote::new(3, 1)).await.unwrap();
            store.save_committed(Some(log_id(1, 4))).await.unwrap();
            store.purge(log_id(1, 2)).await.unwrap();
            store.truncate(log_id(1, 5)).await.unwrap();
        }
        let mut store = LogStore::open(dir.path()).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 4)));
        let got = store.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(got[0], entry(1, 3));
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 4)));
        assert_eq!(store.len().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn purge_everything_keeps_last_log_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).await.unwrap();
        store
            .blocking_append((1..=3).map(|i| entry(2, i)))
            .await
            .unwrap();
        store.purge(log_id(2, 3)).await.unwrap();
        assert!(store.is_empty().await.unwrap());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 3)));
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 3)));
    }
}
