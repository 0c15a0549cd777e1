//! Thin provisioning: UNMAP, WRITE SAME (with UNMAP / NDOB) and GET LBA STATUS.

use crate::cdb::{be16, be32, be64, trunc};
use crate::inquiry::limits;
use crate::lu::{CmdResult, Ctx, Fail, Reply};
use crate::rw::check_range;
use crate::sense::{codes, invalid_cdb_field, invalid_param_field};

/// Bytes written per device call by WRITE SAME.
const WS_CHUNK: usize = 1024 * 1024;

pub(crate) fn unmap(ctx: &Ctx) -> CmdResult {
    if ctx.cdb.bit(1, 0) {
        return Err(invalid_cdb_field(1, Some(0)).into()); // ANCHOR: no ANC_SUP
    }
    ctx.check_writable()?;
    let plen = usize::from(ctx.cdb.u16(7));
    if plen == 0 {
        return Ok(Reply::good());
    }
    let p = &ctx.data[..plen.min(ctx.data.len())];
    if p.len() < 8 {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let desc_len = usize::from(be16(p, 2));
    if desc_len % 16 != 0 {
        return Err(invalid_param_field(2, None).into());
    }
    let descs = &p[8..(8 + desc_len).min(p.len())];
    let count = descs.len() / 16;
    if count > limits::MAX_UNMAP_DESCRIPTORS {
        return Err(invalid_param_field(2, None).into());
    }
    let nb = ctx.dev().num_blocks();
    let mut ranges = Vec::with_capacity(count);
    for (i, d) in descs.chunks_exact(16).enumerate() {
        let lba = be64(d, 0);
        let n = u64::from(be32(d, 8));
        if lba > nb || n > nb - lba {
            return Err(codes::LBA_OUT_OF_RANGE.into());
        }
        if n > limits::MAX_UNMAP_LBA_COUNT {
            return Err(invalid_param_field((8 + i * 16 + 8) as u16, None).into());
        }
        if n > 0 {
            ranges.push((lba, n));
        }
    }
    for (lba, n) in ranges {
        let _g = ctx.lu.stripes.lock(lba, n);
        ctx.dev().unmap(lba, n).map_err(|e| ctx.dev_fail(e))?;
    }
    Ok(Reply::good())
}

pub(crate) fn write_same(ctx: &Ctx) -> CmdResult {
    let c = &ctx.cdb;
    let flags = c.u8(1);
    let (lba, len, len_byte) = if c.op() == 0x41 {
        (u64::from(c.u32(2)), u64::from(c.u16(7)), 7u16)
    } else {
        (c.u64(2), u64::from(c.u32(10)), 10u16)
    };
    let unmap = flags & 0x08 != 0;
    let ndob = c.op() == 0x93 && flags & 0x01 != 0;
    if flags & 0xE0 != 0 {
        return Err(invalid_cdb_field(1, Some(5)).into());
    }
    if flags & 0x10 != 0 {
        return Err(invalid_cdb_field(1, Some(4)).into()); // ANCHOR
    }
    ctx.check_writable()?;
    check_range(ctx, lba, len)?;
    // WSNZ is 0: NUMBER OF LOGICAL BLOCKS 0 means "to the last LBA" (SBC-4 5.48).
    let len = if len == 0 {
        ctx.dev().num_blocks() - lba
    } else {
        len
    };
    if len > limits::MAX_WRITE_SAME_BLOCKS {
        return Err(invalid_cdb_field(len_byte, None).into());
    }
    let bs = ctx.dev().block_size() as usize;
    if len == 0 {
        return Ok(Reply::good());
    }
    let block: Vec<u8> = if ndob {
        vec![0u8; bs]
    } else {
        if ctx.data.len() != bs {
            return Err(invalid_cdb_field(len_byte, None).into());
        }
        ctx.data.to_vec()
    };
    // UNMAP set on a thin volume: the range is deallocated whatever the Data-Out block
    // holds (reads then return zeros, LBPRZ=1), as SBC-3 and libiscsi's
    // WriteSame*.UnmapUntilEnd expect.
    if unmap && ctx.dev().thin() {
        let _g = ctx.lu.stripes.lock(lba, len);
        ctx.dev().unmap(lba, len).map_err(|e| ctx.dev_fail(e))?;
        return Ok(Reply::good());
    }
    fill(ctx, lba, len, &block)?;
    Ok(Reply::good())
}

/// Writes `block` to every block of `[lba, lba+len)`.
pub(crate) fn fill(ctx: &Ctx, lba: u64, len: u64, block: &[u8]) -> Result<(), Fail> {
    let bs = block.len().max(1);
    let per = (WS_CHUNK / bs).max(1) as u64;
    let chunk: Vec<u8> = block
        .iter()
        .copied()
        .cycle()
        .take(bs * per.min(len) as usize)
        .collect();
    let mut done = 0u64;
    while done < len {
        let n = per.min(len - done);
        let _g = ctx.lu.stripes.lock(lba + done, n);
        ctx.dev()
            .write(lba + done, &chunk[..n as usize * bs], false)
            .map_err(|e| ctx.dev_fail(e))?;
        done += n;
    }
    Ok(())
}

pub(crate) fn get_lba_status(ctx: &Ctx) -> CmdResult {
    let lba = ctx.cdb.u64(2);
    let alloc = ctx.cdb.u32(10) as usize;
    let dev = ctx.dev();
    let nb = dev.num_blocks();
    if lba >= nb {
        return Err(codes::LBA_OUT_OF_RANGE.into());
    }
    // libiscsi's GetLBAStatus.UnmapSingle expects a descriptor that starts at the next
    // physical block boundary when the request is not aligned to one.
    let per_phys = 1u64 << crate::admin::lbppbe(dev.block_size());
    let mut cur = lba;
    if lba % per_phys != 0 {
        let up = (lba / per_phys + 1) * per_phys;
        if up < nb {
            cur = up;
        }
    }
    let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 4096);
    let mut d = vec![0u8; 8];
    let mut count = 0;
    while cur < nb && count < max_desc {
        let st = dev.lba_status(cur).map_err(|e| ctx.dev_fail(e))?;
        let run = st.blocks.clamp(1, nb - cur).min(u64::from(u32::MAX));
        d.extend_from_slice(&cur.to_be_bytes());
        d.extend_from_slice(&(run as u32).to_be_bytes());
        d.push(if st.mapped { 0 } else { 1 });
        d.extend_from_slice(&[0, 0, 0]);
        cur += run;
        count += 1;
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Reply::data(trunc(d, alloc)))
}
