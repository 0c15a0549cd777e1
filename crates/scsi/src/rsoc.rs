//! The supported-command table: dispatch validation, reservation access class and
//! REPORT SUPPORTED OPERATION CODES / REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.

use crate::cdb::trunc;
use crate::lu::{CmdResult, Ctx, Reply};
use crate::sense::invalid_cdb_field;

/// How a command interacts with reservations (SPC-4 5.13, SPC-2 5.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Always allowed (INQUIRY, REPORT LUNS, REQUEST SENSE, MAINTENANCE IN reports).
    Free,
    /// Allowed under persistent reservations, conflicts under an SPC-2 reservation.
    Info,
    /// Reads the medium (or its state).
    Read,
    /// Changes the medium or the LU's state.
    Write,
    /// RESERVE / RELEASE (6/10).
    Spc2,
    /// PERSISTENT RESERVE IN / OUT.
    Pr,
}

/// One supported command (one service action for commands that have them).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CmdInfo {
    pub op: u8,
    pub sa: Option<u8>,
    pub len: u8,
    pub access: Access,
}

const fn c(op: u8, len: u8, access: Access) -> CmdInfo {
    CmdInfo {
        op,
        sa: None,
        len,
        access,
    }
}

const fn s(op: u8, sa: u8, len: u8, access: Access) -> CmdInfo {
    CmdInfo {
        op,
        sa: Some(sa),
        len,
        access,
    }
}

use Access::*;

pub(crate) static COMMANDS: &[CmdInfo] = &[
    c(0x00, 6, Info),  // TEST UNIT READY
    c(0x03, 6, Free),  // REQUEST SENSE
    c(0x08, 6, Read),  // READ(6)
    c(0x0A, 6, Write), // WRITE(6)
    c(0x12, 6, Free),  // INQUIRY
    c(0x15, 6, Write), // MODE SELECT(6)
    c(0x16, 6, Spc2),  // RESERVE(6)
    c(0x17, 6, Spc2),  // RELEASE(6)
    c(0x1A, 6, Read),  // MODE SENSE(6)
    c(0x1B, 6, Write), // START STOP UNIT
    c(0x1E, 6, Info),  // PREVENT ALLOW MEDIUM REMOVAL
    c(0x25, 10, Info), // READ CAPACITY(10)
    c(0x28, 10, Read),
    c(0x2A, 10, Write),
    c(0x2E, 10, Write),       // WRITE AND VERIFY(10)
    c(0x2F, 10, Read),        // VERIFY(10)
    c(0x34, 10, Read),        // PRE-FETCH(10)
    c(0x35, 10, Write),       // SYNCHRONIZE CACHE(10)
    c(0x37, 10, Read),        // READ DEFECT DATA(10)
    c(0x41, 10, Write),       // WRITE SAME(10)
    c(0x42, 10, Write),       // UNMAP
    s(0x48, 0x01, 10, Write), // SANITIZE OVERWRITE
    s(0x48, 0x02, 10, Write), // SANITIZE BLOCK ERASE
    s(0x48, 0x03, 10, Write), // SANITIZE CRYPTOGRAPHIC ERASE
    s(0x48, 0x1F, 10, Write), // SANITIZE EXIT FAILURE MODE
    c(0x55, 10, Write),       // MODE SELECT(10)
    c(0x56, 10, Spc2),        // RESERVE(10)
    c(0x57, 10, Spc2),        // RELEASE(10)
    c(0x5A, 10, Read),        // MODE SENSE(10)
    s(0x5E, 0x00, 10, Pr),    // PERSISTENT RESERVE IN
    s(0x5E, 0x01, 10, Pr),
    s(0x5E, 0x02, 10, Pr),
    s(0x5E, 0x03, 10, Pr),
    s(0x5F, 0x00, 10, Pr), // PERSISTENT RESERVE OUT
    s(0x5F, 0x01, 10, Pr),
    s(0x5F, 0x02, 10, Pr),
    s(0x5F, 0x03, 10, Pr),
    s(0x5F, 0x04, 10, Pr),
    s(0x5F, 0x05, 10, Pr),
    s(0x5F, 0x06, 10, Pr),
    s(0x5F, 0x07, 10, Pr),
    s(0x83, 0x00, 16, Write), // EXTENDED COPY (LID1)
    s(0x84, 0x00, 16, Read),  // RECEIVE COPY STATUS (LID1)
    s(0x84, 0x03, 16, Read),  // RECEIVE COPY OPERATING PARAMETERS
    c(0x88, 16, Read),
    c(0x89, 16, Write), // COMPARE AND WRITE
    c(0x8A, 16, Write),
    c(0x8B, 16, Write),      // ORWRITE(16)
    c(0x8E, 16, Write),      // WRITE AND VERIFY(16)
    c(0x8F, 16, Read),       // VERIFY(16)
    c(0x90, 16, Read),       // PRE-FETCH(16)
    c(0x91, 16, Write),      // SYNCHRONIZE CACHE(16)
    c(0x93, 16, Write),      // WRITE SAME(16)
    c(0x9C, 16, Write),      // WRITE ATOMIC(16)
    s(0x9E, 0x10, 16, Info), // READ CAPACITY(16)
    s(0x9E, 0x12, 16, Read), // GET LBA STATUS
    c(0xA0, 12, Free),       // REPORT LUNS
    s(0xA3, 0x0A, 12, Free), // REPORT TARGET PORT GROUPS
    s(0xA3, 0x0C, 12, Free), // REPORT SUPPORTED OPERATION CODES
    s(0xA3, 0x0D, 12, Free), // REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
    c(0xA8, 12, Read),
    c(0xAA, 12, Write),
    c(0xAE, 12, Write), // WRITE AND VERIFY(12)
    c(0xAF, 12, Read),  // VERIFY(12)
    c(0xB7, 12, Read),  // READ DEFECT DATA(12)
];

