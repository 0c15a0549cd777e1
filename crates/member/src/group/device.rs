//! A volume as the SCSI engine sees it on a member of a group.

use super::Group;
use bytes::Bytes;
use control::CHUNK_BYTES;
use scsi::{BlockDevice, DeviceError, LbaStatus, MappedRead};
use std::sync::Arc;

/// A volume served through the group: alone, the local store; otherwise each chunk at its
/// placement group's primary (see the module docs of [`super`]).
pub struct GroupDevice {
    group: Arc<Group>,
    volume: u64,
    local: Arc<store::Volume>,
}

impl GroupDevice {
    pub fn new(group: Arc<Group>, volume: u64, local: Arc<store::Volume>) -> Self {
        GroupDevice {
            group,
            volume,
            local,
        }
    }

    /// Run a group operation from the engine's (blocking) thread.
    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.group.block_on(f)
    }

    fn bytes(&self, lba: u64) -> u64 {
        lba * u64::from(self.local.block_size())
    }

    /// With the write cache off every write is durable before it is acknowledged, on every
    /// copy.
    fn durable(&self, fua: bool) -> bool {
        fua || !self.local.write_cache_enabled()
    }
}

impl BlockDevice for GroupDevice {
    fn block_size(&self) -> u32 {
        self.local.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.local.num_blocks()
    }
    fn thin(&self) -> bool {
        self.local.thin()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if self.group.is_alone() {
            return self.local.read(lba, buf);
        }
        self.check_range(lba, buf.len())?;
        let g = self.group.clone();
        self.block(g.read(self.volume, self.bytes(lba), buf))
    }
    fn read_mapped(&self, lba: u64, blocks: u64) -> Option<Result<MappedRead, DeviceError>> {
        // In a group the chunk's primary may be another member: those reads are copied.
        if self.group.is_alone() {
            return self.local.read_mapped(lba, blocks);
        }
        None
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        if self.group.is_alone() {
            return self
                .group
                .alone_change(self.volume, || self.local.write(lba, data, fua));
        }
        self.check_range(lba, data.len())?;
        let g = self.group.clone();
        let fua = self.durable(fua);
        self.block(g.write(
            self.volume,
            self.bytes(lba),
            Bytes::copy_from_slice(data),
            fua,
        ))
    }
    fn flush(&self) -> Result<(), DeviceError> {
        if self.group.is_alone() {
            return self.local.flush();
        }
        let g = self.group.clone();
        self.block(g.flush(self.volume))
    }
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), DeviceError> {
        if self.group.is_alone() {
            return self
                .group
                .alone_change(self.volume, || self.local.unmap(lba, blocks));
        }
        let bs = u64::from(self.local.block_size());
        self.check_range(lba, (blocks * bs) as usize)?;
        let g = self.group.clone();
        self.block(g.unmap(self.volume, self.bytes(lba), blocks * bs))
    }
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, DeviceError> {
        if self.group.is_alone() {
            return self.local.lba_status(lba);
        }
        // Each chunk's primary knows its provisioning. A run continues into the next chunks
        // while they are alike (up to MAX_RUN_CHUNKS per answer): an initiator asking after
        // an UNMAP of everything sees one run, as from a single member.
        const MAX_RUN_CHUNKS: u64 = 256;
        let bs = u64::from(self.local.block_size());
        let total = self.local.num_blocks();
        if lba >= total {
            return Err(DeviceError::OutOfRange { lba, blocks: 1 });
        }
        let chunk_blocks = CHUNK_BYTES / bs;
        let mut at = lba;
        let mut state: Option<bool> = None;
        for _ in 0..MAX_RUN_CHUNKS {
            let end = ((at / chunk_blocks + 1) * chunk_blocks).min(total);
            let g = self.group.clone();
            let (mapped, len) = self.block(g.status(self.volume, at * bs, (end - at) * bs))?;
            if state.is_some_and(|s| s != mapped) {
                break;
            }
            state = Some(mapped);
            at += (len / bs).clamp(1, end - at);
            if at < end || at >= total {
                break;
            }
        }
        Ok(LbaStatus {
            lba,
            blocks: at - lba,
            mapped: state.unwrap_or(true),
        })
    }
    fn compare_and_write(
        &self,
        lba: u64,
        compare: &[u8],
        data: &[u8],
        fua: bool,
    ) -> Option<Result<Option<u64>, DeviceError>> {
        if self.group.is_alone() || local_caw_fault() {
            return None;
        }
        if let Err(e) = self.check_range(lba, compare.len()) {
            return Some(Err(e));
        }
        let g = self.group.clone();
        let fua = self.durable(fua);
        self.block(g.compare_and_write(
            self.volume,
            self.bytes(lba),
            Bytes::copy_from_slice(compare),
            Bytes::copy_from_slice(data),
            fua,
        ))
    }
    fn congested(&self) -> bool {
        // A frozen volume's writes wait: not on a tokio worker.
        self.local.congested() || self.group.is_frozen(self.volume)
    }
    fn inline_ok(&self) -> bool {
        self.group.is_alone()
    }
    fn write_cache_enabled(&self) -> bool {
        self.local.write_cache_enabled()
    }
    fn set_write_cache(&self, enabled: bool) -> Result<(), DeviceError> {
        self.local.set_write_cache(enabled)
    }
}

impl GroupDevice {
    /// Whether writes go through the group now (more than one member), so the portal
    /// writes asynchronously rather than holding a thread for the round trip.
    pub fn replicates(&self) -> bool {
        !self.group.is_alone()
    }

    /// [`BlockDevice::write`] for an async caller: the same path, without a thread
    /// waiting in `block_on`, and without copying `data`.
    pub async fn write_async(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), DeviceError> {
        if self.group.is_alone() {
            let (local, group, volume) = (self.local.clone(), self.group.clone(), self.volume);
            return tokio::task::spawn_blocking(move || {
                group.alone_change(volume, || local.write(lba, &data, fua))
            })
            .await
            .unwrap_or_else(|e| Err(DeviceError::Io(std::io::Error::other(e))));
        }
        self.check_range(lba, data.len())?;
        let fua = self.durable(fua);
        self.group
            .write(self.volume, self.bytes(lba), data, fua)
            .await
    }

    fn check_range(&self, lba: u64, len: usize) -> Result<(), DeviceError> {
        let blocks = len as u64 / u64::from(self.local.block_size());
        if lba
            .checked_add(blocks)
            .is_none_or(|end| end > self.local.num_blocks())
        {
            return Err(DeviceError::OutOfRange { lba, blocks });
        }
        Ok(())
    }
}

/// `HAVEN_FAULT_LOCAL_CAW=1` makes COMPARE AND WRITE compare and write under the receiving
/// member's own lock only: the fault the cross-member test must catch (lost increments).
fn local_caw_fault() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var_os("HAVEN_FAULT_LOCAL_CAW").is_some())
}
