//! The group data path: every member serves every volume; each 4 MiB chunk of a volume
//! belongs to a placement group whose primary orders and acknowledges its writes.
//!
//! ```text
//!  initiator ─► any member's portal ─► GroupDevice ─► span per chunk
//!     primary here?  yes ─► primary_write: range lock, local journal, ReplicaWrite to every
//!                           copy (all in-sync copies must answer), then acknowledge
//!                    no  ─► Write to the primary over the peer protocol (it does the above)
//!  refused (stale epoch, not primary) or unreachable ─► wait for the next epoch, retry
//! ```
//!
//! Every peer request carries the layout epoch it was made under and is refused by a
//! member at another epoch, so a primary cut off from the group (which cannot learn that a
//! new epoch dropped it) can never collect its replicas' answers, and never acknowledges a
//! write alone. Overlapping writes are serialized at the primary (a lock per 4 KiB unit,
//! held until every copy answered), so copies apply them in the same order, and a read at
//! the primary waits for a write in flight to the same blocks: nothing is read that a
//! replica does not have yet. A fill holds the locks of its whole chunk.
//!
//! A one-member group takes none of these paths: `GroupDevice` calls the local store
//! directly, inline on the connection's task.

pub mod abandon;
mod backfill;
mod caw;
mod clones;
mod device;
mod digest;
mod dirty;
mod liveness;
mod lu_events;
mod outbox;
mod reservations;
mod server;
mod snapshots;

pub use device::GroupDevice;
pub use lu_events::{reset_of, GroupPorts};
pub use reservations::{changes_after, GroupReservations};
pub use server::handle;
pub use snapshots::GroupSnapshotDevice;

