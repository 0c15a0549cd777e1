//! The store: volumes, snapshots and clones over one data file, a write-ahead journal and
//! a redb index. See the crate documentation for the design.

use crate::disk::{DirDisk, Disk, DiskFile, RedbBackend};
use crate::error::{Error, ErrorKind, Result};
use crate::full_extents::FullExtents;
use crate::journal::{self, JFile};
use crate::layout::*;
use crate::mapped::Unmapped;
use redb::{Database, ReadableTable, TableDefinition};
use scsi::{BlockDevice, DeviceError, LbaStatus, MappedRead};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::Duration;

/// The on-disk format this code writes. Newer formats are refused.
pub const FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const VOLS: TableDefinition<u64, &str> = TableDefinition::new("volumes");
const LIVE: TableDefinition<(u64, u64), (u64, u64, u8)> = TableDefinition::new("live");
const OLD: TableDefinition<(u64, u64, u64), (u64, u8)> = TableDefinition::new("old");

const DATA_FILE: &str = "extents.dat";
const INDEX_FILE: &str = "index.redb";
const SHARDS: usize = 64;
/// Extents whose slot header one provisioning-status answer reads (holes cost nothing
/// and are followed up to 256 extents): the run it reports may stop there (the initiator
/// asks again from its end). QEMU asks before every read it serves over
/// NBD (sparse reads), and scanning 256 extents' headers per 4 KiB read made the read
/// latency through qemu-nbd 6 × tgtd's on a 1 GiB volume.
const STATUS_EXTENTS: usize = 4;
/// Extents known to be fully mapped that one provisioning-status answer follows without
/// reading anything (1 TiB of 256 KiB extents, a few thousand word reads): a fully
/// written volume is one run.
const STATUS_KNOWN_FULL: u64 = 1 << 22;
/// Journal size, in multiples of the checkpoint limit, past which writers wait.
const JOURNAL_HARD: u64 = 4;
/// Blocks per extent a read handles with buffers on the stack (32 KiB of 512-byte blocks).
const SMALL_READ: usize = 64;
/// Reads at least this large are served from the page cache when they can be
/// (`read_mapped_live`); smaller ones cost less copied than pinned and faulted in.
const MAPPED_READ_MIN: u64 = 64 * 1024;

/// One extent's part of a mapped read: its first LBA, where its data lies in the file,
/// the data and the blocks' header entries (crc, flags), through the mapping.
struct MappedRun<'a> {
    lba: u64,
    off: u64,
    data: &'a [u8],
    head: &'a [u8],
}

/// The first block of `runs` whose data does not match its checksum.
fn first_bad_block(runs: &[MappedRun<'_>], bs: usize) -> Option<u64> {
    let most = runs.iter().map(|r| r.data.len() / bs).max().unwrap_or(0);
    let mut crcs = vec![0u32; most];
    for r in runs {
        let cnt = r.data.len() / bs;
        crate::crc::blocks(r.data, bs, &mut crcs[..cnt]);
        if let Some(i) = (0..cnt).find(|&i| crcs[i] != hdr(r.head, i).0) {
            return Some(r.lba + i as u64);
        }
    }
    None
}

/// What a mapped read holds until the transport is done with it: the mapping, and its
/// slots from reuse.
struct MappedKeep {
    mapping: Arc<crate::mapped::Mapping>,
    _pin: crate::mapped::Pin,
}

/// One run of a mapped read's blocks, as the bytes of a `Bytes`.
struct MappedPiece {
    keep: Arc<MappedKeep>,
    off: u64,
    len: usize,
}

impl AsRef<[u8]> for MappedPiece {
    fn as_ref(&self) -> &[u8] {
        self.keep.mapping.checked(self.off, self.len)
    }
}
type DResult<T> = std::result::Result<T, DeviceError>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn rlock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn wlock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// What happens when a volume's snapshots need more than its snapshot reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ReservePolicy {
    /// Delete the oldest snapshots until the rest fit (EqualLogic's default).
    #[default]
    DeleteOldest,
    /// Keep the snapshots and take the volume offline.
    Offline,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Pool capacity in bytes of extents (None: unlimited). Allocations past it fail with
    /// [`DeviceError::NoSpace`].
    pub capacity: Option<u64>,
    /// Extent size for a new store (power of two, 4 KiB ..= 2 MiB, at most 512 blocks of
    /// the smallest block size used). An existing store keeps its own.
    pub extent_size: u32,
    /// Journal bytes that trigger a checkpoint.
    pub journal_limit: u64,
    /// Run a background checkpointer with this period (None: checkpoints happen only when
    /// the journal is full, on management operations and on [`Store::checkpoint`]).
    pub checkpoint_interval: Option<Duration>,
    /// Page cache of the index database, bytes.
    pub index_cache: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            capacity: None,
            extent_size: DEFAULT_EXTENT,
            journal_limit: 64 << 20,
            checkpoint_interval: Some(Duration::from_millis(500)),
            index_cache: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SnapMeta {
    epoch: u64,
    size_blocks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolMeta {
    format: u64,
    size_blocks: u64,
    block_size: u32,
    thick: bool,
    /// The current epoch: versions born in it belong to the live volume only.
    epoch: u64,
    /// Clone parent: (volume, snapshot epoch).
    parent: Option<(u64, u64)>,
    snaps: BTreeMap<u64, SnapMeta>,
    reserve_pct: u32,
    policy: ReservePolicy,
    offline: bool,
}

/// Space of the whole store, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSpace {
    /// Pool capacity (u64::MAX: unlimited).
    pub capacity: u64,
    /// Sum of volume sizes.
    pub provisioned: u64,
    /// Allocated extents (volumes, snapshots, clones).
    pub in_use: u64,
    /// Reserved by acknowledged writes not yet checkpointed.
    pub pending: u64,
    /// capacity − in_use − pending.
    pub free: u64,
    /// Sum of the volumes' snapshot reserves.
    pub snapshot_reserve: u64,
    /// Extents held only by snapshots.
    pub snapshot_in_use: u64,
    /// In use reached 90 % of capacity.
    pub warn: bool,
}

/// Space of one volume, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeSpace {
    pub provisioned: u64,
    /// Extents of the live volume that it references (shared ones included).
    pub in_use: u64,
    pub snapshot_reserve: u64,
    /// Extents kept for its snapshots only.
    pub snapshot_in_use: u64,
    pub snapshots: usize,
    /// Snapshot use reached 60 % of the reserve (EqualLogic's warning).
    pub reserve_warn: bool,
    pub offline: bool,
}

/// What [`Store::scrub`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Mapped blocks whose checksum was verified.
    pub blocks_checked: u64,
    /// LBAs that failed their checksum.
    pub bad: Vec<u64>,
    /// Of those, rewritten from the repair source.
    pub repaired: u64,
}

#[derive(Clone)]
struct OvBlock {
    jf: Arc<JFile>,
    off: u64,
    crc: u32,
}

#[derive(Default)]
struct ExtOv {
    reserved: bool,
    blocks: IntMap<u32, OvBlock>,
}

