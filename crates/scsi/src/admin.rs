//! Small housekeeping commands: TEST UNIT READY, REQUEST SENSE, START STOP UNIT,
//! PREVENT ALLOW MEDIUM REMOVAL, READ CAPACITY, READ DEFECT DATA, REPORT LUNS and
//! REPORT TARGET PORT GROUPS.

use crate::cdb::trunc;
use crate::lu::{CmdResult, Ctx, Reply};
use crate::sense::{build_fixed, codes, invalid_cdb_field};
use std::sync::atomic::Ordering;

pub(crate) fn test_unit_ready(_ctx: &Ctx) -> CmdResult {
    Ok(Reply::good())
}

pub(crate) fn request_sense(ctx: &Ctx) -> CmdResult {
    if ctx.cdb.bit(1, 0) {
        // Descriptor format sense data is not supported.
        return Err(invalid_cdb_field(1, Some(0)).into());
    }
    let alloc = usize::from(ctx.cdb.u8(4));
    let data = if let Some(ua) = ctx.lu.ua.take(ctx.nexus) {
        ua.to_fixed()
    } else if ctx.lu.sanitizing.load(Ordering::SeqCst) {
        // Progress indication: we do not track it, report 0.
        build_fixed(&codes::SANITIZE_IN_PROGRESS, Some([0, 0, 0]))
    } else {
        codes::NO_SENSE.to_fixed()
    };
    Ok(Reply::data(trunc(data, alloc)))
}

pub(crate) fn start_stop_unit(ctx: &Ctx) -> CmdResult {
    let power_condition = ctx.cdb.u8(4) >> 4;
    let loej = ctx.cdb.bit(4, 1);
    if power_condition == 0 && loej {
        // The medium is not removable.
        return Err(invalid_cdb_field(4, Some(1)).into());
    }
    Ok(Reply::good())
}

pub(crate) fn prevent_allow(_ctx: &Ctx) -> CmdResult {
    // Not a removable medium: nothing to lock; accepted as SBC-3 allows.
    Ok(Reply::good())
}

pub(crate) fn read_capacity10(ctx: &Ctx) -> CmdResult {
    let pmi = ctx.cdb.bit(8, 0);
    if !pmi && ctx.cdb.u32(2) != 0 {
        return Err(invalid_cdb_field(2, None).into());
    }
    let dev = ctx.dev();
    let last = dev.num_blocks().saturating_sub(1);
    let mut d = vec![0u8; 8];
    d[..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
    d[4..].copy_from_slice(&dev.block_size().to_be_bytes());
    Ok(Reply::data(d))
}

/// log2(logical blocks per 4096-byte physical block).
pub(crate) fn lbppbe(block_size: u32) -> u8 {
    let mut e = 0u8;
    let mut bs = u64::from(block_size.max(1));
    while bs < 4096 && e < 15 {
        bs *= 2;
        e += 1;
    }
    e
}

pub(crate) fn read_capacity16(ctx: &Ctx) -> CmdResult {
    let alloc = ctx.cdb.u32(10) as usize;
    let dev = ctx.dev();
    let mut d = vec![0u8; 32];
    d[..8].copy_from_slice(&dev.num_blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&dev.block_size().to_be_bytes());
    d[13] = lbppbe(dev.block_size()) & 0x0F;
    if dev.thin() {
        d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    }
    Ok(Reply::data(trunc(d, alloc)))
}

pub(crate) fn read_defect_data(ctx: &Ctx) -> CmdResult {
    let cdb = &ctx.cdb;
    if cdb.op() == 0x37 {
        let flags = cdb.u8(2) & 0x1F;
        let alloc = usize::from(cdb.u16(7));
        Ok(Reply::data(trunc(vec![0, flags, 0, 0], alloc)))
    } else {
        let flags = cdb.u8(1) & 0x1F;
        let alloc = cdb.u32(6) as usize;
        Ok(Reply::data(trunc(vec![0, flags, 0, 0, 0, 0, 0, 0], alloc)))
    }
}

pub(crate) fn report_luns(ctx: &Ctx) -> CmdResult {
    let select = ctx.cdb.u8(2);
    if select > 2 {
        return Err(invalid_cdb_field(2, None).into());
    }
    let alloc = ctx.cdb.u32(6) as usize;
    if alloc < 16 {
        return Err(invalid_cdb_field(6, None).into());
    }
    let mut d = vec![0u8; 16];
    d[3] = 8; // one LUN: 0
    Ok(Reply::data(trunc(d, alloc)))
}

pub(crate) fn report_target_port_groups(ctx: &Ctx) -> CmdResult {
    let ext = (ctx.cdb.u8(1) >> 5) == 1;
    let alloc = ctx.cdb.u32(6) as usize;
    let groups = match ctx
        .lu
        .port_groups
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    {
        Some(g) => g,
        None => {
            let mut ports = ctx.lu.ua.ports();
            if !ports.contains(&ctx.nexus.relative_target_port) {
                ports.push(ctx.nexus.relative_target_port);
                ports.sort_unstable();
            }
            vec![crate::lu::TargetPortGroup {
                id: ctx.lu.identity.target_port_group,
                ports,
            }]
        }
    };
    let mut d = vec![0u8; if ext { 8 } else { 4 }];
    if ext {
        d[4] = 0x10;
        d[5] = 0;
    }
    for g in &groups {
        d.push(0x80); // PREF, active/optimized
        d.push(0x01); // AO_SUP
        d.extend_from_slice(&g.id.to_be_bytes());
        d.push(0);
        d.push(0); // status code
        d.push(0);
        d.push(u8::try_from(g.ports.len()).unwrap_or(u8::MAX));
        for p in g.ports.iter().take(255) {
            d.extend_from_slice(&[0, 0]);
            d.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (d.len() - 4) as u32;
    d[..4].copy_from_slice(&len.to_be_bytes());
    Ok(Reply::data(trunc(d, alloc)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn exponent() {
        assert_eq!(super::lbppbe(512), 3);
        assert_eq!(super::lbppbe(4096), 0);
        assert_eq!(super::lbppbe(0), 12);
    }
}
