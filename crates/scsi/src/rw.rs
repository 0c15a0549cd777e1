//! The read/write family: READ, WRITE, WRITE AND VERIFY, VERIFY, ORWRITE, WRITE ATOMIC,
//! COMPARE AND WRITE, PRE-FETCH and SYNCHRONIZE CACHE.

use crate::inquiry::limits;
use crate::lu::{CmdResult, Ctx, Fail, Reply};
use crate::sense::{codes, invalid_cdb_field};
use std::sync::{Condvar, Mutex, MutexGuard};

const STRIPES: usize = 256;
// 8 blocks: writes to neighbouring 4 KiB go side by side (a write through the group holds
// its stripes for a replication round trip, so coarse stripes serialised sequential I/O).
const STRIPE_SHIFT: u32 = 3;

/// Range locks keyed by LBA region: writers of overlapping ranges serialise, so
/// COMPARE AND WRITE, ORWRITE and WRITE ATOMIC are atomic against every other writer,
/// without one global lock. Reads take none.
///
/// A stripe is a flag under a mutex rather than the mutex itself, so a transport that
/// carries a write out asynchronously can hold it across threads ([`crate::deferred`]).
pub(crate) struct Stripes {
    locks: Vec<Stripe>,
}

#[derive(Default)]
struct Stripe {
    state: Mutex<StripeState>,
    free: Condvar,
}

#[derive(Default)]
struct StripeState {
    held: bool,
    /// Threads waiting in `lock`: only then does a release pay for a wake-up.
    waiters: u32,
}

/// Stripes held; released on drop.
pub(crate) struct StripeGuard<'a> {
    stripes: &'a Stripes,
    idx: Vec<usize>,
}

impl StripeGuard<'_> {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idx.len()
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        self.stripes.release(&self.idx);
    }
}

impl Stripes {
    pub fn new() -> Self {
        Stripes {
            locks: (0..STRIPES).map(|_| Stripe::default()).collect(),
        }
    }

    /// The stripes of `[lba, lba + blocks)`, sorted, each once (the order they are taken).
    pub fn indices(lba: u64, blocks: u64) -> Vec<usize> {
        let first = lba >> STRIPE_SHIFT;
        let last = lba.saturating_add(blocks.max(1) - 1) >> STRIPE_SHIFT;
        let mut idx: Vec<usize> = if last - first >= STRIPES as u64 - 1 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|r| (r % STRIPES as u64) as usize)
                .collect()
        };
        idx.sort_unstable();
        idx.dedup();
        idx
    }

    fn state(&self, i: usize) -> MutexGuard<'_, StripeState> {
        self.locks[i]
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn lock(&self, lba: u64, blocks: u64) -> StripeGuard<'_> {
        let idx = Self::indices(lba, blocks);
        for &i in &idx {
            let mut st = self.state(i);
            while st.held {
                st.waiters += 1;
                st = self.locks[i]
                    .free
                    .wait(st)
                    .unwrap_or_else(|e| e.into_inner());
                st.waiters -= 1;
            }
            st.held = true;
        }
        StripeGuard { stripes: self, idx }
    }

    /// Take every stripe in `idx` (from [`Stripes::indices`]) if none is held; else none.
    pub fn try_lock(&self, idx: &[usize]) -> bool {
        for (n, &i) in idx.iter().enumerate() {
            let mut st = self.state(i);
            if st.held {
                drop(st);
                self.release(&idx[..n]);
                return false;
            }
            st.held = true;
        }
        true
    }

    pub fn release(&self, idx: &[usize]) {
        for &i in idx {
            let mut st = self.state(i);
            st.held = false;
            if st.waiters > 0 {
                self.locks[i].free.notify_all();
            }
        }
    }
}

/// LBA, transfer length and the flags byte of a read/write-family CDB.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rw {
    pub lba: u64,
    pub len: u64,
    pub flags: u8,
    /// CDB byte holding the transfer length (for field pointers).
    pub len_byte: u16,
}

pub(crate) fn decode(ctx: &Ctx) -> Rw {
    decode_cdb(&ctx.cdb)
}

