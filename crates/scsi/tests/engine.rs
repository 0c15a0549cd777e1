//! End-to-end behaviour of the engine over MemDevice.

use scsi::{
    status, BlockDevice, LogicalUnit, LuIdentity, MemDevice, NexusId, PrPersistence, TaskManagement,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NAA: [u8; 16] = [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fn ident() -> LuIdentity {
    LuIdentity {
        naa: NAA,
        serial: "SER123".into(),
        target_name: "iqn.2024-01.dev.haven:vol1".into(),
        target_port_group: 1,
    }
}

fn setup(blocks: u64) -> (Arc<MemDevice>, LogicalUnit) {
    let dev = Arc::new(MemDevice::new(512, blocks));
    let lu = LogicalUnit::new(dev.clone(), ident());
    lu.set_sanitize_min_duration(Duration::ZERO);
    (dev, lu)
}

fn nx(name: &str, isid: u64) -> NexusId {
    NexusId {
        initiator_name: name.into(),
        isid,
        relative_target_port: 1,
    }
}

/// Executes, clearing the POWER ON unit attention first time round.
fn ready(lu: &LogicalUnit, n: &NexusId) {
    let r = lu.execute(n, &[0; 6], &[]);
    if r.status != status::GOOD {
        assert_eq!(lu.execute(n, &[0; 6], &[]).status, status::GOOD);
    }
}

fn sense(r: &scsi::Response) -> (u8, u8, u8) {
    let s = r.sense.as_ref().expect("sense data");
    (s[2] & 0x0F, s[12], s[13])
}

fn cdb16(op: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb10(op: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

#[test]
fn power_on_unit_attention_then_ready() {
    let (_d, lu) = setup(100);
    let n = nx("iqn.a", 1);
    // INQUIRY does not report the UA.
    let r = lu.execute(&n, &[0x12, 0, 0, 0, 96, 0], &[]);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&r.data[8..13], b"HAVEN");
    let r = lu.execute(&n, &[0; 6], &[]);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(sense(&r), (6, 0x29, 0));
    assert_eq!(lu.execute(&n, &[0; 6], &[]).status, status::GOOD);
}

#[test]
fn read_write_round_trip_and_range() {
    let (dev, lu) = setup(100);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    let data = vec![0xAB; 1024];
    let mut w = cdb10(0x2A, 98, 2);
    w[1] = 0x08; // FUA
    assert_eq!(lu.execute(&n, &w, &data).status, status::GOOD);
    assert_eq!(dev.fua_write_count(), 1);
    let r = lu.execute(&n, &cdb16(0x88, 98, 2), &[]);
    assert_eq!(r.data, data);
    let r = lu.execute(&n, &cdb10(0x28, 99, 2), &[]);
    assert_eq!(sense(&r), (5, 0x21, 0));
    let r = lu.execute(&n, &cdb16(0x88, u64::MAX, 1), &[]);
    assert_eq!(sense(&r), (5, 0x21, 0));
    // READ(6) with length 0 means 256 blocks: out of range here.
    let r = lu.execute(&n, &[0x08, 0, 0, 0, 0, 0], &[]);
    assert_eq!(sense(&r), (5, 0x21, 0));
    // RDPROTECT is not supported.
    let mut c = cdb10(0x28, 0, 1);
    c[1] = 0x20;
    assert_eq!(sense(&lu.execute(&n, &c, &[])), (5, 0x24, 0));
    // Unknown opcode.
    assert_eq!(
        sense(&lu.execute(&n, &[0x02, 0, 0, 0, 0, 0], &[])),
        (5, 0x20, 0)
    );
}

#[test]
fn medium_error_reports_lba() {
    let (dev, lu) = setup(100);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    dev.inject_medium_error(7);
    let r = lu.execute(&n, &cdb10(0x28, 5, 4), &[]);
    let s = r.sense.unwrap();
    assert_eq!((s[2], s[12]), (3, 0x11));
    assert_eq!(s[0], 0xF0);
    assert_eq!(&s[3..7], &[0, 0, 0, 7]);
}

#[test]
fn read_only_device_refuses_writes() {
    let dev = Arc::new(MemDevice::new(512, 100).with_read_only(true));
    let lu = LogicalUnit::new(dev, ident());
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    let r = lu.execute(&n, &cdb10(0x2A, 0, 1), &[0u8; 512]);
    assert_eq!(sense(&r), (7, 0x27, 0));
    let r = lu.execute(&n, &[0x1A, 0, 0x3F, 0, 255, 0], &[]);
    assert_eq!(r.data[2] & 0x80, 0x80);
}

#[test]
fn no_space_reports_data_protect_and_threshold_ua() {
    let (dev, lu) = setup(100);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    dev.set_space_limit(Some(1));
    let r = lu.execute(&n, &cdb10(0x2A, 0, 2), &[1u8; 1024]);
    assert_eq!(sense(&r), (7, 0x27, 0x07));
    let r = lu.execute(&n, &[0; 6], &[]);
    assert_eq!(sense(&r), (6, 0x38, 0x07));
}

#[test]
fn compare_and_write_miscompare_and_success() {
    let (_dev, lu) = setup(100);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    lu.execute(&n, &cdb10(0x2A, 10, 1), &[b'A'; 512]);
    let mut caw = cdb16(0x89, 10, 0);
    caw[13] = 1;
    let mut buf = vec![b'A'; 1024];
    buf[512..].fill(b'B');
    buf[100] = b'C';
    let r = lu.execute(&n, &caw, &buf);
    let s = r.sense.unwrap();
    assert_eq!((s[2], s[12]), (0x0E, 0x1D));
    assert_eq!(&s[3..7], &[0, 0, 0, 100]);
    buf[100] = b'A';
    assert_eq!(lu.execute(&n, &caw, &buf).status, status::GOOD);
    assert_eq!(
        lu.execute(&n, &cdb10(0x28, 10, 1), &[]).data,
        vec![b'B'; 512]
    );
    // Wrong Data-Out size.
    assert_eq!(sense(&lu.execute(&n, &caw, &buf[..512])), (5, 0x24, 0));
}

#[test]
fn compare_and_write_is_atomic_across_sessions() {
    let (_dev, lu) = setup(64);
    let lu = Arc::new(lu);
    let n0 = nx("iqn.a", 1);
    ready(&lu, &n0);
    lu.execute(&n0, &cdb10(0x2A, 0, 1), &[0u8; 512]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let lu = lu.clone();
            std::thread::spawn(move || {
                let n = nx("iqn.t", t);
                ready(&lu, &n);
                let mut wins = 0u32;
                for _ in 0..200 {
                    let cur = lu.execute(&n, &cdb10(0x28, 0, 1), &[]).data;
                    let v = u32::from_be_bytes([cur[0], cur[1], cur[2], cur[3]]);
                    let mut buf = cur.clone();
                    buf.extend_from_slice(&cur);
                    buf[512..516].copy_from_slice(&(v + 1).to_be_bytes());
                    let mut caw = cdb16(0x89, 0, 0);
                    caw[13] = 1;
                    if lu.execute(&n, &caw, &buf).status == status::GOOD {
                        wins += 1;
                    }
                }
                wins
            })
        })
        .collect();
    let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let cur = lu.execute(&n0, &cdb10(0x28, 0, 1), &[]).data;
    assert_eq!(u32::from_be_bytes([cur[0], cur[1], cur[2], cur[3]]), total);
}

#[test]
fn unmap_write_same_and_lba_status() {
    let (dev, lu) = setup(4096);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    lu.execute(&n, &cdb10(0x2A, 0, 64), &vec![1u8; 64 * 512]);
    assert_eq!(dev.mapped_blocks(), 64);
    // UNMAP blocks 8..16.
    let mut p = vec![0u8; 24];
    p[1] = 22;
    p[3] = 16;
    p[8..16].copy_from_slice(&8u64.to_be_bytes());
    p[16..20].copy_from_slice(&8u32.to_be_bytes());
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0];
    assert_eq!(lu.execute(&n, &c, &p).status, status::GOOD);
    let r = lu.execute(
        &n,
        &cdb16(0x9E, 0, 1024)
            .iter()
            .enumerate()
            .map(|(i, b)| if i == 1 { 0x12 } else { *b })
            .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(r.status, status::GOOD);
    // Descriptors: 0..8 mapped, 8..16 deallocated, 16..64 mapped, 64.. deallocated.
    assert_eq!(&r.data[8..16], &0u64.to_be_bytes());
    assert_eq!(&r.data[16..20], &8u32.to_be_bytes());
    assert_eq!(r.data[20], 0);
    assert_eq!(r.data[36], 1);
    // Out of range descriptor.
    p[8..16].copy_from_slice(&4090u64.to_be_bytes());
    assert_eq!(sense(&lu.execute(&n, &c, &p)), (5, 0x21, 0));
    c[1] = 1; // ANCHOR unsupported
    assert_eq!(sense(&lu.execute(&n, &c, &p)), (5, 0x24, 0));
    // WRITE SAME(16) UNMAP of zeroes deallocates.
    let mut ws = cdb16(0x93, 16, 16);
    ws[1] = 0x08;
    assert_eq!(lu.execute(&n, &ws, &[0u8; 512]).status, status::GOOD);
    assert!(!dev.is_mapped(20));
    // WRITE SAME(10) of a pattern writes every block.
    let ws10 = cdb10(0x41, 100, 3);
    assert_eq!(lu.execute(&n, &ws10, &[7u8; 512]).status, status::GOOD);
    assert_eq!(
        lu.execute(&n, &cdb10(0x28, 100, 3), &[]).data,
        vec![7u8; 1536]
    );
    // Zero blocks (WSNZ 0) writes to the last LBA; a wrong Data-Out size is refused.
    assert_eq!(
        lu.execute(&n, &cdb10(0x41, 4090, 0), &[9u8; 512]).status,
        status::GOOD
    );
    assert_eq!(
        lu.execute(&n, &cdb10(0x28, 4090, 6), &[]).data,
        vec![9u8; 3072]
    );
    assert_eq!(sense(&lu.execute(&n, &ws10, &[0u8; 10])), (5, 0x24, 0));
}

#[test]
fn vpd_pages() {
    let (_dev, lu) = setup(100);
    let n = nx("iqn.a", 1);
    let r = lu.execute(&n, &[0x12, 1, 0x00, 0, 255, 0], &[]);
    assert_eq!(&r.data[4..], &[0x00, 0x80, 0x83, 0x8F, 0xB0, 0xB1, 0xB2]);
    let r = lu.execute(&n, &[0x12, 1, 0x83, 0, 255, 0], &[]);
    assert_eq!(&r.data[4..8], &[1, 3, 0, 16]);
    assert_eq!(&r.data[8..24], &NAA);
    let r = lu.execute(&n, &[0x12, 1, 0xB0, 0, 255, 0], &[]);
    assert_eq!(r.data.len(), 64);
    assert_eq!(r.data[3], 0x3C);
    let r = lu.execute(&n, &[0x12, 1, 0xB2, 0, 255, 0], &[]);
    assert_eq!(r.data[5] & 0xE4, 0xE4);
    assert_eq!(
        sense(&lu.execute(&n, &[0x12, 1, 0x42, 0, 255, 0], &[])),
        (5, 0x24, 0)
    );
    assert_eq!(
        sense(&lu.execute(&n, &[0x12, 0, 0x80, 0, 255, 0], &[])),
        (5, 0x24, 0)
    );
    let r = lu.execute(&n, &[0x12, 0, 0, 0, 10, 0], &[]);
    assert_eq!(r.data.len(), 10);
}

#[test]
fn read_capacity() {
    let (dev, lu) = setup(100);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    let r = lu.execute(&n, &cdb10(0x25, 0, 0), &[]);
    assert_eq!(&r.data, &[0, 0, 0, 99, 0, 0, 2, 0]);
    let mut c = cdb16(0x9E, 0, 32);
    c[1] = 0x10;
    let r = lu.execute(&n, &c, &[]);
    assert_eq!(r.data[13], 3);
    assert_eq!(r.data[14] & 0xC0, 0xC0);
    dev.set_num_blocks(200);
    lu.capacity_changed();
    assert_eq!(sense(&lu.execute(&n, &c, &[])), (6, 0x2A, 0x09));
    assert_eq!(&lu.execute(&n, &c, &[]).data[..8], &199u64.to_be_bytes());
}

fn prout(sa: u8, rtype: u8, rk: u64, sark: u64, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let mut c = vec![0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0];
    c[2] = rtype;
    let mut p = vec![0u8; 24];
    p[..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    (c, p)
}

fn pr(lu: &LogicalUnit, n: &NexusId, sa: u8, rtype: u8, rk: u64, sark: u64) -> u8 {
    let (c, p) = prout(sa, rtype, rk, sark, 0);
    lu.execute(n, &c, &p).status
}

#[test]
fn persistent_reservation_access() {
    let (_dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    let b = nx("iqn.b", 2);
    ready(&lu, &a);
    ready(&lu, &b);
    assert_eq!(pr(&lu, &a, 6, 0, 0, 0xA), status::GOOD);
    assert_eq!(pr(&lu, &b, 6, 0, 0, 0xB), status::GOOD);
    // Re-register with a wrong key conflicts.
    assert_eq!(pr(&lu, &a, 0, 0, 0x99, 0xC), status::RESERVATION_CONFLICT);
    // EXCLUSIVE ACCESS by a.
    assert_eq!(pr(&lu, &a, 1, 3, 0xA, 0), status::GOOD);
    let read = cdb10(0x28, 1, 1);
    let write = cdb10(0x2A, 1, 1);
    assert_eq!(lu.execute(&a, &read, &[]).status, status::GOOD);
    assert_eq!(
        lu.execute(&b, &read, &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        lu.execute(&b, &write, &[0; 512]).status,
        status::RESERVATION_CONFLICT
    );
    // READ RESERVATION.
    let r = lu.execute(&b, &[0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&r.data[8..16], &0xAu64.to_be_bytes());
    assert_eq!(r.data[21], 3);
    // Release with the wrong type.
    assert_eq!(pr(&lu, &a, 2, 1, 0xA, 0), status::CHECK_CONDITION);
    assert_eq!(pr(&lu, &a, 2, 3, 0xA, 0), status::GOOD);
    // WRITE EXCLUSIVE REGISTRANTS ONLY: registered b may write.
    assert_eq!(pr(&lu, &a, 1, 5, 0xA, 0), status::GOOD);
    assert_eq!(lu.execute(&b, &write, &[0; 512]).status, status::GOOD);
    // Unregistered c may read but not write.
    let c = nx("iqn.c", 3);
    ready(&lu, &c);
    assert_eq!(lu.execute(&c, &read, &[]).status, status::GOOD);
    assert_eq!(
        lu.execute(&c, &write, &[0; 512]).status,
        status::RESERVATION_CONFLICT
    );
    // Holder unregisters: reservation gone, b gets RESERVATIONS RELEASED.
    assert_eq!(pr(&lu, &a, 0, 0, 0xA, 0), status::GOOD);
    assert_eq!(sense(&lu.execute(&b, &[0; 6], &[])), (6, 0x2A, 0x04));
    let r = lu.execute(&b, &[0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&r.data[4..8], &[0, 0, 0, 0]);
    // b reserves, a registers and preempts b.
    assert_eq!(pr(&lu, &b, 1, 1, 0xB, 0), status::GOOD);
    assert_eq!(pr(&lu, &a, 6, 0, 0, 0xA), status::GOOD);
    assert_eq!(pr(&lu, &a, 4, 3, 0xA, 0xB), status::GOOD);
    assert_eq!(sense(&lu.execute(&b, &[0; 6], &[])), (6, 0x2A, 0x05));
    let r = lu.execute(&a, &[0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&r.data[4..8], &8u32.to_be_bytes());
    // READ FULL STATUS carries the iSCSI TransportID of a.
    let r = lu.execute(&a, &[0x5E, 3, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(r.data[8 + 12], 0x01); // R_HOLDER
    assert_eq!(r.data[8 + 24], 0x45);
    let tid = String::from_utf8_lossy(&r.data[8 + 28..]).to_string();
    assert!(tid.starts_with("iqn.a,i,0x000000000001"), "{tid}");
    // CLEAR.
    assert_eq!(pr(&lu, &a, 3, 0, 0xA, 0), status::GOOD);
    let r = lu.execute(&a, &[0x5E, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(&r.data[4..8], &[0, 0, 0, 0]);
    // Bad service action for PRIN.
    assert_eq!(
        sense(&lu.execute(&a, &[0x5E, 4, 0, 0, 0, 0, 0, 0x10, 0, 0], &[])).0,
        5
    );
}

#[test]
fn all_registrants_reservation_survives_holder_leaving() {
    let (_dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    let b = nx("iqn.b", 2);
    ready(&lu, &a);
    ready(&lu, &b);
    pr(&lu, &a, 6, 0, 0, 1);
    pr(&lu, &b, 6, 0, 0, 2);
    assert_eq!(pr(&lu, &a, 1, 8, 1, 0), status::GOOD);
    assert_eq!(pr(&lu, &a, 0, 0, 1, 0), status::GOOD);
    let r = lu.execute(&b, &[0x5E, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], &[]);
    assert_eq!(r.data[21], 8);
    assert_eq!(pr(&lu, &b, 2, 8, 2, 0), status::GOOD);
}

#[derive(Default)]
struct Store(Mutex<Vec<u8>>);
impl PrPersistence for Store {
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        *self.0.lock().unwrap() = bytes.to_vec();
        Ok(())
    }
}

#[test]
fn aptpl_state_is_saved_and_restored() {
    let (dev, lu) = setup(100);
    let store = Arc::new(Store::default());
    lu.set_pr_persistence(store.clone());
    let a = nx("iqn.a", 1);
    ready(&lu, &a);
    let (c, p) = prout(6, 0, 0, 0x77, 0x01);
    assert_eq!(lu.execute(&a, &c, &p).status, status::GOOD);
    assert_eq!(pr(&lu, &a, 1, 1, 0x77, 0), status::GOOD);
    let saved = store.0.lock().unwrap().clone();
    assert!(!saved.is_empty());
    let lu2 = LogicalUnit::new(dev, ident());
    lu2.restore_pr(&saved).unwrap();
    let b = nx("iqn.b", 2);
    ready(&lu2, &b);
    assert_eq!(
        lu2.execute(&b, &cdb10(0x2A, 0, 1), &[0; 512]).status,
        status::RESERVATION_CONFLICT
    );
    assert!(lu2.restore_pr(b"garbage").is_err());
}

#[test]
fn spc2_reservations_and_resets() {
    let (_dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    let b = nx("iqn.b", 2);
    ready(&lu, &a);
    ready(&lu, &b);
    assert_eq!(
        lu.execute(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(
        lu.execute(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(
        lu.execute(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        lu.execute(&b, &[0x17, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(
        lu.execute(&b, &[0; 6], &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        lu.execute(&b, &[0x12, 0, 0, 0, 36, 0], &[]).status,
        status::GOOD
    );
    lu.task_management(&a, TaskManagement::LogicalUnitReset);
    assert_eq!(sense(&lu.execute(&b, &[0; 6], &[])), (6, 0x29, 3));
    assert_eq!(
        lu.execute(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    lu.nexus_lost(&b);
    ready(&lu, &a);
    assert_eq!(
        lu.execute(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
}

#[test]
fn mode_pages_and_swp() {
    let (dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    let b = nx("iqn.b", 2);
    ready(&lu, &a);
    ready(&lu, &b);
    let r = lu.execute(&a, &[0x1A, 0, 0x08, 0, 255, 0], &[]);
    assert_eq!(r.data[3], 8);
    assert_eq!(r.data[12], 0x08);
    assert_eq!(r.data[14] & 0x04, 0x04);
    // Turn the write cache off via MODE SELECT(6).
    let mut page = r.data[12..].to_vec();
    page[2] &= !0x04;
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(&page);
    let sel = [0x15, 0x10, 0, 0, p.len() as u8, 0];
    assert_eq!(lu.execute(&a, &sel, &p).status, status::GOOD);
    assert!(!dev.write_cache_enabled());
    assert_eq!(sense(&lu.execute(&b, &[0; 6], &[])), (6, 0x2A, 0x01));
    // Changing an unchangeable bit fails.
    p[4 + 2] |= 0x01; // RCD
    assert_eq!(sense(&lu.execute(&a, &sel, &p)), (5, 0x26, 0));
    // SWP write-protects.
    let r = lu.execute(&a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    let mut page = r.data[4..].to_vec();
    page[4] |= 0x08;
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(&page);
    let sel = [0x15, 0x10, 0, 0, p.len() as u8, 0];
    assert_eq!(lu.execute(&a, &sel, &p).status, status::GOOD);
    assert_eq!(
        sense(&lu.execute(&a, &cdb10(0x2A, 0, 1), &[0; 512])),
        (7, 0x27, 0)
    );
    // MODE SENSE(10) all pages with LLBAA.
    let r = lu.execute(&a, &[0x5A, 0x10, 0x3F, 0, 0, 0, 0, 1, 0, 0], &[]);
    assert_eq!(r.data[7], 16);
    assert_eq!(r.data[3] & 0x80, 0x80);
    assert_eq!(
        u16::from_be_bytes([r.data[0], r.data[1]]) as usize,
        r.data.len() - 2
    );
    assert_eq!(
        sense(&lu.execute(&a, &[0x1A, 0, 0x33, 0, 255, 0], &[])),
        (5, 0x24, 0)
    );
}

#[test]
fn sanitize_overwrite_and_block_erase() {
    let (dev, lu) = setup(64);
    let a = nx("iqn.a", 1);
    ready(&lu, &a);
    lu.execute(&a, &cdb10(0x2A, 0, 4), &[1u8; 2048]);
    let mut p = vec![0x01, 0, 0, 4];
    p.extend_from_slice(&[0xAA, 0xBB, 0xCC, 0xDD]);
    let c = [0x48, 0x01, 0, 0, 0, 0, 0, 0, p.len() as u8, 0];
    assert_eq!(lu.execute(&a, &c, &p).status, status::GOOD);
    let r = lu.execute(&a, &cdb10(0x28, 63, 1), &[]);
    assert_eq!(
        &r.data[..8],
        &[0xAA, 0xBB, 0xCC, 0xDD, 0xAA, 0xBB, 0xCC, 0xDD]
    );
    // Parameter list length must be 5..=block size + 4.
    let c = [0x48, 0x01, 0, 0, 0, 0, 0, 0, 4, 0];
    assert_eq!(sense(&lu.execute(&a, &c, &p)), (5, 0x24, 0));
    let c = [0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(lu.execute(&a, &c, &[]).status, status::GOOD);
    assert_eq!(dev.mapped_blocks(), 0);
    let c = [0x48, 0x04, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(sense(&lu.execute(&a, &c, &[])), (5, 0x24, 0));
}

#[test]
fn sanitize_in_progress_blocks_other_commands() {
    let (_dev, lu) = setup(64);
    let lu = Arc::new(lu);
    lu.set_sanitize_min_duration(Duration::from_millis(400));
    let a = nx("iqn.a", 1);
    ready(&lu, &a);
    let lu2 = lu.clone();
    let a2 = a.clone();
    let t = std::thread::spawn(move || {
        lu2.execute(&a2, &[0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0], &[])
            .status
    });
    while !lu.sanitize_in_progress() {
        std::thread::yield_now();
    }
    assert_eq!(sense(&lu.execute(&a, &[0; 6], &[])), (2, 0x04, 0x1B));
    assert_eq!(
        lu.execute(&a, &[0x12, 0, 0, 0, 36, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(t.join().unwrap(), status::GOOD);
    assert_eq!(lu.execute(&a, &[0; 6], &[]).status, status::GOOD);
}

fn xcopy_params(
    list_id: u8,
    usage: u8,
    naa: &[u8; 16],
    blocks: u16,
    src: u64,
    dst: u64,
) -> Vec<u8> {
    let mut p = vec![0u8; 16 + 32 + 28];
    p[0] = list_id;
    p[1] = usage << 3;
    p[3] = 32;
    p[11] = 28;
    let t = &mut p[16..48];
    t[0] = 0xE4;
    t[4] = 1;
    t[5] = 3;
    t[7] = 16;
    t[8..24].copy_from_slice(naa);
    t[30] = 2; // block size 512
    let s = &mut p[48..];
    s[0] = 0x02;
    s[3] = 0x18;
    s[10..12].copy_from_slice(&blocks.to_be_bytes());
    s[12..20].copy_from_slice(&src.to_be_bytes());
    s[20..28].copy_from_slice(&dst.to_be_bytes());
    p
}

fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

#[test]
fn extended_copy_within_and_across_volumes() {
    let (_dev, lu) = setup(4096);
    let a = nx("iqn.a", 1);
    ready(&lu, &a);
    lu.execute(&a, &cdb10(0x2A, 0, 16), &vec![b'A'; 16 * 512]);
    let p = xcopy_params(1, 0, &NAA, 16, 0, 4000);
    assert_eq!(lu.execute(&a, &xcopy_cdb(p.len()), &p).status, status::GOOD);
    assert_eq!(
        lu.execute(&a, &cdb10(0x28, 4000, 16), &[]).data,
        vec![b'A'; 16 * 512]
    );
    // Copy status for list 1, once.
    let mut rcr = vec![0u8; 16];
    rcr[0] = 0x84;
    rcr[2] = 1;
    rcr[13] = 64;
    let r = lu.execute(&a, &rcr, &[]);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&r.data[5..7], &[0, 1]);
    assert_eq!(sense(&lu.execute(&a, &rcr, &[])), (5, 0x24, 0));
    // Beyond the end of the destination.
    let p = xcopy_params(1, 0, &NAA, 16, 0, 4090);
    assert_eq!(sense(&lu.execute(&a, &xcopy_cdb(p.len()), &p)).0, 0x0A);
    // Unknown designator.
    let p = xcopy_params(1, 0, &[9; 16], 1, 0, 0);
    assert_eq!(
        sense(&lu.execute(&a, &xcopy_cdb(p.len()), &p)),
        (0x0A, 0x0D, 0x02)
    );
    // Truncated parameter list.
    assert_eq!(
        sense(&lu.execute(&a, &xcopy_cdb(40), &p[..40])),
        (5, 0x1A, 0)
    );
    // Another volume through the resolver.
    let other = Arc::new(MemDevice::new(512, 100));
    other.write(0, &[9u8; 512], false).unwrap();
    let o2: Arc<dyn BlockDevice> = other.clone();
    lu.set_copy_resolver(Arc::new(move |naa: &[u8; 16]| {
        (naa == &[9; 16]).then(|| o2.clone())
    }));
    let p = xcopy_params(2, 2, &[9; 16], 1, 0, 5);
    assert_eq!(lu.execute(&a, &xcopy_cdb(p.len()), &p).status, status::GOOD);
    let mut b = vec![0u8; 512];
    other.read(5, &mut b).unwrap();
    assert_eq!(b, vec![9u8; 512]);
    // Operating parameters.
    rcr[1] = 3;
    let r = lu.execute(&a, &rcr, &[]);
    assert_eq!(r.data.len(), 46);
}

#[test]
fn report_supported_opcodes_forms() {
    let (_dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    ready(&lu, &a);
    let mut c = vec![0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
    let r = lu.execute(&a, &c, &[]);
    let len = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]) as usize;
    assert_eq!(len % 8, 0);
    assert_eq!(len + 4, r.data.len());
    c[2] = 0x80; // RCTD
    let r = lu.execute(&a, &c, &[]);
    assert_eq!((r.data.len() - 4) % 20, 0);
    // One command without service action.
    c[2] = 1;
    c[3] = 0x28;
    let r = lu.execute(&a, &c, &[]);
    assert_eq!(r.data[1] & 7, 3);
    assert_eq!(r.data[4], 0x28);
    // PRIN has service actions: option 1 is invalid, option 2 works.
    c[3] = 0x5E;
    assert_eq!(sense(&lu.execute(&a, &c, &[])), (5, 0x24, 0));
    c[2] = 2;
    c[5] = 1;
    assert_eq!(lu.execute(&a, &c, &[]).data[4], 0x5E);
    c[3] = 0x28;
    assert_eq!(sense(&lu.execute(&a, &c, &[])), (5, 0x24, 0));
}

#[test]
fn report_luns_and_target_port_groups() {
    let (_dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    let r = lu.execute(&a, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0], &[]);
    assert_eq!(r.data, {
        let mut v = vec![0u8; 16];
        v[3] = 8;
        v
    });
    ready(&lu, &a);
    let r = lu.execute(&a, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(r.data[4] & 0x0F, 0);
    assert_eq!(&r.data[6..8], &[0, 1]);
    assert_eq!(r.data[11], 1);
}

#[test]
fn short_data_out_writes_whole_blocks_received() {
    let (dev, lu) = setup(100);
    let a = nx("iqn.a", 1);
    ready(&lu, &a);
    assert_eq!(
        lu.execute(&a, &cdb10(0x2A, 0, 2), &[5u8; 512]).status,
        status::GOOD
    );
    assert!(dev.is_mapped(0));
    assert!(!dev.is_mapped(1));
    assert_eq!(lu.execute(&a, &cdb10(0x2A, 5, 1), &[]).status, status::GOOD);
}
