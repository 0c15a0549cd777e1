//! Writes bound for the same member travel together: one frame, one handler task and one
//! wake-up at the receiver for several writes, where each used to cost its own.
//!
//! ```text
//!  write A ─► outbox(P, Primary): under the in-flight limit ─► a sender task starts,
//!             and yields once so that the writes made meanwhile join A
//!  write B ─► queued ┐
//!  write C ─► queued ┴─► sender: WriteBatch[A, B, C] ─► P: Answers[ok, ok, err]
//!                        ─► each writer gets its own answer; the sender goes on with
//!                           whatever queued meanwhile, or stops
//! ```
//!
//! At most [`IN_FLIGHT`] batches per outbox are on the wire; writes queued meanwhile
//! wait for the next, so batches grow with the load (as a journal's group commit does) and
//! a lone write at queue depth 1 still leaves at once. Each write of a batch is carried
//! out and answered on its own: one that fails is retried by its caller (in whatever
//! batch it then joins), exactly as a write sent by itself would be. A batch travels
//! under one map epoch; writes made under another wait for a batch of their own.

use super::{Fail, Group};
use peer::{Message, WriteOp};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Batches one outbox keeps on the wire at once.
const IN_FLIGHT: usize = 2;
/// Writes in one batch.
const BATCH_WRITES: usize = 64;
/// Data in one batch: a large write travels alone rather than delay the ones behind it.
const BATCH_BYTES: usize = 1 << 20;

/// Which request the writes of an outbox are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Route {
    /// Writes forwarded to their placement group's primary.
    Primary,
    /// A primary's copies of writes for one of its replicas.
    Replica,
}

/// The outboxes of one member, one per (destination, route).
#[derive(Default)]
pub(super) struct Outboxes(Mutex<HashMap<(u64, Route), Arc<Outbox>>>);

#[derive(Default)]
struct Outbox(Mutex<Queue>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Entry>,
    in_flight: usize,
}

struct Entry {
    epoch: u64,
    op: WriteOp,
    answer: oneshot::Sender<Result<(), Fail>>,
}

impl Outboxes {
    fn of(&self, node: u64, route: Route) -> Arc<Outbox> {
        let mut boxes = self.0.lock().unwrap();
        boxes.entry((node, route)).or_default().clone()
    }
}

impl Group {
    /// Send `op` to `node` by `route` under `epoch`, together with the writes queued for
    /// the same destination, and wait for its own answer.
    pub(super) async fn send_write(
        self: &Arc<Self>,
        node: u64,
        route: Route,
        epoch: u64,
        op: WriteOp,
    ) -> Result<(), Fail> {
        let outbox = self.outboxes.of(node, route);
        let (answer, answered) = oneshot::channel();
        let leads = {
            let mut q = outbox.0.lock().unwrap();
            q.waiting.push(Entry { epoch, op, answer });
            let leads = q.in_flight < IN_FLIGHT;
            if leads {
                q.in_flight += 1;
            }
            leads
        };
        if leads {
            // A task of its own sends, so no caller's cancellation can strand the queue.
            let g = self.clone();
            let mut turn = Turn {
                outbox,
                given_back: false,
            };
            tokio::spawn(async move {
                // Let the writes made in the same turn of the scheduler queue up first
                // (the other commands of one read from the initiator's socket, the other
                // writes of one batch at a primary).
                tokio::task::yield_now().await;
                loop {
                    let batch = turn.outbox.take();
                    g.send_batch(node, route, batch).await;
                    if turn.ends() {
                        break;
                    }
                }
            });
        }
        answered.await.unwrap_or_else(|_| {
            Err(Fail::Unreachable(
                "the batch carrying this write was dropped".into(),
            ))
        })
    }

    /// Send one batch and hand each write its answer.
    async fn send_batch(self: &Arc<Self>, node: u64, route: Route, batch: Vec<Entry>) {
        let Some(epoch) = batch.first().map(|e| e.epoch) else {
            return;
        };
        let (ops, answers): (Vec<WriteOp>, Vec<_>) =
            batch.into_iter().map(|e| (e.op, e.answer)).unzip();
        let single = |op| match route {
            Route::Primary => Message::Write(op),
            Route::Replica => Message::ReplicaWrite(op),
        };
        // A single write needs no batch, nor the look at the connection's version.
        let batches = ops.len() > 1 && self.speaks_batches(node).await;
        let frames = if batches { 1 } else { ops.len() as u64 };
        self.peer_writes
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        self.peer_write_frames.fetch_add(frames, Ordering::Relaxed);
        if !batches {
            // One write, or a peer that predates batches: each travels by itself.
            let calls = ops.into_iter().map(|op| self.call(node, epoch, single(op)));
            let results = futures_util::future::join_all(calls).await;
            for (result, answer) in results.into_iter().zip(answers) {
                let _ = answer.send(result.map(|_| ()));
            }
            return;
        }
        let count = ops.len();
        let message = match route {
            Route::Primary => Message::WriteBatch(ops),
            Route::Replica => Message::ReplicaWriteBatch(ops),
        };
        match self.call(node, epoch, message).await {
            Ok(Message::Answers(results)) if results.len() == count => {
                for (result, answer) in results.into_iter().zip(answers) {
                    let result =
                        result.map_err(|reply| Fail::from_peer(peer::Error::Remote(reply)));
                    let _ = answer.send(result);
                }
            }
            Ok(other) => {
                for answer in answers {
                    let why = format!("unexpected answer to a batch of {count}: {other:?}");
                    let _ = answer.send(Err(Fail::Refused(why)));
                }
            }
            Err(fail) => {
                for answer in answers {
                    let _ = answer.send(Err(fail.duplicate()));
                }
            }
        }
    }

