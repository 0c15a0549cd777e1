//! COMPARE AND WRITE across members: one step at the chunk's primary.
//!
//! A member's SCSI engine locks its own stripes, which orders nothing against an initiator
//! writing the same blocks through another member. The primary of the chunk orders every
//! write to it (its range locks), so the compare and the write run there, together:
//!
//! ```text
//!  initiator ─CAW─► member A ──CompareAndWrite(compare ‖ write)──► primary P
//!                                   P: range lock; read; compare ──differ──► Miscompare{at}
//!                                                        └─equal──► write locally and
//!                                                                   on every in-sync copy ─► Ok
//! ```
//!
//! A retried attempt (the first one's answer was lost) may find its own write already
//! there: when the blocks then hold exactly what it writes, it reports success.

use super::{gone, Fail, Group};
use bytes::Bytes;
use peer::Message;
use scsi::DeviceError;
use std::sync::Arc;

/// Byte index of the first difference between `a` and `b`.
pub(super) fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    a.iter().zip(b).position(|(x, y)| x != y).map(|i| i as u64)
}

impl Group {
    /// COMPARE AND WRITE of `compare.len()` bytes of `volume` at `offset`: `Ok(None)`
    /// written, `Ok(Some(i))` the blocks differ from `compare` first at byte `i` (nothing
    /// written). `None` when the bytes span placement groups: no single member orders
    /// them, and the caller falls back to its own lock.
    pub async fn compare_and_write(
        self: &Arc<Self>,
        volume: u64,
        offset: u64,
        compare: Bytes,
        data: Bytes,
        fua: bool,
    ) -> Option<Result<Option<u64>, DeviceError>> {
        let Some((key, _)) = self.volume_info(volume) else {
            return Some(Err(gone(volume)));
        };
        let spans = self.spans(key, offset, compare.len() as u64);
        let [span] = spans.as_slice() else {
            return None;
        };
        let pg = span.pg;
        let mut payload = Vec::with_capacity(compare.len() * 2);
        payload.extend_from_slice(&compare);
        payload.extend_from_slice(&data);
        let payload = Bytes::from(payload);
        let mut attempts = 0u32;
        let result = self
            .at_primary(volume, pg, |g, primary, seen| {
                attempts += 1;
                let op = peer::WriteOp {
                    volume,
                    pg,
                    offset,
                    fua,
                    data: payload.clone(),
                };
                async move {
                    if primary == g.node {
                        return g.primary_compare_and_write(op, seen).await;
                    }
                    match g.call(primary, seen, Message::CompareAndWrite(op)).await? {
                        Message::Ok => Ok(None),
                        Message::Miscompare { offset } => Ok(Some(offset)),
                        other => Err(Fail::Refused(format!("unexpected answer {other:?}"))),
                    }
                }
            })
            .await;
        Some(match result {
            Ok(Some(at)) if attempts > 1 => {
                // An earlier attempt may have written before its answer was lost.
                let mut now = vec![0u8; data.len()];
                match self.read(volume, offset, &mut now).await {
                    Ok(()) if now[..] == data[..] => Ok(None),
                    Ok(()) => Ok(Some(at)),
                    Err(e) => Err(e),
                }
            }
            other => other,
        })
    }

    /// The primary's side of [`compare_and_write`](Self::compare_and_write): `op.data` is
    /// the bytes to compare followed by the bytes to write.
    pub(crate) async fn primary_compare_and_write(
        self: &Arc<Self>,
        op: peer::WriteOp,
        epoch: u64,
    ) -> Result<Option<u64>, Fail> {
        let half = op.data.len() / 2;
        if half == 0 || !op.data.len().is_multiple_of(2) {
            return Err(Fail::Refused("compare and write without data".into()));
        }
        let expect = op.data.slice(..half);
        let data = op.data.slice(half..);
        let (volume, pg, offset, fua) = (op.volume, op.pg, op.offset, op.fua);
        let at = peer::Region {
            volume,
            pg,
            offset,
            len: half as u64,
        };
        let replica = Message::ReplicaWrite(peer::WriteOp {
            volume,
            pg,
            offset,
            fua,
            data: data.clone(),
        });
        self.replicate_if(
            at,
            epoch,
            Some(expect),
            move |v| super::write_local(&v, offset, &data, fua),
            false,
            replica,
        )
        .await
    }
}
