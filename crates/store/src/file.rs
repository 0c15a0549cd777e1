//! A volume kept in one sparse file.

use scsi::{BlockDevice, DeviceError, LbaStatus};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A block device over a sparse file.
pub struct FileDevice {
    file: File,
    block_size: u32,
    blocks: AtomicU64,
    read_only: bool,
    write_cache: AtomicBool,
}

impl FileDevice {
    /// Open (creating if needed) a device of `size` bytes at `path`. A file that is
    /// smaller is grown; a larger one keeps its size (a resize never shrinks).
    pub fn open(path: &Path, size: u64, block_size: u32, read_only: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .create(!read_only)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < size && !read_only {
            file.set_len(size)?;
            file.sync_all()?;
        }
        let size = size.max(len);
        Ok(FileDevice {
            file,
            block_size,
            blocks: AtomicU64::new(size / block_size as u64),
            read_only,
            write_cache: AtomicBool::new(true),
        })
    }

    /// Grow the device to `size` bytes (online resize).
    pub fn grow(&self, size: u64) -> std::io::Result<()> {
        let cur = self.blocks.load(Ordering::Acquire) * self.block_size as u64;
        if size > cur {
            self.file.set_len(size)?;
            self.file.sync_all()?;
            self.blocks
                .store(size / self.block_size as u64, Ordering::Release);
        }
        Ok(())
    }

    fn check(&self, lba: u64, blocks: u64) -> Result<(), DeviceError> {
        let end = lba
            .checked_add(blocks)
            .ok_or(DeviceError::OutOfRange { lba, blocks })?;
        if end > self.num_blocks() {
            return Err(DeviceError::OutOfRange { lba, blocks });
        }
        Ok(())
    }

    fn datasync(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(DeviceError::Io)
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> Option<u64> {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.blocks.load(Ordering::Acquire)
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let bs = self.block_size as u64;
        self.check(lba, buf.len() as u64 / bs)?;
        self.file.read_exact_at(buf, lba * bs)?;
        Ok(())
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        let bs = self.block_size as u64;
        self.check(lba, data.len() as u64 / bs)?;
        self.file.write_all_at(data, lba * bs)?;
        if fua || !self.write_cache.load(Ordering::Relaxed) {
            self.datasync()?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.datasync()
    }
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        self.check(lba, blocks)?;
        if blocks == 0 {
            return Ok(());
        }
        let bs = self.block_size as u64;
        // SAFETY: fallocate on a file descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (lba * bs) as libc::off_t,
                (blocks * bs) as libc::off_t,
            )
        };
        if r != 0 {
            // Without hole punching, writing zeroes keeps reads correct.
            let zeroes = vec![0u8; (blocks * bs).min(1 << 20) as usize];
            let mut off = lba * bs;
            let end = (lba + blocks) * bs;
            while off < end {
                let n = ((end - off) as usize).min(zeroes.len());
                self.file.write_all_at(&zeroes[..n], off)?;
                off += n as u64;
            }
        }
        if !self.write_cache.load(Ordering::Relaxed) {
            self.datasync()?;
        }
        Ok(())
    }
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, DeviceError> {
        self.check(lba, 1)?;
        let bs = self.block_size as u64;
        let end = self.num_blocks() * bs;
        let off = lba * bs;
        let data = self.seek(off, libc::SEEK_DATA).unwrap_or(end);
        let (mapped, run_end) = if data <= off {
            (
                true,
                self.seek(off, libc::SEEK_HOLE).unwrap_or(end).min(end),
            )
        } else {
            (false, data.min(end))
        };
        // Holes and data are tracked in file-system blocks; round to whole logical blocks.
        let run_end_lba = run_end.div_ceil(bs).max(lba + 1);
        Ok(LbaStatus {
            lba,
            blocks: run_end_lba - lba,
            mapped,
        })
    }
    fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }
    fn set_write_cache(&self, enabled: bool) -> Result<(), DeviceError> {
        if !enabled {
            self.datasync()?;
        }
        self.write_cache.store(enabled, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_unmap_status() {
        let dir = tempfile::tempdir().unwrap();
        let dev = FileDevice::open(&dir.path().join("v"), 1 << 20, 512, false).unwrap();
        assert_eq!(dev.num_blocks(), 2048);
        assert!(!dev.lba_status(0).unwrap().mapped);
        let data = vec![0xabu8; 8192];
        dev.write(16, &data, true).unwrap();
        let mut back = vec![0u8; 8192];
        dev.read(16, &mut back).unwrap();
        assert_eq!(back, data);
        assert!(dev.lba_status(16).unwrap().mapped);
        dev.unmap(16, 16).unwrap();
        dev.read(16, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        assert!(matches!(
            dev.read(2047, &mut back),
            Err(DeviceError::OutOfRange { .. })
        ));
    }

    #[test]
    fn grow_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        let dev = FileDevice::open(&p, 4096, 512, false).unwrap();
        dev.write(0, &[7u8; 512], false).unwrap();
        dev.grow(8192).unwrap();
        assert_eq!(dev.num_blocks(), 16);
        let mut b = [0u8; 512];
        dev.read(0, &mut b).unwrap();
        assert_eq!(b, [7u8; 512]);
    }
}
