//! The block-device trait the engine executes against, and an in-memory device.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Why a device operation failed; the engine maps each to sense data.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The request addresses blocks past the end of the device.
    #[error("lba {lba} + {blocks} blocks is past the end of the device")]
    OutOfRange { lba: u64, blocks: u64 },
    /// A block failed its checksum on read: report a medium error for this LBA.
    #[error("unrecovered read error at lba {lba}")]
    Medium { lba: u64 },
    /// No space is left to allocate for a thin write.
    #[error("no space left to allocate")]
    NoSpace,
    /// The device is read-only (a snapshot).
    #[error("device is read-only")]
    ReadOnly,
    /// Any other I/O failure.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One run of blocks with the same provisioning state, as GET LBA STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatus {
    pub lba: u64,
    pub blocks: u64,
    /// true: mapped (allocated); false: deallocated (reads return zeroes).
    pub mapped: bool,
}

/// A read's blocks where the device keeps them (the store's page cache, mapped), checked
/// against their checksums, for a transport to send without copying them first. Each
/// piece keeps its blocks from being reused for other data until it is dropped.
#[derive(Debug, Default)]
pub struct MappedRead {
    /// The blocks in LBA order, one piece per contiguous run.
    pub pieces: Vec<bytes::Bytes>,
}

impl MappedRead {
    /// Bytes in all pieces.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(bytes::Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A block device: the store's volumes, snapshots, or a test device.
///
/// Calls may block (they do file I/O); the caller runs them off the async reactor.
/// All addresses are in logical blocks of [`BlockDevice::block_size`] bytes.
pub trait BlockDevice: Send + Sync {
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Number of logical blocks.
    fn num_blocks(&self) -> u64;
    /// True when writes must be refused (snapshots).
    fn read_only(&self) -> bool {
        false
    }
    /// True when the device allocates on first write (thin) and supports unmap.
    fn thin(&self) -> bool {
        true
    }
    /// Read `buf.len() / block_size` blocks starting at `lba`. On success every byte of
    /// `buf` is overwritten (unwritten blocks read as zeroes): the engine may pass a
    /// recycled buffer that still holds an earlier read.
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Read `blocks` blocks at `lba` without copying them ([`MappedRead`]) when the device
    /// can and it is worth it (large reads of fully written extents). `None`: use
    /// [`BlockDevice::read`].
    fn read_mapped(&self, _lba: u64, _blocks: u64) -> Option<Result<MappedRead, DeviceError>> {
        None
    }
    /// Write whole blocks. With `fua` the data is durable before this returns.
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), DeviceError>;
    /// Make every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> Result<(), DeviceError>;
    /// Deallocate blocks; later reads return zeroes.
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), DeviceError>;
    /// The provisioning run that starts at `lba` (at most up to the device's end).
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, DeviceError>;
    /// True while a write may wait for the device to catch up (the store's journal
    /// backpressure): a caller that must not block should not issue writes inline then.
    fn congested(&self) -> bool {
        false
    }
    /// False when an operation may wait on the network (a volume served through other
    /// members): the caller must then run it on a blocking thread, never inline on an
    /// async task.
    fn inline_ok(&self) -> bool {
        true
    }
    /// COMPARE AND WRITE as one step where the blocks' writes are ordered: `Some(Ok(None))`
    /// written, `Some(Ok(Some(i)))` the blocks differ from `compare` first at byte `i` and
    /// nothing was written. `None`: the device has no such step, and the engine compares
    /// and writes under its own lock (enough when it is the blocks' only way in).
    fn compare_and_write(
        &self,
        _lba: u64,
        _compare: &[u8],
        _data: &[u8],
        _fua: bool,
    ) -> Option<Result<Option<u64>, DeviceError>> {
        None
    }
    /// Whether the volatile write cache is enabled (MODE SENSE caching page WCE bit).
    fn write_cache_enabled(&self) -> bool {
        true
    }
    /// Turn the volatile write cache on or off (MODE SELECT). With it off every write is
    /// durable before it is acknowledged.
    fn set_write_cache(&self, _enabled: bool) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// An in-memory thin device: only written blocks take memory. For tests and fuzzing.
