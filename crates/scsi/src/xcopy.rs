//! EXTENDED COPY (LID1) with block-to-block segments between volumes named by NAA
//! identification descriptors, and RECEIVE COPY RESULTS.

use crate::cdb::{be16, be32, be64, trunc};
use crate::device::{BlockDevice, DeviceError};
use crate::lu::{CmdResult, Ctx, Fail, NexusId, Reply};
use crate::sense::{codes, invalid_cdb_field, invalid_param_field, Sense};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(crate) const MAX_TARGET_DESCRIPTORS: usize = 2;
pub(crate) const MAX_SEGMENT_DESCRIPTORS: usize = 8;
pub(crate) const MAX_DESCRIPTOR_LIST_LEN: usize = 1024;
/// Blocks moved per read/write pair.
const CHUNK_BYTES: usize = 1024 * 1024;
const MAX_HELD: usize = 64;

/// The result of one finished EXTENDED COPY, kept for RECEIVE COPY RESULTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyResult {
    pub failed: bool,
    pub segments: u16,
    pub bytes: u64,
}

#[derive(Default)]
pub(crate) struct CopyState {
    /// Results of finished copies by (I_T nexus, list identifier); reported once.
    held: BTreeMap<(NexusId, u8), CopyResult>,
}

struct Target {
    dev: Arc<dyn BlockDevice>,
    own: bool,
}

fn aborted(s: Sense) -> Fail {
    s.into()
}

fn copy_dev_err(e: DeviceError) -> Fail {
    match e {
        DeviceError::Medium { lba } => codes::COPY_READ_ERROR.with_info(lba).into(),
        DeviceError::ReadOnly => codes::COPY_WRITE_PROTECTED.into(),
        DeviceError::NoSpace => codes::COPY_SPACE_ALLOCATION_FAILED.into(),
        _ => codes::COPY_ABORTED_NO_SENSE.into(),
    }
}

/// Checks one CSCD descriptor's type; resolution happens later. The LU ID TYPE and
/// LU IDENTIFIER fields (byte 1 bits 7:6, bytes 2-3) are ignored: SPC-4 made them
/// obsolete for identification descriptors, which name the LU by their designator.
fn check_target(d: &[u8]) -> Result<(), Fail> {
    match d[0] {
        0xE4 => Ok(()),
        _ => Err(codes::UNSUPPORTED_TARGET_DESCRIPTOR.into()),
    }
}

fn resolve(ctx: &Ctx, d: &[u8]) -> Result<Target, Fail> {
    if d[1] & 0x20 != 0 || d[1] & 0x1F != 0 {
        // NUL target or a non-block peripheral device type: nothing we can copy to.
        return Err(aborted(codes::COPY_TARGET_NOT_REACHABLE));
    }
    let dtype = d[5] & 0x0F;
    let len = usize::from(d[7]);
    if dtype != 3 || len != 16 {
        return Err(aborted(codes::COPY_TARGET_NOT_REACHABLE));
    }
    let mut naa = [0u8; 16];
    naa.copy_from_slice(&d[8..24]);
    if naa == ctx.lu.identity.naa {
        return Ok(Target {
            dev: ctx.lu.dev.clone(),
            own: true,
        });
    }
    let resolver = ctx
        .lu
        .resolver
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match resolver.and_then(|r| r(&naa)) {
        Some(dev) => {
            let own = Arc::ptr_eq(&dev, &ctx.lu.dev);
            Ok(Target { dev, own })
        }
        None => Err(aborted(codes::COPY_TARGET_NOT_REACHABLE)),
    }
}

