//! Carrying out the SCSI commands and task management functions of a session.
//!
//! Reads and cached writes run inline on the connection's task: they cost a `pread` from
//! the page cache or a journal append (a `pwrite` into it), microseconds, far less than
//! the hand-off to another thread they used to take (a futex wake and a context switch
//! each way, about half the member's CPU at 4 KiB). Anything that may wait on the disk or
//! on a management operation — FUA and uncached writes, SYNCHRONIZE CACHE, UNMAP,
//! SANITIZE, EXTENDED COPY, every other command — still goes to the blocking pool.

use crate::registry::VolumeHandle;
use bytes::Bytes;
use iscsi::session::{tmf_response, Outcome, Tmf};
use iscsi::Command;
use scsi::{Admit, NexusId, TaskManagement, TmfResult};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The LUN number of a single-level LUN (peripheral or flat addressing), if it is one.
pub(super) fn parse_lun(lun: u64) -> Option<u16> {
    let b = lun.to_be_bytes();
    let method = b[0] >> 6;
    if (method == 0 || method == 1) && b[2..].iter().all(|&x| x == 0) {
        Some((((b[0] & 0x3f) as u16) << 8) | b[1] as u16)
    } else {
        None
    }
}

/// Transfers above this go to the blocking pool even when they could run inline.
const INLINE_MAX: u32 = 128 * 1024;
/// Reads up to this run inline: the store checks them through its mapping and hands the
/// pages over without a copy (`store`'s `mapped`), so what is left is the checksum pass,
/// and the socket's copy that follows reads what that pass just brought into the cache
/// (1 MiB reads at QD8 on one member: 1,786–1,867 IOPS through the pool, 2,298–2,769
/// inline). When a read still had to be copied into a buffer, running several at once in
/// the pool won instead (1,384–1,591 IOPS that way, 1,181–1,246 inline).
const READ_INLINE_MAX: u32 = 1024 * 1024;

/// Whether `cmd` is cheap and cannot wait on the disk: it may run on the connection task.
pub(super) fn runs_inline(cmd: &Command, vol: &VolumeHandle) -> bool {
    let max = if is_read(&cmd.cdb) {
        READ_INLINE_MAX
    } else {
        INLINE_MAX
    };
    if parse_lun(cmd.lun) != Some(0) || cmd.expected_len > max || !vol.dev.inline_ok() {
        return false;
    }
    match cmd.cdb.first() {
        // READ (6/10/12/16).
        _ if is_read(&cmd.cdb) => true,
        // GET LBA STATUS and READ CAPACITY (16): a few header reads from the page cache.
        // QEMU asks for the provisioning status before every read it serves over NBD
        // (sparse reads), so a hop to the pool here doubled that read's latency.
        Some(0x9E) => matches!(cmd.cdb.get(1).map(|b| b & 0x1f), Some(0x10 | 0x12)),
        // WRITE (6) has no FUA bit (byte 1 holds LBA bits). A write may wait while the
        // store's journal is congested: then it goes to the pool.
        Some(0x0A) => cached_writes(vol),
        // WRITE (10/12/16) without FUA: a journal append, synced later by SYNCHRONIZE CACHE.
        Some(0x2A | 0xAA | 0x8A) => {
            cmd.cdb.get(1).is_some_and(|f| f & 0x08 == 0) && cached_writes(vol)
        }
        _ => false,
    }
}

/// What [`write`] did with a command.
pub(super) enum Write {
    /// Answered at once: written inline, or a check failed, or nothing to write.
    Answered(Outcome, Option<u64>),
    /// Writing on its own task; the outcome comes back on the channel.
    Started,
    /// Not a write it takes: execute it the usual way.
    No,
}

/// A completed command: its ITT, the outcome and the Data-Out length its CDB described.
pub(super) type Done = (u32, Outcome, Option<u64>);

