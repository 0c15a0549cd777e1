//! MODE SENSE / MODE SELECT (6 and 10): read-write error recovery (0x01), caching (0x08),
//! control (0x0A) and informational exceptions control (0x1C) pages.

use crate::cdb::{be16, byte, trunc};
use crate::lu::{CmdResult, Ctx, Reply};
use crate::sense::{codes, invalid_cdb_field, invalid_param_field};
use std::sync::atomic::Ordering;

const PAGES: [u8; 4] = [0x01, 0x08, 0x0A, 0x1C];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
    Saved,
}

fn page(ctx: &Ctx, code: u8, pc: Pc) -> Vec<u8> {
    let mut p = match code {
        0x01 => vec![0x01, 0x0A, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            p
        }
        0x0A => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0A;
            p[1] = 0x0A;
            p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
            p[8] = 0xFF; // busy timeout period: unlimited
            p[9] = 0xFF;
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = 0x1C;
            p[1] = 0x0A;
            p[2] = 0x08; // DEXCPT
            p
        }
    };
    match (code, pc) {
        (_, Pc::Changeable) => {
            p[2..].fill(0);
            match code {
                0x08 => p[2] = 0x04, // WCE
                0x0A => p[4] = 0x08, // SWP
                _ => {}
            }
        }
        (0x08, Pc::Current) if ctx.dev().write_cache_enabled() => p[2] |= 0x04,
        (0x08, Pc::Default | Pc::Saved) => p[2] |= 0x04,
        (0x0A, Pc::Current) if ctx.lu.swp.load(Ordering::SeqCst) => p[4] |= 0x08,
        _ => {}
    }
    p
}

pub(crate) fn mode_sense(ctx: &Ctx) -> CmdResult {
    let c = &ctx.cdb;
    let ten = c.op() == 0x5A;
    let dbd = c.bit(1, 3);
    let llbaa = ten && c.bit(1, 4);
    let pc = match c.u8(2) >> 6 {
        0 => Pc::Current,
        1 => Pc::Changeable,
        2 => Pc::Default,
        _ => Pc::Saved,
    };
    let code = c.u8(2) & 0x3F;
    let sub = c.u8(3);
    let alloc = if ten {
        usize::from(c.u16(7))
    } else {
        usize::from(c.u8(4))
    };
    let mut body = Vec::new();
    if code == 0x3F {
        if sub != 0 && sub != 0xFF {
            return Err(invalid_cdb_field(3, None).into());
        }
        for p in PAGES {
            body.extend(page(ctx, p, pc));
        }
    } else if PAGES.contains(&code) && (sub == 0 || sub == 0xFF) {
        body.extend(page(ctx, code, pc));
    } else if PAGES.contains(&code) {
        return Err(invalid_cdb_field(3, None).into());
    } else {
        return Err(invalid_cdb_field(2, Some(0)).into());
    }
    let dev = ctx.dev();
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd.extend_from_slice(&dev.num_blocks().to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&dev.block_size().to_be_bytes());
        } else {
            let n = u32::try_from(dev.num_blocks()).unwrap_or(u32::MAX);
            bd.extend_from_slice(&n.to_be_bytes());
            bd.push(0);
            bd.extend_from_slice(&dev.block_size().to_be_bytes()[1..]);
        }
    }
    let dsp = if ctx.lu.write_protected() { 0x80 } else { 0 } | 0x10; // WP, DPOFUA
    let mut d = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[4] = u8::from(llbaa && !dbd);
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    d.extend(bd);
    d.extend(body);
    if ten {
        let l = u16::try_from(d.len() - 2).unwrap_or(u16::MAX);
        d[..2].copy_from_slice(&l.to_be_bytes());
    } else {
        d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(Reply::data(trunc(d, alloc)))
}

pub(crate) fn mode_select(ctx: &Ctx) -> CmdResult {
    let c = &ctx.cdb;
    let ten = c.op() == 0x55;
    let plen = if ten {
        usize::from(c.u16(7))
    } else {
        usize::from(c.u8(4))
    };
    if plen == 0 {
        return Ok(Reply::good());
    }
    if ctx.data.len() < plen {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = &ctx.data[..plen];
    let hdr = if ten { 8 } else { 4 };
    if p.len() < hdr {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    let bdl = if ten {
        usize::from(be16(p, 6))
    } else {
        usize::from(byte(p, 3))
    };
    let mut off = hdr + bdl;
    if off > p.len() {
        return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
    }
    if bdl >= 8 {
        // The block length in the descriptor must be ours.
        let bl = if bdl >= 16 && ten && byte(p, 4) & 1 != 0 {
            crate::cdb::be32(p, hdr + 12)
        } else {
            u32::from_be_bytes([0, byte(p, hdr + 5), byte(p, hdr + 6), byte(p, hdr + 7)])
        };
        if bl != 0 && bl != ctx.dev().block_size() {
            return Err(invalid_param_field((hdr + 5) as u16, None).into());
        }
    }
    let mut wce: Option<bool> = None;
    let mut swp: Option<bool> = None;
    while off < p.len() {
        if p.len() - off < 2 {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        let code = p[off] & 0x3F;
        if p[off] & 0x40 != 0 || !PAGES.contains(&code) {
            return Err(invalid_param_field(off as u16, None).into());
        }
        let len = usize::from(p[off + 1]) + 2;
        if off + len > p.len() {
            return Err(codes::PARAM_LIST_LENGTH_ERROR.into());
        }
        let given = &p[off..off + len];
        let cur = page(ctx, code, Pc::Current);
        let mask = page(ctx, code, Pc::Changeable);
        if given.len() != cur.len() {
            return Err(invalid_param_field((off + 1) as u16, None).into());
        }
        for i in 2..len {
            if (given[i] ^ cur[i]) & !mask[i] != 0 {
                return Err(invalid_param_field((off + i) as u16, None).into());
            }
        }
        match code {
            0x08 => wce = Some(given[2] & 0x04 != 0),
            0x0A => swp = Some(given[4] & 0x08 != 0),
            _ => {}
        }
        off += len;
    }
    let mut changed = false;
    if let Some(w) = wce {
        if w != ctx.dev().write_cache_enabled() {
            ctx.dev().set_write_cache(w).map_err(|e| ctx.dev_fail(e))?;
            changed = true;
        }
    }
    if let Some(s) = swp {
        if ctx.lu.swp.swap(s, Ordering::SeqCst) != s {
            changed = true;
        }
    }
    if changed {
        ctx.lu
            .ua
            .push_others(ctx.nexus, codes::UA_MODE_PARAMETERS_CHANGED);
    }
    Ok(Reply::good())
}
