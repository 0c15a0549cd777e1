//! Answering other members' peer requests.

use super::{blocking, store_write, unmap_local, Fail, Group};
use peer::{Message, Request};
use std::sync::Arc;

/// Answer one request. The peer server already refused requests made under another epoch
/// than this member's.
pub async fn handle(group: Arc<Group>, req: Request) -> Message {
    let epoch = req.epoch;
    let result = match req.message {
        Message::Write(op) => group.primary_write(op, epoch).await.map(|()| Message::Ok),
        Message::Unmap(r) => group.primary_unmap(r, epoch).await.map(|()| Message::Ok),
        Message::Read(op) => group.primary_read(op, epoch).await.map(Message::Data),
        Message::Flush(f) | Message::ReplicaFlush(f) => {
            group.local_flush(f.volume).await.map(|()| Message::Ok)
        }
        Message::ReplicaWrite(op) => replica_write(&group, op, epoch).await.map(|()| Message::Ok),
        // Each write of a batch as if it came alone, all at once on this task.
        Message::WriteBatch(ops) => {
            let writes = ops.into_iter().map(|op| group.primary_write(op, epoch));
            Ok(answers(futures_util::future::join_all(writes).await))
        }
        Message::ReplicaWriteBatch(ops) => {
            let writes = ops.into_iter().map(|op| replica_write(&group, op, epoch));
            Ok(answers(futures_util::future::join_all(writes).await))
        }
        Message::ReplicaUnmap(r) => {
            let _chunk = group.replica_lock_of(r.volume, r.offset).read().await;
            match group
                .check_not_frozen(r.volume)
                .and_then(|()| copy_of(&group, r.volume, r.pg))
            {
                Ok((vol, replicas)) => {
                    group
                        .dirty
                        .record(replicas, r.pg, r.volume, r.offset, r.len, epoch);
                    blocking(move || unmap_local(&vol, r.offset, r.len))
                        .await
                        .map(|()| Message::Ok)
                }
                Err(f) => Err(f),
            }
        }
        Message::Status(r) => group
            .primary_status(r, epoch)
            .await
            .map(|(mapped, len)| Message::Provisioning { mapped, len }),
        Message::CompareAndWrite(op) => {
            group
                .primary_compare_and_write(op, epoch)
                .await
                .map(|r| match r {
                    None => Message::Ok,
                    Some(offset) => Message::Miscompare { offset },
                })
        }
        Message::Ping { nonce } => Ok(Message::Pong { nonce }),
        Message::Freeze(op) => group.freeze(op).await.map(|()| Message::Ok),
        Message::Thaw(op) => {
            group.thaw(op);
            Ok(Message::Ok)
        }
        Message::SnapshotRead(op) => group.snapshot_read(op).await.map(Message::Data),
        Message::LuEvent(event) => group
            .lu_event(event)
            .await
            .map(|()| Message::Ok)
            .map_err(Fail::Refused),
        Message::DirtyQuery { pgs } => Ok(Message::DirtyRegions(
            pgs.iter()
                .flat_map(|&pg| {
                    group
                        .dirty
                        .own_unconfirmed(pg)
                        .into_iter()
                        .map(move |(volume, chunk)| peer::Region {
                            volume,
                            pg,
                            offset: chunk * control::CHUNK_BYTES,
                            len: control::CHUNK_BYTES,
                        })
                })
                .collect(),
        )),
        other => Err(Fail::Refused(format!(
            "request kind {:#04x} is not served",
            other.kind()
        ))),
    };
    result.unwrap_or_else(|f| f.to_message())
}

/// A primary's copy of a write: into this member's copy, under the chunk's lock shared
/// (a discard of a released copy takes it exclusively, so the two never interleave).
async fn replica_write(group: &Arc<Group>, op: peer::WriteOp, epoch: u64) -> Result<(), Fail> {
    let _chunk = group.replica_lock_of(op.volume, op.offset).read().await;
    group.check_not_frozen(op.volume)?;
    let (vol, replicas) = copy_of(group, op.volume, op.pg)?;
    let len = op.data.len() as u64;
    group
        .dirty
        .record(replicas, op.pg, op.volume, op.offset, len, epoch);
    store_write(vol, op.offset, op.data, op.fua).await
}

fn answers(results: Vec<Result<(), Fail>>) -> Message {
    Message::Answers(
        results
            .into_iter()
            .map(|r| r.map_err(|f| f.to_reply()))
            .collect(),
    )
}

/// The local volume and its replica class when this member holds (or is being given) a
/// copy of `pg`.
fn copy_of(group: &Group, volume: u64, pg: u32) -> Result<(Arc<store::Volume>, u8), Fail> {
    let state = group.state();
    let Some(v) = state.volume_by_id(volume) else {
        return Err(Fail::Refused(format!("no volume {volume}")));
    };
    let holds = state
        .table(v.replicas)
        .is_some_and(|t| t.copies(pg).contains(&group.node));
    if !holds {
        return Err(Fail::Refused(format!(
            "member {} holds no copy of group {pg}",
            group.node
        )));
    }
    Ok((group.local(volume)?, v.replicas))
}