/// The overlay's maps are keyed by extent and block numbers and touched for every block
/// written; SipHash was a fifth of a 4 KiB write's instructions. A folded multiply mixes
/// every key bit into both ends of the hash (hashbrown takes buckets from the low bits,
/// tags from the high ones; the keys of one shard share their low six bits).
#[derive(Default)]
struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        let p = u128::from(self.0) * 0x9e37_79b9_7f4a_7c15;
        (p as u64) ^ ((p >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;
type Shard = Mutex<IntMap<u64, ExtOv>>;
/// Frozen overlay of one volume: (extent, had a reservation, its journaled blocks).
type Work = Vec<(Arc<Volume>, Vec<(u64, bool, Vec<(u32, OvBlock)>)>)>;

struct VolState {
    meta: VolMeta,
    live: Live,
    old: Old,
    snap_epochs: BTreeSet<u64>,
    parent: Option<(Arc<Volume>, u64)>,
    data_extents: u64,
    snap_extents: u64,
}

impl VolState {
    fn needs_alloc(&self, x: u64) -> bool {
        let e = self.live.get(x);
        !(e.kind == DATA && e.birth == self.meta.epoch && e.excl)
    }
    fn needed_by_snapshot(&self, birth: u64) -> bool {
        self.snap_epochs
            .range(birth..self.meta.epoch)
            .next()
            .is_some()
    }
}

/// A volume of the store: a [`BlockDevice`].
pub struct Volume {
    id: u64,
    inner: Arc<Inner>,
    block_size: u32,
    bpe: u64,
    num_blocks: AtomicU64,
    thick: bool,
    io: RwLock<()>,
    map: RwLock<VolState>,
    shards: Vec<Shard>,
    wce: AtomicBool,
    offline: AtomicBool,
    deleted: AtomicBool,
    /// Extents whose blocks are all mapped, as far as status queries have seen.
    full: FullExtents,
}

struct Acct {
    cap_slots: u64,
    used: u64,
    pending: u64,
}

struct JState {
    file: Arc<JFile>,
    off: u64,
    seq: u64,
    older: Vec<Arc<JFile>>,
    acct: Acct,
}

struct Admin {
    refs: Vec<u32>,
    free: BTreeSet<u64>,
    next_slot: u64,
}

impl Admin {
    fn alloc(&mut self) -> u64 {
        let p = match self.free.pop_first() {
            Some(p) => p,
            None => {
                self.next_slot += 1;
                self.next_slot - 1
            }
        };
        if self.refs.len() <= p as usize {
            self.refs.resize(p as usize + 1, 0);
        }
        self.refs[p as usize] = 1;
        p
    }
    fn incref(&mut self, p: u64) {
        self.refs[p as usize] += 1;
    }
    /// Drop a reference; true when the slot became free.
    fn decref(&mut self, p: u64) -> bool {
        let r = &mut self.refs[p as usize];
        *r = r.saturating_sub(1);
        *r == 0
    }
    fn used(&self) -> u64 {
        self.next_slot - 1 - self.free.len() as u64
    }
}

struct Inner {
    disk: Arc<dyn Disk>,
    db: Database,
    data: Arc<dyn DiskFile>,
    ext: u64,
    slot: u64,
    opts: StoreOptions,
    admin: Mutex<Admin>,
    vols: RwLock<HashMap<u64, Arc<Volume>>>,
    journal: Mutex<JState>,
    sync_mu: Mutex<()>,
    medium_errors: AtomicU64,
    stop: Mutex<bool>,
    kick: Condvar,
    /// Signalled (with `journal`) when a checkpoint starts a new journal file.
    rotated: Condvar,
    /// Bytes in the current journal file (a copy of `JState::off` readable without the lock).
    journal_bytes: AtomicU64,
    ckpt_count: AtomicU64,
    /// The data file mapped for large reads (none for a simulated disk).
    mapping: Option<Arc<crate::mapped::Mapping>>,
    /// Large reads' hold on the slots they point at.
    pins: Arc<crate::mapped::Pins>,
}

/// One index change, applied to redb at commit and to memory at publish.
enum Change {
    Live(u64, Entry),
    OldPut(u64, u64, Entry),
    OldDel(u64, u64),
    Meta(Box<VolMeta>),
}

#[derive(Default)]
struct Batch {
    changes: Vec<(Arc<Volume>, Vec<Change>)>,
    new_vols: Vec<(u64, VolMeta)>,
    del_vols: Vec<u64>,
    freed: Vec<u64>,
    journal_from: Option<u64>,
}

impl Batch {
    fn vol(&mut self, v: &Arc<Volume>) -> &mut Vec<Change> {
        if let Some(i) = self.changes.iter().position(|(w, _)| w.id == v.id) {
            return &mut self.changes[i].1;
        }
        self.changes.push((v.clone(), Vec::new()));
        &mut self.changes.last_mut().unwrap().1
    }
}

/// The store. Dropping it stops the background checkpointer without flushing: what was
/// not flushed is replayed from the journal (or lost on power loss) at the next open.
pub struct Store {
    inner: Arc<Inner>,
    bg: Option<std::thread::JoinHandle<()>>,
}

fn nf(what: &str, id: u64) -> Error {
    Error::new(ErrorKind::NotFound, format!("{what} {id} does not exist"))
}

impl Store {
    /// Open (creating if empty) the store in directory `dir`.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        Store::open_disk(Arc::new(DirDisk::new(dir.as_ref())?), opts)
    }

    /// Open the store on any [`Disk`] (a [`crate::SimDisk`] in tests).
    pub fn open_disk(disk: Arc<dyn Disk>, opts: StoreOptions) -> Result<Store> {
        let idx = disk.open(INDEX_FILE, true)?.expect("created");
        let db = Database::builder()
            .set_cache_size(opts.index_cache)
            .create_with_backend(RedbBackend(idx))?;
        // Format and extent size.
        let (ext, journal_from) = {
            let tx = db.begin_write()?;
            let r;
            {
                let mut m = tx.open_table(META)?;
                let fmt = m.get("format")?.map(|v| v.value());
                match fmt {
                    Some(f) if f > FORMAT_VERSION => {
                        return Err(Error::new(
                            ErrorKind::FormatTooNew,
                            format!(
                                "store format {f} is newer than this software's {FORMAT_VERSION}"
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        let e = opts.extent_size as u64;
                        if !e.is_power_of_two() || !(4096..=(2 << 20)).contains(&e) {
                            return Err(Error::new(
                                ErrorKind::Invalid,
                                format!("extent size {e} is not a power of two in 4 KiB..=2 MiB"),
                            ));
                        }
                        m.insert("format", FORMAT_VERSION)?;
                        m.insert("extent", e)?;
                        m.insert("journal_from", 1)?;
                    }
                }
                r = (
                    m.get("extent")?.map(|v| v.value()).unwrap_or(0),
                    m.get("journal_from")?.map(|v| v.value()).unwrap_or(1),
                );
                tx.open_table(VOLS)?;
                tx.open_table(LIVE)?;
                tx.open_table(OLD)?;
            }
            tx.commit()?;
            r
        };
        if ext == 0 {
            return Err(Error::new(ErrorKind::Corrupt, "index has no extent size"));
        }
        let data = disk.open(DATA_FILE, true)?.expect("created");
        let slot = HEADER + ext;
        // Volumes and their versions.
        let mut metas: BTreeMap<u64, VolMeta> = BTreeMap::new();
        let mut states: BTreeMap<u64, VolState> = BTreeMap::new();
        let mut refs: Vec<u32> = Vec::new();
        let mut max_slot = 0u64;
        {
            let tx = db.begin_read()?;
            for r in tx.open_table(VOLS)?.iter()? {
                let (k, v) = r?;
                let m: VolMeta = serde_json::from_str(v.value()).map_err(|e| {
                    Error::with(
                        ErrorKind::Corrupt,
                        format!("volume {} record", k.value()),
                        e,
                    )
                })?;
                if m.format > FORMAT_VERSION {
                    return Err(Error::new(
                        ErrorKind::FormatTooNew,
                        format!("volume {} has format {}", k.value(), m.format),
                    ));
                }
                metas.insert(k.value(), m);
            }
            for (id, m) in &metas {
                states.insert(
                    *id,
                    VolState {
                        snap_epochs: m.snaps.values().map(|s| s.epoch).collect(),
                        meta: m.clone(),
                        live: Live::default(),
                        old: Old::new(),
                        parent: None,
                        data_extents: 0,
                        snap_extents: 0,
                    },
                );
            }
            let mut count = |p: u64| {
                if refs.len() <= p as usize {
                    refs.resize(p as usize + 1, 0);
                }
                refs[p as usize] += 1;
                max_slot = max_slot.max(p);
            };
            for r in tx.open_table(LIVE)?.iter()? {
                let (k, v) = r?;
                let ((vol, x), (phys, birth, kind)) = (k.value(), v.value());
                let Some(st) = states.get_mut(&vol) else {
                    continue;
                };
                if kind == DATA {
                    count(phys);
                    st.data_extents += 1;
                }
                st.live.set(
                    x,
                    Entry {
                        phys,
                        birth,
                        kind,
                        excl: false,
                    },
                );
            }
            for r in tx.open_table(OLD)?.iter()? {
                let (k, v) = r?;
                let ((vol, x, birth), (phys, kind)) = (k.value(), v.value());
                let Some(st) = states.get_mut(&vol) else {
                    continue;
                };
                if kind == DATA {
                    count(phys);
                    st.snap_extents += 1;
                }
                st.old.insert(
                    (x, birth),
                    Entry {
                        phys,
                        birth,
                        kind,
                        excl: false,
                    },
                );
            }
        }
        // Exclusive flags from the reference counts.
        for st in states.values_mut() {
            let ents: Vec<(u64, Entry)> = st.live.iter().collect();
            for (x, mut e) in ents {
                if e.kind == DATA && refs[e.phys as usize] == 1 {
                    e.excl = true;
                    st.live.set(x, e);
                }
            }
        }
        let mut free = BTreeSet::new();
        for p in 1..=max_slot {
            if refs.get(p as usize).copied().unwrap_or(0) == 0 {
                free.insert(p);
            }
        }
        // Clear slots nobody references (freed or allocated by an interrupted checkpoint),
        // and everything past the last referenced slot.
        for &p in &free {
            clear_slot(&*data, slot, p)?;
        }
        if data.len()? > max_slot * slot {
            data.set_len(max_slot * slot)?;
        }
        data.sync()?;
        let admin = Admin {
            refs,
            free,
            next_slot: max_slot + 1,
        };
        let used = admin.used();
        // Journal files: drop retired ones, find the ones to replay.
        let mut gens: Vec<u64> = disk
            .list()?
            .iter()
            .filter_map(|n| journal::parse_name(n))
            .collect();
        gens.sort_unstable();
        for g in gens.iter().filter(|g| **g < journal_from) {
            disk.remove(&journal::name(*g))?;
        }
        gens.retain(|g| *g >= journal_from);
        let cur_gen = gens
            .last()
            .copied()
            .unwrap_or(journal_from - 1)
            .max(journal_from - 1)
            + 1;
        let cur = disk.open(&journal::name(cur_gen), true)?.expect("created");
        cur.set_len(0)?;
        let cap_slots = opts.capacity.map(|c| c / ext).unwrap_or(u64::MAX);
        let mapping = data
            .raw_fd()
            .and_then(crate::mapped::Mapping::new)
            .map(Arc::new);
        let inner = Arc::new(Inner {
            disk: disk.clone(),
            db,
            data,
            ext,
            slot,
            opts: opts.clone(),
            admin: Mutex::new(admin),
            vols: RwLock::new(HashMap::new()),
            journal: Mutex::new(JState {
                file: JFile::new(cur_gen, cur, 0),
                off: 0,
                seq: 0,
                older: Vec::new(),
                acct: Acct {
                    cap_slots,
                    used,
                    pending: 0,
                },
            }),
            sync_mu: Mutex::new(()),
            medium_errors: AtomicU64::new(0),
            stop: Mutex::new(false),
            kick: Condvar::new(),
            rotated: Condvar::new(),
            journal_bytes: AtomicU64::new(0),
            ckpt_count: AtomicU64::new(0),
            mapping,
            pins: Arc::default(),
        });
        // Build the volume objects, parents first.
        let mut vols: HashMap<u64, Arc<Volume>> = HashMap::new();
        let mut todo: Vec<u64> = states.keys().copied().collect();
        while !todo.is_empty() {
            let before = todo.len();
            let mut rest = Vec::new();
            for id in todo {
                let parent = states[&id].meta.parent;
                match parent {
                    Some((p, _)) if !vols.contains_key(&p) => rest.push(id),
                    _ => {
                        let mut st = states.remove(&id).unwrap();
                        st.parent = parent.map(|(p, e)| (vols[&p].clone(), e));
                        vols.insert(id, Volume::new(&inner, id, st));
                    }
                }
            }
            if rest.len() == before {
                return Err(Error::new(ErrorKind::Corrupt, "clone parents form a cycle"));
            }
            todo = rest;
        }
        *wlock(&inner.vols) = vols;
        // Replay the journal into the overlay, then checkpoint it.
        {
            let vols = rlock(&inner.vols).clone();
            let mut j = lock(&inner.journal);
            for g in gens {
                let f = disk.open(&journal::name(g), false)?.expect("listed");
                let (recs, _) =
                    journal::scan(&*f, g, |v| vols.get(&v).map(|v| v.block_size as usize))?;
                let jf = JFile::new(g, f, recs.len() as u64);
                for r in recs {
                    let v = &vols[&r.vol];
                    let st = rlock(&v.map);
                    let bs = v.block_size as u64;
                    for (i, crc) in r.crcs.iter().enumerate() {
                        let b = r.lba + i as u64;
                        let x = b / v.bpe;
                        let mut sh = lock(&v.shards[x as usize % SHARDS]);
                        let ov = sh.entry(x).or_default();
                        if !ov.reserved && st.needs_alloc(x) {
                            ov.reserved = true;
                            j.acct.pending += 1;
                        }
                        ov.blocks.insert(
                            (b % v.bpe) as u32,
                            OvBlock {
                                jf: jf.clone(),
                                off: r.data_off + i as u64 * bs,
                                crc: *crc,
                            },
                        );
                    }
                }
                j.older.push(jf);
            }
        }
        {
            let mut a = lock(&inner.admin);
            inner.checkpoint(&mut a, false)?;
        }
        let bg = opts.checkpoint_interval.map(|period| {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("store-ckpt".into())
                .spawn(move || inner.background(period))
                .expect("spawn checkpointer")
        });
        Ok(Store { inner, bg })
    }

    /// Create a volume of `size` bytes (a multiple of `block_size`, 512 or 4096). Thick
    /// volumes allocate all their extents now; thin ones on first write.
    pub fn create_volume(&self, id: u64, size: u64, block_size: u32, thick: bool) -> Result<()> {
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        if rlock(&inner.vols).contains_key(&id) {
            return Err(Error::new(ErrorKind::Exists, format!("volume {id} exists")));
        }
        if !(block_size == 512 || block_size == 4096)
            || size % block_size as u64 != 0
            || size == 0
            || inner.ext / (block_size as u64) > HEADER / 8
            || inner.ext < block_size as u64
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "size {size} / block size {block_size} not usable with {}-byte extents",
                    inner.ext
                ),
            ));
        }
        let meta = VolMeta {
            format: FORMAT_VERSION,
            size_blocks: size / block_size as u64,
            block_size,
            thick,
            epoch: 1,
            parent: None,
            snaps: BTreeMap::new(),
            reserve_pct: 100,
            policy: ReservePolicy::DeleteOldest,
            offline: false,
        };
        let v = Volume::new(
            inner,
            id,
            VolState {
                meta: meta.clone(),
                live: Live::default(),
                old: Old::new(),
                snap_epochs: BTreeSet::new(),
                parent: None,
                data_extents: 0,
                snap_extents: 0,
            },
        );
        let mut b = Batch::default();
        b.new_vols.push((id, meta));
        if thick {
            inner.thick_alloc(&mut a, &v, &mut b, 0, size.div_ceil(inner.ext))?;
        }
        wlock(&inner.vols).insert(id, v);
        inner.commit(&mut a, b)
    }

    /// The volume `id`.
    pub fn volume(&self, id: u64) -> Result<Arc<Volume>> {
        self.inner.vol(id)
    }

    /// Ids of all volumes.
    pub fn volumes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = rlock(&self.inner.vols).keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Take snapshot `snap` of volume `vol`: constant time (the journal is checkpointed
    /// first, a bounded amount of work; no data is copied).
    pub fn snapshot(&self, vol: u64, snap: u64) -> Result<()> {
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        let v = inner.vol(vol)?;
        let _io = wlock(&v.io);
        inner.checkpoint(&mut a, false)?;
        let mut m = rlock(&v.map).meta.clone();
        if m.snaps.contains_key(&snap) {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("snapshot {snap} of volume {vol} exists"),
            ));
        }
        m.snaps.insert(
            snap,
            SnapMeta {
                epoch: m.epoch,
                size_blocks: m.size_blocks,
            },
        );
        m.epoch += 1;
        let mut b = Batch::default();
        b.vol(&v).push(Change::Meta(Box::new(m)));
        inner.commit(&mut a, b)
    }

    /// Snapshot ids of a volume, oldest first.
    pub fn snapshots(&self, vol: u64) -> Result<Vec<u64>> {
        let v = self.inner.vol(vol)?;
        let st = rlock(&v.map);
        let mut s: Vec<(u64, u64)> = st.meta.snaps.iter().map(|(k, m)| (m.epoch, *k)).collect();
        s.sort_unstable();
        Ok(s.into_iter().map(|(_, k)| k).collect())
    }

    /// A read-only device showing snapshot `snap` of volume `vol`.
    pub fn open_snapshot(&self, vol: u64, snap: u64) -> Result<Arc<dyn BlockDevice>> {
        let v = self.inner.vol(vol)?;
        let sm = *rlock(&v.map)
            .meta
            .snaps
            .get(&snap)
            .ok_or_else(|| nf("snapshot", snap))?;
        Ok(Arc::new(SnapshotDevice {
            vol: v,
            snap,
            epoch: sm.epoch,
            blocks: sm.size_blocks,
        }))
    }

    /// Delete a snapshot (any order); extents only it held are freed.
    pub fn delete_snapshot(&self, vol: u64, snap: u64) -> Result<()> {
        let mut a = lock(&self.inner.admin);
        self.inner.delete_snapshot(&mut a, vol, snap)
    }

    /// A new writable volume `new_id` showing snapshot `snap` of `vol`: instant, sharing
    /// every extent until written.
    pub fn clone_volume(&self, vol: u64, snap: u64, new_id: u64) -> Result<()> {
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        let p = inner.vol(vol)?;
        if rlock(&inner.vols).contains_key(&new_id) {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("volume {new_id} exists"),
            ));
        }
        let sm = *rlock(&p.map)
            .meta
            .snaps
            .get(&snap)
            .ok_or_else(|| nf("snapshot", snap))?;
        let pm = rlock(&p.map).meta.clone();
        let meta = VolMeta {
            format: FORMAT_VERSION,
            size_blocks: sm.size_blocks,
            block_size: pm.block_size,
            thick: false,
            epoch: 1,
            parent: Some((vol, sm.epoch)),
            snaps: BTreeMap::new(),
            reserve_pct: pm.reserve_pct,
            policy: pm.policy,
            offline: false,
        };
        let v = Volume::new(
            inner,
            new_id,
            VolState {
                meta: meta.clone(),
                live: Live::default(),
                old: Old::new(),
                snap_epochs: BTreeSet::new(),
                parent: Some((p, sm.epoch)),
                data_extents: 0,
                snap_extents: 0,
            },
        );
        let mut b = Batch::default();
        b.new_vols.push((new_id, meta));
        wlock(&inner.vols).insert(new_id, v);
        inner.commit(&mut a, b)
    }

    /// Make a clone independent of its parent snapshot, a batch of extents at a time
    /// (I/O continues meanwhile). `progress(done, total)` is called after each batch.
    /// Extents are shared by reference (copy-on-write protects them), not copied.
    pub fn flatten(&self, id: u64, mut progress: impl FnMut(u64, u64)) -> Result<()> {
        let inner = &self.inner;
        let v = inner.vol(id)?;
        let total = rlock(&v.map).meta.size_blocks.div_ceil(v.bpe);
        const BATCH: u64 = 4096;
        let mut x0 = 0;
        loop {
            let mut a = lock(&inner.admin);
            let st = rlock(&v.map);
            let Some((pv, pe)) = st.parent.clone() else {
                break;
            };
            let mut b = Batch::default();
            if x0 >= total {
                let mut m = st.meta.clone();
                m.parent = None;
                drop(st);
                b.vol(&v).push(Change::Meta(Box::new(m)));
                inner.commit(&mut a, b)?;
                wlock(&v.map).parent = None;
                break;
            }
            let end = (x0 + BATCH).min(total);
            let mut ch = Vec::new();
            let resolve = |x: u64, a: &mut Admin, e: Entry| -> Option<Entry> {
                let r = pv.resolve(x, pe);
                match r {
                    Some(p) => {
                        a.incref(p);
                        Some(Entry {
                            phys: p,
                            birth: e.birth,
                            kind: DATA,
                            excl: false,
                        })
                    }
                    None if e.birth == 0 => None,
                    None => Some(Entry {
                        phys: 0,
                        birth: e.birth,
                        kind: HOLE,
                        excl: false,
                    }),
                }
            };
            for x in x0..end {
                let e = st.live.get(x);
                if e.kind == ABSENT {
                    if let Some(n) = resolve(x, &mut a, e) {
                        ch.push(Change::Live(x, n));
                    }
                }
                let olds: Vec<Entry> = st
                    .old
                    .range((x, 0)..=(x, u64::MAX))
                    .filter(|(_, e)| e.kind == ABSENT)
                    .map(|(_, e)| *e)
                    .collect();
                for e in olds {
                    let n = resolve(x, &mut a, e).unwrap_or(Entry {
                        phys: 0,
                        birth: e.birth,
                        kind: HOLE,
                        excl: false,
                    });
                    ch.push(Change::OldPut(x, e.birth, n));
                }
                // Snapshots older than every version of x saw the parent through an
                // implicit never-written version: make it explicit at birth 0.
                let first = st
                    .old
                    .range((x, 0)..=(x, u64::MAX))
                    .next()
                    .map(|(k, _)| k.1)
                    .unwrap_or(e.birth);
                if e.is_set() && first > 0 && st.snap_epochs.range(..first).next().is_some() {
                    if let Some(n) = resolve(x, &mut a, Entry::default()) {
                        ch.push(Change::OldPut(x, 0, n));
                    }
                }
            }
            drop(st);
            *b.vol(&v) = ch;
            inner.commit(&mut a, b)?;
            drop(a);
            x0 = end;
            progress(x0, total);
        }
        Ok(())
    }

    /// Roll volume `vol` back to snapshot `snap` (the snapshot stays).
    pub fn restore(&self, vol: u64, snap: u64) -> Result<()> {
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        let v = inner.vol(vol)?;
        let _io = wlock(&v.io);
        inner.checkpoint(&mut a, false)?;
        let st = rlock(&v.map);
        let sm = *st
            .meta
            .snaps
            .get(&snap)
            .ok_or_else(|| nf("snapshot", snap))?;
        let mut xs: BTreeSet<u64> = st.live.iter().map(|(x, _)| x).collect();
        xs.extend(st.old.keys().map(|(x, _)| *x));
        let mut b = Batch::default();
        let mut ch = Vec::new();
        for x in xs {
            let cur = st.live.get(x);
            let t = view(&st.live, &st.old, x, sm.epoch);
            if cur.kind == t.kind
                && cur.phys == t.phys
                && (t.kind != ABSENT || cur.birth == t.birth)
            {
                continue;
            }
            if t.kind == DATA {
                a.incref(t.phys);
            }
            let n = Entry {
                phys: t.phys,
                birth: st.meta.epoch,
                kind: t.kind,
                excl: false,
            };
            replace_live(&st, &mut a, x, n, &mut ch, &mut b.freed);
        }
        drop(st);
        *b.vol(&v) = ch;
        v.full.clear();
        inner.commit(&mut a, b)
    }

    /// Grow a volume to `size` bytes (shrinking is refused).
    pub fn resize(&self, vol: u64, size: u64) -> Result<()> {
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        let v = inner.vol(vol)?;
        let mut m = rlock(&v.map).meta.clone();
        let bs = v.block_size as u64;
        if size % bs != 0 || size / bs < m.size_blocks {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("volume {vol}: cannot resize to {size} bytes (grow only, whole blocks)"),
            ));
        }
        let old_ext = (m.size_blocks * bs).div_ceil(inner.ext);
        m.size_blocks = size / bs;
        let mut b = Batch::default();
        b.vol(&v).push(Change::Meta(Box::new(m)));
        if v.thick {
            inner.thick_alloc(&mut a, &v, &mut b, old_ext, size.div_ceil(inner.ext))?;
        }
        inner.commit(&mut a, b)?;
        v.num_blocks.store(size / bs, Ordering::Release);
        Ok(())
    }

    /// Delete a volume and its snapshots (refused while clones depend on it).
    pub fn delete_volume(&self, id: u64) -> Result<()> {
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        let v = inner.vol(id)?;
        if rlock(&inner.vols)
            .values()
            .any(|w| rlock(&w.map).meta.parent.map(|p| p.0) == Some(id))
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("volume {id} has clones; flatten or delete them first"),
            ));
        }
        let _io = wlock(&v.io);
        inner.checkpoint(&mut a, false)?;
        let mut b = Batch::default();
        {
            let st = rlock(&v.map);
            let olds = st.old.values().copied();
            for e in st.live.iter().map(|(_, e)| e).chain(olds) {
                if e.kind == DATA && a.decref(e.phys) {
                    b.freed.push(e.phys);
                }
            }
        }
        b.del_vols.push(id);
        v.deleted.store(true, Ordering::Release);
        wlock(&inner.vols).remove(&id);
        inner.commit(&mut a, b)
    }

    /// Set a volume's snapshot reserve (percent of its size: 0, or at least 10) and what
    /// happens when snapshots outgrow it. Also brings an offline volume back online.
    pub fn set_snapshot_reserve(&self, vol: u64, pct: u32, policy: ReservePolicy) -> Result<()> {
        if pct != 0 && pct < 10 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("snapshot reserve {pct}% is below the 10% minimum"),
            ));
        }
        let inner = &self.inner;
        let mut a = lock(&inner.admin);
        let v = inner.vol(vol)?;
        let mut m = rlock(&v.map).meta.clone();
        m.reserve_pct = pct;
        m.policy = policy;
        m.offline = false;
        let mut b = Batch::default();
        b.vol(&v).push(Change::Meta(Box::new(m)));
        inner.commit(&mut a, b)?;
        v.offline.store(false, Ordering::Release);
        Ok(())
    }

    /// Apply the journal to the extents and index now (also done in the background).
    pub fn checkpoint(&self) -> Result<()> {
        let mut a = lock(&self.inner.admin);
        self.inner.checkpoint(&mut a, true)
    }

    /// Make every acknowledged write of every volume durable.
    pub fn flush(&self) -> Result<()> {
        Ok(self.inner.sync_journal()?)
    }

    /// Space of the store.
    pub fn space(&self) -> StoreSpace {
        let inner = &self.inner;
        let (used, pending, cap) = {
            let j = lock(&inner.journal);
            (j.acct.used, j.acct.pending, j.acct.cap_slots)
        };
        let mut s = StoreSpace {
            capacity: cap.saturating_mul(inner.ext),
            provisioned: 0,
            in_use: used * inner.ext,
            pending: pending * inner.ext,
            free: cap.saturating_sub(used + pending).saturating_mul(inner.ext),
            snapshot_reserve: 0,
            snapshot_in_use: 0,
            warn: false,
        };
        for v in rlock(&inner.vols).values() {
            let vs = v.space();
            s.provisioned += vs.provisioned;
            s.snapshot_reserve += vs.snapshot_reserve;
            s.snapshot_in_use += vs.snapshot_in_use;
        }
        s.warn = cap != u64::MAX && used * 10 >= cap * 9;
        s
    }

    /// Space of one volume.
    pub fn volume_space(&self, id: u64) -> Result<VolumeSpace> {
        Ok(self.inner.vol(id)?.space())
    }

    /// Verify every mapped block of a volume's live view; report the bad ones.
    pub fn scrub(&self, id: u64) -> Result<ScrubReport> {
        self.scrub_with(id, |_| None)
    }

    /// Like [`Store::scrub`], rewriting each bad block with what `repair(lba)` returns
    /// (e.g. the block read from a replica).
    pub fn scrub_with(
        &self,
        id: u64,
        mut repair: impl FnMut(u64) -> Option<Vec<u8>>,
    ) -> Result<ScrubReport> {
        let inner = &self.inner;
        let v = inner.vol(id)?;
        {
            let mut a = lock(&inner.admin);
            inner.checkpoint(&mut a, false)?;
        }
        let mut rep = ScrubReport::default();
        let bs = v.block_size as usize;
        {
            let st = rlock(&v.map);
            let n = st.meta.size_blocks;
            let mut hb = vec![0u8; HEADER as usize];
            let mut db = vec![0u8; inner.ext as usize];
            for x in 0..n.div_ceil(v.bpe) {
                let Some(p) = v.resolve_in(&st, x, u64::MAX) else {
                    continue;
                };
                let off = (p - 1) * inner.slot;
                inner.data.read_at(&mut hb, off)?;
                inner.data.read_at(&mut db, off + HEADER)?;
                for i in 0..v.bpe as usize {
                    let lba = x * v.bpe + i as u64;
                    let (crc, fl) = hdr(&hb, i);
                    if fl & MAPPED == 0 || lba >= n {
                        continue;
                    }
                    rep.blocks_checked += 1;
                    if crc32c::crc32c(&db[i * bs..(i + 1) * bs]) != crc {
                        rep.bad.push(lba);
                    }
                }
            }
        }
        for &lba in &rep.bad {
            if let Some(d) = repair(lba) {
                if d.len() == bs && v.write(lba, &d, true).is_ok() {
                    rep.repaired += 1;
                }
            }
        }
        Ok(rep)
    }

    /// Reads that failed their checksum since open.
    pub fn medium_errors(&self) -> u64 {
        self.inner.medium_errors.load(Ordering::Relaxed)
    }

    /// Checkpoints run since open.
    pub fn checkpoints(&self) -> u64 {
        self.inner.ckpt_count.load(Ordering::Relaxed)
    }

    /// Bytes the data file occupies on disk (`st_blocks`).
    pub fn data_allocated(&self) -> Result<u64> {
        Ok(self.inner.data.allocated()?)
    }

    /// The extent size of this store.
    pub fn extent_size(&self) -> u64 {
        self.inner.ext
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        *lock(&self.inner.stop) = true;
        self.inner.kick.notify_all();
        if let Some(h) = self.bg.take() {
            let _ = h.join();
        }
        // Break the volume → store reference cycle.
        wlock(&self.inner.vols).clear();
    }
}