pub(crate) fn decode_cdb(c: &crate::cdb::Cdb) -> Rw {
    match c.len() {
        6 => {
            let len = u64::from(c.u8(4));
            Rw {
                lba: u64::from(c.u24(1) & 0x1F_FFFF),
                len: if len == 0 { 256 } else { len },
                flags: 0,
                len_byte: 4,
            }
        }
        10 => Rw {
            lba: u64::from(c.u32(2)),
            len: u64::from(c.u16(7)),
            flags: c.u8(1),
            len_byte: 7,
        },
        12 => Rw {
            lba: u64::from(c.u32(2)),
            len: u64::from(c.u32(6)),
            flags: c.u8(1),
            len_byte: 6,
        },
        _ => Rw {
            lba: c.u64(2),
            len: u64::from(c.u32(10)),
            flags: c.u8(1),
            len_byte: 10,
        },
    }
}

/// LOGICAL BLOCK ADDRESS OUT OF RANGE unless `[lba, lba+len)` is on the device.
pub(crate) fn check_range(ctx: &Ctx, lba: u64, len: u64) -> Result<(), Fail> {
    let n = ctx.dev().num_blocks();
    if lba > n || len > n - lba {
        return Err(codes::LBA_OUT_OF_RANGE.into());
    }
    Ok(())
}

fn check_protect(rw: &Rw) -> Result<(), Fail> {
    if rw.flags & 0xE0 != 0 {
        // No protection information: RDPROTECT/WRPROTECT/VRPROTECT must be zero.
        return Err(invalid_cdb_field(1, Some(5)).into());
    }
    Ok(())
}

fn check_max(ctx: &Ctx, rw: &Rw) -> Result<(), Fail> {
    if rw.len > limits::max_transfer_blocks(ctx.dev().block_size()) {
        return Err(invalid_cdb_field(rw.len_byte, None).into());
    }
    Ok(())
}

fn bytes_for(ctx: &Ctx, blocks: u64) -> Result<usize, Fail> {
    blocks
        .checked_mul(u64::from(ctx.dev().block_size()))
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| Fail::from(invalid_cdb_field(0, None)))
}

/// Reads `len` blocks into a fresh buffer.
pub(crate) fn read_blocks(ctx: &Ctx, lba: u64, len: u64) -> Result<Vec<u8>, Fail> {
    let n = bytes_for(ctx, len)?;
    // The transport's spare buffer when it lent one. Not zeroed: the device overwrites
    // all of it, and on an error it is dropped unseen.
    let mut buf = ctx.spare.take();
    buf.truncate(n);
    buf.resize(n, 0);
    if len > 0 {
        ctx.dev().read(lba, &mut buf).map_err(|e| ctx.dev_fail(e))?;
    }
    Ok(buf)
}

/// The whole blocks of Data-Out, at most `len` of them.
fn whole_blocks<'a>(ctx: &Ctx<'a>, len: u64) -> &'a [u8] {
    let bs = ctx.dev().block_size() as usize;
    let avail = (ctx.data.len() / bs) as u64;
    let n = avail.min(len) as usize;
    &ctx.data[..n * bs]
}

pub(crate) fn read(ctx: &Ctx) -> CmdResult {
    let rw = decode(ctx);
    check_protect(&rw)?;
    check_range(ctx, rw.lba, rw.len)?;
    check_max(ctx, &rw)?;
    if ctx.mapped_ok && rw.len > 0 {
        match ctx.dev().read_mapped(rw.lba, rw.len) {
            Some(Ok(m)) => {
                ctx.mapped.set(Some(m));
                return Ok(Reply::good());
            }
            Some(Err(e)) => return Err(ctx.dev_fail(e)),
            None => {}
        }
    }
    Ok(Reply::data(read_blocks(ctx, rw.lba, rw.len)?))
}

fn do_write(ctx: &Ctx, lba: u64, data: &[u8], fua: bool) -> Result<(), Fail> {
    if data.is_empty() {
        return Ok(());
    }
    let blocks = (data.len() / ctx.dev().block_size() as usize) as u64;
    let _g = ctx.lu.stripes.lock(lba, blocks);
    ctx.dev().write(lba, data, fua).map_err(|e| ctx.dev_fail(e))
}

