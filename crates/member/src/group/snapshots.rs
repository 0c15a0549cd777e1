//! Snapshots of a volume spread over a group, taken in one cut.
//!
//! Every member holds only its placement groups' chunks, so each takes the snapshot of
//! its own store; the cut must be the same everywhere. Members switch at different times,
//! so a write acknowledged after one member's snapshot could otherwise land in another's
//! before a write it depends on. The member answering the API call freezes every member
//! first, and none thaws before all have frozen:
//!
//! ```text
//!  coordinator ─Freeze{volume, snapshot}─► every up member (itself too):
//!      refuse the volume's writes from now (primary and replica side, checked under
//!      their locks), wait for those under way (every gate, every replica lock), take the
//!      store snapshot, answer
//!  all answered (within FREEZE_ANSWER) ─► holders[pg] = members in sync for pg all along
//!  ─Thaw─► every member; the coordinator records the holders (CompleteSnapshot)
//!  a member that hears nothing thaws by itself after FREEZE_LIMIT
//! ```
//!
//! A write acknowledged before the first freeze is in every copy's snapshot; one that
//! reached a copy after that copy froze waits until every member froze, so nothing that
//! depends on it can be in any snapshot. A write under way at the cut may be in some
//! copies' snapshots and not others (it was not acknowledged), so every member reads a
//! snapshot's chunk from the same holder: the first of its holders that is up.

use super::{blocking, Fail, Group};
use control::ClusterState;
use peer::{Message, SnapshotOp, SnapshotRead};
use scsi::{BlockDevice, DeviceError, LbaStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a member stays frozen without a thaw.
const FREEZE_LIMIT: Duration = Duration::from_secs(10);
/// How long the coordinator waits for every member to freeze; past it the snapshot is
/// given up (well before any member thaws by itself).
const FREEZE_ANSWER: Duration = Duration::from_secs(6);

/// Volumes frozen here: volume → (snapshot being taken, thaw at the latest).
#[derive(Default)]
pub(crate) struct Frozen {
    volumes: Mutex<HashMap<u64, (u64, Instant)>>,
    /// How many volumes are frozen: every write asks, and almost always it is none.
    count: std::sync::atomic::AtomicUsize,
}

impl Frozen {
    fn is_frozen(&self, volume: u64) -> bool {
        if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return false;
        }
        let mut f = self.volumes.lock().unwrap();
        let frozen = match f.get(&volume) {
            Some((_, until)) if Instant::now() < *until => true,
            Some(_) => {
                f.remove(&volume);
                tracing::warn!(volume, "no thaw came: writes accepted again");
                false
            }
            None => false,
        };
        self.count
            .store(f.len(), std::sync::atomic::Ordering::Release);
        frozen
    }

    fn freeze(&self, op: SnapshotOp) {
        let mut f = self.volumes.lock().unwrap();
        f.insert(op.volume, (op.snapshot, Instant::now() + FREEZE_LIMIT));
        self.count
            .store(f.len(), std::sync::atomic::Ordering::Release);
    }

    fn thaw(&self, op: SnapshotOp) {
        let mut f = self.volumes.lock().unwrap();
        if f.get(&op.volume).is_some_and(|(s, _)| *s == op.snapshot) {
            f.remove(&op.volume);
        }
        self.count
            .store(f.len(), std::sync::atomic::Ordering::Release);
    }
}

impl Group {
    /// Refuse a change of `volume` while a snapshot is being taken (checked under the
    /// locks a freeze waits for).
    pub(crate) fn check_not_frozen(&self, volume: u64) -> Result<(), Fail> {
        if self.frozen.is_frozen(volume) {
            return Err(Fail::Refused(format!(
                "volume {volume} is frozen for a snapshot"
            )));
        }
        Ok(())
    }

    /// Whether writes to `volume` wait for a snapshot now.
    pub(crate) fn is_frozen(&self, volume: u64) -> bool {
        self.frozen.is_frozen(volume)
    }

