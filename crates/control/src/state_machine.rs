//! The Raft state machine: [`ClusterState`] plus the last applied log id and membership.
//!
//! The state lives in memory; durability comes from the log (re-applied on restart) and from
//! snapshots, which are JSON and persisted to `snapshot.json` in the data dir (written to a
//! temporary file, fsynced, renamed) so a restart resumes from the latest snapshot. Every newly
//! applied state is published on a `tokio::sync::watch` channel.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Mutex;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{any_error, ControlError, ErrorKind};
use crate::state::{ClusterState, Outcome};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The file name of the persisted snapshot inside the data dir.
pub const SNAPSHOT_FILE: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";

/// What a snapshot holds: the payload sent to followers and stored on disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub state: ClusterState,
}

/// The on-disk form of the current snapshot.
#[derive(Serialize, Deserialize)]
struct PersistedSnapshot {
    meta: SnapshotMeta,
    data: SnapshotData,
}

/// The current snapshot as kept in memory: its meta and the encoded [`SnapshotData`].
#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    bytes: Arc<Vec<u8>>,
}

/// State shared by the state machine and its snapshot builders.
struct Shared {
    dir: PathBuf,
    /// Held across persisting, so concurrent stores (a build racing an install) serialize.
    current: Mutex<Option<CurrentSnapshot>>,
    /// Distinguishes snapshots built at the same log id.
    counter: AtomicU64,
}

/// The state machine handed to openraft.
pub struct StateMachineStore {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: Arc<ClusterState>,
    tx: watch::Sender<Arc<ClusterState>>,
    shared: Arc<Shared>,
}

/// Builds snapshots of the state captured when it was created.
pub struct SnapshotBuilder {
    data: SnapshotData,
    shared: Arc<Shared>,
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, any_error(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, any_error(&e)).into()
}

/// Write `bytes` to `dir/snapshot.json` atomically and durably.
fn persist(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    // Make the rename itself durable.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl Shared {
    /// Persist a snapshot and make it the current one.
    async fn store(
        &self,
        meta: &SnapshotMeta,
        data: &SnapshotData,
    ) -> Result<CurrentSnapshot, StorageError> {
        let built = CurrentSnapshot {
            meta: meta.clone(),
            bytes: Arc::new(serde_json::to_vec(data).map_err(write_err)?),
        };
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > meta.last_log_id)
        {
            // A newer snapshot got installed meanwhile: keep it.
            return Ok(built);
        }
        let file = serde_json::to_vec(&PersistedSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .map_err(write_err)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || persist(&dir, &file))
            .await
            .map_err(write_err)?
            .map_err(write_err)?;
        *current = Some(built.clone());
        Ok(built)
    }
}