pub(crate) fn write(ctx: &Ctx) -> CmdResult {
    let (lba, data, fua) = write_checked(ctx)?;
    do_write(ctx, lba, data, fua)?;
    Ok(Reply::good())
}

/// A WRITE's checks: the LBA, the whole blocks of Data-Out to write there and FUA.
pub(crate) fn write_checked<'a>(ctx: &Ctx<'a>) -> Result<(u64, &'a [u8], bool), Fail> {
    let rw = decode(ctx);
    check_protect(&rw)?;
    ctx.check_writable()?;
    check_range(ctx, rw.lba, rw.len)?;
    check_max(ctx, &rw)?;
    Ok((rw.lba, whole_blocks(ctx, rw.len), rw.flags & 0x08 != 0))
}

pub(crate) fn write_and_verify(ctx: &Ctx) -> CmdResult {
    let rw = decode(ctx);
    check_protect(&rw)?;
    ctx.check_writable()?;
    check_range(ctx, rw.lba, rw.len)?;
    check_max(ctx, &rw)?;
    let data = whole_blocks(ctx, rw.len);
    do_write(ctx, rw.lba, data, true)?;
    // Verify: read back what was written.
    let n = (data.len() / ctx.dev().block_size() as usize) as u64;
    let back = read_blocks(ctx, rw.lba, n)?;
    if let Some(off) = first_difference(&back, data) {
        return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(off as u64).into());
    }
    Ok(Reply::good())
}

pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b.iter()).position(|(x, y)| x != y)
}

pub(crate) fn verify(ctx: &Ctx) -> CmdResult {
    let rw = decode(ctx);
    check_protect(&rw)?;
    let bytchk = (rw.flags >> 1) & 0x03;
    if bytchk == 2 {
        return Err(invalid_cdb_field(1, Some(1)).into());
    }
    check_range(ctx, rw.lba, rw.len)?;
    check_max(ctx, &rw)?;
    let medium = read_blocks(ctx, rw.lba, rw.len)?;
    let bs = ctx.dev().block_size() as usize;
    match bytchk {
        1 => {
            let data = whole_blocks(ctx, rw.len);
            if let Some(off) = first_difference(&medium, data) {
                return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(off as u64).into());
            }
        }
        3 => {
            let Some(pattern) = ctx.data.get(..bs) else {
                return Ok(Reply::good());
            };
            for (i, blk) in medium.chunks(bs).enumerate() {
                if let Some(off) = first_difference(blk, pattern) {
                    let at = i * bs + off;
                    return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(at as u64).into());
                }
            }
        }
        _ => {}
    }
    Ok(Reply::good())
}

pub(crate) fn compare_and_write(ctx: &Ctx) -> CmdResult {
    let c = &ctx.cdb;
    let flags = c.u8(1);
    if flags & 0xE0 != 0 {
        return Err(invalid_cdb_field(1, Some(5)).into());
    }
    let lba = c.u64(2);
    let n = u64::from(c.u8(13));
    ctx.check_writable()?;
    if n > limits::MAX_COMPARE_AND_WRITE_BLOCKS {
        return Err(invalid_cdb_field(13, None).into());
    }
    check_range(ctx, lba, n)?;
    if n == 0 {
        // Nothing to compare; Data-Out sent anyway means the CDB does not describe it
        // (e.g. an initiator that put 256 blocks in the 8-bit field).
        if !ctx.data.is_empty() {
            return Err(invalid_cdb_field(13, None).into());
        }
        return Ok(Reply::good());
    }
    let half = bytes_for(ctx, n)?;
    if ctx.data.len() != half * 2 {
        return Err(invalid_cdb_field(13, None).into());
    }
    let (verify, write) = ctx.data.split_at(half);
    let fua = flags & 0x08 != 0;
    if let Some(done) = ctx.dev().compare_and_write(lba, verify, write, fua) {
        return match done.map_err(|e| ctx.dev_fail(e))? {
            None => Ok(Reply::good()),
            Some(off) => Err(codes::MISCOMPARE_DURING_VERIFY.with_info(off).into()),
        };
    }
    let _g = ctx.lu.stripes.lock(lba, n);
    let mut cur = vec![0u8; half];
    ctx.dev().read(lba, &mut cur).map_err(|e| ctx.dev_fail(e))?;
    if let Some(off) = first_difference(&cur, verify) {
        return Err(codes::MISCOMPARE_DURING_VERIFY.with_info(off as u64).into());
    }
    ctx.dev()
        .write(lba, write, fua)
        .map_err(|e| ctx.dev_fail(e))?;
    Ok(Reply::good())
}