pub(crate) enum Lookup {
    Found(&'static CmdInfo),
    BadServiceAction,
    Unknown,
}

fn has_sa(op: u8) -> bool {
    COMMANDS.iter().any(|i| i.op == op && i.sa.is_some())
}

pub(crate) fn lookup(op: u8, sa: u8) -> Lookup {
    let mut seen = false;
    for i in COMMANDS {
        if i.op != op {
            continue;
        }
        seen = true;
        match i.sa {
            None => return Lookup::Found(i),
            Some(x) if x == sa => return Lookup::Found(i),
            _ => {}
        }
    }
    if seen {
        Lookup::BadServiceAction
    } else {
        Lookup::Unknown
    }
}

/// CDB usage data: which bits of each CDB byte the engine looks at.
fn usage(i: &CmdInfo) -> Vec<u8> {
    let n = usize::from(i.len);
    let mut u = vec![0xFFu8; n];
    u[0] = i.op;
    if let Some(sa) = i.sa {
        u[1] = 0xE0 | sa;
    }
    if n > 1 {
        u[n - 1] = 0x07;
    }
    u
}

fn timeout_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t[4..8].copy_from_slice(&30u32.to_be_bytes());
    t[8..12].copy_from_slice(&60u32.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN / 0x0C).
pub(crate) fn report_supported_opcodes(ctx: &Ctx) -> CmdResult {
    let cdb = &ctx.cdb;
    let rctd = cdb.bit(2, 7);
    let options = cdb.u8(2) & 0x07;
    let req_op = cdb.u8(3);
    let req_sa = cdb.u16(4);
    let alloc = cdb.u32(6) as usize;
    let data = match options {
        0 => {
            let mut d = vec![0u8; 4];
            for i in COMMANDS {
                d.push(i.op);
                d.push(0);
                d.extend_from_slice(&u16::from(i.sa.unwrap_or(0)).to_be_bytes());
                d.push(0);
                d.push(if rctd { 0x02 } else { 0 } | u8::from(i.sa.is_some()));
                d.extend_from_slice(&u16::from(i.len).to_be_bytes());
                if rctd {
                    d.extend_from_slice(&timeout_descriptor());
                }
            }
            let len = (d.len() - 4) as u32;
            d[..4].copy_from_slice(&len.to_be_bytes());
            d
        }
        1..=3 => {
            let found = match options {
                1 => {
                    if has_sa(req_op) {
                        return Err(invalid_cdb_field(2, Some(0)).into());
                    }
                    COMMANDS.iter().find(|i| i.op == req_op)
                }
                2 => {
                    if !has_sa(req_op) && COMMANDS.iter().any(|i| i.op == req_op) {
                        return Err(invalid_cdb_field(2, Some(0)).into());
                    }
                    COMMANDS
                        .iter()
                        .find(|i| i.op == req_op && i.sa.map(u16::from) == Some(req_sa))
                }
                _ => COMMANDS
                    .iter()
                    .find(|i| i.op == req_op && i.sa.map_or(true, |s| u16::from(s) == req_sa)),
            };
            one_command(found, rctd)
        }
        _ => return Err(invalid_cdb_field(2, Some(0)).into()),
    };
    Ok(Reply::data(trunc(data, alloc)))
}

fn one_command(found: Option<&CmdInfo>, rctd: bool) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    match found {
        None => d[1] = 0x01, // not supported
        Some(i) => {
            d[1] = 0x03 | if rctd { 0x80 } else { 0 };
            let u = usage(i);
            d[2..4].copy_from_slice(&(u.len() as u16).to_be_bytes());
            d.extend_from_slice(&u);
            if rctd {
                d.extend_from_slice(&timeout_descriptor());
            }
        }
    }
    d
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (MAINTENANCE IN / 0x0D).
pub(crate) fn report_supported_tmfs(ctx: &Ctx) -> CmdResult {
    let alloc = ctx.cdb.u32(6) as usize;
    if alloc < 4 {
        return Err(invalid_cdb_field(6, None).into());
    }
    let repd = ctx.cdb.bit(2, 7);
    // ATS, ATSS, CACAS(0), CTSS, LURS, QTS(0), TRS ; byte1: QAES, QTSS, ITNRS
    let mut d = vec![0u8; if repd { 16 } else { 4 }];
    d[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x01; // ATS ATSS CTSS LURS TRS
    if repd {
        d[3] = 0x0C;
    }
    Ok(Reply::data(trunc(d, alloc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for i in COMMANDS {
            assert_eq!(
                crate::cdb::cdb_len(i.op),
                Some(usize::from(i.len)),
                "op {:#x}",
                i.op
            );
            assert!(matches!(lookup(i.op, i.sa.unwrap_or(0)), Lookup::Found(_)));
            if i.sa.is_none() {
                assert!(!has_sa(i.op));
            }
        }
        assert!(matches!(lookup(0x5E, 9), Lookup::BadServiceAction));
        assert!(matches!(lookup(0x48, 4), Lookup::BadServiceAction));
        assert!(matches!(lookup(0xFF, 0), Lookup::Unknown));
    }
}
