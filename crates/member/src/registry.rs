//! The targets this member serves (volumes and snapshots) and the sessions logged in to
//! them.
//!
//! The registry follows the control plane's state. Every applied change is reconciled
//! here in two steps: first the store is brought in line (create or clone volumes, take
//! and delete snapshots, restore, grow, delete), then the served targets (open a logical
//! unit for each volume and snapshot, close the ones that went away).

use api::SessionView;
use control::{ClusterState, Snapshot, Volume};
use scsi::{BlockDevice, CopyResolver, LogicalUnit, LuIdentity, PrPersistence};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use store::{ErrorKind, Store};
use tokio::sync::Notify;

/// One target served here: a volume, or a snapshot's read-only image of one.
pub struct VolumeHandle {
    /// The volume (for a snapshot: the volume it was taken of).
    pub volume: RwLock<Volume>,
    /// Set when this target is a snapshot.
    pub snapshot: Option<Snapshot>,
    pub lu: Arc<LogicalUnit>,
    pub dev: Arc<dyn BlockDevice>,
    /// `dev` when it is a volume served through the group: the portal writes to it
    /// asynchronously (a write waits on the network there).
    pub group_dev: Option<Arc<crate::group::GroupDevice>>,
}

type Devices = (Arc<dyn BlockDevice>, Option<Arc<crate::group::GroupDevice>>);

/// Identifies a session for reinstatement: the same initiator port to the same target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: u64,
    pub target: Option<String>,
}

struct SessionEntry {
    id: u64,
    close: Arc<Notify>,
    portal: String,
}

/// Volumes and sessions of this member.
pub struct Registry {
    pub member: String,
    data_dir: PathBuf,
    store: Arc<Store>,
    /// Restore generations already applied, by volume id (also kept in marker files).
    restored: Mutex<HashMap<u64, u64>>,
    /// The newest snapshot id taken of each volume (also kept in marker files): a snapshot
    /// at or below it that the store no longer has was deleted by the reserve policy and is
    /// never taken again (it would hold other data).
    snap_high: Mutex<HashMap<u64, u64>>,
    /// Snapshot reserve settings applied to the store, by volume id.
    reserve_applied: Mutex<HashMap<u64, (u32, control::ReservePolicy)>>,
    volumes: Arc<RwLock<HashMap<String, Arc<VolumeHandle>>>>,
    sessions: Mutex<HashMap<SessionKey, SessionEntry>>,
    next_session: AtomicU64,
    /// The group data path volumes are served through (set once at start).
    group: std::sync::OnceLock<Arc<crate::group::Group>>,
}

/// The NAA designator of a volume: type 6 (IEEE registered extended) with haven's
/// locally chosen company id and the volume's id and creation time, so it is stable for the
/// volume's life and the same on every member.
pub fn naa_for(v: &Volume) -> [u8; 16] {
    let mut naa = [0u8; 16];
    naa[0] = 0x60; // NAA 6, company id 0x000000 follows in the next 24 bits
    naa[3] = 0x0a; // vendor-specific identifier starts: 'haven' marker nibble
    naa[4..12].copy_from_slice(&v.id.to_be_bytes());
    naa[12..16].copy_from_slice(&(v.created as u32).to_be_bytes());
    naa
}

/// The NAA designator of a snapshot's logical unit: distinct from its volume's.
pub fn naa_for_snapshot(s: &Snapshot, created: u64) -> [u8; 16] {
    let mut naa = [0u8; 16];
    naa[0] = 0x60;
    naa[3] = 0x0b; // 'snapshot' marker
    naa[4..8].copy_from_slice(&(s.volume_id as u32).to_be_bytes());
    naa[8..12].copy_from_slice(&(s.id as u32).to_be_bytes());
    naa[12..16].copy_from_slice(&(created as u32).to_be_bytes());
    naa
}

/// A number kept per volume in a marker file, cached in `cache` (0 when there is none).
fn cached_marker(cache: &Mutex<HashMap<u64, u64>>, id: u64, path: &Path) -> u64 {
    if let Some(g) = cache.lock().unwrap().get(&id) {
        return *g;
    }
    let g = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    cache.lock().unwrap().insert(id, g);
    g
}