/// A WRITE (10/12/16) that need not wait for a thread: the logical unit checks it and takes
/// its range without waiting ([`scsi::LogicalUnit::admit_write`]; a busy range goes to the
/// blocking pool, which may wait), then
///
/// * to a volume whose writes go through the group (a replication round trip, often two),
///   a task of its own writes it: no thread waits for the round trip (one used to, in
///   `block_on`, with a hand-off to it and back per write);
/// * a cached write on a single member ([`runs_inline`]) is written here, a journal append.
///
/// No tokio worker ever waits for a range: a deferred write holding one needs a worker to
/// finish.
pub(super) fn write(
    vol: &Arc<VolumeHandle>,
    nexus: &NexusId,
    cmd: &Command,
    done: &tokio::sync::mpsc::UnboundedSender<Done>,
    gone: &Arc<std::sync::atomic::AtomicBool>,
) -> Write {
    if cmd.read || !matches!(cmd.cdb.first(), Some(0x2A | 0xAA | 0x8A)) {
        return Write::No;
    }
    let group = vol.group_dev.as_ref().filter(|d| d.replicates());
    if group.is_none() && !runs_inline(cmd, vol) {
        return Write::No;
    }
    let described = vol.lu.data_out_len(&cmd.cdb);
    let write = match vol.lu.admit_write(nexus, &cmd.cdb, &cmd.data_out) {
        Admit::Execute => return Write::No,
        Admit::Done(r) => return Write::Answered(outcome(r), described),
        Admit::Write(w) => w,
    };
    let data = cmd.data_out.slice(..write.len);
    let Some(dev) = group else {
        let r = match vol.dev.write(write.lba, &data, write.fua) {
            Ok(()) => good(),
            Err(e) => outcome(write.failed(nexus, e)),
        };
        return Write::Answered(r, described);
    };
    let (dev, done, nexus, itt) = (dev.clone(), done.clone(), nexus.clone(), cmd.itt);
    // Once the connection is gone the write stops retrying (`group::abandon`).
    let gone = Some(gone.clone());
    tokio::spawn(crate::group::abandon::scoped(
        async move {
            let r = match dev.write_async(write.lba, data, write.fua).await {
                Ok(()) => good(),
                Err(e) => outcome(write.failed(&nexus, e)),
            };
            let _ = done.send((itt, r, described));
        },
        gone,
    ));
    Write::Started
}

fn good() -> Outcome {
    Outcome {
        status: scsi::status::GOOD,
        ..Outcome::default()
    }
}

fn outcome(r: scsi::Response) -> Outcome {
    Outcome {
        status: r.status,
        sense: r.sense,
        data: Bytes::from(r.data),
        pieces: Vec::new(),
    }
}

/// Data-In buffers of one connection, handed back when the bytes they held were sent.
#[derive(Clone, Default)]
pub(super) struct BufPool(Arc<Mutex<Pool>>);

