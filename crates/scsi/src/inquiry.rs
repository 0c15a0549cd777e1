//! INQUIRY: standard data and the vital product data pages.

use crate::cdb::trunc;
use crate::lu::{CmdResult, Ctx, Reply};
use crate::sense::invalid_cdb_field;

/// Limits reported in the Block Limits VPD page and enforced by the commands.
pub(crate) mod limits {
    /// MAXIMUM TRANSFER LENGTH in bytes (converted to blocks per device).
    pub const MAX_TRANSFER_BYTES: u64 = 32 * 1024 * 1024;
    pub const MAX_COMPARE_AND_WRITE_BLOCKS: u64 = 255;
    pub const MAX_UNMAP_LBA_COUNT: u64 = 1024 * 1024;
    pub const MAX_UNMAP_DESCRIPTORS: usize = 1024;
    pub const MAX_WRITE_SAME_BLOCKS: u64 = 1024 * 1024;
    /// MAXIMUM ATOMIC TRANSFER LENGTH in bytes.
    pub const MAX_ATOMIC_BYTES: u64 = 1024 * 1024;

    pub fn max_transfer_blocks(block_size: u32) -> u64 {
        MAX_TRANSFER_BYTES / u64::from(block_size.max(1))
    }
    pub fn max_atomic_blocks(block_size: u32) -> u64 {
        MAX_ATOMIC_BYTES / u64::from(block_size.max(1))
    }
}

pub(crate) const SUPPORTED_VPD: [u8; 7] = [0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2];

pub(crate) fn inquiry(ctx: &Ctx) -> CmdResult {
    let cdb = &ctx.cdb;
    let evpd = cdb.bit(1, 0);
    if cdb.bit(1, 1) {
        return Err(invalid_cdb_field(1, Some(1)).into()); // CMDDT
    }
    let page = cdb.u8(2);
    let alloc = usize::from(cdb.u16(3));
    let data = if !evpd {
        if page != 0 {
            return Err(invalid_cdb_field(2, None).into());
        }
        standard(ctx)
    } else {
        vpd(ctx, page)?
    };
    Ok(Reply::data(trunc(data, alloc)))
}

fn pad_ascii(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = if (0x20..=0x7e).contains(&c) { c } else { b'?' };
    }
}

fn standard(_ctx: &Ctx) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // connected, direct access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[5] = 0x10 | 0x08; // TPGS = implicit ALUA, 3PC
    d[6] = 0x10; // MULTIP
    d[7] = 0x02; // CMDQUE
    pad_ascii(&mut d[8..16], "HAVEN");
    pad_ascii(&mut d[16..32], "VOLUME");
    pad_ascii(&mut d[32..36], "0001");
    let versions: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960]; // SAM-5 SPC-4 SBC-3 iSCSI
    for (i, v) in versions.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn page(code: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = vec![0, code];
    d.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

fn designator(proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) -> Vec<u8> {
    let mut d = vec![proto_codeset, piv_assoc_type, 0, value.len() as u8];
    d.extend_from_slice(value);
    d
}

/// A NUL-terminated name padded to a multiple of 4 bytes.
pub(crate) fn padded_name(s: &str, max: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(max.saturating_sub(4)).collect();
    v.push(0);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

pub(crate) fn vpd(ctx: &Ctx, code: u8) -> Result<Vec<u8>, crate::lu::Fail> {
    let dev = ctx.dev();
    let bs = dev.block_size();
    let id = &ctx.lu.identity;
    let body = match code {
        0x00 => SUPPORTED_VPD.to_vec(),
        0x80 => {
            let s: Vec<u8> = id
                .serial
                .bytes()
                .filter(|c| (0x20..=0x7e).contains(c))
                .take(250)
                .collect();
            s
        }
        0x83 => {
            let mut b = Vec::new();
            // NAA, logical unit association, binary.
            b.extend(designator(0x01, 0x03, &id.naa));
            // Relative target port, target port association, iSCSI protocol, PIV.
            let rtp = ctx.nexus.relative_target_port.to_be_bytes();
            b.extend(designator(0x51, 0x94, &[0, 0, rtp[0], rtp[1]]));
            // Target port group.
            let tpg = id.target_port_group.to_be_bytes();
            b.extend(designator(0x51, 0x95, &[0, 0, tpg[0], tpg[1]]));
            // SCSI name string of the target device, UTF-8.
            b.extend(designator(0x53, 0xA8, &padded_name(&id.target_name, 252)));
            b
        }
        0x8F => third_party_copy(),
        0xB0 => block_limits(bs),
        0xB1 => {
            let mut b = vec![0u8; 0x3C];
            b[1] = 0x01; // non-rotating medium
                         // WABEREQ = WACEREQ = 01b: reads after a block or cryptographic erase succeed.
            b[3] = 0x40 | 0x10;
            b
        }
        0xB2 => {
            let mut b = vec![0u8; 4];
            if dev.thin() {
                b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU LBPWS LBPWS10 LBPRZ
                b[2] = 0x02; // thin provisioned
            }
            b
        }
        _ => return Err(invalid_cdb_field(2, None).into()),
    };
    Ok(page(code, body))
}

fn block_limits(bs: u32) -> Vec<u8> {
    let mut b = vec![0u8; 0x3C];
    let bpp = 1u16 << crate::admin::lbppbe(bs);
    // (offsets are from byte 4 of the page)
    // WSNZ = 0: WRITE SAME with zero blocks writes to the end of the medium.
    b[1] = limits::MAX_COMPARE_AND_WRITE_BLOCKS as u8;
    b[2..4].copy_from_slice(&bpp.to_be_bytes()); // optimal transfer length granularity
    let max_xfer = limits::max_transfer_blocks(bs) as u32;
    b[4..8].copy_from_slice(&max_xfer.to_be_bytes());
    b[8..12].copy_from_slice(&(1024 * 1024 / bs.max(1)).to_be_bytes()); // optimal transfer
    b[12..16].copy_from_slice(&max_xfer.to_be_bytes()); // max prefetch length
    b[16..20].copy_from_slice(&(limits::MAX_UNMAP_LBA_COUNT as u32).to_be_bytes());
    b[20..24].copy_from_slice(&(limits::MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
    b[24..28].copy_from_slice(&u32::from(bpp).to_be_bytes()); // optimal unmap granularity
    b[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
    b[32..40].copy_from_slice(&limits::MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    b[40..44].copy_from_slice(&(limits::max_atomic_blocks(bs) as u32).to_be_bytes());
    b
}

fn third_party_copy() -> Vec<u8> {
    // Supported Commands descriptor: EXTENDED COPY(LID1); RECEIVE COPY STATUS + OP PARAMS.
    let list: [u8; 7] = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
    let mut desc = vec![list.len() as u8];
    desc.extend_from_slice(&list);
    while desc.len() % 4 != 0 {
        desc.push(0);
    }
    let mut b = vec![0x00, 0x01];
    b.extend_from_slice(&(desc.len() as u16).to_be_bytes());
    b.extend(desc);
    b
}