///
/// Its capacity can be changed ([`MemDevice::set_num_blocks`]), it can be made read-only,
/// given a space limit (writes that would allocate past it fail with
/// [`DeviceError::NoSpace`]) and told to fail reads of given LBAs with a medium error.
pub struct MemDevice {
    block_size: u32,
    num_blocks: AtomicU64,
    read_only: AtomicBool,
    write_cache: AtomicBool,
    space_limit: Mutex<Option<u64>>,
    blocks: RwLock<BTreeMap<u64, Box<[u8]>>>,
    bad: Mutex<BTreeSet<u64>>,
    flushes: AtomicU64,
    fua_writes: AtomicU64,
}

impl MemDevice {
    /// A thin, writable, empty device.
    pub fn new(block_size: u32, num_blocks: u64) -> Self {
        MemDevice {
            block_size: block_size.max(1),
            num_blocks: AtomicU64::new(num_blocks),
            read_only: AtomicBool::new(false),
            write_cache: AtomicBool::new(true),
            space_limit: Mutex::new(None),
            blocks: RwLock::new(BTreeMap::new()),
            bad: Mutex::new(BTreeSet::new()),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
        }
    }

    /// Builder: read-only (snapshot-like).
    pub fn with_read_only(self, ro: bool) -> Self {
        self.set_read_only(ro);
        self
    }

    /// Make the device read-only or writable.
    pub fn set_read_only(&self, ro: bool) {
        self.read_only.store(ro, Ordering::SeqCst);
    }

    /// Change the capacity (online resize). Blocks past a shrunk end are dropped.
    pub fn set_num_blocks(&self, n: u64) {
        self.num_blocks.store(n, Ordering::SeqCst);
        let mut b = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let _ = b.split_off(&n);
    }

    /// Allow at most `limit` mapped blocks (None: unlimited).
    pub fn set_space_limit(&self, limit: Option<u64>) {
        *self.space_limit.lock().unwrap_or_else(|e| e.into_inner()) = limit;
    }

    /// Reads of `lba` fail with [`DeviceError::Medium`] until the block is written again.
    pub fn inject_medium_error(&self, lba: u64) {
        self.bad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lba);
    }

    /// Number of mapped (allocated) blocks.
    pub fn mapped_blocks(&self) -> u64 {
        self.blocks.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    /// Whether `lba` is mapped.
    pub fn is_mapped(&self, lba: u64) -> bool {
        self.blocks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&lba)
    }

    /// How many times [`BlockDevice::flush`] was called.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    /// How many writes asked for FUA.
    pub fn fua_write_count(&self) -> u64 {
        self.fua_writes.load(Ordering::SeqCst)
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), DeviceError> {
        let n = self.num_blocks();
        match lba.checked_add(blocks) {
            Some(end) if end <= n => Ok(()),
            _ => Err(DeviceError::OutOfRange { lba, blocks }),
        }
    }

    fn blocks_in(&self, len: usize) -> Result<u64, DeviceError> {
        let bs = self.block_size as usize;
        if len % bs != 0 {
            return Err(DeviceError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "buffer is not a whole number of blocks",
            )));
        }
        Ok((len / bs) as u64)
    }
}

