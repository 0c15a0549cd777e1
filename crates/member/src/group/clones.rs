//! Clones in a group of several members: the leader copies the snapshot into the clone.
//!
//! A group snapshot's copies sit on the members that held each placement group at the
//! cut, and a clone is a volume of its own, placed by its own id; so the clone is made by
//! copying, not by sharing extents as a single member does:
//!
//! ```text
//!  CloneVolume (Raft): the clone with `copy_from`, not served
//!  leader, chunk by chunk from `done`: read the snapshot (first holder up) ─► all zero?
//!    skip (the clone stays thin) : write it through the group (every in-sync copy)
//!  every 64 MiB and at the end: flush the clone on every member ─► CloneCopied{done}
//!  done = size ─► copy_from cleared ─► every member serves the clone
//! ```
//!
//! Progress is in the Raft log, so a new leader goes on where the last flush left it, and
//! the source snapshot and its volume cannot be deleted before the copy is whole. A chunk
//! copied twice (a leader replaced between a write and the record) is the same bytes again.

use super::snapshots::GroupSnapshotDevice;
use super::Group;
use bytes::Bytes;
use control::{Command, CHUNK_BYTES};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the leader looks for clones to copy (and retries one that failed).
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Bytes copied between two progress records (each after a flush).
const RECORD_EVERY: u64 = 64 << 20;

/// Copy every clone the state says is not whole yet, while this member leads.
pub(super) async fn run(group: Arc<Group>) {
    let copying: Arc<Mutex<HashSet<u64>>> = Arc::default();
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if !group.is_ready() || !group.control.is_leader() {
            continue;
        }
        let state = group.state();
        for clone in state.volumes.values().filter(|v| v.copy_from.is_some()) {
            if !copying.lock().unwrap().insert(clone.id) {
                continue;
            }
            let (group, copying, name, id) =
                (group.clone(), copying.clone(), clone.name.clone(), clone.id);
            tokio::spawn(async move {
                match copy(&group, &name).await {
                    Ok(true) => tracing::info!(clone = %name, "clone copied from its snapshot"),
                    Ok(false) => {}
                    Err(why) => {
                        tracing::warn!(clone = %name, error = %why, "copying the clone stopped; it goes on later")
                    }
                }
                copying.lock().unwrap().remove(&id);
            });
        }
    }
}

/// Copy clone `name` from where its record says; `Ok(true)` once it is whole, `Ok(false)`
/// if this member stopped leading or the clone went away.
async fn copy(group: &Arc<Group>, name: &str) -> Result<bool, String> {
    let state = group.state();
    let Some(clone) = state.volumes.get(name).cloned() else {
        return Ok(false);
    };
    let Some(from) = clone.copy_from else {
        return Ok(true);
    };
    let source = state
        .volume_by_id(from.volume_id)
        .ok_or_else(|| format!("the source volume {} is gone", from.volume_id))?;
    let snapshot = state
        .snapshots
        .get(&source.name)
        .and_then(|s| s.values().find(|s| s.id == from.snapshot_id))
        .ok_or_else(|| format!("the source snapshot {} is gone", from.snapshot_id))?;
    let reader = GroupSnapshotDevice::new(group.clone(), source, snapshot);
    let size = clone.size.min(snapshot.size);
    // Whole chunks from the last record: the copy may have gone past it unrecorded.
    let mut offset = from.done / CHUNK_BYTES * CHUNK_BYTES;
    let mut recorded = offset;
    tracing::info!(clone = %name, from = offset, size, "copying the clone from its snapshot");
    while offset < size {
        if !group.control.is_leader() || !group.state().volumes.contains_key(name) {
            return Ok(false);
        }
        let len = CHUNK_BYTES.min(size - offset);
        let mut buf = vec![0u8; len as usize];
        reader
            .read_at(offset, &mut buf)
            .await
            .map_err(|e| format!("reading the snapshot at {offset}: {e}"))?;
        if buf.iter().any(|&b| b != 0) {
            group
                .write(clone.id, offset, Bytes::from(buf), false)
                .await
                .map_err(|e| format!("writing the clone at {offset}: {e}"))?;
        }
        offset += len;
        if offset - recorded >= RECORD_EVERY || offset == size {
            record(group, name, clone.id, offset).await?;
            recorded = offset;
        }
    }
    if size < clone.size {
        // Nothing past the snapshot's end to copy: the clone is whole.
        record(group, name, clone.id, clone.size).await?;
    }
    Ok(true)
}

/// Make the copy so far durable on every member, then record it.
async fn record(group: &Arc<Group>, name: &str, id: u64, done: u64) -> Result<(), String> {
    group
        .flush(id)
        .await
        .map_err(|e| format!("flushing the clone: {e}"))?;
    group
        .control
        .write(Command::CloneCopied {
            name: name.to_string(),
            done,
        })
        .await
        .map_err(|e| format!("recording the copy's progress: {e}"))?;
    Ok(())
}