fn clear_slot(data: &dyn DiskFile, slot: u64, p: u64) -> std::io::Result<()> {
    let off = (p - 1) * slot;
    if off >= data.len()? {
        return Ok(());
    }
    if data.punch_hole(off, slot).is_err() {
        data.write_at(&vec![0u8; HEADER as usize], off)?;
    }
    Ok(())
}

/// Replace the live version of extent `x`, keeping the old one if a snapshot needs it.
fn replace_live(
    st: &VolState,
    a: &mut Admin,
    x: u64,
    mut new: Entry,
    ch: &mut Vec<Change>,
    freed: &mut Vec<u64>,
) {
    let old = st.live.get(x);
    let mut kept = false;
    if old.is_set() {
        if st.needed_by_snapshot(old.birth) {
            ch.push(Change::OldPut(x, old.birth, Entry { excl: false, ..old }));
            kept = true;
        } else if old.kind == DATA && a.decref(old.phys) {
            freed.push(old.phys);
        }
    }
    // A hole with nothing behind it (no parent, no older versions) is just "never set".
    if new.kind != DATA
        && !kept
        && st.parent.is_none()
        && st.old.range((x, 0)..=(x, u64::MAX)).next().is_none()
    {
        new = Entry::default();
    }
    ch.push(Change::Live(x, new));
}