use bytes::Bytes;
use control::{ClusterState, ControlPlane, CHUNK_BYTES, PG_COUNT};
use peer::{ClientConfig, ErrorCode, Message, PeerClient};
use placement::Striping;
use scsi::{BlockDevice, DeviceError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use store::Store;
use tokio::sync::watch;

/// Lock stripes of the primary's range locks and of the replicas' chunk locks.
const LOCK_STRIPES: usize = 4096;

/// The primary orders writes per 4 KiB unit: overlapping writes take the same lock.
const LOCK_UNIT: u64 = 4096;

/// Placement groups one member fills at once.
const FILLS_AT_ONCE: usize = 2;

/// Why one attempt at a group operation did not complete.
#[derive(Debug)]
pub(crate) enum Fail {
    /// Made under another epoch than the receiver's.
    Stale { current: u64 },
    /// A member did not answer (down, partitioned, restarting).
    Unreachable(String),
    /// Not the primary, not a copy, or the volume is not there yet: retry shortly.
    Refused(String),
    /// The device failed: report it.
    Device(DeviceError),
}

impl Fail {
    fn from_peer(e: peer::Error) -> Fail {
        match e {
            peer::Error::Remote(reply) => match reply.code {
                ErrorCode::StaleEpoch { current } => Fail::Stale { current },
                ErrorCode::Io => Fail::Device(DeviceError::Io(std::io::Error::other(reply.text))),
                _ => Fail::Refused(reply.text),
            },
            other => Fail::Unreachable(other.to_string()),
        }
    }

    /// The Error message a peer handler answers with.
    pub(crate) fn to_message(&self) -> Message {
        Message::Error(self.to_reply())
    }

    /// How a peer hears of this failure.
    pub(crate) fn to_reply(&self) -> peer::ErrorReply {
        match self {
            Fail::Stale { current } => peer::ErrorReply::new(
                ErrorCode::StaleEpoch { current: *current },
                "the layout changed",
            ),
            Fail::Unreachable(why) => peer::ErrorReply::new(
                ErrorCode::NotInSync,
                format!("a copy is unreachable: {why}"),
            ),
            Fail::Refused(why) => {
                peer::ErrorReply::new(ErrorCode::NotPrimary { primary: None }, why)
            }
            Fail::Device(e) => peer::ErrorReply::new(ErrorCode::Io, e.to_string()),
        }
    }
}

/// This member's view of the group's data path.
pub struct Group {
    pub node: u64,
    control: ControlPlane,
    store: Arc<Store>,
    rt: tokio::runtime::Handle,
    state: RwLock<Arc<ClusterState>>,
    /// The layout epoch of `state`; shared with the peer server, which refuses requests
    /// made under another.
    epoch: Arc<AtomicU64>,
    epoch_tx: watch::Sender<u64>,
    /// True while the group has this member only: I/O goes straight to the store.
    alone: AtomicBool,
    striping: Striping,
    engine: peer::Config,
    peers: Mutex<HashMap<u64, PeerClient>>,
    /// Writes waiting to travel to each member together.
    outboxes: outbox::Outboxes,
    locks: Vec<tokio::sync::RwLock<()>>,
    /// The replica side's own chunk locks (replica writes shared, discards exclusive):
    /// apart from `locks`, so a primary waiting on a replica while holding a chunk lock
    /// can never wait on a lock its replica holds the same way.
    replica_locks: Vec<tokio::sync::RwLock<()>>,
    /// When each peer last answered a ping.
    last_ok: Mutex<HashMap<u64, Instant>>,
    /// Backfills running: (replica class, placement group, target node).
    backfills: Mutex<HashSet<(u8, u32, u64)>>,
    /// Writes to a placement group hold its gate shared; a fill that is about to declare
    /// its copy in sync holds it exclusively, so no write can slip past the new copy
    /// between the last check and the commit.
    gates: Vec<tokio::sync::RwLock<()>>,
    /// Per (placement group, copy being filled): raised whenever a write to that copy
    /// failed, so a fill that overlapped it is not declared complete.
    missed: Mutex<HashMap<(u32, u64), u64>>,
    /// Bytes copied to other members by backfills since start.
    pub resync_bytes: AtomicU64,
    /// Writes sent to other members (forwarded to a primary, or a primary's copies) since
    /// start, and the frames that carried them ([`outbox`]).
    pub peer_writes: AtomicU64,
    pub peer_write_frames: AtomicU64,
    /// Sessions on each other member, polled for login redirection.
    pub loads: Mutex<HashMap<u64, usize>>,
    /// Bytes in use in each other member's pool, polled with the loads.
    pub fills: Mutex<HashMap<u64, u64>>,
    /// The (replica class, placement group) copies this member held at the last state;
    /// `None` before the first, so a member that starts discards whatever it no longer
    /// holds.
    held: Mutex<Option<HashSet<(u8, u32)>>>,
    /// Fills this member runs at once, so a rebalance does not starve initiators.
    pub(crate) fill_slots: Arc<tokio::sync::Semaphore>,
    /// Chunks written while copies were away, so their return resyncs only those.
    pub(crate) dirty: dirty::DirtyRecords,
    /// Set once this member's restart is recorded (`MemberUp`): before, its own in-sync
    /// marks are leftovers and it must neither fill nor keep dirty records.
    ready: AtomicBool,
    timing: Timing,
    /// Where peers' unit-wide events for this member's logical units go.
    lu_events: std::sync::OnceLock<lu_events::LuEventSink>,
    /// Volumes frozen while the group takes a snapshot of them.
    frozen: snapshots::Frozen,
    /// Held shared by changes made while this member is alone (they pass no gate), and
    /// exclusively by a freeze taking its snapshot.
    cut: std::sync::RwLock<()>,
    /// Snapshots of this member's store opened to serve other members' reads.
    snapshot_devices: Mutex<HashMap<(u64, u64), Arc<dyn scsi::BlockDevice>>>,
}

/// The group's waits, from the member's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a down member keeps its groups (`MemberConfig::down_out`).
    pub down_out: Duration,
    /// How long an I/O whose placement group has no reachable primary is retried before
    /// the initiator gets an error (`MemberConfig::io_deadline`).
    pub io_deadline: Duration,
}

impl Group {
    pub fn new(node: u64, control: ControlPlane, store: Arc<Store>, timing: Timing) -> Arc<Self> {
        let state = control.state();
        let epoch = state.layout.epoch;
        Arc::new(Group {
            node,
            alone: AtomicBool::new(state.members.len() <= 1),
            state: RwLock::new(state),
            control,
            store,
            rt: tokio::runtime::Handle::current(),
            epoch: Arc::new(AtomicU64::new(epoch)),
            epoch_tx: watch::Sender::new(epoch),
            striping: Striping::new(CHUNK_BYTES, PG_COUNT).expect("constant striping is valid"),
            engine: peer::Config {
                max_version: peer_max_version(),
                ..peer::Config::new(node, 0)
            },
            peers: Mutex::new(HashMap::new()),
            outboxes: outbox::Outboxes::default(),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            replica_locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            last_ok: Mutex::new(HashMap::new()),
            backfills: Mutex::new(HashSet::new()),
            gates: (0..PG_COUNT)
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            missed: Mutex::new(HashMap::new()),
            resync_bytes: AtomicU64::new(0),
            peer_writes: AtomicU64::new(0),
            peer_write_frames: AtomicU64::new(0),
            loads: Mutex::new(HashMap::new()),
            fills: Mutex::new(HashMap::new()),
            held: Mutex::new(None),
            fill_slots: Arc::new(tokio::sync::Semaphore::new(FILLS_AT_ONCE)),
            dirty: dirty::DirtyRecords::new(node),
            ready: AtomicBool::new(false),
            timing,
            lu_events: std::sync::OnceLock::new(),
            frozen: Default::default(),
            cut: std::sync::RwLock::new(()),
            snapshot_devices: Mutex::default(),
        })
    }

