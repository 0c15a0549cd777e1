//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, additional header
//! segments and the data segment, with typed accessors for the fields haven uses.
//!
//! A [`Pdu`] keeps its BHS as raw bytes; accessors read and write fields in place, so a
//! PDU decoded from the wire and one built by the target use the same representation.

use bytes::Bytes;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Reserved tag value ("no task" / "no target transfer").
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// PDU opcodes (RFC 7143 §11.1.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    Snack = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Self> {
        use Opcode::*;
        Some(match v & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => Snack,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// Flag bits of byte 1.
pub mod flags {
    /// Final (F) bit.
    pub const FINAL: u8 = 0x80;
    /// SCSI Command: read (R) and write (W).
    pub const READ: u8 = 0x40;
    pub const WRITE: u8 = 0x20;
    /// Login: transit (T) and continue (C).
    pub const TRANSIT: u8 = 0x80;
    pub const CONTINUE: u8 = 0x40;
    /// Text: continue (C).
    pub const TEXT_CONTINUE: u8 = 0x40;
    /// Data-In: acknowledge (A), residual overflow (O), underflow (U), status (S).
    pub const ACK: u8 = 0x40;
    pub const OVERFLOW: u8 = 0x04;
    pub const UNDERFLOW: u8 = 0x02;
    pub const STATUS: u8 = 0x01;
    /// Immediate delivery bit of byte 0.
    pub const IMMEDIATE: u8 = 0x40;
}

/// One PDU: header, optional AHS bytes, and the data segment (without padding).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdu")
            .field("opcode", &format_args!("{:#04x}", self.raw_opcode()))
            .field("flags", &format_args!("{:#04x}", self.flags()))
            .field("itt", &format_args!("{:#x}", self.itt()))
            .field("data_len", &self.data.len())
            .finish()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Pdu {
    /// A zeroed PDU with `opcode` set.
    pub fn new(opcode: Opcode) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode as u8;
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }

    pub fn raw_opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.bhs[0])
    }
    pub fn immediate(&self) -> bool {
        self.bhs[0] & flags::IMMEDIATE != 0
    }
    pub fn set_immediate(&mut self, on: bool) {
        if on {
            self.bhs[0] |= flags::IMMEDIATE;
        } else {
            self.bhs[0] &= !flags::IMMEDIATE;
        }
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & flags::FINAL != 0
    }
    /// TotalAHSLength in bytes as the header declares it.
    pub fn declared_ahs_len(&self) -> usize {
        self.bhs[4] as usize * 4
    }
    /// DataSegmentLength as the header declares it.
    pub fn declared_data_len(&self) -> usize {
        ((self.bhs[5] as usize) << 16) | ((self.bhs[6] as usize) << 8) | self.bhs[7] as usize
    }
    /// Set the length fields from `ahs` and `data` (called by the encoder).
    pub fn fix_lengths(&mut self) {
        self.bhs[4] = (self.ahs.len() / 4) as u8;
        let n = self.data.len();
        self.bhs[5] = (n >> 16) as u8;
        self.bhs[6] = (n >> 8) as u8;
        self.bhs[7] = n as u8;
    }
    pub fn lun(&self) -> u64 {
        u64::from_be_bytes(self.bhs[8..16].try_into().unwrap())
    }
    pub fn set_lun(&mut self, lun: u64) {
        self.bhs[8..16].copy_from_slice(&lun.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        be32(&self.bhs, 16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.put32(16, v)
    }
    /// A 32-bit field at byte `at`.
    pub fn get32(&self, at: usize) -> u32 {
        be32(&self.bhs, at)
    }
    pub fn put32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn get16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.bhs[at], self.bhs[at + 1]])
    }
    pub fn put16(&mut self, at: usize, v: u16) {
        self.bhs[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    // Fields shared by several initiator PDUs.
    /// CmdSN (SCSI Command, NOP-Out, TMF, Login, Text, Logout).
    pub fn cmd_sn(&self) -> u32 {
        self.get32(24)
    }
    /// ExpStatSN of an initiator PDU.
    pub fn exp_stat_sn(&self) -> u32 {
        self.get32(28)
    }
    /// Target Transfer Tag (NOP-Out, Data-Out, Text, SNACK).
    pub fn ttt(&self) -> u32 {
        self.get32(20)
    }

    // Target PDUs: the sequence-number fields at 24/28/32.
    pub fn set_stat_sn(&mut self, v: u32) {
        self.put32(24, v)
    }
    pub fn set_exp_cmd_sn(&mut self, v: u32) {
        self.put32(28, v)
    }
    pub fn set_max_cmd_sn(&mut self, v: u32) {
        self.put32(32, v)
    }
    pub fn stat_sn(&self) -> u32 {
        self.get32(24)
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        self.get32(28)
    }
    pub fn max_cmd_sn(&self) -> u32 {
        self.get32(32)
    }

    /// The CDB of a SCSI Command PDU: the 16 bytes of the BHS, extended by an
    /// Extended-CDB AHS (type 1) when present.
    pub fn cdb(&self) -> Vec<u8> {
        let mut cdb = self.bhs[32..48].to_vec();
        let mut ahs = &self.ahs[..];
        while ahs.len() >= 4 {
            let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
            let kind = ahs[2];
            // AHSLength counts from byte 3 (the type-specific byte) on.
            let total = (3 + len + 3) & !3;
            if len == 0 || ahs.len() < 3 + len {
                break;
            }
            if kind == 1 {
                cdb.extend_from_slice(&ahs[4..3 + len]);
            }
            ahs = &ahs[total.min(ahs.len())..];
        }
        cdb
    }
}

/// Sequence number comparison (RFC 1982 serial arithmetic, 32 bits): is `a` before `b`?
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// `a <= b` in serial arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
    }

    #[test]
    fn lengths_round_trip() {
        let mut p = Pdu::new(Opcode::DataIn);
        p.data = Bytes::from(vec![0u8; 0x12345]);
        p.fix_lengths();
        assert_eq!(p.declared_data_len(), 0x12345);
        assert_eq!(p.opcode(), Some(Opcode::DataIn));
    }

    #[test]
    fn extended_cdb_from_ahs() {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.bhs[32..48].copy_from_slice(&[0x7f; 16]);
        // AHSLength = 17 (reserved byte + 16 CDB bytes), type 1.
        let mut ahs = vec![0, 17, 1, 0];
        ahs.extend_from_slice(&[0xaa; 16]);
        ahs.extend_from_slice(&[0; 3]); // pad to a multiple of 4
        p.ahs = Bytes::from(ahs);
        let cdb = p.cdb();
        assert_eq!(cdb.len(), 32);
        assert_eq!(&cdb[16..], &[0xaa; 16]);
    }
}
