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
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the leader looks for clones to copy.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The longest wait before a failed copy is tried again (the wait doubles from 1 s).
const RETRY_AT_MOST: Duration = Duration::from_secs(30);
/// Bytes copied between two progress records (each after a flush).
const RECORD_EVERY: u64 = 64 << 20;

/// Copy every clone the state says is not whole yet, while this member leads.
pub(super) async fn run(group: Arc<Group>) {
    let copies: Arc<Mutex<Copies>> = Arc::default();
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if !group.is_ready() || !group.control.is_leader() {
            continue;
        }
        let state = group.state();
        for clone in state.volumes.values().filter(|v| v.copy_from.is_some()) {
            if !copies.lock().unwrap().start(clone.id, Instant::now()) {
                continue;
            }
            let (group, copies, name, id) =
                (group.clone(), copies.clone(), clone.name.clone(), clone.id);
            tokio::spawn(async move {
                let result = copy(&group, &name).await;
                if let Ok(true) = result {
                    tracing::info!(clone = %name, "clone copied from its snapshot");
                }
                let failure = result.err();
                let warn = copies
                    .lock()
                    .unwrap()
                    .ended(id, failure.clone(), Instant::now());
                match failure {
                    Some(why) if warn => {
                        tracing::warn!(clone = %name, error = %why, "copying the clone stopped; it is tried again")
                    }
                    Some(why) => {
                        tracing::debug!(clone = %name, error = %why, "copying the clone stopped again")
                    }
                    None => {}
                }
            });
        }
    }
}

/// The leader's copies under way, and those waiting to be tried again.
#[derive(Default)]
struct Copies {
    running: HashSet<u64>,
    failed: HashMap<u64, Failed>,
}

struct Failed {
    retry_at: Instant,
    tries: u32,
    /// The reason last logged as a warning.
    why: String,
}

impl Copies {
    /// Whether to start copying clone `id` now: it is not running and not waiting for
    /// its next try.
    fn start(&mut self, id: u64, now: Instant) -> bool {
        if self.running.contains(&id) || self.failed.get(&id).is_some_and(|f| now < f.retry_at) {
            return false;
        }
        self.running.insert(id)
    }

    /// Record how a copy of `id` ended; true when its failure deserves a warning (the
    /// first, or another reason than the one last warned about), so a clone that cannot
    /// be copied for a while does not fill the log.
    fn ended(&mut self, id: u64, failure: Option<String>, now: Instant) -> bool {
        self.running.remove(&id);
        let Some(why) = failure else {
            self.failed.remove(&id);
            return false;
        };
        let tries = self.failed.get(&id).map_or(0, |f| f.tries) + 1;
        let wait = Duration::from_secs(1 << tries.min(5)).min(RETRY_AT_MOST);
        let warn = self.failed.get(&id).is_none_or(|f| f.why != why);
        self.failed.insert(
            id,
            Failed {
                retry_at: now + wait,
                tries,
                why,
            },
        );
        warn
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
    // The clone has the snapshot's size, and no resize while it is copied.
    let size = clone.size;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_copy_is_retried_later_and_warned_about_once_per_reason() {
        let mut c = Copies::default();
        let t0 = Instant::now();
        assert!(c.start(7, t0));
        assert!(!c.start(7, t0), "already running");
        assert!(
            c.ended(7, Some("no holder is up".into()), t0),
            "the first failure"
        );
        assert!(!c.start(7, t0), "waits before the next try");
        let t1 = t0 + Duration::from_secs(2);
        assert!(c.start(7, t1));
        assert!(
            !c.ended(7, Some("no holder is up".into()), t1),
            "the same reason again"
        );
        assert!(!c.start(7, t1 + Duration::from_secs(2)), "the wait doubled");
        let t2 = t1 + Duration::from_secs(4);
        assert!(c.start(7, t2));
        assert!(c.ended(7, Some("flush failed".into()), t2), "a new reason");
        for _ in 0..10 {
            let later = Instant::now() + Duration::from_secs(3600);
            c.failed.get_mut(&7).unwrap().retry_at = later - RETRY_AT_MOST;
            assert!(c.start(7, later));
            c.ended(7, Some("flush failed".into()), later);
            let wait = c.failed[&7].retry_at - later;
            assert!(wait <= RETRY_AT_MOST, "{wait:?}");
        }
        let t3 = Instant::now() + Duration::from_secs(7200);
        assert!(c.start(7, t3));
        assert!(!c.ended(7, None, t3), "a copy that ends well");
        assert!(c.failed.is_empty());
        assert!(c.start(7, t3), "starts at once the next time");
    }
}