    /// The epoch counter the peer server checks requests against.
    pub fn epoch_counter(&self) -> Arc<AtomicU64> {
        self.epoch.clone()
    }

    pub fn engine_config(&self) -> peer::Config {
        self.engine.clone()
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.state.read().unwrap().clone()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn is_alone(&self) -> bool {
        self.alone.load(Ordering::Acquire)
    }

    /// This member's restart is recorded in the group: from now on its in-sync marks are
    /// its own, so it fills copies and keeps dirty-region records.
    pub fn set_ready(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        let state = self.control.state();
        self.observe(state, std::time::Instant::now());
    }

    /// Run a group operation to its end from a blocking thread (the SCSI engine's), as
    /// part of the command running there (see [`abandon`]).
    pub(crate) fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let gone = abandon::current();
        tokio::task::block_in_place(|| self.rt.block_on(abandon::scoped(f, gone)))
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Follow a newly applied state (after the registry reconciled its volumes), which
    /// arrived at `seen_at`.
    pub fn observe(self: &Arc<Self>, state: Arc<ClusterState>, seen_at: std::time::Instant) {
        let epoch = state.layout.epoch;
        let prev = {
            let mut current = self.state.write().unwrap();
            // `set_ready` may have followed a newer state than the one the follower
            // reconciled: never step back.
            if current.layout.epoch > epoch {
                return;
            }
            std::mem::replace(&mut *current, state.clone())
        };
        self.alone
            .store(state.members.len() <= 1, Ordering::Release);
        // Until ready, `prev` is not a state this member was in sync under.
        let prev = self.is_ready().then_some(&*prev);
        self.dirty.observe(prev, &state, seen_at);
        self.epoch.store(epoch, Ordering::Release);
        self.epoch_tx.send_if_modified(|e| {
            let changed = *e != epoch;
            *e = epoch;
            changed
        });
        backfill::scan(self);
        self.discard_released();
    }

    /// Free the chunks of copies this member no longer holds (the group moved them and
    /// the new copies are complete).
    fn discard_released(self: &Arc<Self>) {
        let state = self.state();
        let now: HashSet<(u8, u32)> = state
            .layout
            .tables
            .iter()
            .flat_map(|(&r, t)| {
                (0..t.map.pg_count)
                    .filter(|&pg| t.copies(pg).contains(&self.node))
                    .map(move |pg| (r, pg))
            })
            .collect();
        let released: Vec<(u8, u32)> = {
            let mut held = self.held.lock().unwrap();
            let released = match held.as_ref() {
                Some(old) => old.difference(&now).copied().collect(),
                None => state
                    .layout
                    .tables
                    .iter()
                    .flat_map(|(&r, t)| (0..t.map.pg_count).map(move |pg| (r, pg)))
                    .filter(|k| !now.contains(k))
                    .collect(),
            };
            *held = Some(now);
            released
        };
        if !released.is_empty() {
            tokio::spawn(backfill::discard(self.clone(), released));
        }
    }

    /// Start pinging peers, the leader's failure detector and periodic backfill scans, and
    /// the leader's copying of clones.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(liveness::run(self.clone()));
        tokio::spawn(clones::run(self.clone()));
    }