pub(crate) fn orwrite(ctx: &Ctx) -> CmdResult {
    let rw = decode(ctx);
    check_protect(&rw)?;
    ctx.check_writable()?;
    check_range(ctx, rw.lba, rw.len)?;
    check_max(ctx, &rw)?;
    let data = whole_blocks(ctx, rw.len);
    if data.is_empty() {
        return Ok(Reply::good());
    }
    let n = (data.len() / ctx.dev().block_size() as usize) as u64;
    let _g = ctx.lu.stripes.lock(rw.lba, n);
    let mut cur = vec![0u8; data.len()];
    ctx.dev()
        .read(rw.lba, &mut cur)
        .map_err(|e| ctx.dev_fail(e))?;
    for (c, d) in cur.iter_mut().zip(data) {
        *c |= *d;
    }
    ctx.dev()
        .write(rw.lba, &cur, rw.flags & 0x08 != 0)
        .map_err(|e| ctx.dev_fail(e))?;
    Ok(Reply::good())
}

pub(crate) fn write_atomic(ctx: &Ctx) -> CmdResult {
    let c = &ctx.cdb;
    let flags = c.u8(1);
    if flags & 0xE0 != 0 {
        return Err(invalid_cdb_field(1, Some(5)).into());
    }
    let lba = c.u64(2);
    let boundary = c.u16(10);
    let len = u64::from(c.u16(12));
    ctx.check_writable()?;
    if boundary != 0 {
        return Err(invalid_cdb_field(10, None).into());
    }
    if len > limits::max_atomic_blocks(ctx.dev().block_size()) {
        return Err(invalid_cdb_field(12, None).into());
    }
    check_range(ctx, lba, len)?;
    do_write(ctx, lba, whole_blocks(ctx, len), flags & 0x08 != 0)?;
    Ok(Reply::good())
}

pub(crate) fn prefetch(ctx: &Ctx) -> CmdResult {
    let (lba, len) = if ctx.cdb.op() == 0x34 {
        (u64::from(ctx.cdb.u32(2)), u64::from(ctx.cdb.u16(7)))
    } else {
        (ctx.cdb.u64(2), u64::from(ctx.cdb.u32(10)))
    };
    check_range(ctx, lba, len)?;
    // Nothing is cached ahead: GOOD (not CONDITION MET) as SBC-3 allows.
    Ok(Reply::good())
}

pub(crate) fn synchronize_cache(ctx: &Ctx) -> CmdResult {
    let (lba, len) = if ctx.cdb.op() == 0x35 {
        (u64::from(ctx.cdb.u32(2)), u64::from(ctx.cdb.u16(7)))
    } else {
        (ctx.cdb.u64(2), u64::from(ctx.cdb.u32(10)))
    };
    check_range(ctx, lba, len)?;
    ctx.dev().flush().map_err(|e| ctx.dev_fail(e))?;
    Ok(Reply::good())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_cover_ranges() {
        let s = Stripes::new();
        assert_eq!(s.lock(0, 1).len(), 1);
        assert_eq!(s.lock(2047, 2).len(), 2);
        assert_eq!(s.lock(0, u64::MAX).len(), STRIPES);
        assert_eq!(s.lock(u64::MAX, 5).len(), 1);
    }

    #[test]
    fn try_lock_takes_all_or_none() {
        let s = Stripes::new();
        let held = s.lock(8, 1);
        let both = Stripes::indices(0, 16);
        assert_eq!(both.len(), 2);
        assert!(!s.try_lock(&both));
        // The free stripe was given back: it can be taken alone.
        assert!(s.try_lock(&both[..1]));
        s.release(&both[..1]);
        drop(held);
        assert!(s.try_lock(&both));
        s.release(&both);
    }

    #[test]
    fn difference() {
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"abc"), None);
    }
}
