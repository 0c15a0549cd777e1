//! Filling a copy of a placement group: its primary copies the group's chunks, chunk by
//! chunk under the chunk's write lock (so live writes, which also go to the new copy, cannot
//! be overtaken by an older copied chunk), then proposes `PgInSync`. The command is refused
//! if the group changed meanwhile (its `pg_epoch`), and the next scan starts over.
//!
//! A copy that comes back after being away gets only the chunks written meanwhile when the
//! primary recorded them (see `dirty`); a new or wiped copy gets every chunk.

use super::{Fail, Group};
use control::{Command, Outcome, CHUNK_BYTES, PG_COUNT};
use peer::Message;
use scsi::BlockDevice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Start a fill for every copy this member is primary of that is not in sync yet.
pub fn scan(group: &Arc<Group>) {
    if !group.is_ready() {
        return;
    }
    let state = group.state();
    for (&replicas, table) in &state.layout.tables {
        for pg in 0..table.map.pg_count {
            if table.primary(pg) != Some(group.node) {
                continue;
            }
            for target in table.backfills(pg) {
                let member = state.member_by_node(target);
                let down = member.is_some_and(|m| m.down);
                let key = (replicas, pg, target);
                if down || !group.backfills.lock().unwrap().insert(key) {
                    continue;
                }
                let (g, pg_epoch) = (group.clone(), table.pg_epoch(pg));
                let copy_id = member.map(|m| m.copy_id.clone()).unwrap_or_default();
                tokio::spawn(async move {
                    let slot = g.fill_slots.clone().acquire_owned().await;
                    let missed = g.missed_writes(pg, target);
                    // Writes from this epoch on reach the copy live (or void this fill).
                    let started = g.epoch();
                    let resync = match g.dirty.resync(replicas, pg, target, &copy_id) {
                        Some(r) => own_changes(&g, pg, target, started, r).await,
                        None => Ok(None),
                    };
                    let Ok(resync) = resync else {
                        drop(slot);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        g.backfills.lock().unwrap().remove(&key);
                        return;
                    };
                    tracing::debug!(
                        pg,
                        target,
                        changed = resync.as_ref().map(|r| r.chunks.len()),
                        "filling a copy (only the changed chunks when counted)"
                    );
                    let done = fill(&g, replicas, pg, target, pg_epoch, resync.as_ref()).await;
                    drop(slot);
                    match done {
                        Ok(bytes) => {
                            let late = resync
                                .as_ref()
                                .map_or(0, |r| g.dirty.late(replicas, pg, target, started, r));
                            if late > 0 {
                                tracing::debug!(
                                    pg,
                                    target,
                                    late,
                                    "writes recorded late; resyncing again"
                                );
                            } else {
                                let fill = Fill {
                                    replicas,
                                    pg,
                                    target,
                                    pg_epoch,
                                    missed,
                                    bytes,
                                };
                                declare(&g, fill).await
                            }
                        }
                        Err(f) => {
                            tracing::debug!(pg, target, fail = ?f, "fill stopped; retrying later");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    g.backfills.lock().unwrap().remove(&key);
                });
            }
        }
    }
}

/// Add to `resync` the chunks the target changed alone (as a cut-off primary): they must
/// be overwritten too.
async fn own_changes(
    g: &Arc<Group>,
    pg: u32,
    target: u64,
    epoch: u64,
    mut resync: super::dirty::Resync,
) -> Result<Option<super::dirty::Resync>, Fail> {
    match g
        .call(target, epoch, Message::DirtyQuery { pgs: vec![pg] })
        .await?
    {
        Message::DirtyRegions(regions) => {
            resync.add_regions(&regions);
            Ok(Some(resync))
        }
        other => Err(Fail::Refused(format!("unexpected answer {other:?}"))),
    }
}

/// A fill that copied everything it had to.
struct Fill {
    replicas: u8,
    pg: u32,
    target: u64,
    pg_epoch: u64,
    /// The target's missed-write count when the fill began.
    missed: u64,
    bytes: u64,
}

/// Propose the filled copy in sync, with the group's writes held back so none can reach
/// the copy as a best-effort write (whose failure would go unnoticed) once it counts.
async fn declare(g: &Arc<Group>, fill: Fill) {
    let Fill {
        replicas,
        pg,
        target,
        pg_epoch,
        missed,
        bytes,
    } = fill;
    let _gate = g.gate(pg).write().await;
    if g.missed_writes(pg, target) != missed {
        tracing::debug!(
            pg,
            target,
            "the copy missed a write while being filled; filling again"
        );
        return;
    }
    let cmd = Command::PgInSync {
        replicas,
        pg,
        node: target,
        pg_epoch,
    };
    match g.control.write(cmd).await {
        Ok(Outcome::Ok) => {
            // Hold the gate until this member applied it: from then on writes must reach
            // the copy.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline
                && !g
                    .state()
                    .table(replicas)
                    .is_some_and(|t| t.is_in_sync(pg, target) || t.pg_epoch(pg) != pg_epoch)
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tracing::info!(pg, target, bytes, "copy of placement group in sync");
        }
        Ok(other) => tracing::debug!(pg, target, ?other, "fill is stale"),
        Err(e) => tracing::warn!(pg, target, error = %e, "cannot record the fill"),
    }
}

/// Copy the chunks of `pg` (all volumes of the class) to `target`: those in `resync`, or
/// every one; the bytes sent.
async fn fill(
    g: &Arc<Group>,
    replicas: u8,
    pg: u32,
    target: u64,
    pg_epoch: u64,
    resync: Option<&super::dirty::Resync>,
) -> Result<u64, Fail> {
    let mut sent = 0;
    for (v, chunks) in chunks_of(g, replicas, pg) {
        for chunk in chunks {
            if resync.is_some_and(|r| !r.chunks.contains(&(v.id, chunk))) {
                continue;
            }
            sent += fill_chunk(g, &v, replicas, pg, target, pg_epoch, chunk).await?;
        }
    }
    // A copy that had nothing to receive must still be there to count.
    match g
        .call(
            target,
            0,
            Message::Ping {
                nonce: u64::from(pg),
            },
        )
        .await?
    {
        Message::Pong { .. } => Ok(sent),
        other => Err(Fail::Refused(format!("unexpected answer {other:?}"))),
    }
}

async fn fill_chunk(
    g: &Arc<Group>,
    v: &control::Volume,
    replicas: u8,
    pg: u32,
    target: u64,
    pg_epoch: u64,
    chunk: u64,
) -> Result<u64, Fail> {
    let start = chunk * CHUNK_BYTES;
    let end = (start + CHUNK_BYTES).min(v.size);
    for _attempt in 0..50 {
        let _range = g.write_range(v.id, start, end - start).await;
        let state = g.state();
        let epoch = state.layout.epoch;
        let Some(table) = state.table(replicas) else {
            return Err(Fail::Refused("no table".into()));
        };
        if table.pg_epoch(pg) != pg_epoch || table.primary(pg) != Some(g.node) {
            return Err(Fail::Refused("the group changed".into()));
        }
        let local = g.local(v.id)?;
        let bs = u64::from(local.block_size());
        let runs = super::blocking({
            let local = local.clone();
            move || runs(&local, start / bs, end / bs)
        })
        .await?;
        let mut sent = 0;
        let mut result = Ok(());
        for (lba, blocks, mapped) in runs {
            let (offset, len) = (lba * bs, blocks * bs);
            let message = if mapped {
                let local = local.clone();
                let data = super::blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    local.read(lba, &mut buf)?;
                    Ok(bytes::Bytes::from(buf))
                })
                .await?;
                sent += len;
                Message::ReplicaWrite(peer::WriteOp {
                    volume: v.id,
                    pg,
                    offset,
                    fua: false,
                    data,
                })
            } else {
                Message::ReplicaUnmap(peer::Region {
                    volume: v.id,
                    pg,
                    offset,
                    len,
                })
            };
            if let Err(f) = g.call(target, epoch, message).await {
                result = Err(f);
                break;
            }
        }
        match result {
            Ok(()) => {
                g.resync_bytes.fetch_add(sent, Ordering::Relaxed);
                return Ok(sent);
            }
            // Our epoch moved on (another group's change): copy the chunk again under it.
            Err(Fail::Stale { current }) => {
                drop(_range);
                g.wait_epoch(current, Duration::from_secs(2)).await;
            }
            Err(f) => return Err(f),
        }
    }
    Err(Fail::Refused("the epoch kept changing".into()))
}