/// An extent's journaled blocks in block order, cut into runs that are consecutive both
/// in the extent and in one journal file, so the checkpoint moves each run with one read
/// and one write instead of two system calls per block.
fn journal_runs(blocks: &[(u32, OvBlock)], bs: usize) -> Vec<Vec<&(u32, OvBlock)>> {
    let mut sorted: Vec<&(u32, OvBlock)> = blocks.iter().collect();
    sorted.sort_unstable_by_key(|b| b.0);
    let mut runs: Vec<Vec<&(u32, OvBlock)>> = Vec::new();
    for b in sorted {
        if let Some(run) = runs.last_mut() {
            let last = run[run.len() - 1];
            if b.0 == last.0 + 1
                && Arc::ptr_eq(&b.1.jf, &last.1.jf)
                && b.1.off == last.1.off + bs as u64
            {
                run.push(b);
                continue;
            }
        }
        runs.push(vec![b]);
    }
    runs
}

impl Inner {
    fn vol(&self, id: u64) -> Result<Arc<Volume>> {
        rlock(&self.vols)
            .get(&id)
            .cloned()
            .ok_or_else(|| nf("volume", id))
    }

    fn background(self: Arc<Self>, period: Duration) {
        let mut stop = lock(&self.stop);
        loop {
            let (g, _) = self
                .kick
                .wait_timeout(stop, period)
                .unwrap_or_else(|e| e.into_inner());
            stop = g;
            if *stop {
                return;
            }
            drop(stop);
            {
                let mut a = lock(&self.admin);
                if let Err(e) = self.checkpoint(&mut a, true) {
                    tracing::error!(error = %e, "background checkpoint failed");
                }
            }
            stop = lock(&self.stop);
        }
    }

