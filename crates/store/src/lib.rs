//! Member-local storage of volume data.
//!
//! Two implementations of [`scsi::BlockDevice`] live here:
//!
//! * [`FileDevice`]: one sparse file per volume (the original, still used by the member).
//! * [`Store`]: the durable volume store — thin and thick volumes, snapshots, clones,
//!   restore, per-block checksums, space accounting — on one data file of extents, a
//!   write-ahead journal and a [redb] index.
//!
//! # Store design
//!
//! **Files** (all through the [`Disk`] trait, so [`SimDisk`] can simulate power loss,
//! including the index: redb runs on the [`DiskFile`] via its `StorageBackend`):
//! `extents.dat` (slots of extents, see [`layout`]), `index.redb` (volumes, extent
//! versions, format version, journal position) and `journal.<gen>` (write-ahead journal,
//! see the journal module).
//!
//! **Write path**: a write appends one checksummed record to the current journal file and
//! records each block's journal location in the volume's in-memory *overlay* (64 shards
//! keyed by extent); reads look in the overlay first. No index transaction, no data-file
//! write. When the write would need a new extent at checkpoint time (first write, or
//! copy-on-write after a snapshot) an extent is *reserved* against the pool capacity
//! first, so [`DeviceError::NoSpace`] is returned before anything is acknowledged.
//! Locks: the volume's `io` and `map` (read), the extent's shard, and the journal mutex
//! for the append only.
//!
//! **Durability**: FLUSH (and FUA, and every write while the write cache is off) syncs the
//! journal files (one `fdatasync` shared by concurrent flushers). The journal record holds
//! the data and its address, so it is both the data and the index delta: after a crash the
//! journal since the last checkpoint is replayed.
//!
//! **Checkpoint** (background, when the journal passes a limit, and before management
//! operations): freeze the overlay and rotate the journal; sync the old journal (the
//! write-ahead rule, since slots may now be overwritten in place); write the blocks into
//! their extents — in place when the extent belongs to the current epoch only, otherwise
//! into a newly allocated slot (copy-on-write, or first allocation) with its header;
//! sync the data file; commit the index (redb, two-phase, durable) including the new
//! journal start; publish the new mapping; free and hole-punch slots nobody references;
//! delete the old journal. A crash at any point leaves the previous index (pointing at
//! slots that were not modified except by blocks the durable journal rewrites on replay),
//! or the new one (whose slots were synced before it was committed).
//!
//! **Snapshots** are epochs: each extent's versions carry the epoch they were born in; a
//! snapshot records the current epoch and starts a new one (constant time after the
//! checkpoint). A version is kept when a snapshot needs it, and freed when the last
//! snapshot that saw it is deleted. Clones read through to their parent snapshot until
//! written or flattened; slots are reference counted (counts are rebuilt from the index at
//! open, never stored).
//!
//! **Checksums**: each slot starts with a 4 KiB header holding, for every block, its
//! CRC32C and a mapped flag; reads verify it and return [`DeviceError::Medium`] on a
//! mismatch (counted, see [`Store::medium_errors`]). Journal records carry the same CRCs.

// The workspace's MSRV (1.80) predates `is_multiple_of`.
#![allow(clippy::manual_is_multiple_of)]

mod crc;
pub mod disk;
pub mod error;
pub mod file;
mod full_extents;
mod journal;
pub mod layout;
mod mapped;
mod store;

pub use disk::{DirDisk, Disk, DiskFile, SimDisk};
pub use error::{Error, ErrorKind, Result};
pub use file::FileDevice;
pub use store::{
    ReservePolicy, ScrubReport, Store, StoreOptions, StoreSpace, Volume, VolumeSpace,
    FORMAT_VERSION,
};
