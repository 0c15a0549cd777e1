//! READs a device answers with its own buffers (`BlockDevice::read_mapped`), through
//! `LogicalUnit::execute_read_mapped`.

use bytes::Bytes;
use scsi::{
    status, BlockDevice, DeviceError, LbaStatus, LogicalUnit, LuIdentity, MappedRead, MemDevice,
    NexusId,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// MemDevice, with mapped reads in two pieces; `bad` makes them fail at that LBA.
struct Mapped {
    mem: MemDevice,
    calls: AtomicU64,
    bad: Option<u64>,
}

impl BlockDevice for Mapped {
    fn block_size(&self) -> u32 {
        self.mem.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.mem.num_blocks()
    }
    fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.mem.read(lba, buf)
    }
    fn read_mapped(&self, lba: u64, blocks: u64) -> Option<Result<MappedRead, DeviceError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(bad) = self.bad {
            return Some(Err(DeviceError::Medium { lba: bad }));
        }
        let mut buf = vec![0u8; (blocks * 512) as usize];
        if let Err(e) = self.mem.read(lba, &mut buf) {
            return Some(Err(e));
        }
        let all = Bytes::from(buf);
        let half = all.len() / 2;
        Some(Ok(MappedRead {
            pieces: vec![all.slice(..half), all.slice(half..)],
        }))
    }
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), DeviceError> {
        self.mem.write(lba, data, fua)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.mem.flush()
    }
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), DeviceError> {
        self.mem.unmap(lba, blocks)
    }
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, DeviceError> {
        self.mem.lba_status(lba)
    }
}

fn unit(bad: Option<u64>) -> (Arc<Mapped>, LogicalUnit, NexusId) {
    let dev = Arc::new(Mapped {
        mem: MemDevice::new(512, 1024),
        calls: AtomicU64::new(0),
        bad,
    });
    let lu = LogicalUnit::new(
        dev.clone(),
        LuIdentity {
            naa: [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            serial: "MAPPED1".into(),
            target_name: "iqn.2024-01.dev.haven:mapped".into(),
            target_port_group: 1,
        },
    );
    let n = NexusId {
        initiator_name: "iqn.2024-01.dev.haven:init".into(),
        isid: 1,
        relative_target_port: 1,
    };
    // Clear the power-on unit attention.
    lu.execute(&n, &[0; 6], &[]);
    (dev, lu, n)
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn a_read_comes_back_in_the_devices_pieces() {
    let (dev, lu, n) = unit(None);
    let data: Vec<u8> = (0..64 * 512).map(|i| (i % 253) as u8).collect();
    let mut w = read10(8, 64);
    w[0] = 0x2A;
    assert_eq!(lu.execute(&n, &w, &data).status, status::GOOD);
    let (r, mapped) = lu.execute_read_mapped(&n, &read10(8, 64), &[], Vec::new());
    assert_eq!(r.status, status::GOOD);
    assert!(r.data.is_empty(), "the data is in the pieces");
    let m = mapped.expect("pieces");
    assert_eq!(m.pieces.len(), 2);
    assert_eq!(m.pieces.concat(), data);
    // The plain path never asks the device for pieces.
    let calls = dev.calls.load(Ordering::Relaxed);
    let r = lu.execute(&n, &read10(8, 64), &[]);
    assert_eq!(r.data, data);
    assert_eq!(dev.calls.load(Ordering::Relaxed), calls);
}

#[test]
fn a_failed_mapped_read_is_a_medium_error_without_pieces() {
    let (_, lu, n) = unit(Some(77));
    let (r, mapped) = lu.execute_read_mapped(&n, &read10(64, 32), &[], Vec::new());
    assert_eq!(r.status, status::CHECK_CONDITION);
    let s = r.sense.expect("sense");
    assert_eq!((s[2] & 0x0F, s[12], s[13]), (0x03, 0x11, 0x00));
    assert_eq!(
        u32::from_be_bytes([s[3], s[4], s[5], s[6]]),
        77,
        "INFORMATION"
    );
    assert!(mapped.is_none());
}

#[test]
fn a_read_past_the_end_fails_before_the_device_is_asked() {
    let (dev, lu, n) = unit(None);
    let (r, mapped) = lu.execute_read_mapped(&n, &read10(1000, 64), &[], Vec::new());
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert!(mapped.is_none());
    assert_eq!(dev.calls.load(Ordering::Relaxed), 0);
}