    /// Journal backpressure: past [`JOURNAL_HARD`] × the limit a writer waits until the
    /// checkpointer starts a new journal, so a checkpoint that falls behind bounds the
    /// backlog (and with it how long the next one freezes the overlay and holds the
    /// volumes' maps) instead of letting the journal grow without end. Without a
    /// background checkpointer nobody would rotate: no waiting then.
    ///
    /// Called with no lock held. The wait is bounded all the same: progress never depends
    /// on it, it only slows writers down.
    fn backpressure(&self) {
        let hard = self.opts.journal_limit.saturating_mul(JOURNAL_HARD);
        if self.opts.checkpoint_interval.is_none()
            || self.journal_bytes.load(Ordering::Relaxed) <= hard
        {
            return;
        }
        let until = std::time::Instant::now() + Duration::from_secs(2);
        let mut j = lock(&self.journal);
        while j.off > hard {
            let now = std::time::Instant::now();
            if now >= until {
                break;
            }
            self.kick.notify_one();
            j = self
                .rotated
                .wait_timeout(j, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// True when the journal is half way to where writers wait (see
    /// [`Inner::backpressure`]): the checkpointer is behind.
    fn congested(&self) -> bool {
        let half = self.opts.journal_limit.saturating_mul(JOURNAL_HARD / 2);
        self.journal_bytes.load(Ordering::Relaxed) > half
    }

    fn sync_journal(&self) -> std::io::Result<()> {
        let files: Vec<Arc<JFile>> = {
            let j = lock(&self.journal);
            j.older.iter().cloned().chain([j.file.clone()]).collect()
        };
        let _g = lock(&self.sync_mu);
        for f in files {
            f.sync_all()?;
        }
        Ok(())
    }

    /// Allocate (zeroed) slots for the extents `from..to` of a thick volume.
    fn thick_alloc(
        &self,
        a: &mut Admin,
        v: &Arc<Volume>,
        b: &mut Batch,
        from: u64,
        to: u64,
    ) -> Result<()> {
        let need = to.saturating_sub(from);
        {
            let j = lock(&self.journal);
            if j.acct.used + j.acct.pending + need > j.acct.cap_slots {
                return Err(Error::new(
                    ErrorKind::NoSpace,
                    format!("thick volume {} needs {need} extents", v.id),
                ));
            }
        }
        let ch = b.vol(v);
        for x in from..to {
            let p = a.alloc();
            self.data
                .write_at(&vec![0u8; HEADER as usize], (p - 1) * self.slot)?;
            ch.push(Change::Live(
                x,
                Entry {
                    phys: p,
                    birth: 1,
                    kind: DATA,
                    excl: true,
                },
            ));
        }
        Ok(())
    }

    /// Commit a batch durably to the index, then publish it to memory and free slots.
    fn commit(&self, a: &mut Admin, b: Batch) -> Result<()> {
        if !b.changes.is_empty() || !b.new_vols.is_empty() {
            // Slots written for this batch must be durable before the index points at them.
            self.data.sync()?;
        }
        let mut tx = self.db.begin_write()?;
        tx.set_two_phase_commit(true);
        {
            let mut vt = tx.open_table(VOLS)?;
            let mut lt = tx.open_table(LIVE)?;
            let mut ot = tx.open_table(OLD)?;
            for (id, m) in &b.new_vols {
                vt.insert(*id, serde_json::to_string(m).expect("json").as_str())?;
            }
            for (v, ch) in &b.changes {
                for c in ch {
                    match c {
                        Change::Live(x, e) if e.is_set() => {
                            lt.insert((v.id, *x), (e.phys, e.birth, e.kind))?;
                        }
                        Change::Live(x, _) => {
                            lt.remove((v.id, *x))?;
                        }
                        Change::OldPut(x, bi, e) => {
                            ot.insert((v.id, *x, *bi), (e.phys, e.kind))?;
                        }
                        Change::OldDel(x, bi) => {
                            ot.remove((v.id, *x, *bi))?;
                        }
                        Change::Meta(m) => {
                            vt.insert(v.id, serde_json::to_string(m).expect("json").as_str())?;
                        }
                    }
                }
            }
            for id in &b.del_vols {
                vt.remove(*id)?;
                lt.retain_in((*id, 0)..=(*id, u64::MAX), |_, _| false)?;
                ot.retain_in((*id, 0, 0)..=(*id, u64::MAX, u64::MAX), |_, _| false)?;
            }
            if let Some(g) = b.journal_from {
                tx.open_table(META)?.insert("journal_from", g)?;
            }
        }
        tx.commit()?;
        // Publish.
        for (v, ch) in b.changes {
            let mut st = wlock(&v.map);
            for c in ch {
                match c {
                    Change::Live(x, e) => {
                        let o = st.live.get(x);
                        st.data_extents -= (o.kind == DATA) as u64;
                        st.data_extents += (e.kind == DATA) as u64;
                        st.live.set(x, e);
                    }
                    Change::OldPut(x, bi, e) => {
                        if let Some(o) = st.old.insert((x, bi), e) {
                            st.snap_extents -= (o.kind == DATA) as u64;
                        }
                        st.snap_extents += (e.kind == DATA) as u64;
                    }
                    Change::OldDel(x, bi) => {
                        if let Some(o) = st.old.remove(&(x, bi)) {
                            st.snap_extents -= (o.kind == DATA) as u64;
                        }
                    }
                    Change::Meta(m) => {
                        st.snap_epochs = m.snaps.values().map(|s| s.epoch).collect();
                        v.offline.store(m.offline, Ordering::Release);
                        st.meta = *m;
                    }
                }
            }
        }
        // Freed slots: nobody can reach them any more through the map, but a large read
        // may still be sending from them (`mapped`): clear and reuse them once it is done.
        self.pins.retire(b.freed);
        for p in self.pins.reusable() {
            clear_slot(&*self.data, self.slot, p)?;
            a.free.insert(p);
        }
        lock(&self.journal).acct.used = a.used();
        Ok(())
    }

    fn delete_snapshot(&self, a: &mut Admin, vol: u64, snap: u64) -> Result<()> {
        let v = self.vol(vol)?;
        let st = rlock(&v.map);
        let sm = *st
            .meta
            .snaps
            .get(&snap)
            .ok_or_else(|| nf("snapshot", snap))?;
        if rlock(&self.vols)
            .values()
            .any(|w| rlock(&w.map).meta.parent == Some((vol, sm.epoch)))
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("snapshot {snap} of volume {vol} has clones; flatten them first"),
            ));
        }
        let mut others = st.snap_epochs.clone();
        others.remove(&sm.epoch);
        let mut b = Batch::default();
        let mut ch = Vec::new();
        let keys: Vec<(u64, u64)> = st.old.range(..).map(|(k, _)| *k).collect();
        for (i, &(x, birth)) in keys.iter().enumerate() {
            if birth > sm.epoch {
                continue;
            }
            let next = match keys.get(i + 1) {
                Some(&(x2, b2)) if x2 == x => b2,
                _ => st.live.get(x).birth,
            };
            if sm.epoch >= next || others.range(birth..next).next().is_some() {
                continue;
            }
            let e = st.old[&(x, birth)];
            if e.kind == DATA && a.decref(e.phys) {
                b.freed.push(e.phys);
            }
            ch.push(Change::OldDel(x, birth));
        }
        let mut m = st.meta.clone();
        m.snaps.remove(&snap);
        drop(st);
        ch.push(Change::Meta(Box::new(m)));
        *b.vol(&v) = ch;
        self.commit(a, b)
    }