    /// Whether `node`'s connection speaks protocol version 2 (batches).
    async fn speaks_batches(&self, node: u64) -> bool {
        match self.client(node).await {
            Ok(client) => client.established().version >= 2,
            // The call that follows reports why.
            Err(_) => false,
        }
    }
}

impl Outbox {
    /// The next batch: the oldest waiting write and those after it made under the same
    /// epoch, within the batch limits.
    fn take(&self) -> Vec<Entry> {
        let mut q = self.0.lock().unwrap();
        let Some(epoch) = q.waiting.first().map(|e| e.epoch) else {
            return Vec::new();
        };
        let (mut count, mut bytes) = (0, 0);
        let end = q
            .waiting
            .iter()
            .take_while(|e| {
                count += 1;
                bytes += e.op.data.len();
                e.epoch == epoch && (count == 1 || (count <= BATCH_WRITES && bytes <= BATCH_BYTES))
            })
            .count();
        q.waiting.drain(..end).collect()
    }

    /// After a batch was answered: true (and the sender's turn is over) when nothing
    /// waits; false when more writes wait and the sender keeps its turn to send them.
    fn is_idle_or_take_turn(&self) -> bool {
        let mut q = self.0.lock().unwrap();
        if q.waiting.is_empty() {
            q.in_flight -= 1;
            true
        } else {
            false
        }
    }
}

/// A sender's place among an outbox's batches on the wire, given back when the sender
/// stops however it stops: a sender cancelled mid-batch (the runtime shutting down) must not
/// keep the place, or with every place kept no write to that member would leave again.
struct Turn {
    outbox: Arc<Outbox>,
    given_back: bool,
}

impl Turn {
    /// After a batch was answered: true, and the place given back, when nothing waits.
    fn ends(&mut self) -> bool {
        self.given_back = self.outbox.is_idle_or_take_turn();
        self.given_back
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.given_back {
            self.outbox.0.lock().unwrap().in_flight -= 1;
        }
    }
}

impl Fail {
    /// The same failure again, for each write of a batch that failed as a whole.
    pub(super) fn duplicate(&self) -> Fail {
        match self {
            Fail::Stale { current } => Fail::Stale { current: *current },
            Fail::Unreachable(why) => Fail::Unreachable(why.clone()),
            Fail::Refused(why) => Fail::Refused(why.clone()),
            Fail::Device(e) => {
                Fail::Device(scsi::DeviceError::Io(std::io::Error::other(e.to_string())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn queue(writes: &[(u64, usize)]) -> (Outbox, Vec<oneshot::Receiver<Result<(), Fail>>>) {
        let outbox = Outbox::default();
        let mut answers = Vec::new();
        for (i, &(epoch, len)) in writes.iter().enumerate() {
            let (answer, answered) = oneshot::channel();
            let op = WriteOp {
                volume: 1,
                pg: 0,
                offset: i as u64 * 4096,
                fua: false,
                data: Bytes::from(vec![0u8; len]),
            };
            outbox
                .0
                .lock()
                .unwrap()
                .waiting
                .push(Entry { epoch, op, answer });
            answers.push(answered);
        }
        (outbox, answers)
    }

    fn offsets(batch: &[Entry]) -> Vec<u64> {
        batch.iter().map(|e| e.op.offset / 4096).collect()
    }

    #[test]
    fn a_batch_is_one_epoch_in_order() {
        let (outbox, _answers) = queue(&[(3, 4096), (3, 4096), (4, 4096), (3, 4096)]);
        assert_eq!(offsets(&outbox.take()), [0, 1]);
        assert_eq!(offsets(&outbox.take()), [2]);
        assert_eq!(offsets(&outbox.take()), [3]);
        assert!(outbox.take().is_empty());
    }

    #[test]
    fn a_batch_keeps_to_its_limits_but_a_large_write_still_leaves() {
        let (outbox, _answers) = queue(&vec![(1, 512); BATCH_WRITES + 1]);
        assert_eq!(outbox.take().len(), BATCH_WRITES);
        assert_eq!(outbox.take().len(), 1);

        let half = BATCH_BYTES / 2;
        let (outbox, _answers) = queue(&[(1, 2 * BATCH_BYTES), (1, half), (1, half), (1, 1)]);
        assert_eq!(offsets(&outbox.take()), [0]);
        assert_eq!(offsets(&outbox.take()), [1, 2]);
        assert_eq!(offsets(&outbox.take()), [3]);
    }

    #[test]
    fn a_sender_that_stops_mid_batch_gives_its_place_back() {
        let (outbox, _answers) = queue(&[(1, 4096), (1, 4096)]);
        let outbox = Arc::new(outbox);
        outbox.0.lock().unwrap().in_flight = 2;
        let mut finished = Turn {
            outbox: outbox.clone(),
            given_back: false,
        };
        outbox.take();
        assert!(finished.ends());
        drop(finished);
        assert_eq!(outbox.0.lock().unwrap().in_flight, 1, "given back once");
        let cancelled = Turn {
            outbox: outbox.clone(),
            given_back: false,
        };
        drop(cancelled);
        assert_eq!(outbox.0.lock().unwrap().in_flight, 0);
    }

    #[test]
    fn the_sender_keeps_its_turn_while_writes_wait() {
        let (outbox, _answers) = queue(&[(1, 4096)]);
        outbox.0.lock().unwrap().in_flight = 1;
        assert!(!outbox.is_idle_or_take_turn());
        outbox.take();
        assert!(outbox.is_idle_or_take_turn());
        assert_eq!(outbox.0.lock().unwrap().in_flight, 0);
    }
}