/// The provisioning runs of `[lba, end)`, each at most 1 MiB of blocks long when mapped.
fn runs(
    v: &store::Volume,
    mut lba: u64,
    end: u64,
) -> Result<Vec<(u64, u64, bool)>, scsi::DeviceError> {
    let max = (1 << 20) / u64::from(v.block_size());
    let mut out = Vec::new();
    while lba < end {
        let s = v.lba_status(lba)?;
        let blocks = s.blocks.clamp(1, end - lba);
        let blocks = if s.mapped { blocks.min(max) } else { blocks };
        out.push((lba, blocks, s.mapped));
        lba += blocks;
    }
    Ok(out)
}

/// Unmap this member's chunks of the released copies, chunk by chunk, each only while the
/// member still holds no copy of its group (a fill may make it a copy again meanwhile).
pub async fn discard(g: Arc<Group>, released: Vec<(u8, u32)>) {
    let mut freed = 0u64;
    for (replicas, pg) in released {
        'volume: for (v, chunks) in chunks_of(&g, replicas, pg) {
            for chunk in chunks {
                let start = chunk * CHUNK_BYTES;
                let end = (start + CHUNK_BYTES).min(v.size);
                let _lock = g.replica_lock_of(v.id, start).write().await;
                let holds = g
                    .state()
                    .table(replicas)
                    .is_none_or(|t| t.copies(pg).contains(&g.node));
                if holds {
                    break 'volume;
                }
                let Ok(local) = g.local(v.id) else {
                    continue 'volume;
                };
                // Only what is mapped counts (and needs unmapping): at a member's start
                // every group it does not hold is swept, most of it holes.
                let done = super::blocking(move || {
                    let bs = u64::from(local.block_size());
                    let mapped: u64 = runs(&local, start / bs, end / bs)?
                        .iter()
                        .filter(|r| r.2)
                        .map(|r| r.1 * bs)
                        .sum();
                    if mapped > 0 {
                        local.unmap(start / bs, (end - start) / bs)?;
                    }
                    Ok(mapped)
                })
                .await;
                if let Ok(mapped) = done {
                    freed += mapped;
                }
            }
        }
    }
    tracing::info!(bytes = freed, "released copies discarded");
}

/// The volumes of a replica class and, for each, its chunks that belong to `pg`.
fn chunks_of(g: &Group, replicas: u8, pg: u32) -> Vec<(control::Volume, Vec<u64>)> {
    g.state()
        .volumes
        .values()
        .filter(|v| v.replicas == replicas)
        .filter_map(|v| {
            let chunks = v.size.div_ceil(CHUNK_BYTES);
            let first = (0..u64::from(PG_COUNT))
                .find(|c| g.striping.pg_of(v.placement_key(), c * CHUNK_BYTES) == pg)?;
            let mine = (first..chunks).step_by(PG_COUNT as usize).collect();
            Some((v.clone(), mine))
        })
        .collect()
}
