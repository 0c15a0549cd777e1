//! The store's only door to storage: every byte the store (and its redb index) reads or
//! writes goes through [`Disk`] and [`DiskFile`].
//!
//! [`DirDisk`] is the real implementation (files in a directory, `pwrite`/`pread`,
//! `fdatasync`, hole punching). [`SimDisk`] keeps files in memory and models a machine that
//! loses power: [`SimDisk::power_loss`] throws away every write not covered by a completed
//! [`DiskFile::sync`] of that file, except that it may keep a random prefix of the unsynced
//! writes (in issue order) with the last kept one torn at an arbitrary byte. File creation
//! and removal are durable at once (the real disk fsyncs the directory).

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One file of the store.
pub trait DiskFile: Send + Sync + Debug {
    /// Fill `buf` from `off`; bytes past the end of the file read as zeroes.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write all of `data` at `off`, growing the file if needed.
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()>;
    /// Write `a` then `b` at `off` (a record's header and its data, without gathering
    /// them into one buffer first).
    fn write2_at(&self, a: &[u8], b: &[u8], off: u64) -> io::Result<()> {
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        self.write_at(&v, off)
    }
    /// Make every completed write (and size change) durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncate or extend (with zeroes).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Deallocate a byte range; it reads as zeroes afterwards.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// Bytes of storage the file occupies (`st_blocks * 512`).
    fn allocated(&self) -> io::Result<u64>;
    /// The open file's descriptor, when it is a real file that may be mapped and sent
    /// from the page cache (large reads, see the `mapped` module).
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
}

/// A directory of files.
pub trait Disk: Send + Sync + Debug {
    /// Open `name`; create it (durably) if `create` and missing. `None`: missing.
    fn open(&self, name: &str, create: bool) -> io::Result<Option<Arc<dyn DiskFile>>>;
    /// Remove `name` (durably). Open handles stay usable.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Names of the files present.
    fn list(&self) -> io::Result<Vec<String>>;
}

/// Files in a directory of the host file system.
#[derive(Debug)]
pub struct DirDisk {
    dir: PathBuf,
}

impl DirDisk {
    /// Use (creating) directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DirDisk { dir })
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[derive(Debug)]
struct RealFile(File);

impl DiskFile for RealFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.0.read_at(&mut buf[done..], off + done as u64)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.0.write_all_at(data, off)
    }
    fn write2_at(&self, a: &[u8], b: &[u8], off: u64) -> io::Result<()> {
        let iov = [
            libc::iovec {
                iov_base: a.as_ptr() as *mut libc::c_void,
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            },
        ];
        // SAFETY: both iovecs point into live slices for the duration of the call.
        let n = unsafe { libc::pwritev(self.0.as_raw_fd(), iov.as_ptr(), 2, off as libc::off_t) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // A short (or interrupted) write: finish piece by piece.
        let n = n.max(0) as usize;
        if n < a.len() {
            self.0.write_all_at(&a[n..], off + n as u64)?;
            self.0.write_all_at(b, off + a.len() as u64)
        } else if n < a.len() + b.len() {
            let k = n - a.len();
            self.0.write_all_at(&b[k..], off + n as u64)
        } else {
            Ok(())
        }
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    fn allocated(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.blocks() * 512)
    }
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        Some(self.0.as_raw_fd())
    }
}

impl Disk for DirDisk {
    fn open(&self, name: &str, create: bool) -> io::Result<Option<Arc<dyn DiskFile>>> {
        let path = self.dir.join(name);
        let existed = path.exists();
        if !existed && !create {
            return Ok(None);
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(&path)?;
        if !existed {
            self.sync_dir()?;
        }
        Ok(Some(Arc::new(RealFile(f))))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
    fn list(&self) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(n) = e?.file_name().to_str() {
                v.push(n.to_string());
            }
        }
        Ok(v)
    }
}

#[derive(Debug)]
enum SimOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Punch(u64, u64),
}

#[derive(Debug, Default)]
struct SimState {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<SimOp>,
}

fn apply(buf: &mut Vec<u8>, op: &SimOp) {
    match op {
        SimOp::Write(off, d) => {
            let end = *off as usize + d.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(d);
        }
        SimOp::SetLen(l) => buf.resize(*l as usize, 0),
        SimOp::Punch(off, len) => {
            let s = (*off as usize).min(buf.len());
            let e = ((off + len) as usize).min(buf.len());
            buf[s..e].fill(0);
        }
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<SimState>>,
    epoch: u64,
    disk: SimDisk,
}

impl SimFile {
    fn st(&self) -> io::Result<std::sync::MutexGuard<'_, SimState>> {
        if self.disk.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(io::Error::other("simulated disk lost power"));
        }
        Ok(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn push(&self, op: SimOp) -> io::Result<()> {
        self.disk.tick();
        let mut s = self.st()?;
        apply(&mut s.current, &op);
        s.pending.push(op);
        Ok(())
    }
}

impl DiskFile for SimFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = self.st()?;
        let off = off as usize;
        let have = s.current.len().saturating_sub(off).min(buf.len());
        if have > 0 {
            buf[..have].copy_from_slice(&s.current[off..off + have]);
        }
        buf[have..].fill(0);
        Ok(())
    }
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        self.push(SimOp::Write(off, data.to_vec()))
    }
    fn sync(&self) -> io::Result<()> {
        self.disk.tick();
        let mut s = self.st()?;
        let ops = std::mem::take(&mut s.pending);
        for op in &ops {
            apply(&mut s.durable, op);
        }
        self.disk.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.st()?.current.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.push(SimOp::SetLen(len))
    }
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        self.push(SimOp::Punch(off, len))
    }
    fn allocated(&self) -> io::Result<u64> {
        // Count 4 KiB pages holding a non-zero byte, like a file system with holes.
        let s = self.st()?;
        Ok(s.current
            .chunks(4096)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count() as u64
            * 4096)
    }
}