    /// Apply the journal to the extents, commit the index, retire the journal files.
    fn checkpoint(&self, a: &mut Admin, enforce: bool) -> Result<()> {
        let vols: Vec<Arc<Volume>> = {
            let mut v: Vec<_> = rlock(&self.vols).values().cloned().collect();
            v.sort_by_key(|v| v.id);
            v
        };
        let next_gen = lock(&self.journal).file.gen + 1;
        let nf = self
            .disk
            .open(&journal::name(next_gen), true)?
            .expect("created");
        nf.set_len(0)?;
        // Freeze: with every shard locked no write is between journal and overlay.
        let mut work: Work = Vec::new();
        let retired: Vec<Arc<JFile>>;
        {
            let mut guards = Vec::new();
            for v in &vols {
                for s in &v.shards {
                    guards.push(lock(s));
                }
            }
            let mut j = lock(&self.journal);
            let empty = guards.iter().all(|g| g.is_empty());
            if empty && j.seq == 0 && j.older.is_empty() {
                drop(j);
                drop(guards);
                self.disk.remove(&journal::name(next_gen))?;
                self.enforce_reserves(a, enforce)?;
                return Ok(());
            }
            let old = std::mem::replace(&mut j.file, JFile::new(next_gen, nf, 0));
            j.off = 0;
            self.journal_bytes.store(0, Ordering::Relaxed);
            j.seq = 0;
            j.older.push(old);
            retired = j.older.clone();
            drop(j);
            self.rotated.notify_all();
            let mut gi = guards.iter();
            for v in &vols {
                let mut exts = Vec::new();
                for _ in 0..SHARDS {
                    let g = gi.next().unwrap();
                    for (x, ov) in g.iter() {
                        exts.push((
                            *x,
                            ov.reserved,
                            ov.blocks.iter().map(|(b, o)| (*b, o.clone())).collect(),
                        ));
                    }
                }
                if !exts.is_empty() {
                    exts.sort_by_key(|e| e.0);
                    work.push((v.clone(), exts));
                }
            }
        }
        // Write-ahead rule: the journal is durable before any slot is overwritten.
        {
            let _g = lock(&self.sync_mu);
            for f in &retired {
                f.sync_all()?;
            }
        }
        // Apply.
        let mut b = Batch {
            journal_from: Some(next_gen),
            ..Batch::default()
        };
        for (v, exts) in &work {
            let st = rlock(&v.map);
            let mut ch = Vec::new();
            for (x, reserved, blocks) in exts {
                // A reservation is consumed by the allocation or returned below.
                let _ = reserved;
                self.apply_extent(a, v, &st, *x, blocks, &mut ch, &mut b.freed)?;
            }
            drop(st);
            if !ch.is_empty() {
                b.vol(v).extend(ch);
            }
        }
        self.data.sync()?;
        let reserved_total: u64 = work
            .iter()
            .flat_map(|(_, e)| e.iter())
            .filter(|e| e.1)
            .count() as u64;
        self.commit(a, b)?;
        // Drop the applied overlay entries (newer writes to the same blocks stay).
        for (v, exts) in &work {
            let _st = wlock(&v.map);
            for (x, _, _) in exts {
                let mut sh = lock(&v.shards[*x as usize % SHARDS]);
                if let Some(ov) = sh.get_mut(x) {
                    ov.reserved = false;
                    ov.blocks.retain(|_, o| o.jf.gen >= next_gen);
                    if ov.blocks.is_empty() {
                        sh.remove(x);
                    }
                }
            }
        }
        {
            let mut j = lock(&self.journal);
            j.acct.pending -= reserved_total.min(j.acct.pending);
            j.acct.used = a.used();
            j.older.retain(|f| f.gen >= next_gen);
        }
        for f in retired {
            self.disk.remove(&journal::name(f.gen))?;
        }
        self.ckpt_count.fetch_add(1, Ordering::Relaxed);
        self.enforce_reserves(a, enforce)
    }