    /// Run a change of `volume` on a member alone in its group (no primaries, no gates):
    /// it waits while the volume is frozen, and a freeze waits for it (the cut lock).
    pub(crate) fn alone_change<T>(&self, volume: u64, change: impl FnOnce() -> T) -> T {
        loop {
            {
                let _cut = self.cut.read().unwrap_or_else(|e| e.into_inner());
                if !self.frozen.is_frozen(volume) {
                    return change();
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// This member's part of a cut: refuse the volume's writes, wait for those under way,
    /// take the store snapshot.
    pub(crate) async fn freeze(self: &Arc<Self>, op: SnapshotOp) -> Result<(), Fail> {
        if no_freeze_fault() {
            // Each member at its own moment, as over a real network (0-50 ms apart).
            let skew = ((self.node * 0x9E37_79B9) ^ (op.volume * 31) ^ (op.snapshot * 13)) % 51;
            tokio::time::sleep(Duration::from_millis(skew)).await;
            let store = self.store.clone();
            return blocking(move || {
                store
                    .snapshot(op.volume, op.snapshot)
                    .map_err(|e| DeviceError::Io(std::io::Error::other(e.to_string())))
            })
            .await;
        }
        self.frozen.freeze(op);
        // Every write that passed the check holds a gate (primary) or a replica lock.
        let mut gates = Vec::with_capacity(self.gates.len());
        for g in &self.gates {
            gates.push(g.write().await);
        }
        let mut replica = Vec::with_capacity(self.replica_locks.len());
        for l in &self.replica_locks {
            replica.push(l.write().await);
        }
        let (store, me) = (self.store.clone(), self.clone());
        let taken = blocking(move || {
            // Changes made alone (no gates) hold the cut lock.
            let _cut = me.cut.write().unwrap_or_else(|e| e.into_inner());
            match store.snapshot(op.volume, op.snapshot) {
                Ok(()) => Ok(()),
                Err(e) if e.kind == store::ErrorKind::Exists => Ok(()),
                Err(e) => Err(DeviceError::Io(std::io::Error::other(e.to_string()))),
            }
        })
        .await;
        if taken.is_err() {
            self.thaw(op);
        }
        taken
    }

    /// The cut is over (taken or given up).
    pub(crate) fn thaw(&self, op: SnapshotOp) {
        self.frozen.thaw(op);
    }

    /// Take snapshots (reserved in the control plane) of several volumes, as (volume,
    /// snapshot), across the group in one cut; for each, the holders of each placement
    /// group's copy.
    pub async fn take_snapshots(
        self: &Arc<Self>,
        snaps: &[(u64, u64)],
    ) -> Result<Vec<Vec<Vec<u64>>>, String> {
        let before = self.control.state();
        let ops: Vec<SnapshotOp> = snaps
            .iter()
            .map(|&(volume, snapshot)| SnapshotOp { volume, snapshot })
            .collect();
        let started = Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for m in before.up_members() {
            for &op in &ops {
                let (g, node) = (self.clone(), m.node_id);
                calls.spawn(async move {
                    let r = if node == g.node {
                        g.freeze(op).await.map(|()| Message::Ok)
                    } else {
                        g.call(node, g.epoch(), Message::Freeze(op)).await
                    };
                    (node, op, r)
                });
            }
        }
        let mut frozen: Vec<(u64, SnapshotOp)> = Vec::new();
        let mut failed = Vec::new();
        let waited = tokio::time::timeout(FREEZE_ANSWER, async {
            while let Some(done) = calls.join_next().await {
                match done {
                    Ok((node, op, Ok(Message::Ok))) => frozen.push((node, op)),
                    Ok((node, _, other)) => failed.push(format!("member {node}: {other:?}")),
                    Err(e) => failed.push(e.to_string()),
                }
            }
        })
        .await;
        let after = self.control.state();
        // Thaw everyone asked, whatever happened: none thaws before every member froze.
        for m in before.up_members() {
            for &op in &ops {
                if m.node_id == self.node {
                    self.thaw(op);
                    continue;
                }
                let (g, node) = (self.clone(), m.node_id);
                tokio::spawn(async move {
                    if let Err(e) = g.call(node, g.epoch(), Message::Thaw(op)).await {
                        tracing::warn!(node, error = ?e, "thaw not delivered; it thaws by itself");
                    }
                });
            }
        }
        if waited.is_err() {
            return Err(format!("members did not freeze within {FREEZE_ANSWER:?}"));
        }
        if !failed.is_empty() {
            return Err(format!("members could not freeze: {}", failed.join("; ")));
        }
        let mut all = Vec::new();
        for op in &ops {
            let nodes: Vec<u64> = frozen
                .iter()
                .filter(|(_, o)| o == op)
                .map(|(n, _)| *n)
                .collect();
            all.push(holders_of(&before, &after, op.volume, &nodes)?);
        }
        tracing::info!(?snaps, took = ?started.elapsed(), "group snapshots taken in one cut");
        Ok(all)
    }

    /// Bytes of snapshot `op.snapshot` held here.
    pub(crate) async fn snapshot_read(&self, op: SnapshotRead) -> Result<bytes::Bytes, Fail> {
        let dev = self.snapshot_device(op.volume, op.snapshot)?;
        blocking(move || {
            let bs = u64::from(dev.block_size());
            let mut buf = vec![0u8; op.len as usize];
            dev.read(op.offset / bs, &mut buf)?;
            Ok(bytes::Bytes::from(buf))
        })
        .await
    }

    fn snapshot_device(&self, volume: u64, snapshot: u64) -> Result<Arc<dyn BlockDevice>, Fail> {
        if let Some(d) = self
            .snapshot_devices
            .lock()
            .unwrap()
            .get(&(volume, snapshot))
        {
            return Ok(d.clone());
        }
        let dev = self
            .store
            .open_snapshot(volume, snapshot)
            .map_err(|e| Fail::Refused(format!("no snapshot {snapshot} of {volume} here: {e}")))?;
        self.snapshot_devices
            .lock()
            .unwrap()
            .insert((volume, snapshot), dev.clone());
        Ok(dev)
    }
}

/// For each placement group of the volume's class: the members that froze and held its
/// copy in sync from before the cut to after it (a copy filled meanwhile may have been
/// incomplete when it froze).
fn holders_of(
    before: &ClusterState,
    after: &ClusterState,
    volume: u64,
    frozen: &[u64],
) -> Result<Vec<Vec<u64>>, String> {
    let v = before
        .volume_by_id(volume)
        .ok_or_else(|| format!("no volume {volume}"))?;
    let (Some(old), Some(new)) = (before.table(v.replicas), after.table(v.replicas)) else {
        return Err("no placement table".into());
    };
    let mut holders = Vec::new();
    for pg in 0..new.map.pg_count {
        let h: Vec<u64> = old
            .copies(pg)
            .into_iter()
            .filter(|m| {
                old.is_in_sync(pg, *m)
                    && new.in_sync_since(pg, *m, before.layout.epoch)
                    && frozen.contains(m)
            })
            .collect();
        if h.is_empty() {
            return Err(format!(
                "no member holds a complete copy of placement group {pg}"
            ));
        }
        holders.push(h);
    }
    Ok(holders)
}

/// A group snapshot as the SCSI engine sees it: each chunk read from a member holding
/// its copy of the snapshot.
pub struct GroupSnapshotDevice {
    group: Arc<Group>,
    volume: u64,
    snapshot: u64,
    placement_key: u64,
    block_size: u32,
    blocks: u64,
    holders: Vec<Vec<u64>>,
}

impl GroupSnapshotDevice {
    pub fn new(group: Arc<Group>, v: &control::Volume, s: &control::Snapshot) -> Self {
        GroupSnapshotDevice {
            group,
            volume: v.id,
            snapshot: s.id,
            placement_key: v.placement_key(),
            block_size: s.block_size,
            blocks: s.size / u64::from(s.block_size.max(1)),
            holders: s.holders.clone().unwrap_or_default(),
        }
    }

    /// Read `out.len()` bytes at byte `offset` (within the snapshot).
    pub(super) async fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DeviceError> {
        let spans: Vec<placement::Span> = self
            .group
            .striping
            .spans(self.placement_key, offset, out.len() as u64)
            .collect();
        for span in spans {
            let at = (span.offset - offset) as usize;
            self.read_span(span.pg, span.offset, &mut out[at..at + span.len as usize])
                .await?;
        }
        Ok(())
    }

    async fn read_span(&self, pg: u32, offset: u64, out: &mut [u8]) -> Result<(), DeviceError> {
        // The first holder that is up, whichever member serves the read: copies may differ
        // in a write that was under way at the cut, and every portal must show the same.
        let holders = self.holders.get(pg as usize).cloned().unwrap_or_default();
        let down = self.group.state().down_nodes();
        let order: Vec<u64> = holders.into_iter().filter(|h| !down.contains(h)).collect();
        let mut last = String::from("no holder is up");
        for node in order {
            let op = SnapshotRead {
                volume: self.volume,
                snapshot: self.snapshot,
                offset,
                len: out.len() as u32,
            };
            let got = if node == self.group.node {
                self.group.snapshot_read(op).await
            } else {
                match self
                    .group
                    .call(node, self.group.epoch(), Message::SnapshotRead(op))
                    .await
                {
                    Ok(Message::Data(d)) => Ok(d),
                    Ok(other) => Err(Fail::Refused(format!("unexpected answer {other:?}"))),
                    Err(f) => Err(f),
                }
            };
            match got {
                Ok(d) if d.len() == out.len() => {
                    out.copy_from_slice(&d);
                    return Ok(());
                }
                Ok(d) => last = format!("member {node} answered {} bytes", d.len()),
                Err(f) => last = format!("member {node}: {f:?}"),
            }
        }
        Err(DeviceError::Io(std::io::Error::other(format!(
            "snapshot {} of volume {}: placement group {pg} unreadable ({last})",
            self.snapshot, self.volume
        ))))
    }
}

impl BlockDevice for GroupSnapshotDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn read_only(&self) -> bool {
        true
    }
    fn thin(&self) -> bool {
        false
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let bs = u64::from(self.block_size);
        let blocks = buf.len() as u64 / bs;
        if lba.checked_add(blocks).is_none_or(|end| end > self.blocks) {
            return Err(DeviceError::OutOfRange { lba, blocks });
        }
        let rt = self.group.rt.clone();
        tokio::task::block_in_place(|| rt.block_on(self.read_at(lba * bs, buf)))
    }
    fn write(&self, _lba: u64, _data: &[u8], _fua: bool) -> Result<(), DeviceError> {
        Err(DeviceError::ReadOnly)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        Ok(())
    }
    fn unmap(&self, _lba: u64, _blocks: u64) -> Result<(), DeviceError> {
        Err(DeviceError::ReadOnly)
    }
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, DeviceError> {
        if lba >= self.blocks {
            return Err(DeviceError::OutOfRange { lba, blocks: 1 });
        }
        Ok(LbaStatus {
            lba,
            blocks: self.blocks - lba,
            mapped: true,
        })
    }
    fn inline_ok(&self) -> bool {
        false
    }
}

/// `HAVEN_FAULT_NO_FREEZE=1` makes members take their snapshot as the request reaches them,
/// without freezing the volume: the fault the group snapshot test must catch (a torn cut).
fn no_freeze_fault() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var_os("HAVEN_FAULT_NO_FREEZE").is_some())
}
