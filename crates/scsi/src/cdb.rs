//! CDB decoding: length by operation code group and bounds-safe field access.

use crate::sense::{codes, Check};

/// A CDB copied into a zero-padded buffer so every field read is in bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cdb {
    b: [u8; 32],
    len: usize,
}

/// The CDB length an operation code implies (SPC-4 4.2.5.1), or None for variable/vendor.
pub(crate) fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

impl Cdb {
    /// Checks the length against the operation code group.
    pub fn parse(raw: &[u8]) -> Result<Cdb, Check> {
        let Some(&op) = raw.first() else {
            return Err(codes::INVALID_OPCODE.into());
        };
        let need = cdb_len(op).ok_or(Check::from(codes::INVALID_OPCODE))?;
        if raw.len() < need {
            return Err(codes::INVALID_FIELD_IN_CDB.into());
        }
        let mut b = [0u8; 32];
        let n = raw.len().min(32);
        b[..n].copy_from_slice(&raw[..n]);
        Ok(Cdb { b, len: need })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn op(&self) -> u8 {
        self.b[0]
    }
    /// Service action (low 5 bits of byte 1).
    pub fn sa(&self) -> u8 {
        self.b[1] & 0x1f
    }
    pub fn u8(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }
    pub fn u16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.u8(i), self.u8(i + 1)])
    }
    pub fn u24(&self, i: usize) -> u32 {
        u32::from_be_bytes([0, self.u8(i), self.u8(i + 1), self.u8(i + 2)])
    }
    pub fn u32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.u8(i), self.u8(i + 1), self.u8(i + 2), self.u8(i + 3)])
    }
    pub fn u64(&self, i: usize) -> u64 {
        (u64::from(self.u32(i)) << 32) | u64::from(self.u32(i + 4))
    }
    pub fn bit(&self, i: usize, bit: u8) -> bool {
        self.u8(i) & (1 << bit) != 0
    }
}

/// Bounds-safe big-endian readers over parameter data.
pub(crate) fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([byte(d, i), byte(d, i.saturating_add(1))])
}
pub(crate) fn be32(d: &[u8], i: usize) -> u32 {
    let at = |k: usize| byte(d, i.saturating_add(k));
    u32::from_be_bytes([at(0), at(1), at(2), at(3)])
}
pub(crate) fn be64(d: &[u8], i: usize) -> u64 {
    (u64::from(be32(d, i)) << 32) | u64::from(be32(d, i.saturating_add(4)))
}
pub(crate) fn byte(d: &[u8], i: usize) -> u8 {
    d.get(i).copied().unwrap_or(0)
}

/// Cuts `v` to the allocation length.
pub(crate) fn trunc(mut v: Vec<u8>, alloc: usize) -> Vec<u8> {
    v.truncate(alloc);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_by_group() {
        assert_eq!(cdb_len(0x00), Some(6));
        assert_eq!(cdb_len(0x28), Some(10));
        assert_eq!(cdb_len(0x5e), Some(10));
        assert_eq!(cdb_len(0x88), Some(16));
        assert_eq!(cdb_len(0xa0), Some(12));
        assert_eq!(cdb_len(0x7f), None);
        assert_eq!(cdb_len(0xc0), None);
    }

    #[test]
    fn short_cdb_rejected_and_fields_safe() {
        assert!(Cdb::parse(&[0x28, 0, 0]).is_err());
        assert!(Cdb::parse(&[]).is_err());
        let c = Cdb::parse(&[0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 9, 0, 0]).unwrap();
        assert_eq!(c.u64(2), 0x0102030405060708);
        assert_eq!(c.u32(10), 9);
        assert_eq!(c.u64(30), 0);
        assert_eq!(be32(&[1, 2], 0), 0x01020000);
        assert_eq!(be64(&[], usize::MAX), 0);
    }
}