/// An in-memory disk that can lose power. Cloning shares the same files.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    files: Arc<Mutex<HashMap<String, Arc<Mutex<SimState>>>>>,
    epoch: Arc<AtomicU64>,
    syncs: Arc<AtomicU64>,
    /// (operations left, seed) of an armed power loss.
    armed: Arc<Mutex<Option<(u64, u64)>>>,
}

impl SimDisk {
    /// Lose power (as [`SimDisk::power_loss`]) just before the `ops`-th next write, size
    /// change, hole punch or sync: a crash in the middle of whatever the store is doing.
    pub fn arm_power_loss(&self, ops: u64, seed: u64) {
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some((ops, seed));
    }

    /// Disarm; true if the armed power loss happened.
    pub fn disarm(&self) -> bool {
        self.armed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_none()
    }

    fn tick(&self) {
        let mut a = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, seed)) = *a {
            if n == 0 {
                *a = None;
                drop(a);
                self.power_loss(seed);
            } else {
                *a = Some((n - 1, seed));
            }
        }
    }

    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cut the power. Every handle opened before fails from now on; each file keeps its
    /// synced content plus, when `seed` says so, a prefix of its unsynced writes with the
    /// last of them torn.
    pub fn power_loss(&self, seed: u64) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut names: Vec<&String> = files.keys().collect();
        names.sort();
        for name in names {
            let mut s = files[name].lock().unwrap_or_else(|e| e.into_inner());
            let ops = std::mem::take(&mut s.pending);
            let mut img = std::mem::take(&mut s.durable);
            if !ops.is_empty() && next() % 2 == 0 {
                let keep = (next() % ops.len() as u64) as usize + 1;
                for (i, op) in ops.iter().take(keep).enumerate() {
                    match op {
                        SimOp::Write(off, d) if i + 1 == keep && !d.is_empty() => {
                            let cut = (next() % d.len() as u64) as usize;
                            apply(&mut img, &SimOp::Write(*off, d[..cut].to_vec()));
                        }
                        op => apply(&mut img, op),
                    }
                }
            }
            s.current = img.clone();
            s.durable = img;
        }
    }

    /// Flip the bits of one byte of `name` at `off` (durably): simulated bit rot.
    pub fn corrupt(&self, name: &str, off: u64) {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(name) {
            let mut s = f.lock().unwrap_or_else(|e| e.into_inner());
            let o = off as usize;
            if o < s.current.len() {
                s.current[o] ^= 0xff;
            }
            if o < s.durable.len() {
                s.durable[o] ^= 0xff;
            }
        }
    }

    /// How many syncs completed, over all files.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

impl Disk for SimDisk {
    fn open(&self, name: &str, create: bool) -> io::Result<Option<Arc<dyn DiskFile>>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let state = match files.get(name) {
            Some(s) => s.clone(),
            None if create => {
                let s = Arc::new(Mutex::new(SimState::default()));
                files.insert(name.to_string(), s.clone());
                s
            }
            None => return Ok(None),
        };
        Ok(Some(Arc::new(SimFile {
            state,
            epoch: self.epoch.load(Ordering::SeqCst),
            disk: self.clone(),
        })))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect())
    }
}

/// Lets redb keep its index file on a [`DiskFile`], so index durability is simulated too.
#[derive(Debug)]
pub(crate) struct RedbBackend(pub Arc<dyn DiskFile>);

impl redb::StorageBackend for RedbBackend {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.0.read_at(&mut v, offset)?;
        Ok(v)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        self.0.sync()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_drops_unsynced_writes() {
        let d = SimDisk::new();
        let f = d.open("a", true).unwrap().unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync().unwrap();
        f.write_at(b"world", 0).unwrap();
        // seed 1: choose "drop everything" or a torn prefix; either way never garbage.
        d.power_loss(1);
        assert!(f.read_at(&mut [0u8; 5], 0).is_err());
        let f = d.open("a", false).unwrap().unwrap();
        let mut b = [0u8; 5];
        f.read_at(&mut b, 0).unwrap();
        for (i, c) in b.iter().enumerate() {
            assert!(*c == b"hello"[i] || *c == b"world"[i]);
        }
    }

    #[test]
    fn dir_disk_roundtrip_and_holes() {
        let t = tempfile::tempdir().unwrap();
        let d = DirDisk::new(t.path()).unwrap();
        let f = d.open("x", true).unwrap().unwrap();
        f.write_at(&[7u8; 1 << 16], 0).unwrap();
        f.sync().unwrap();
        let mut b = vec![0u8; 8];
        f.read_at(&mut b, (1 << 16) - 4).unwrap();
        assert_eq!(b, [7, 7, 7, 7, 0, 0, 0, 0]);
        let before = f.allocated().unwrap();
        f.punch_hole(0, 1 << 16).unwrap();
        assert!(f.allocated().unwrap() < before);
        assert_eq!(d.list().unwrap(), vec!["x".to_string()]);
        d.remove("x").unwrap();
        assert!(d.open("x", false).unwrap().is_none());
    }
}