impl BlockDevice for MemDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::SeqCst)
    }
    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::SeqCst)
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let n = self.blocks_in(buf.len())?;
        self.check_range(lba, n)?;
        {
            let bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&b) = bad.range(lba..lba + n).next() {
                return Err(DeviceError::Medium { lba: b });
            }
        }
        let bs = self.block_size as usize;
        let map = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        for (i, chunk) in buf.chunks_mut(bs).enumerate() {
            match map.get(&(lba + i as u64)) {
                Some(d) => chunk.copy_from_slice(d),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        if self.read_only() {
            return Err(DeviceError::ReadOnly);
        }
        let n = self.blocks_in(data.len())?;
        self.check_range(lba, n)?;
        let bs = self.block_size as usize;
        let mut map = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        if let Some(limit) = *self.space_limit.lock().unwrap_or_else(|e| e.into_inner()) {
            let new = (lba..lba + n).filter(|b| !map.contains_key(b)).count() as u64;
            if (map.len() as u64).saturating_add(new) > limit {
                return Err(DeviceError::NoSpace);
            }
        }
        for (i, chunk) in data.chunks(bs).enumerate() {
            map.insert(lba + i as u64, chunk.to_vec().into_boxed_slice());
        }
        drop(map);
        let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        let hit: Vec<u64> = bad.range(lba..lba + n).copied().collect();
        for b in hit {
            bad.remove(&b);
        }
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), DeviceError> {
        if self.read_only() {
            return Err(DeviceError::ReadOnly);
        }
        self.check_range(lba, blocks)?;
        let mut map = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<u64> = map.range(lba..lba + blocks).map(|(k, _)| *k).collect();
        for k in keys {
            map.remove(&k);
        }
        Ok(())
    }
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, DeviceError> {
        let n = self.num_blocks();
        if lba >= n {
            return Err(DeviceError::OutOfRange { lba, blocks: 1 });
        }
        let map = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&lba) {
            let mut end = lba;
            for (k, _) in map.range(lba..) {
                if *k != end {
                    break;
                }
                end += 1;
            }
            Ok(LbaStatus {
                lba,
                blocks: end - lba,
                mapped: true,
            })
        } else {
            let next = map.range(lba..).next().map(|(k, _)| *k).unwrap_or(n).min(n);
            Ok(LbaStatus {
                lba,
                blocks: next - lba,
                mapped: false,
            })
        }
    }
    fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::SeqCst)
    }
    fn set_write_cache(&self, enabled: bool) -> Result<(), DeviceError> {
        self.write_cache.store(enabled, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_mapping_and_runs() {
        let d = MemDevice::new(512, 100);
        assert_eq!(
            d.lba_status(0).unwrap(),
            LbaStatus {
                lba: 0,
                blocks: 100,
                mapped: false
            }
        );
        d.write(10, &[1u8; 1024], false).unwrap();
        assert_eq!(d.lba_status(0).unwrap().blocks, 10);
        assert_eq!(
            d.lba_status(10).unwrap(),
            LbaStatus {
                lba: 10,
                blocks: 2,
                mapped: true
            }
        );
        assert_eq!(
            d.lba_status(12).unwrap(),
            LbaStatus {
                lba: 12,
                blocks: 88,
                mapped: false
            }
        );
        d.unmap(10, 1).unwrap();
        let mut b = [9u8; 512];
        d.read(10, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert!(d.lba_status(100).is_err());
        assert!(d.write(99, &[0u8; 1024], false).is_err());
    }

    #[test]
    fn space_limit_and_faults() {
        let d = MemDevice::new(512, 10);
        d.set_space_limit(Some(1));
        d.write(0, &[1u8; 512], false).unwrap();
        d.write(0, &[2u8; 512], true).unwrap();
        assert!(matches!(
            d.write(1, &[1u8; 512], false),
            Err(DeviceError::NoSpace)
        ));
        d.inject_medium_error(3);
        let mut b = vec![0u8; 2048];
        assert!(matches!(
            d.read(2, &mut b),
            Err(DeviceError::Medium { lba: 3 })
        ));
        assert_eq!(d.fua_write_count(), 1);
        d.set_read_only(true);
        assert!(matches!(
            d.write(0, &[1u8; 512], false),
            Err(DeviceError::ReadOnly)
        ));
        d.set_num_blocks(0);
        assert_eq!(d.mapped_blocks(), 0);
    }
}