#[derive(Default)]
struct Pool {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

/// Buffers kept per connection and the bytes they may hold: a 4 KiB workload at the
/// session's queue depth, or 1 MiB reads at QD8. All connections together keep at most
/// [`POOLED_MAX`], so many sessions that once read large blocks do not pin memory.
const POOL_BUFS: usize = 32;
const POOL_BYTES: usize = 8 << 20;
const POOLED_MAX: usize = 64 << 20;
static POOLED: AtomicUsize = AtomicUsize::new(0);

impl Drop for Pool {
    fn drop(&mut self) {
        POOLED.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl BufPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Vec<u8> {
        let mut p = self.lock();
        match p.bufs.pop() {
            Some(b) => {
                p.bytes -= b.capacity();
                POOLED.fetch_sub(b.capacity(), Ordering::Relaxed);
                b
            }
            None => Vec::new(),
        }
    }

    fn give(&self, buf: Vec<u8>) {
        let cap = buf.capacity();
        let mut p = self.lock();
        if p.bufs.len() >= POOL_BUFS || p.bytes + cap > POOL_BYTES {
            return;
        }
        if POOLED.fetch_add(cap, Ordering::Relaxed) + cap > POOLED_MAX {
            POOLED.fetch_sub(cap, Ordering::Relaxed);
            return;
        }
        p.bytes += cap;
        p.bufs.push(buf);
    }

    fn wrap(&self, data: Vec<u8>) -> Bytes {
        if data.capacity() == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(Pooled {
            buf: data,
            pool: self.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

fn is_read(cdb: &[u8]) -> bool {
    matches!(cdb.first(), Some(0x08 | 0x28 | 0xA8 | 0x88))
}

fn cached_writes(vol: &VolumeHandle) -> bool {
    let dev = vol.lu.device();
    dev.write_cache_enabled() && !dev.congested()
}

/// Execute `cmd`; returns the outcome and, for a write, the Data-Out length its CDB
/// describes (for the residual).
pub(super) fn execute(
    vol: &VolumeHandle,
    nexus: &NexusId,
    cmd: &Command,
    pool: &BufPool,
) -> (Outcome, Option<u64>) {
    let mut described = None;
    let outcome = match parse_lun(cmd.lun) {
        Some(0) => {
            if cmd.write && !cmd.read {
                described = vol.lu.data_out_len(&cmd.cdb);
            }
            if is_read(&cmd.cdb) {
                // A large read may come back as the store's mapped pages, copied only
                // into the socket (see `store`'s `mapped`).
                let spare = pool.take();
                let (r, mapped) = vol
                    .lu
                    .execute_read_mapped(nexus, &cmd.cdb, &cmd.data_out, spare);
                Outcome {
                    status: r.status,
                    sense: r.sense,
                    data: pool.wrap(r.data),
                    pieces: mapped.map(|m| m.pieces).unwrap_or_default(),
                }
            } else {
                outcome(vol.lu.execute(nexus, &cmd.cdb, &cmd.data_out))
            }
        }
        _ => no_such_lun(&cmd.cdb, &vol.lu, nexus),
    };
    (outcome, described)
}

/// Answer a command addressed to a LUN that does not exist (only LUN 0 does).
fn no_such_lun(cdb: &[u8], lu: &scsi::LogicalUnit, nexus: &NexusId) -> Outcome {
    match cdb.first() {
        Some(0x12) => {
            // INQUIRY: peripheral qualifier 3 (no LU here), device type 0x1f.
            let alloc = cdb
                .get(3..5)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .unwrap_or(0);
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x02;
            d[4] = 31;
            d.truncate(alloc);
            Outcome {
                data: Bytes::from(d),
                ..Outcome::default()
            }
        }
        Some(0xa0) | Some(0x03) => outcome(lu.execute(nexus, cdb, &[])),
        _ => Outcome {
            status: scsi::status::CHECK_CONDITION,
            sense: Some(iscsi::sense_bytes(0x05, 0x25, 0x00)),
            ..Outcome::default()
        },
    }
}

/// Carry out a task management function at the logical unit; returns the response code.
pub(super) fn task_management(vol: &VolumeHandle, nexus: &NexusId, lun: u64, function: Tmf) -> u8 {
    if parse_lun(lun) != Some(0) && !matches!(function, Tmf::TargetWarmReset | Tmf::TargetColdReset)
    {
        return tmf_response::NO_LUN;
    }
    let tm = match function {
        Tmf::AbortTaskSet => TaskManagement::AbortTaskSet,
        Tmf::ClearTaskSet => TaskManagement::ClearTaskSet,
        Tmf::LogicalUnitReset => TaskManagement::LogicalUnitReset,
        Tmf::TargetWarmReset => TaskManagement::TargetWarmReset,
        _ => TaskManagement::TargetColdReset,
    };
    match vol.lu.task_management(nexus, tm) {
        TmfResult::Complete => tmf_response::COMPLETE,
        TmfResult::NotSupported => tmf_response::NOT_SUPPORTED,
        TmfResult::Rejected => tmf_response::REJECTED,
    }
}