    /// Write one extent's journaled blocks into its slot (in place when the live version
    /// is this epoch's and exclusive, else into a new slot). Returns whether it allocated.
    #[allow(clippy::too_many_arguments)]
    fn apply_extent(
        &self,
        a: &mut Admin,
        v: &Arc<Volume>,
        st: &VolState,
        x: u64,
        blocks: &[(u32, OvBlock)],
        ch: &mut Vec<Change>,
        freed: &mut Vec<u64>,
    ) -> Result<bool> {
        let bs = v.block_size as usize;
        let bpe = v.bpe as usize;
        let e = st.live.get(x);
        let runs = journal_runs(blocks, bs);
        // One read per run of blocks that follow each other in the extent and in the
        // journal (a journaled write), checked block by block.
        let read_run = |run: &[&(u32, OvBlock)], buf: &mut [u8]| -> Result<()> {
            let first = &run[0].1;
            first.jf.file.read_at(buf, first.off)?;
            let crcs = crate::crc::blocks_vec(buf, bs);
            for (o, got) in run.iter().map(|b| &b.1).zip(crcs) {
                if got != o.crc {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!("journal {} block at {} fails its checksum", o.jf.gen, o.off),
                    ));
                }
            }
            Ok(())
        };
        if !st.needs_alloc(x) {
            // In place: data blocks, then the header entries they change.
            let base = (e.phys - 1) * self.slot;
            let mut h = vec![0u8; HEADER as usize];
            self.data.read_at(&mut h[..bpe * 8], base)?;
            let mut buf = Vec::new();
            for run in &runs {
                buf.resize(run.len() * bs, 0);
                read_run(run, &mut buf)?;
                let bi = run[0].0 as u64;
                self.data.write_at(&buf, base + HEADER + bi * bs as u64)?;
                for (bi, o) in run.iter().map(|b| (b.0, &b.1)) {
                    set_hdr(&mut h, bi as usize, o.crc, MAPPED);
                }
            }
            let lo = blocks.iter().map(|b| b.0).min().unwrap_or(0) as usize;
            let hi = blocks.iter().map(|b| b.0).max().unwrap_or(0) as usize + 1;
            self.data
                .write_at(&h[lo * 8..hi * 8], base + lo as u64 * 8)?;
            return Ok(false);
        }
        // Copy-on-write (or first write): build the new extent in memory.
        let mut img = vec![0u8; (HEADER + self.ext) as usize];
        if let Some(src) = v.resolve_in(st, x, u64::MAX) {
            self.data.read_at(&mut img, (src - 1) * self.slot)?;
        }
        for run in &runs {
            let at = HEADER as usize + run[0].0 as usize * bs;
            read_run(run, &mut img[at..at + run.len() * bs])?;
            for (bi, o) in run.iter().map(|b| (b.0, &b.1)) {
                set_hdr(&mut img, bi as usize, o.crc, MAPPED);
            }
        }
        let p = a.alloc();
        let base = (p - 1) * self.slot;
        self.data.write_at(&img[..HEADER as usize], base)?;
        // Only mapped blocks are written: unmapped ones stay holes.
        let mut i = 0;
        while i < bpe {
            if hdr(&img, i).1 & MAPPED == 0 {
                i += 1;
                continue;
            }
            let s = i;
            while i < bpe && hdr(&img, i).1 & MAPPED != 0 {
                i += 1;
            }
            let (from, to) = (HEADER as usize + s * bs, HEADER as usize + i * bs);
            self.data.write_at(&img[from..to], base + from as u64)?;
        }
        let n = Entry {
            phys: p,
            birth: st.meta.epoch,
            kind: DATA,
            excl: true,
        };
        replace_live(st, a, x, n, ch, freed);
        Ok(true)
    }

    /// Apply snapshot-reserve policies to volumes whose snapshots outgrew their reserve.
    fn enforce_reserves(&self, a: &mut Admin, enforce: bool) -> Result<()> {
        if !enforce {
            return Ok(());
        }
        let vols: Vec<Arc<Volume>> = rlock(&self.vols).values().cloned().collect();
        for v in vols {
            loop {
                let (over, policy, oldest, meta) = {
                    let st = rlock(&v.map);
                    let reserve =
                        st.meta.size_blocks * v.block_size as u64 * st.meta.reserve_pct as u64
                            / 100;
                    let over = st.snap_extents * self.ext > reserve;
                    let oldest = st
                        .meta
                        .snaps
                        .iter()
                        .min_by_key(|(_, s)| s.epoch)
                        .map(|(k, _)| *k);
                    (over, st.meta.policy, oldest, st.meta.clone())
                };
                if !over {
                    break;
                }
                match (policy, oldest) {
                    (ReservePolicy::DeleteOldest, Some(s)) => {
                        tracing::warn!(
                            volume = v.id,
                            snapshot = s,
                            "snapshot reserve exhausted: deleting oldest snapshot"
                        );
                        if self.delete_snapshot(a, v.id, s).is_err() {
                            break;
                        }
                    }
                    _ => {
                        if !meta.offline {
                            tracing::warn!(
                                volume = v.id,
                                "snapshot reserve exhausted: volume offline"
                            );
                            let mut m = meta;
                            m.offline = true;
                            let mut b = Batch::default();
                            b.vol(&v).push(Change::Meta(Box::new(m)));
                            self.commit(a, b)?;
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Volume {
    fn new(inner: &Arc<Inner>, id: u64, st: VolState) -> Arc<Volume> {
        let bs = st.meta.block_size;
        Arc::new(Volume {
            id,
            inner: inner.clone(),
            block_size: bs,
            bpe: inner.ext / bs as u64,
            num_blocks: AtomicU64::new(st.meta.size_blocks),
            thick: st.meta.thick,
            io: RwLock::new(()),
            offline: AtomicBool::new(st.meta.offline),
            map: RwLock::new(st),
            shards: (0..SHARDS).map(|_| Mutex::new(IntMap::default())).collect(),
            wce: AtomicBool::new(true),
            deleted: AtomicBool::new(false),
            full: FullExtents::default(),
        })
    }

    /// The volume's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The slot holding extent `x` as seen at epoch `at`, following clone parents.
    fn resolve(&self, x: u64, at: u64) -> Option<u64> {
        let st = rlock(&self.map);
        self.resolve_in(&st, x, at)
    }

    fn resolve_in(&self, st: &VolState, x: u64, at: u64) -> Option<u64> {
        let e = view(&st.live, &st.old, x, at);
        match e.kind {
            DATA => Some(e.phys),
            HOLE => None,
            _ => st.parent.as_ref().and_then(|(p, pe)| p.resolve(x, *pe)),
        }
    }

    fn space(&self) -> VolumeSpace {
        let st = rlock(&self.map);
        let ext = self.inner.ext;
        let size = st.meta.size_blocks * self.block_size as u64;
        let reserve = size * st.meta.reserve_pct as u64 / 100;
        let snap = st.snap_extents * ext;
        VolumeSpace {
            provisioned: size,
            in_use: st.data_extents * ext,
            snapshot_reserve: reserve,
            snapshot_in_use: snap,
            snapshots: st.meta.snaps.len(),
            reserve_warn: reserve > 0 && snap * 10 >= reserve * 6 || reserve == 0 && snap > 0,
            offline: st.meta.offline,
        }
    }

    fn check(&self, lba: u64, blocks: u64, limit: u64) -> DResult<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(DeviceError::Io(std::io::Error::other("volume deleted")));
        }
        match lba.checked_add(blocks) {
            Some(e) if e <= limit => Ok(()),
            _ => Err(DeviceError::OutOfRange { lba, blocks }),
        }
    }

    fn nblocks(&self, len: usize) -> DResult<u64> {
        if len % self.block_size as usize != 0 {
            return Err(DeviceError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "buffer is not a whole number of blocks",
            )));
        }
        Ok((len / self.block_size as usize) as u64)
    }

    fn online(&self) -> DResult<()> {
        if self.offline.load(Ordering::Acquire) {
            return Err(DeviceError::Io(std::io::Error::other(
                "volume offline: snapshot reserve exhausted",
            )));
        }
        Ok(())
    }

    /// A large read of the live volume as pieces of the mapped data file (see `mapped`):
    /// every block checked against its checksum through the mapping, nothing copied. `None` when
    /// the read is small or not served this way: no mapping, a hole, an unmapped block,
    /// or a block still in the journal (the next checkpoint moves it).
    fn read_mapped_live(&self, lba: u64, n: u64) -> Option<DResult<MappedRead>> {
        let inner = &self.inner;
        let bs = self.block_size as usize;
        if n.saturating_mul(bs as u64) < MAPPED_READ_MIN {
            return None;
        }
        let mapping = inner.mapping.clone()?;
        // Taken before any slot is looked up: a slot retired before this could not be
        // reached any more, one retired after waits for the pin.
        let pin = inner.pins.pin();
        let _io = rlock(&self.io);
        if let Err(e) = self
            .check(lba, n, self.num_blocks())
            .and_then(|()| self.online())
        {
            return Some(Err(e));
        }
        let st = rlock(&self.map);
        let mut runs = Vec::with_capacity((n / self.bpe + 2) as usize);
        let mut b = lba;
        while b < lba + n {
            let x = b / self.bpe;
            let first = (b % self.bpe) as usize;
            let cnt = ((lba + n - b) as usize).min(self.bpe as usize - first);
            {
                let sh = lock(&self.shards[x as usize % SHARDS]);
                let journaled = sh.get(&x).is_some_and(|ov| {
                    ov.blocks
                        .keys()
                        .any(|&k| (first..first + cnt).contains(&(k as usize)))
                });
                if journaled {
                    return None;
                }
            }
            let base = (self.resolve_in(&st, x, u64::MAX)? - 1) * inner.slot;
            let head = match mapping.bytes(base + first as u64 * 8, cnt * 8) {
                Ok(h) => h,
                Err(Unmapped::NotHere) => return None,
                Err(Unmapped::Unreadable) => return Some(Err(self.medium(b))),
            };
            if (0..cnt).any(|i| hdr(head, i).1 & MAPPED == 0) {
                return None;
            }
            let off = base + HEADER + (first * bs) as u64;
            let data = match mapping.bytes(off, cnt * bs) {
                Ok(d) => d,
                Err(Unmapped::NotHere) => return None,
                Err(Unmapped::Unreadable) => return Some(Err(self.medium(b))),
            };
            runs.push(MappedRun {
                lba: b,
                off,
                data,
                head,
            });
            b += cnt as u64;
        }
        if let Some(bad) = first_bad_block(&runs, bs) {
            return Some(Err(self.medium(bad)));
        }
        let keep = Arc::new(MappedKeep {
            mapping: mapping.clone(),
            _pin: pin,
        });
        let pieces = runs
            .iter()
            .map(|r| {
                bytes::Bytes::from_owner(MappedPiece {
                    keep: keep.clone(),
                    off: r.off,
                    len: r.data.len(),
                })
            })
            .collect();
        Some(Ok(MappedRead { pieces }))
    }

    /// Count and report a block that failed its checksum (or could not be read).
    fn medium(&self, lba: u64) -> DeviceError {
        self.inner.medium_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(volume = self.id, lba, "checksum mismatch");
        DeviceError::Medium { lba }
    }

    /// Read blocks as seen at epoch `at` (u64::MAX with the overlay: the live volume).
    fn read_at_epoch(&self, st: &VolState, lba: u64, buf: &mut [u8], at: u64) -> DResult<()> {
        let bs = self.block_size as usize;
        let inner = &self.inner;
        let n = (buf.len() / bs) as u64;
        let mut b = lba;
        // The slot header's crc and flags of the blocks read, and their computed crcs:
        // on the stack for reads of up to 64 blocks per extent, and only as large as
        // needed (zeroing a whole 4 KiB header per read was 40% of a 4 KiB read's
        // instructions). Journal hits are only collected when the extent has any.
        let most = (n as usize).min(self.bpe as usize);
        let mut hb_stack = [0u8; SMALL_READ * 8];
        let mut crc_stack = [0u32; SMALL_READ];
        let (mut hb_heap, mut crc_heap) = (Vec::new(), Vec::new());
        let (hb, crcs): (&mut [u8], &mut [u32]) = if most <= SMALL_READ {
            (&mut hb_stack, &mut crc_stack)
        } else {
            hb_heap.resize(most * 8, 0);
            crc_heap.resize(most, 0);
            (&mut hb_heap, &mut crc_heap)
        };
        let mut hits: Vec<Option<OvBlock>> = Vec::new();
        while b < lba + n {
            let x = b / self.bpe;
            let first = (b % self.bpe) as usize;
            let cnt = ((lba + n - b) as usize).min(self.bpe as usize - first);
            let out = &mut buf[((b - lba) as usize) * bs..((b - lba) as usize + cnt) * bs];
            hits.clear();
            if at == u64::MAX {
                let sh = lock(&self.shards[x as usize % SHARDS]);
                if let Some(ov) = sh.get(&x) {
                    hits.extend((0..cnt).map(|i| ov.blocks.get(&((first + i) as u32)).cloned()));
                }
            }
            let src = if hits.len() == cnt && hits.iter().all(|h| h.is_some()) {
                None
            } else {
                self.resolve_in(st, x, at)
            };
            match src {
                Some(p) => {
                    let base = (p - 1) * inner.slot;
                    inner
                        .data
                        .read_at(&mut hb[..cnt * 8], base + first as u64 * 8)?;
                    inner
                        .data
                        .read_at(out, base + HEADER + (first * bs) as u64)?;
                }
                None => out.fill(0),
            }
            // Journaled blocks over the extent's: one read per run that one write put
            // in the journal side by side.
            let mut i = 0;
            while i < hits.len() {
                let Some(o) = &hits[i] else {
                    i += 1;
                    continue;
                };
                let mut j = i + 1;
                while let Some(Some(n)) = hits.get(j) {
                    if !Arc::ptr_eq(&n.jf, &o.jf) || n.off != o.off + ((j - i) * bs) as u64 {
                        break;
                    }
                    j += 1;
                }
                o.jf.file.read_at(&mut out[i * bs..j * bs], o.off)?;
                i = j;
            }
            if src.is_none() && hits.is_empty() {
                // A hole: zeroes, nothing to check.
                b += cnt as u64;
                continue;
            }
            crate::crc::blocks(out, bs, crcs);
            for (i, got) in crcs.iter().enumerate().take(cnt) {
                let crc = match hits.get(i).and_then(Option::as_ref) {
                    Some(o) => o.crc,
                    None if src.is_some() => {
                        let (crc, fl) = hdr(hb, i);
                        if fl & MAPPED == 0 {
                            out[i * bs..(i + 1) * bs].fill(0);
                            continue;
                        }
                        crc
                    }
                    None => continue,
                };
                if *got != crc {
                    return Err(self.medium(b + i as u64));
                }
            }
            b += cnt as u64;
        }
        Ok(())
    }

    /// Append a write to the journal and the overlay. Caller holds `io` (read or write).
    fn write_locked(&self, lba: u64, data: &[u8], durable: bool) -> DResult<()> {
        let inner = &self.inner;
        let bs = self.block_size as usize;
        let n = (data.len() / bs) as u64;
        if n == 0 {
            return Ok(());
        }
        // Checksummed before any lock is taken.
        let crcs = journal::block_crcs(data, bs);
        let st = rlock(&self.map);
        let (x0, x1) = (lba / self.bpe, (lba + n - 1) / self.bpe);
        let mut idx: Vec<usize> = (x0..=x1).map(|x| x as usize % SHARDS).collect();
        idx.sort_unstable();
        idx.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, IntMap<u64, ExtOv>>)> =
            idx.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
        let shard = |g: &mut Vec<(usize, MutexGuard<'_, IntMap<u64, ExtOv>>)>, x: u64| {
            let i = g
                .iter()
                .position(|(k, _)| *k == x as usize % SHARDS)
                .unwrap();
            i
        };
        let mut need = Vec::new();
        for x in x0..=x1 {
            let gi = shard(&mut guards, x);
            let reserved = guards[gi].1.get(&x).is_some_and(|o| o.reserved);
            if !reserved && st.needs_alloc(x) {
                need.push(x);
            }
        }
        let (jf, data_off, crcs, big) = {
            let mut j = lock(&inner.journal);
            let need_n = need.len() as u64;
            if need_n > 0 {
                if j.acct.used + j.acct.pending + need_n > j.acct.cap_slots {
                    return Err(DeviceError::NoSpace);
                }
                j.acct.pending += need_n;
            }
            let head = journal::encode_head(j.file.gen, j.seq, self.id, lba, &crcs);
            if let Err(e) = j.file.file.write2_at(&head, data, j.off) {
                j.acct.pending -= need_n;
                return Err(DeviceError::Io(e));
            }
            let data_off = j.off + head.len() as u64;
            j.off = data_off + data.len() as u64;
            inner.journal_bytes.store(j.off, Ordering::Relaxed);
            j.seq += 1;
            j.file.written.store(j.seq, Ordering::Release);
            (
                j.file.clone(),
                data_off,
                crcs,
                j.off > inner.opts.journal_limit,
            )
        };
        for (i, crc) in crcs.into_iter().enumerate() {
            let blk = lba + i as u64;
            let x = blk / self.bpe;
            let gi = shard(&mut guards, x);
            guards[gi].1.entry(x).or_default().blocks.insert(
                (blk % self.bpe) as u32,
                OvBlock {
                    jf: jf.clone(),
                    off: data_off + (i * bs) as u64,
                    crc,
                },
            );
        }
        for x in need {
            let gi = shard(&mut guards, x);
            guards[gi].1.entry(x).or_default().reserved = true;
        }
        drop(guards);
        drop(st);
        if durable {
            inner.sync_journal()?;
        }
        if big {
            inner.kick.notify_one();
        }
        Ok(())
    }

    fn status_at(&self, st: &VolState, lba: u64, at: u64, limit: u64) -> DResult<LbaStatus> {
        self.check(lba, 1, limit)?;
        if self.thick && at == u64::MAX {
            return Ok(LbaStatus {
                lba,
                blocks: limit - lba,
                mapped: true,
            });
        }
        let inner = &self.inner;
        let mut state: Option<bool> = None;
        let mut b = lba;
        let mut hb = vec![0u8; HEADER as usize];
        let mut extents = 0;
        let mut headers = 0;
        let mut known_full = 0;
        while b < limit && extents < 256 && headers < STATUS_EXTENTS {
            let x = b / self.bpe;
            let first = (b % self.bpe) as usize;
            let cnt = ((limit - b) as usize).min(self.bpe as usize - first);
            if at == u64::MAX && state != Some(false) && known_full < STATUS_KNOWN_FULL {
                let run = self.full.run_from(x, STATUS_KNOWN_FULL - known_full);
                if run > 0 {
                    state = Some(true);
                    b = ((x + run) * self.bpe).min(limit);
                    known_full += run;
                    continue;
                }
            }
            // Only an extent wholly inside the volume and seen from its first block can be
            // known full (a grown volume's last extent gains unmapped blocks).
            let whole = first == 0 && cnt as u64 == self.bpe;
            let mut m = vec![false; cnt];
            if let Some(p) = self.resolve_in(st, x, at) {
                headers += 1;
                inner
                    .data
                    .read_at(&mut hb[..cnt * 8], (p - 1) * inner.slot + first as u64 * 8)?;
                for (i, v) in m.iter_mut().enumerate() {
                    *v = hdr(&hb, i).1 & MAPPED != 0;
                }
            }
            if at == u64::MAX {
                let sh = lock(&self.shards[x as usize % SHARDS]);
                if let Some(ov) = sh.get(&x) {
                    for (i, v) in m.iter_mut().enumerate() {
                        *v |= ov.blocks.contains_key(&((first + i) as u32));
                    }
                }
            }
            if at == u64::MAX && whole && m.iter().all(|&v| v) {
                self.full.insert(x);
            }
            for v in m {
                match state {
                    None => state = Some(v),
                    Some(s) if s != v => {
                        return Ok(LbaStatus {
                            lba,
                            blocks: b - lba,
                            mapped: s,
                        })
                    }
                    _ => {}
                }
                b += 1;
            }
            extents += 1;
        }
        Ok(LbaStatus {
            lba,
            blocks: b - lba,
            mapped: state.unwrap_or(false),
        })
    }
}

impl BlockDevice for Volume {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }
    fn thin(&self) -> bool {
        !self.thick
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> DResult<()> {
        let n = self.nblocks(buf.len())?;
        let _io = rlock(&self.io);
        self.check(lba, n, self.num_blocks())?;
        self.online()?;
        let st = rlock(&self.map);
        self.read_at_epoch(&st, lba, buf, u64::MAX)
    }
    fn read_mapped(&self, lba: u64, blocks: u64) -> Option<DResult<MappedRead>> {
        self.read_mapped_live(lba, blocks)
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> DResult<()> {
        let n = self.nblocks(data.len())?;
        {
            let _io = rlock(&self.io);
            self.check(lba, n, self.num_blocks())?;
            self.online()?;
            self.write_locked(lba, data, fua || !self.wce.load(Ordering::Relaxed))?;
        }
        self.inner.backpressure();
        Ok(())
    }
    fn flush(&self) -> DResult<()> {
        Ok(self.inner.sync_journal()?)
    }
    /// Whole extents are released (index change, committed durably); the partial extents
    /// at either end get zeroes written (they stay mapped). Thick volumes write zeroes.
    fn unmap(&self, lba: u64, blocks: u64) -> DResult<()> {
        self.check(lba, blocks, self.num_blocks())?;
        self.online()?;
        if blocks == 0 {
            return Ok(());
        }
        let inner = &self.inner;
        let bs = self.block_size as u64;
        let end = lba + blocks;
        let (fx0, fx1) = if self.thick {
            (0, 0)
        } else {
            (lba.div_ceil(self.bpe), end / self.bpe)
        };
        let durable = !self.wce.load(Ordering::Relaxed);
        let mut a = lock(&inner.admin);
        let _io = wlock(&self.io);
        if fx0 < fx1 {
            inner.checkpoint(&mut a, false)?;
            let mut b = Batch::default();
            let mut ch = Vec::new();
            {
                let st = rlock(&self.map);
                for x in fx0..fx1 {
                    let e = st.live.get(x);
                    if !e.is_set() && st.parent.is_none() {
                        continue;
                    }
                    if e.kind == HOLE && e.birth == st.meta.epoch {
                        continue;
                    }
                    let hole = Entry {
                        phys: 0,
                        birth: st.meta.epoch,
                        kind: HOLE,
                        excl: false,
                    };
                    replace_live(&st, &mut a, x, hole, &mut ch, &mut b.freed);
                }
            }
            if !ch.is_empty() {
                b.changes.push((inner.vol(self.id)?, ch));
                inner.commit(&mut a, b)?;
            }
            self.full.remove_range(fx0, fx1);
        }
        drop(a);
        // Zero the partial extents that hold anything.
        let zero = vec![0u8; (self.bpe * bs) as usize];
        let mut ranges = Vec::new();
        if fx0 < fx1 {
            ranges.push((lba, fx0 * self.bpe));
            ranges.push((fx1 * self.bpe, end));
        } else {
            ranges.push((lba, end));
        }
        for (s, e) in ranges {
            let mut b = s;
            while b < e {
                let x = b / self.bpe;
                let to = e.min((x + 1) * self.bpe);
                let any = {
                    let st = rlock(&self.map);
                    let ov = lock(&self.shards[x as usize % SHARDS]).contains_key(&x);
                    ov || self.resolve_in(&st, x, u64::MAX).is_some()
                };
                if any {
                    self.write_locked(b, &zero[..((to - b) * bs) as usize], durable)?;
                }
                b = to;
            }
        }
        Ok(())
    }
    fn lba_status(&self, lba: u64) -> DResult<LbaStatus> {
        let _io = rlock(&self.io);
        let st = rlock(&self.map);
        self.status_at(&st, lba, u64::MAX, self.num_blocks())
    }
    fn congested(&self) -> bool {
        self.inner.congested()
    }
    fn write_cache_enabled(&self) -> bool {
        self.wce.load(Ordering::Relaxed)
    }
    fn set_write_cache(&self, enabled: bool) -> DResult<()> {
        if !enabled {
            self.inner.sync_journal()?;
        }
        self.wce.store(enabled, Ordering::Relaxed);
        Ok(())
    }
}

/// A snapshot, read-only.
struct SnapshotDevice {
    vol: Arc<Volume>,
    snap: u64,
    epoch: u64,
    blocks: u64,
}

impl SnapshotDevice {
    fn state(&self) -> DResult<RwLockReadGuard<'_, VolState>> {
        let st = rlock(&self.vol.map);
        if self.vol.deleted.load(Ordering::Acquire) || !st.meta.snaps.contains_key(&self.snap) {
            return Err(DeviceError::Io(std::io::Error::other("snapshot deleted")));
        }
        Ok(st)
    }
}

impl BlockDevice for SnapshotDevice {
    fn block_size(&self) -> u32 {
        self.vol.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.blocks
    }
    fn read_only(&self) -> bool {
        true
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> DResult<()> {
        let n = self.vol.nblocks(buf.len())?;
        self.vol.check(lba, n, self.blocks)?;
        let st = self.state()?;
        self.vol.read_at_epoch(&st, lba, buf, self.epoch)
    }
    fn write(&self, _lba: u64, _data: &[u8], _fua: bool) -> DResult<()> {
        Err(DeviceError::ReadOnly)
    }
    fn flush(&self) -> DResult<()> {
        Ok(())
    }
    fn unmap(&self, _lba: u64, _blocks: u64) -> DResult<()> {
        Err(DeviceError::ReadOnly)
    }
    fn lba_status(&self, lba: u64) -> DResult<LbaStatus> {
        let st = self.state()?;
        self.vol.status_at(&st, lba, self.epoch, self.blocks)
    }
}