fn store_err(e: store::Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl Registry {
    /// Open the member's store in `data_dir/store` (replaying its journal).
    pub fn new(member: String, data_dir: PathBuf, capacity: Option<u64>) -> std::io::Result<Self> {
        std::fs::create_dir_all(data_dir.join("volumes"))?;
        let opts = store::StoreOptions {
            capacity,
            ..Default::default()
        };
        let store = Arc::new(Store::open(data_dir.join("store"), opts).map_err(store_err)?);
        Ok(Registry {
            member,
            data_dir,
            store,
            restored: Mutex::new(HashMap::new()),
            snap_high: Mutex::new(HashMap::new()),
            reserve_applied: Mutex::new(HashMap::new()),
            volumes: Arc::new(RwLock::new(HashMap::new())),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            group: std::sync::OnceLock::new(),
        })
    }

    /// The member's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Make everything written so far durable and the journal short (clean shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.store.checkpoint() {
            tracing::error!(error = %e, "checkpoint at shutdown failed");
        }
    }

    /// Where the volume's persistent reservations live when an initiator sets APTPL.
    fn pr_path_for(&self, v: &Volume) -> PathBuf {
        self.data_dir
            .join("volumes")
            .join(format!("{:016x}.pr", v.id))
    }

    fn restore_marker(&self, id: u64) -> PathBuf {
        self.data_dir
            .join("volumes")
            .join(format!("{id:016x}.restored"))
    }

    /// The restore generation this member has applied to volume `id`.
    pub fn restored_generation(&self, id: u64) -> u64 {
        cached_marker(&self.restored, id, &self.restore_marker(id))
    }

    fn snap_marker(&self, id: u64) -> PathBuf {
        self.data_dir
            .join("volumes")
            .join(format!("{id:016x}.snaps"))
    }

    fn snapshot_high_water(&self, id: u64) -> u64 {
        cached_marker(&self.snap_high, id, &self.snap_marker(id))
    }

    /// EXTENDED COPY targets: the devices of the volumes served here, by NAA designator.
    fn copy_resolver(&self) -> CopyResolver {
        let volumes = Arc::downgrade(&self.volumes);
        Arc::new(move |naa: &[u8; 16]| {
            let volumes = volumes.upgrade()?;
            let vols = volumes.read().unwrap_or_else(|e| e.into_inner());
            vols.values()
                .find(|h| h.lu.identity().naa == *naa)
                .map(|h| h.dev.clone())
        })
    }

    /// The target `iqn` (a volume or a snapshot).
    pub fn get(&self, iqn: &str) -> Option<Arc<VolumeHandle>> {
        self.volumes.read().unwrap().get(iqn).cloned()
    }

    pub fn all(&self) -> Vec<Arc<VolumeHandle>> {
        let mut v: Vec<_> = self.volumes.read().unwrap().values().cloned().collect();
        v.sort_by_key(|h| h.volume.read().unwrap().name.clone());
        v
    }

    /// Bring the store and the served targets in line with the cluster state.
    /// Bring the store and the served targets in line with the cluster state. Returns the
    /// commands the group must apply in turn (snapshots the reserve policy deleted).
    pub fn reconcile(&self, state: &ClusterState) -> Vec<control::Command> {
        let follow_up = self.reconcile_store(state);
        self.reconcile_targets(state);
        self.collect_garbage(state);
        follow_up
    }

    /// Create, clone, snapshot, restore and grow in the store what the state says.
    fn reconcile_store(&self, state: &ClusterState) -> Vec<control::Command> {
        let mut follow_up = Vec::new();
        let present: HashSet<u64> = self.store.volumes().into_iter().collect();
        // Parents before clones: a clone needs its origin's snapshot.
        let mut vols: Vec<&Volume> = state.volumes.values().collect();
        vols.sort_by_key(|v| v.id);
        for v in vols {
            if !present.contains(&v.id) {
                let r = match v.parent {
                    Some(p) => self.store.clone_volume(p.volume_id, p.snapshot_id, v.id),
                    None => self
                        .store
                        .create_volume(v.id, v.size, v.block_size, v.thick),
                };
                match r {
                    Ok(()) => tracing::info!(volume = %v.name, "volume created in the store"),
                    Err(e) => {
                        tracing::error!(volume = %v.name, error = %e, "cannot create the volume");
                        continue;
                    }
                }
            }
            let Ok(sv) = self.store.volume(v.id) else {
                continue;
            };
            if v.size > sv.num_blocks() * v.block_size as u64 {
                match self.store.resize(v.id, v.size) {
                    Ok(()) => {
                        tracing::info!(volume = %v.name, size = v.size, "volume grown");
                        if let Some(h) = self.get(&v.iqn()) {
                            h.lu.capacity_changed();
                        }
                    }
                    Err(e) => {
                        tracing::error!(volume = %v.name, error = %e, "cannot grow the volume")
                    }
                }
            }
            let have: HashSet<u64> = self
                .store
                .snapshots(v.id)
                .unwrap_or_default()
                .into_iter()
                .collect();
            if let Some(snaps) = state.snapshots.get(&v.name) {
                let mut snaps: Vec<&Snapshot> = snaps.values().collect();
                snaps.sort_by_key(|s| s.id);
                for s in snaps {
                    // A group's snapshot is taken by its members in one cut, never here.
                    if have.contains(&s.id) || s.holders.is_some() {
                        continue;
                    }
                    if s.id <= self.snapshot_high_water(v.id) {
                        // Taken once and since deleted by the store's reserve policy.
                        tracing::warn!(volume = %v.name, snapshot = %s.name, "snapshot deleted to keep within the snapshot reserve");
                        follow_up.push(control::Command::DeleteSnapshot {
                            volume: v.name.clone(),
                            name: s.name.clone(),
                        });
                        continue;
                    }
                    match self.store.snapshot(v.id, s.id) {
                        Ok(()) => {
                            self.snap_high.lock().unwrap().insert(v.id, s.id);
                            if let Err(e) = write_atomically(
                                &self.snap_marker(v.id),
                                s.id.to_string().as_bytes(),
                            ) {
                                tracing::error!(volume = %v.name, error = %e, "cannot record the snapshot");
                            }
                            tracing::info!(volume = %v.name, snapshot = %s.name, "snapshot taken")
                        }
                        Err(e) => {
                            tracing::error!(volume = %v.name, snapshot = %s.name, error = %e, "cannot take the snapshot")
                        }
                    }
                }
            }
            let reserve = (v.snapshot_reserve_pct, v.reserve_policy);
            if self.reserve_applied.lock().unwrap().get(&v.id) != Some(&reserve) {
                let policy = match v.reserve_policy {
                    control::ReservePolicy::DeleteOldest => store::ReservePolicy::DeleteOldest,
                    control::ReservePolicy::Offline => store::ReservePolicy::Offline,
                };
                match self
                    .store
                    .set_snapshot_reserve(v.id, v.snapshot_reserve_pct, policy)
                {
                    Ok(()) => {
                        self.reserve_applied.lock().unwrap().insert(v.id, reserve);
                    }
                    Err(e) => {
                        tracing::error!(volume = %v.name, error = %e, "cannot set the snapshot reserve")
                    }
                }
            }
            if v.restore_generation > self.restored_generation(v.id) {
                if let Some(snap) = v.restored_from {
                    match self.store.restore(v.id, snap) {
                        Ok(()) => {
                            // Recorded only after the store rolled back: a crash in between
                            // repeats the restore, which writes nothing new.
                            if let Err(e) = write_atomically(
                                &self.restore_marker(v.id),
                                v.restore_generation.to_string().as_bytes(),
                            ) {
                                tracing::error!(volume = %v.name, error = %e, "cannot record the restore");
                            }
                            self.restored
                                .lock()
                                .unwrap()
                                .insert(v.id, v.restore_generation);
                            tracing::info!(volume = %v.name, snapshot = snap, "volume restored");
                        }
                        Err(e) => {
                            tracing::error!(volume = %v.name, error = %e, "cannot restore the volume")
                        }
                    }
                }
            }
        }
        follow_up
    }

    /// Open a logical unit for every volume and snapshot; close those that went away.
    fn reconcile_targets(&self, state: &ClusterState) {
        let mut wanted: HashMap<String, (&Volume, Option<&Snapshot>)> = HashMap::new();
        // A clone whose copy is not whole yet is not served: it would read as holes.
        for v in state.volumes.values().filter(|v| v.copy_from.is_none()) {
            wanted.insert(v.iqn(), (v, None));
            if let Some(snaps) = state.snapshots.get(&v.name) {
                // A group snapshot is served once its members took it.
                for s in snaps.values().filter(|s| !s.pending) {
                    wanted.insert(s.iqn(), (v, Some(s)));
                }
            }
        }
        let mut gone = Vec::new();
        {
            let mut vols = self.volumes.write().unwrap();
            vols.retain(|iqn, h| {
                let keep = wanted.get(iqn).is_some_and(|(v, s)| {
                    v.id == h.volume.read().unwrap().id
                        && s.map(|s| s.id) == h.snapshot.as_ref().map(|s| s.id)
                });
                if !keep {
                    gone.push(iqn.clone());
                }
                keep
            });
            for (iqn, (v, snap)) in &wanted {
                match vols.get(iqn) {
                    Some(h) => *h.volume.write().unwrap() = (*v).clone(),
                    None => match self.open(v, *snap) {
                        Ok(h) => {
                            vols.insert(iqn.clone(), Arc::new(h));
                        }
                        Err(e) => {
                            tracing::error!(target = %iqn, error = %e, "cannot serve the target")
                        }
                    },
                }
                if snap.is_none() {
                    if let Some(h) = vols.get(iqn) {
                        fence(h, state.volume_writer(&v.name));
                        follow_reservations(h, state);
                    }
                }
            }
        }
        for iqn in gone {
            self.close_sessions(&iqn);
            tracing::info!(target = %iqn, "target removed");
        }
    }

    /// Delete from the store what the state no longer has (retried until it succeeds:
    /// a volume with clones stays until they are gone).
    fn collect_garbage(&self, state: &ClusterState) {
        let ids: HashMap<u64, &Volume> = state.volumes.values().map(|v| (v.id, v)).collect();
        for id in self.store.volumes() {
            match ids.get(&id) {
                Some(v) => {
                    let wanted: HashSet<u64> = state
                        .snapshots
                        .get(&v.name)
                        .map(|s| s.values().map(|s| s.id).collect())
                        .unwrap_or_default();
                    for snap in self.store.snapshots(id).unwrap_or_default() {
                        if !wanted.contains(&snap) {
                            match self.store.delete_snapshot(id, snap) {
                                Ok(()) => {
                                    tracing::info!(volume = %v.name, snapshot = snap, "snapshot deleted")
                                }
                                Err(e) => {
                                    tracing::debug!(volume = %v.name, snapshot = snap, error = %e, "snapshot kept for now")
                                }
                            }
                        }
                    }
                }
                None => match self.store.delete_volume(id) {
                    Ok(()) => {
                        tracing::info!(volume = id, "volume deleted from the store");
                        let _ = std::fs::remove_file(self.restore_marker(id));
                        let pr = self.data_dir.join("volumes").join(format!("{id:016x}.pr"));
                        let _ = std::fs::remove_file(pr);
                    }
                    Err(e) if e.kind == ErrorKind::Conflict => {
                        tracing::debug!(volume = id, error = %e, "volume kept while clones need it")
                    }
                    Err(e) => tracing::error!(volume = id, error = %e, "cannot delete the volume"),
                },
            }
        }
    }

    /// Bytes this member copied to others while filling copies.
    pub fn resync_bytes(&self) -> u64 {
        self.group.get().map_or(0, |g| {
            g.resync_bytes.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Writes sent to other members, and the frames that carried them.
    pub fn peer_writes(&self) -> (u64, u64) {
        self.group.get().map_or((0, 0), |g| {
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            (load(&g.peer_writes), load(&g.peer_write_frames))
        })
    }

    /// Sessions on other members, by node id, as last polled.
    pub fn peer_loads(&self) -> HashMap<u64, usize> {
        self.group
            .get()
            .map(|g| g.loads.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The group data path, once attached.
    pub fn group(&self) -> Option<Arc<crate::group::Group>> {
        self.group.get().cloned()
    }

    /// Bytes in use in other members' pools, by node id, as last polled.
    pub fn peer_fills(&self) -> HashMap<u64, u64> {
        self.group
            .get()
            .map(|g| g.fills.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The group's dirty-region records here: (copies tracked, chunks they await).
    pub fn tracked_resync(&self) -> (usize, usize) {
        self.group
            .get()
            .map(|g| g.dirty.pending())
            .unwrap_or_default()
    }

    /// Carry out a unit-wide event another member's port raised for volume `event.volume`
    /// (see `group::lu_events`). A volume not open here has no nexus to tell.
    pub fn lu_event(&self, event: peer::LuEvent, state: &ClusterState) -> Result<(), String> {
        let handles: Vec<Arc<VolumeHandle>> = self
            .volumes
            .read()
            .unwrap()
            .values()
            .filter(|h| h.snapshot.is_none() && h.volume.read().unwrap().id == event.volume)
            .cloned()
            .collect();
        for h in handles {
            match crate::group::reset_of(event.kind) {
                Some(tmf) => h.lu.reset_from_elsewhere(tmf),
                None => follow_reservations(&h, state),
            }
        }
        Ok(())
    }

    /// Serve volumes opened from now on through the group's data path.
    pub fn attach_group(&self, group: Arc<crate::group::Group>) {
        let _ = self.group.set(group);
    }

    /// A volume's device, and the same as a group device when it is served through the
    /// group.
    fn volume_device(&self, v: &Volume) -> std::io::Result<Devices> {
        let local = self.store.volume(v.id).map_err(store_err)?;
        Ok(match self.group.get() {
            Some(g) => {
                let dev = Arc::new(crate::group::GroupDevice::new(g.clone(), v.id, local));
                (dev.clone(), Some(dev))
            }
            None => (local, None),
        })
    }

    fn open(&self, v: &Volume, snap: Option<&Snapshot>) -> std::io::Result<VolumeHandle> {
        let mut group_dev = None;
        let (dev, identity): (Arc<dyn BlockDevice>, LuIdentity) = match snap {
            None => (
                {
                    let (dev, group) = self.volume_device(v)?;
                    group_dev = group;
                    dev
                },
                LuIdentity {
                    naa: naa_for(v),
                    serial: format!("{:016x}", v.id),
                    target_name: v.iqn(),
                    target_port_group: 1,
                },
            ),
            Some(s) => (
                match (s.holders.is_some(), self.group.get()) {
                    (true, Some(g)) => {
                        Arc::new(crate::group::GroupSnapshotDevice::new(g.clone(), v, s))
                    }
                    _ => self.store.open_snapshot(v.id, s.id).map_err(store_err)?,
                },
                LuIdentity {
                    naa: naa_for_snapshot(s, s.created),
                    serial: format!("{:08x}{:08x}", v.id as u32, s.id as u32),
                    target_name: s.iqn(),
                    target_port_group: 1,
                },
            ),
        };
        let lu = Arc::new(LogicalUnit::new(dev.clone(), identity));
        let shared = self.group.get().filter(|_| !local_reservations_fault());
        if let (Some(g), None) = (shared, snap) {
            // The group's record is the reservations' home; a volume whose reservations
            // were only ever saved here (APTPL, before groups) starts from that file.
            if v.reservations.revision == 0 {
                if let Ok(bytes) = std::fs::read(self.pr_path_for(v)) {
                    if let Err(e) = lu.restore_pr(&bytes) {
                        tracing::error!(volume = %v.name, error = %e, "ignoring saved persistent reservations");
                    }
                }
            }
            lu.set_shared_reservations(Arc::new(crate::group::GroupReservations::new(
                g.clone(),
                v.id,
            )));
        } else if snap.is_none() {
            let pr_path = self.pr_path_for(v);
            match std::fs::read(&pr_path) {
                Ok(bytes) => {
                    if let Err(e) = lu.restore_pr(&bytes) {
                        tracing::error!(volume = %v.name, error = %e, "ignoring saved persistent reservations");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(volume = %v.name, error = %e, "cannot read saved persistent reservations")
                }
            }
            lu.set_pr_persistence(Arc::new(PrFile { path: pr_path }));
        }
        lu.set_copy_resolver(self.copy_resolver());
        if let (Some(g), None) = (self.group.get(), snap) {
            lu.set_other_ports(Arc::new(crate::group::GroupPorts::new(g.clone(), v.id)));
        }
        tracing::info!(target = %lu.identity().target_name, size = v.size, "serving");
        Ok(VolumeHandle {
            volume: RwLock::new(v.clone()),
            snapshot: snap.cloned(),
            lu,
            dev,
            group_dev,
        })
    }

    /// Record a new session; an older one with the same key is told to close
    /// (session reinstatement). Returns the session id, its close signal and whether an
    /// older session was reinstated.
    pub fn session_started(&self, key: SessionKey, portal: &str) -> (u64, Arc<Notify>, bool) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let old = self.sessions.lock().unwrap().insert(
            key,
            SessionEntry {
                id,
                close: close.clone(),
                portal: portal.to_string(),
            },
        );
        let reinstated = old.is_some();
        if let Some(old) = old {
            old.close.notify_one();
        }
        (id, close, reinstated)
    }

    /// Returns true when `id` was still the key's current session (not reinstated).
    pub fn session_ended(&self, key: &SessionKey, id: u64) -> bool {
        let mut s = self.sessions.lock().unwrap();
        if s.get(key).is_some_and(|e| e.id == id) {
            s.remove(key);
            return true;
        }
        false
    }

    fn close_sessions(&self, iqn: &str) {
        for (k, e) in self.sessions.lock().unwrap().iter() {
            if k.target.as_deref() == Some(iqn) {
                e.close.notify_one();
            }
        }
    }

    /// Every normal session on this member, with its target.
    pub fn all_sessions(&self) -> Vec<SessionView> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, e)| {
                Some(SessionView {
                    initiator: k.initiator.clone(),
                    isid: format!("{:012x}", k.isid),
                    member: self.member.clone(),
                    portal: e.portal.clone(),
                    target: k.target.clone()?,
                })
            })
            .collect()
    }

    /// Normal sessions on this member.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.target.is_some())
            .count()
    }
}

/// Persistent reservation state saved beside the volume data: written to a temporary
/// file, synced, then renamed over the old one, so a crash leaves either state whole.
struct PrFile {
    path: PathBuf,
}

impl PrPersistence for PrFile {
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        write_atomically(&self.path, bytes)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Fences a volume to the initiator of the host that owns its VM (or lifts the fence).
fn fence(h: &VolumeHandle, writer: Option<String>) {
    if h.lu.writer() != writer {
        tracing::info!(target = %h.lu.identity().target_name, writer = ?writer, "write fence");
        h.lu.set_writer(writer);
    }
}

/// Bring a volume's logical unit up to the reservations the group recorded.
fn follow_reservations(h: &VolumeHandle, state: &ClusterState) {
    let id = h.volume.read().unwrap().id;
    let at = h.lu.reservation_revision();
    let newest = state
        .volume_by_id(id)
        .map_or(0, |v| v.reservations.revision);
    if newest > at {
        h.lu.apply_reservation_changes(&crate::group::changes_after(state, id, at));
    }
}

/// `HAVEN_FAULT_LOCAL_RESERVATIONS=1` keeps each member's reservations to itself: the fault
/// the cross-member reservation test must catch.
fn local_reservations_fault() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var_os("HAVEN_FAULT_LOCAL_RESERVATIONS").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_state_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("haven-pr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0000000000000001.pr");
        let f = PrFile { path: path.clone() };
        f.save(b"first state").unwrap();
        f.save(b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("pr.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