impl StateMachineStore {
    /// Open the state machine of `dir`: empty, or restored from `dir/snapshot.json`.
    /// Returns it with a receiver of every newly applied state.
    pub fn open(dir: &Path) -> Result<(Self, watch::Receiver<Arc<ClusterState>>), ControlError> {
        let path = dir.join(SNAPSHOT_FILE);
        let _ = std::fs::remove_file(dir.join(SNAPSHOT_TMP));
        let (current, data) = match std::fs::read(&path) {
            Ok(bytes) => {
                let p: PersistedSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    ControlError::with_source(
                        ErrorKind::Storage,
                        format!("decoding {}", path.display()),
                        e,
                    )
                })?;
                let encoded = serde_json::to_vec(&p.data).map_err(|e| {
                    ControlError::with_source(ErrorKind::Storage, "encoding the snapshot", e)
                })?;
                let current = CurrentSnapshot {
                    meta: p.meta,
                    bytes: Arc::new(encoded),
                };
                (Some(current), p.data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, SnapshotData::default()),
            Err(e) => {
                return Err(ControlError::with_source(
                    ErrorKind::Storage,
                    format!("reading {}", path.display()),
                    e,
                ))
            }
        };
        if let Some(c) = &current {
            tracing::info!(snapshot = %c.meta.snapshot_id, "restored the state machine from its snapshot");
        }
        let state = Arc::new(data.state);
        let (tx, rx) = watch::channel(state.clone());
        let sm = Self {
            last_applied: data.last_applied,
            last_membership: data.last_membership,
            state,
            tx,
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                current: Mutex::new(current),
                counter: AtomicU64::new(0),
            }),
        };
        Ok((sm, rx))
    }

    fn data(&self) -> SnapshotData {
        SnapshotData {
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            state: (*self.state).clone(),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &self.data.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{n}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.data.last_applied,
            last_membership: self.data.last_membership.clone(),
            snapshot_id,
        };
        let current = self.shared.store(&meta, &self.data).await?;
        tracing::info!(snapshot = %meta.snapshot_id, "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new((*current.bytes).clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut changed = false;
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => outcomes.push(Outcome::Ok),
                EntryPayload::Normal(cmd) => {
                    outcomes.push(Arc::make_mut(&mut self.state).apply(cmd));
                    changed = true;
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    outcomes.push(Outcome::Ok);
                }
            }
        }
        if changed {
            self.tx.send_replace(self.state.clone());
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            data: self.data(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let mut data: SnapshotData =
            serde_json::from_slice(snapshot.get_ref()).map_err(read_err)?;
        // The meta is authoritative for what the snapshot covers.
        data.last_applied = meta.last_log_id;
        data.last_membership = meta.last_membership.clone();
        self.shared.store(meta, &data).await?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed a snapshot");
        self.last_applied = data.last_applied;
        self.last_membership = data.last_membership;
        self.state = Arc::new(data.state);
        self.tx.send_replace(self.state.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.shared.current.lock().await.clone();
        Ok(current.map(|c| Snapshot {
            meta: c.meta,
            snapshot: Box::new(Cursor::new((*c.bytes).clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::BTreeSet;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn create(index: u64, name: &str) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Command::CreateVolume {
                name: name.into(),
                size: 1 << 20,
                block_size: 512,
                replicas: 1,
                thick: false,
                allow: vec![],
                chap: None,
                created: 0,
            }),
        }
    }

    fn membership(index: u64) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], ())),
        }
    }

    #[tokio::test]
    async fn apply_publishes_and_returns_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, mut rx) = StateMachineStore::open(dir.path()).unwrap();
        let out = sm
            .apply([membership(1), create(2, "a"), create(3, "a")])
            .await
            .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], Outcome::Ok);
        assert!(matches!(&out[1], Outcome::Volume(v) if v.name == "a"));
        assert!(matches!(&out[2], Outcome::Refused { .. }));
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().volumes.contains_key("a"));
        let (applied, m) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(3)));
        assert_eq!(m.log_id(), &Some(log_id(1)));
    }

    #[tokio::test]
    async fn snapshot_is_persisted_and_restored_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut sm, _rx) = StateMachineStore::open(dir.path()).unwrap();
            sm.apply([membership(1), create(2, "a")]).await.unwrap();
            let snap = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            assert_eq!(snap.meta.last_log_id, Some(log_id(2)));
            // Applied after the snapshot: lost from the state machine, kept in the log.
            sm.apply([create(3, "b")]).await.unwrap();
        }
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        assert!(!dir.path().join(SNAPSHOT_TMP).exists());
        let (mut sm, rx) = StateMachineStore::open(dir.path()).unwrap();
        assert!(rx.borrow().volumes.contains_key("a"));
        assert!(!rx.borrow().volumes.contains_key("b"));
        let (applied, m) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2)));
        assert_eq!(m.log_id(), &Some(log_id(1)));
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a current snapshot");
        assert_eq!(current.meta.last_log_id, Some(log_id(2)));
    }

    #[tokio::test]
    async fn install_snapshot_replaces_state() {
        let src_dir = tempfile::tempdir().unwrap();
        let (mut src, _) = StateMachineStore::open(src_dir.path()).unwrap();
        src.apply([membership(1), create(2, "x")]).await.unwrap();
        let snap = src
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (mut sm, mut rx) = StateMachineStore::open(dir.path()).unwrap();
        sm.apply([create(1, "old")]).await.unwrap();
        rx.borrow_and_update();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert!(rx.has_changed().unwrap());
        let state = rx.borrow_and_update().clone();
        assert!(state.volumes.contains_key("x") && !state.volumes.contains_key("old"));
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2)));
        let (_, rx2) = StateMachineStore::open(dir.path()).unwrap();
        assert!(rx2.borrow().volumes.contains_key("x"));
    }
}