    /// Wait until this member's epoch is at least `epoch`, or `limit` passed.
    async fn wait_epoch(&self, epoch: u64, limit: Duration) {
        let mut rx = self.epoch_tx.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|e| *e >= epoch)).await;
    }

    /// Wait until the epoch moves past `seen`, or `limit` passed.
    async fn wait_past(&self, seen: u64, limit: Duration) {
        self.wait_epoch(seen + 1, limit).await
    }

    /// The primary's lock stripes of bytes `[offset, offset + len)`, in the order they must
    /// be taken (sorted, each once): writes to overlapping blocks are ordered, writes to
    /// different blocks of one chunk run side by side.
    fn range_stripes(volume: u64, offset: u64, len: u64) -> Vec<usize> {
        let first = offset / LOCK_UNIT;
        let last = (offset + len.max(1) - 1) / LOCK_UNIT;
        let mut stripes: Vec<usize> = (first..=last)
            .map(|unit| Self::stripe_of_unit(volume, unit))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
    }

    async fn write_range(
        &self,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Vec<tokio::sync::RwLockWriteGuard<'_, ()>> {
        let mut guards = Vec::new();
        for s in Self::range_stripes(volume, offset, len) {
            guards.push(self.locks[s].write().await);
        }
        guards
    }

    async fn read_range(
        &self,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let mut guards = Vec::new();
        for s in Self::range_stripes(volume, offset, len) {
            guards.push(self.locks[s].read().await);
        }
        guards
    }

    fn stripe_of_unit(volume: u64, unit: u64) -> usize {
        let h = (volume.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ unit)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9)
            >> 20;
        (h % LOCK_STRIPES as u64) as usize
    }

    fn replica_lock_of(&self, volume: u64, offset: u64) -> &tokio::sync::RwLock<()> {
        &self.replica_locks[Self::stripe(volume, offset)]
    }

    fn stripe(volume: u64, offset: u64) -> usize {
        let chunk = offset / CHUNK_BYTES;
        // Any spread will do: chunks of one volume are consecutive numbers.
        let h = (volume.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ chunk)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9)
            >> 20;
        (h % LOCK_STRIPES as u64) as usize
    }

    fn local(&self, volume: u64) -> Result<Arc<store::Volume>, Fail> {
        self.store
            .volume(volume)
            .map_err(|e| Fail::Refused(format!("volume {volume} is not here yet: {e}")))
    }

    /// A connection to `node`, made now if there is none.
    async fn client(&self, node: u64) -> Result<PeerClient, Fail> {
        if let Some(c) = self.peers.lock().unwrap().get(&node) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let state = self.state();
        let Some(m) = state.member_by_node(node) else {
            return Err(Fail::Unreachable(format!("member {node} is unknown")));
        };
        if m.peer.is_empty() {
            return Err(Fail::Unreachable(format!("{} has no peer address", m.name)));
        }
        let mut config = ClientConfig::new(self.engine.clone());
        config.connect_timeout = Duration::from_millis(500);
        config.request_timeout = Duration::from_secs(5);
        let client = PeerClient::connect(m.peer.as_str(), config)
            .await
            .map_err(|e| Fail::Unreachable(format!("{}: {e}", m.name)))?;
        self.peers.lock().unwrap().insert(node, client.clone());
        Ok(client)
    }

    async fn call(&self, node: u64, epoch: u64, message: Message) -> Result<Message, Fail> {
        let client = self.client(node).await?;
        match client.call(epoch, message).await {
            Ok(Message::Error(reply)) => Err(Fail::from_peer(peer::Error::Remote(reply))),
            Ok(answer) => Ok(answer),
            Err(e) => {
                if client.is_closed() {
                    self.peers.lock().unwrap().remove(&node);
                }
                Err(Fail::from_peer(e))
            }
        }
    }

    /// Wait before the next attempt, according to why the last one failed. Returns the
    /// error to report when the device failed or the deadline passed.
    async fn backoff(&self, fail: Fail, seen: u64, deadline: Instant) -> Result<(), DeviceError> {
        if abandon::abandoned() {
            return Err(DeviceError::Io(std::io::Error::other(format!(
                "the command's connection is gone; not retried after {fail:?}"
            ))));
        }
        if Instant::now() > deadline {
            return Err(DeviceError::Io(std::io::Error::other(format!(
                "placement group unavailable: {fail:?}"
            ))));
        }
        match fail {
            Fail::Device(e) => return Err(e),
            Fail::Stale { current } if current > seen => {
                self.wait_epoch(current, Duration::from_secs(2)).await
            }
            Fail::Stale { .. } => tokio::time::sleep(Duration::from_millis(2)).await,
            Fail::Unreachable(why) => {
                tracing::debug!(%why, "peer unreachable; waiting for the next epoch");
                self.wait_past(seen, Duration::from_millis(500)).await
            }
            Fail::Refused(why) => {
                tracing::debug!(%why, "refused; retrying");
                self.wait_past(seen, Duration::from_millis(20)).await
            }
        }
        Ok(())
    }

    /// The placement group of byte `offset` of the volume with this placement key.
    fn spans(&self, key: u64, offset: u64, len: u64) -> Vec<placement::Span> {
        self.striping.spans(key, offset, len).collect()
    }

    fn volume_info(&self, volume: u64) -> Option<(u64, u8)> {
        self.state()
            .volume_by_id(volume)
            .map(|v| (v.placement_key(), v.replicas))
    }

    /// Write `data` at byte `offset` of `volume` through the group.
    pub async fn write(
        self: &Arc<Self>,
        volume: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), DeviceError> {
        let Some((key, _)) = self.volume_info(volume) else {
            return Err(gone(volume));
        };
        for span in self.spans(key, offset, data.len() as u64) {
            let at = (span.offset - offset) as usize;
            let piece = data.slice(at..at + span.len as usize);
            self.at_primary(volume, span.pg, |g, primary, seen| {
                let op = peer::WriteOp {
                    volume,
                    pg: span.pg,
                    offset: span.offset,
                    fua,
                    data: piece.clone(),
                };
                async move {
                    if primary == g.node {
                        g.primary_write(op, seen).await
                    } else {
                        g.send_write(primary, outbox::Route::Primary, seen, op)
                            .await
                    }
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Read `len` bytes at `offset` of `volume` through the group, into `out`.
    pub async fn read(
        self: &Arc<Self>,
        volume: u64,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), DeviceError> {
        let Some((key, _)) = self.volume_info(volume) else {
            return Err(gone(volume));
        };
        for span in self.spans(key, offset, out.len() as u64) {
            let at = (span.offset - offset) as usize;
            let dst = &mut out[at..at + span.len as usize];
            let data = self
                .at_primary(volume, span.pg, |g, primary, seen| {
                    let op = peer::ReadOp {
                        volume,
                        pg: span.pg,
                        offset: span.offset,
                        len: span.len as u32,
                    };
                    async move {
                        if primary == g.node {
                            return g.primary_read(op, seen).await;
                        }
                        match g.call(primary, seen, Message::Read(op)).await? {
                            Message::Data(d) if d.len() as u64 == span.len => Ok(d),
                            other => Err(Fail::Refused(format!("unexpected answer {other:?}"))),
                        }
                    }
                })
                .await?;
            dst.copy_from_slice(&data);
        }
        Ok(())
    }

    /// Deallocate `len` bytes at `offset` of `volume` on every copy.
    pub async fn unmap(
        self: &Arc<Self>,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        let Some((key, _)) = self.volume_info(volume) else {
            return Err(gone(volume));
        };
        for span in self.spans(key, offset, len) {
            self.at_primary(volume, span.pg, |g, primary, seen| {
                let region = peer::Region {
                    volume,
                    pg: span.pg,
                    offset: span.offset,
                    len: span.len,
                };
                async move {
                    if primary == g.node {
                        g.primary_unmap(region, seen).await
                    } else {
                        g.call(primary, seen, Message::Unmap(region))
                            .await
                            .map(|_| ())
                    }
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Run `attempt` against the primary of `pg` (itself when this member is), under the
    /// epoch it was found in, until it succeeds, the device fails or the I/O deadline passes.
    async fn at_primary<T, F, Fut>(
        self: &Arc<Self>,
        volume: u64,
        pg: u32,
        mut attempt: F,
    ) -> Result<T, DeviceError>
    where
        F: FnMut(Arc<Self>, u64, u64) -> Fut,
        Fut: std::future::Future<Output = Result<T, Fail>>,
    {
        let deadline = Instant::now() + self.timing.io_deadline;
        loop {
            let seen = self.epoch();
            let result = match self.primary_of(volume, pg) {
                Some(primary) => attempt(self.clone(), primary, seen).await,
                None => Err(Fail::Unreachable("no in-sync copy".into())),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(fail) => self.backoff(fail, seen, deadline).await?,
            }
        }
    }

    /// Make every acknowledged write of `volume` durable: every up member syncs its journal
    /// (writes are acknowledged once every in-sync copy holds them, so this covers all).
    pub async fn flush(self: &Arc<Self>, volume: u64) -> Result<(), DeviceError> {
        let deadline = Instant::now() + self.timing.io_deadline;
        loop {
            let seen = self.epoch();
            let state = self.state();
            let mut tasks = tokio::task::JoinSet::new();
            for m in state.up_members() {
                let (g, node) = (self.clone(), m.node_id);
                tasks.spawn(async move {
                    if node == g.node {
                        g.local_flush(volume).await
                    } else {
                        g.call(node, seen, Message::Flush(peer::FlushOp { volume }))
                            .await
                            .map(|_| ())
                    }
                });
            }
            let mut failed = None;
            while let Some(r) = tasks.join_next().await {
                if let Ok(Err(f)) = r {
                    failed = Some(f);
                }
            }
            match failed {
                None => return Ok(()),
                Some(fail) => self.backoff(fail, seen, deadline).await?,
            }
        }
    }

    fn primary_of(&self, volume: u64, pg: u32) -> Option<u64> {
        let state = self.state();
        let v = state.volume_by_id(volume)?;
        state.table(v.replicas)?.primary(pg)
    }

    /// Check that this member is the primary of `pg` for `volume` at `epoch`; the copies to
    /// write to (other than this one) and whether each must answer.
    fn as_primary(&self, volume: u64, pg: u32, epoch: u64) -> Result<Copies, Fail> {
        let state = self.state();
        if state.layout.epoch != epoch {
            return Err(Fail::Stale {
                current: state.layout.epoch,
            });
        }
        let Some(v) = state.volume_by_id(volume) else {
            return Err(Fail::Refused(format!("no volume {volume}")));
        };
        let Some(table) = state.table(v.replicas) else {
            return Err(Fail::Refused("no placement table".into()));
        };
        if table.primary(pg) != Some(self.node) {
            return Err(Fail::Refused(format!(
                "member {} is not the primary of group {pg}",
                self.node
            )));
        }
        let down = state.down_nodes();
        let mut skipped = Vec::new();
        let others = table
            .copies(pg)
            .into_iter()
            .filter(|m| *m != self.node)
            .filter_map(|m| {
                let must = table.is_in_sync(pg, m);
                // A down copy that is in sync is the last one of a group this member is not
                // primary of; a down copy being filled is skipped, and its fill restarts.
                if down.contains(&m) && !must {
                    skipped.push(m);
                    return None;
                }
                Some((m, must))
            })
            .collect();
        Ok(Copies {
            replicas: v.replicas,
            others,
            skipped,
        })
    }

    /// Run a change of the bytes `at` at the primary: under their range locks, locally,
    /// then on every other copy; acknowledged only when every in-sync copy answered.
    async fn replicate(
        self: &Arc<Self>,
        at: peer::Region,
        epoch: u64,
        local: impl FnOnce(Arc<store::Volume>) -> Result<(), DeviceError> + Send + 'static,
        cached_write: bool,
        message: Message,
    ) -> Result<(), Fail> {
        self.replicate_if(at, epoch, None, local, cached_write, message)
            .await
            .map(|_| ())
    }

    /// [`replicate`](Self::replicate), but only if the bytes `at` hold `expect` (checked
    /// under the same range locks): `Ok(Some(i))` when they differ first at byte `i`, and
    /// nothing was changed. A `cached_write` may append to the journal on this task.
    async fn replicate_if(
        self: &Arc<Self>,
        at: peer::Region,
        epoch: u64,
        expect: Option<Bytes>,
        local: impl FnOnce(Arc<store::Volume>) -> Result<(), DeviceError> + Send + 'static,
        cached_write: bool,
        message: Message,
    ) -> Result<Option<u64>, Fail> {
        let peer::Region {
            volume,
            pg,
            offset,
            len,
        } = at;
        let _gate = self.gate(pg).read().await;
        let _range = self.write_range(volume, offset, len).await;
        let copies = self.as_primary(volume, pg, epoch)?;
        self.check_not_frozen(volume)?;
        let vol = self.local(volume)?;
        if let Some(expect) = expect {
            let v = vol.clone();
            let current = blocking(move || {
                let mut buf = vec![0u8; expect.len()];
                v.read(offset / u64::from(v.block_size()), &mut buf)?;
                Ok(caw::first_difference(&buf, &expect))
            })
            .await?;
            if current.is_some() {
                return Ok(current);
            }
        }
        for node in copies.skipped {
            self.backfills_restart(pg, node);
        }
        let replicas = copies.replicas;
        self.dirty.record(replicas, pg, volume, offset, len, epoch);
        if cached_write && inline_ok(&vol) {
            local(vol).map_err(Fail::Device)?;
        } else {
            blocking(move || local(vol)).await?;
        }
        let mut others = copies.others;
        if fault_injected() {
            others.clear();
        }
        // Every copy at once, on this task.
        let calls = others.into_iter().map(|(node, must)| {
            let message = message.clone();
            async move { (node, must, self.to_copy(node, epoch, message).await) }
        });
        let results = futures_util::future::join_all(calls).await;
        let mut failed = None;
        for (node, must, result) in results {
            if let Err(f) = result {
                if must {
                    self.dirty
                        .unconfirmed(replicas, pg, node, volume, offset, len, epoch);
                    failed = Some(f);
                } else {
                    tracing::debug!(
                        node,
                        pg,
                        "a copy being filled missed a write; its fill restarts"
                    );
                    self.backfills_restart(pg, node);
                }
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(None),
        }
    }

    /// Send a primary's change to one of the other copies: writes travel with the other
    /// writes bound for that member ([`outbox`]).
    async fn to_copy(
        self: &Arc<Self>,
        node: u64,
        epoch: u64,
        message: Message,
    ) -> Result<(), Fail> {
        match message {
            Message::ReplicaWrite(op) => {
                self.send_write(node, outbox::Route::Replica, epoch, op)
                    .await
            }
            message => self.call(node, epoch, message).await.map(|_| ()),
        }
    }

    pub(crate) async fn primary_write(
        self: &Arc<Self>,
        op: peer::WriteOp,
        epoch: u64,
    ) -> Result<(), Fail> {
        let (volume, pg, offset) = (op.volume, op.pg, op.offset);
        let data = op.data.clone();
        let fua = op.fua;
        let at = peer::Region {
            volume,
            pg,
            offset,
            len: data.len() as u64,
        };
        self.replicate(
            at,
            epoch,
            move |v| write_local(&v, offset, &data, fua),
            !fua,
            Message::ReplicaWrite(op),
        )
        .await
    }

    pub(crate) async fn primary_unmap(
        self: &Arc<Self>,
        r: peer::Region,
        epoch: u64,
    ) -> Result<(), Fail> {
        self.replicate(
            r,
            epoch,
            move |v| unmap_local(&v, r.offset, r.len),
            false,
            Message::ReplicaUnmap(r),
        )
        .await
    }

    pub(crate) async fn primary_read(
        self: &Arc<Self>,
        op: peer::ReadOp,
        epoch: u64,
    ) -> Result<Bytes, Fail> {
        let _range = self
            .read_range(op.volume, op.offset, u64::from(op.len))
            .await;
        self.as_primary(op.volume, op.pg, epoch)?;
        let vol = self.local(op.volume)?;
        blocking(move || {
            let bs = vol.block_size() as u64;
            let mut buf = vec![0u8; op.len as usize];
            vol.read(op.offset / bs, &mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Provisioning at byte `r.offset` of the primary's copy: (mapped, bytes alike, at
    /// most `r.len`).
    pub(crate) async fn primary_status(
        self: &Arc<Self>,
        r: peer::Region,
        epoch: u64,
    ) -> Result<(bool, u64), Fail> {
        // Provisioning is advisory: the first unit's lock orders it after a write there.
        let _range = self.read_range(r.volume, r.offset, 1).await;
        self.as_primary(r.volume, r.pg, epoch)?;
        let vol = self.local(r.volume)?;
        blocking(move || {
            let bs = vol.block_size() as u64;
            let s = vol.lba_status(r.offset / bs)?;
            Ok((s.mapped, (s.blocks * bs).min(r.len)))
        })
        .await
    }

    /// Provisioning of `volume` at byte `offset`, up to the end of its chunk, from the
    /// chunk's primary.
    pub async fn status(
        self: &Arc<Self>,
        volume: u64,
        offset: u64,
        len: u64,
    ) -> Result<(bool, u64), DeviceError> {
        let Some((key, _)) = self.volume_info(volume) else {
            return Err(gone(volume));
        };
        let pg = self.striping.pg_of(key, offset);
        self.at_primary(volume, pg, |g, primary, seen| {
            let region = peer::Region {
                volume,
                pg,
                offset,
                len,
            };
            async move {
                if primary == g.node {
                    return g.primary_status(region, seen).await;
                }
                match g.call(primary, seen, Message::Status(region)).await? {
                    Message::Provisioning { mapped, len } => Ok((mapped, len)),
                    other => Err(Fail::Refused(format!("unexpected answer {other:?}"))),
                }
            }
        })
        .await
    }

    pub(crate) async fn local_flush(&self, volume: u64) -> Result<(), Fail> {
        let vol = self.local(volume)?;
        blocking(move || vol.flush()).await
    }

    /// A copy of `pg` missed a write while being filled: the fill running now must not
    /// declare it complete.
    fn backfills_restart(&self, pg: u32, node: u64) {
        *self.missed.lock().unwrap().entry((pg, node)).or_insert(0) += 1;
    }

    fn missed_writes(&self, pg: u32, node: u64) -> u64 {
        self.missed
            .lock()
            .unwrap()
            .get(&(pg, node))
            .copied()
            .unwrap_or(0)
    }

    fn gate(&self, pg: u32) -> &tokio::sync::RwLock<()> {
        &self.gates[pg as usize % self.gates.len()]
    }

    /// Peers that answered a ping within `within`.
    pub fn reachable(&self, node: u64, within: Duration) -> bool {
        self.last_ok
            .lock()
            .unwrap()
            .get(&node)
            .is_some_and(|t| t.elapsed() <= within)
    }
}

/// The copies a primary writes to besides its own.
struct Copies {
    /// The volume's replica class.
    replicas: u8,
    /// (member, whether it must answer: its copy is in sync).
    others: Vec<(u64, bool)>,
    /// Copies being filled that are down: they miss this write.
    skipped: Vec<u64>,
}

/// `HAVEN_FAULT_NO_REPLICATION=1` makes primaries skip their replicas: the fault the
/// group tests must catch (a write acknowledged by one copy only).
fn fault_injected() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var_os("HAVEN_FAULT_NO_REPLICATION").is_some())
}

fn gone(volume: u64) -> DeviceError {
    DeviceError::Io(std::io::Error::other(format!("volume {volume} is gone")))
}

fn write_local(v: &store::Volume, offset: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
    let bs = v.block_size() as u64;
    v.write(offset / bs, data, fua)
}

/// Whether a write without FUA may run on the calling task: with the write cache on it
/// is a journal append (microseconds, as the portal's inline writes), unless the journal
/// is congested and the append may wait for the checkpointer. The hand-off to the I/O
/// threads and back cost more than the append (futex wake-ups, context switches).
fn inline_ok(v: &store::Volume) -> bool {
    v.write_cache_enabled() && !v.congested()
}

/// `HAVEN_PEER_MAX_VERSION=1` makes a member speak the peer protocol of a member from
/// before write batches, to test a group of mixed versions (a rolling upgrade). Out of
/// range values are ignored.
fn peer_max_version() -> u8 {
    std::env::var("HAVEN_PEER_MAX_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| (peer::MIN_VERSION..=peer::MAX_VERSION).contains(v))
        .unwrap_or(peer::MAX_VERSION)
}

/// Write to the local copy: inline when [`inline_ok`], else on the I/O threads.
async fn store_write(
    vol: Arc<store::Volume>,
    offset: u64,
    data: Bytes,
    fua: bool,
) -> Result<(), Fail> {
    if !fua && inline_ok(&vol) {
        return write_local(&vol, offset, &data, fua).map_err(Fail::Device);
    }
    blocking(move || write_local(&vol, offset, &data, fua)).await
}

fn unmap_local(v: &store::Volume, offset: u64, len: u64) -> Result<(), DeviceError> {
    let bs = v.block_size() as u64;
    v.unmap(offset / bs, len / bs)
}

/// Threads that run the group path's store I/O.
const IO_THREADS: usize = 16;

type IoJob = Box<dyn FnOnce() + Send>;

/// The group path's own threads for store I/O. Not tokio's blocking pool: SCSI commands
/// wait there (in `GroupDevice`) for group operations, and a primary's store I/O queued
/// behind them would never run once they fill it (64 COMPARE AND WRITEs to one block did).
fn io_pool() -> &'static std::sync::mpsc::Sender<IoJob> {
    static POOL: std::sync::OnceLock<std::sync::mpsc::Sender<IoJob>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        // Unbounded: what waits here is bounded by the peers' in-flight limits and the
        // initiators' queue depths.
        let (tx, rx) = std::sync::mpsc::channel::<IoJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..IO_THREADS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("group-io-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })
                .expect("spawning a group I/O thread");
        }
        tx
    })
}

/// Run store I/O on the group's I/O threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
) -> Result<T, Fail> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: IoJob = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    if io_pool().send(job).is_err() {
        return Err(Fail::Device(DeviceError::Io(std::io::Error::other(
            "group i/o threads are gone",
        ))));
    }
    match rx.await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(Fail::Device(e)),
        _ => Err(Fail::Device(DeviceError::Io(std::io::Error::other(
            "store i/o panicked",
        )))),
    }
}