pub(crate) fn extended_copy(ctx: &Ctx) -> CmdResult {
    if ctx.cdb.sa() != 0 {
        return Err(invalid_cdb_field(1, Some(4)).into());
    }
    let plen = ctx.cdb.u32(10) as usize;
    if plen == 0 {
        return Ok(Reply::good());
    }
    if plen < 16 || ctx.data.len() < plen {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = &ctx.data[..plen];
    let list_id = p[0];
    let usage = (p[1] >> 3) & 0x03;
    let tgt_len = usize::from(be16(p, 2));
    let seg_len = be32(p, 8) as usize;
    let inline = be32(p, 12) as usize;
    let total = 16usize
        .checked_add(tgt_len)
        .and_then(|t| t.checked_add(seg_len))
        .and_then(|t| t.checked_add(inline));
    match total {
        Some(t) if t <= plen => {}
        _ => return Err(codes::PARAM_LIST_LENGTH_ERROR.into()),
    }
    if tgt_len + seg_len > MAX_DESCRIPTOR_LIST_LEN {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    if inline != 0 {
        return Err(invalid_param_field(12, None).into());
    }
    if tgt_len % 32 != 0 {
        return Err(invalid_param_field(2, None).into());
    }
    let tgts: Vec<&[u8]> = p[16..16 + tgt_len].chunks_exact(32).collect();
    if tgts.len() > MAX_TARGET_DESCRIPTORS {
        return Err(codes::TOO_MANY_TARGET_DESCRIPTORS.into());
    }
    for t in &tgts {
        check_target(t)?;
    }
    let segs_raw = &p[16 + tgt_len..16 + tgt_len + seg_len];
    let mut segs = Vec::new();
    let mut off = 0;
    while off < segs_raw.len() {
        if segs_raw.len() - off < 4 {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        let len = usize::from(be16(segs_raw, off + 2)) + 4;
        if len > segs_raw.len() - off {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        segs.push(&segs_raw[off..off + len]);
        off += len;
    }
    if segs.len() > MAX_SEGMENT_DESCRIPTORS {
        return Err(codes::TOO_MANY_SEGMENT_DESCRIPTORS.into());
    }
    for (i, s) in segs.iter().enumerate() {
        if s[0] != 0x02 {
            return Err(codes::UNSUPPORTED_SEGMENT_DESCRIPTOR.into());
        }
        if s.len() != 28 {
            return Err(invalid_param_field((16 + tgt_len + i) as u16, None).into());
        }
    }
    let mut result = CopyResult {
        failed: false,
        segments: 0,
        bytes: 0,
    };
    let outcome = run_segments(ctx, &tgts, &segs, &mut result);
    result.failed = outcome.is_err();
    // Only completed copies are held: a failed one reports its sense data instead.
    if usage < 2 && !result.failed {
        let key = (ctx.nexus.clone(), list_id);
        let mut st = ctx.lu.copy_state();
        if st.held.len() >= MAX_HELD && !st.held.contains_key(&key) {
            let first = st.held.keys().next().cloned();
            if let Some(k) = first {
                st.held.remove(&k);
            }
        }
        st.held.insert(key, result);
    }
    outcome.map(|_| Reply::good())
}

fn run_segments(
    ctx: &Ctx,
    tgts: &[&[u8]],
    segs: &[&[u8]],
    result: &mut CopyResult,
) -> Result<(), Fail> {
    for s in segs {
        let src_i = usize::from(be16(s, 4));
        let dst_i = usize::from(be16(s, 6));
        let (Some(src_d), Some(dst_d)) = (tgts.get(src_i), tgts.get(dst_i)) else {
            return Err(aborted(codes::COPY_TARGET_NOT_REACHABLE));
        };
        let src = resolve(ctx, src_d)?;
        let dst = resolve(ctx, dst_d)?;
        let blocks = u64::from(be16(s, 10));
        let src_lba = be64(s, 12);
        let dst_lba = be64(s, 20);
        let bs = src.dev.block_size();
        if bs != dst.dev.block_size() {
            return Err(aborted(codes::COPY_ABORTED_NO_SENSE));
        }
        let in_range = |d: &Arc<dyn BlockDevice>, lba: u64| {
            let n = d.num_blocks();
            lba <= n && blocks <= n - lba
        };
        if !in_range(&src.dev, src_lba) || !in_range(&dst.dev, dst_lba) {
            return Err(aborted(codes::COPY_ABORTED_NO_SENSE));
        }
        if dst.dev.read_only() || (dst.own && ctx.lu.write_protected()) {
            return Err(aborted(codes::COPY_WRITE_PROTECTED));
        }
        let per = (CHUNK_BYTES / bs.max(1) as usize).max(1) as u64;
        let mut done = 0u64;
        let mut buf = Vec::new();
        while done < blocks {
            let n = per.min(blocks - done);
            buf.resize(n as usize * bs as usize, 0);
            src.dev
                .read(src_lba + done, &mut buf)
                .map_err(copy_dev_err)?;
            let _g = dst.own.then(|| ctx.lu.stripes.lock(dst_lba + done, n));
            dst.dev
                .write(dst_lba + done, &buf, false)
                .map_err(copy_dev_err)?;
            done += n;
            result.bytes += n * u64::from(bs);
        }
        result.segments = result.segments.saturating_add(1);
    }
    Ok(())
}

pub(crate) fn receive_copy_results(ctx: &Ctx) -> CmdResult {
    let alloc = ctx.cdb.u32(10) as usize;
    let d = match ctx.cdb.sa() {
        0x00 => {
            let list_id = ctx.cdb.u8(2);
            let key = (ctx.nexus.clone(), list_id);
            let Some(r) = ctx.lu.copy_state().held.remove(&key) else {
                return Err(invalid_cdb_field(2, None).into());
            };
            let mut d = vec![0u8; 12];
            d[3] = 8;
            d[4] = if r.failed { 0x01 } else { 0x00 };
            d[5..7].copy_from_slice(&r.segments.to_be_bytes());
            let (units, count) = if r.bytes <= u64::from(u32::MAX) {
                (0x00, r.bytes)
            } else {
                (0x01, r.bytes >> 10)
            };
            d[7] = units;
            d[8..12].copy_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
            d
        }
        0x03 => {
            let mut d = vec![0u8; 46];
            d[0..4].copy_from_slice(&42u32.to_be_bytes());
            d[4] = 0x01; // SNLID
            d[8..10].copy_from_slice(&(MAX_TARGET_DESCRIPTORS as u16).to_be_bytes());
            d[10..12].copy_from_slice(&(MAX_SEGMENT_DESCRIPTORS as u16).to_be_bytes());
            d[12..16].copy_from_slice(&(MAX_DESCRIPTOR_LIST_LEN as u32).to_be_bytes());
            d[16..20].copy_from_slice(&0xFFFFu32.to_be_bytes()); // max segment length
            d[36..38].copy_from_slice(&1u16.to_be_bytes()); // total concurrent copies
            d[38] = 1; // maximum concurrent copies
            d[39] = 9; // data segment granularity: 512 bytes
            d[43] = 2;
            d[44] = 0x02; // block -> block
            d[45] = 0xE4; // identification descriptor
            d
        }
        _ => return Err(invalid_cdb_field(1, Some(4)).into()),
    };
    Ok(Reply::data(trunc(d, alloc)))
}
