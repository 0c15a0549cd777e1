//! Sense data (SPC-4 4.5).

/// Sense keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    VolumeOverflow = 0xD,
    Miscompare = 0xE,
}

/// A sense triple plus optional information field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    pub information: Option<u64>,
}

/// Length of the fixed-format sense data this engine builds.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// A sense triple without information.
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            information: None,
        }
    }

    /// The same sense with the INFORMATION field set (and VALID).
    pub const fn with_info(mut self, info: u64) -> Self {
        self.information = Some(info);
        self
    }

    /// Fixed-format (0x70) sense data, 18 bytes.
    pub fn to_fixed(&self) -> Vec<u8> {
        build_fixed(self, None)
    }
}

/// Builds fixed-format sense data, with an optional 3-byte sense-key specific field.
pub(crate) fn build_fixed(s: &Sense, sks: Option<[u8; 3]>) -> Vec<u8> {
    let mut b = vec![0u8; FIXED_SENSE_LEN];
    b[0] = 0x70;
    b[2] = s.key as u8;
    if let Some(info) = s.information {
        b[0] |= 0x80;
        // The INFORMATION field is 4 bytes in fixed format; larger values are cut.
        let v = u32::try_from(info).unwrap_or(u32::MAX);
        b[3..7].copy_from_slice(&v.to_be_bytes());
    }
    b[7] = (FIXED_SENSE_LEN - 8) as u8;
    b[12] = s.asc;
    b[13] = s.ascq;
    if let Some(k) = sks {
        b[15] = k[0] | 0x80;
        b[16] = k[1];
        b[17] = k[2];
    }
    b
}

/// Frequently used sense data.
pub mod codes {
    use super::{Sense, SenseKey::*};

    pub const NO_SENSE: Sense = Sense::new(NoSense, 0, 0);
    pub const INVALID_OPCODE: Sense = Sense::new(IllegalRequest, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(IllegalRequest, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(IllegalRequest, 0x24, 0x00);
    pub const INVALID_FIELD_IN_PARAM: Sense = Sense::new(IllegalRequest, 0x26, 0x00);
    pub const PARAM_LIST_LENGTH_ERROR: Sense = Sense::new(IllegalRequest, 0x1A, 0x00);
    pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(IllegalRequest, 0x26, 0x04);
    pub const TOO_MANY_TARGET_DESCRIPTORS: Sense = Sense::new(IllegalRequest, 0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR: Sense = Sense::new(IllegalRequest, 0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Sense = Sense::new(IllegalRequest, 0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR: Sense = Sense::new(IllegalRequest, 0x26, 0x09);
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(IllegalRequest, 0x39, 0x00);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Sense = Sense::new(IllegalRequest, 0x55, 0x04);
    pub const WRITE_PROTECTED: Sense = Sense::new(DataProtect, 0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(DataProtect, 0x27, 0x07);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(MediumError, 0x11, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(Miscompare, 0x1D, 0x00);
    pub const SANITIZE_IN_PROGRESS: Sense = Sense::new(NotReady, 0x04, 0x1B);
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(HardwareError, 0x44, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: Sense = Sense::new(IllegalRequest, 0x53, 0x02);
    pub const COPY_ABORTED_NO_SENSE: Sense = Sense::new(CopyAborted, 0x00, 0x00);
    pub const COPY_TARGET_NOT_REACHABLE: Sense = Sense::new(CopyAborted, 0x0D, 0x02);
    pub const COPY_LBA_OUT_OF_RANGE: Sense = Sense::new(CopyAborted, 0x21, 0x00);
    pub const COPY_READ_ERROR: Sense = Sense::new(CopyAborted, 0x11, 0x00);
    pub const COPY_WRITE_PROTECTED: Sense = Sense::new(CopyAborted, 0x27, 0x00);
    pub const COPY_SPACE_ALLOCATION_FAILED: Sense = Sense::new(CopyAborted, 0x27, 0x07);

    pub const UA_POWER_ON: Sense = Sense::new(UnitAttention, 0x29, 0x00);
    pub const UA_POWER_ON_OCCURRED: Sense = Sense::new(UnitAttention, 0x29, 0x01);
    pub const UA_BUS_RESET: Sense = Sense::new(UnitAttention, 0x29, 0x02);
    pub const UA_LUN_RESET: Sense = Sense::new(UnitAttention, 0x29, 0x03);
    pub const UA_NEXUS_LOSS: Sense = Sense::new(UnitAttention, 0x29, 0x07);
    pub const UA_MODE_PARAMETERS_CHANGED: Sense = Sense::new(UnitAttention, 0x2A, 0x01);
    pub const UA_RESERVATIONS_PREEMPTED: Sense = Sense::new(UnitAttention, 0x2A, 0x03);
    pub const UA_RESERVATIONS_RELEASED: Sense = Sense::new(UnitAttention, 0x2A, 0x04);
    pub const UA_REGISTRATIONS_PREEMPTED: Sense = Sense::new(UnitAttention, 0x2A, 0x05);
    pub const UA_CAPACITY_CHANGED: Sense = Sense::new(UnitAttention, 0x2A, 0x09);
    pub const UA_THIN_THRESHOLD: Sense = Sense::new(UnitAttention, 0x38, 0x07);
}

/// A CHECK CONDITION: sense plus the optional sense-key specific bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Check {
    pub sense: Sense,
    pub sks: Option<[u8; 3]>,
}

impl Check {
    pub fn bytes(&self) -> Vec<u8> {
        build_fixed(&self.sense, self.sks)
    }
}

impl From<Sense> for Check {
    fn from(sense: Sense) -> Self {
        Check { sense, sks: None }
    }
}

/// INVALID FIELD IN CDB with a field pointer (byte, optional bit).
pub(crate) fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Check {
    Check {
        sense: codes::INVALID_FIELD_IN_CDB,
        sks: Some(field_pointer(true, byte, bit)),
    }
}

/// INVALID FIELD IN PARAMETER LIST with a field pointer.
pub(crate) fn invalid_param_field(byte: u16, bit: Option<u8>) -> Check {
    Check {
        sense: codes::INVALID_FIELD_IN_PARAM,
        sks: Some(field_pointer(false, byte, bit)),
    }
}

fn field_pointer(cdb: bool, byte: u16, bit: Option<u8>) -> [u8; 3] {
    let mut b0 = if cdb { 0x40 } else { 0 };
    if let Some(bit) = bit {
        b0 |= 0x08 | (bit & 7);
    }
    let [hi, lo] = byte.to_be_bytes();
    [b0, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_with_info() {
        let s = codes::UNRECOVERED_READ_ERROR.with_info(0x1234);
        let b = s.to_fixed();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 0xF0);
        assert_eq!(b[2], 3);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x11, 0));
    }

    #[test]
    fn field_pointer_bits() {
        let c = invalid_cdb_field(2, Some(3));
        let b = c.bytes();
        assert_eq!(b[15], 0x80 | 0x40 | 0x08 | 3);
        assert_eq!(&b[16..18], &[0, 2]);
        let p = invalid_param_field(300, None).bytes();
        assert_eq!(p[15], 0x80);
        assert_eq!(&p[16..18], &[1, 44]);
    }
}
