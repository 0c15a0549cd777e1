//! Behaviours libiscsi's iscsi-test-cu checks, one test per fix (see docs/conformance.md).

use scsi::{status, LogicalUnit, LuIdentity, MemDevice, NexusId, TaskManagement};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAA: [u8; 16] = [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

fn setup(blocks: u64) -> (Arc<MemDevice>, LogicalUnit) {
    let dev = Arc::new(MemDevice::new(512, blocks));
    let lu = LogicalUnit::new(
        dev.clone(),
        LuIdentity {
            naa: NAA,
            serial: "CONF".into(),
            target_name: "iqn.2024-01.dev.haven:conf".into(),
            target_port_group: 1,
        },
    );
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

fn ready(lu: &LogicalUnit, n: &NexusId) {
    while lu.execute(n, &[0; 6], &[]).status != status::GOOD {}
}

fn sense(r: &scsi::Response) -> (u8, u8, u8) {
    let s = r.sense.as_ref().expect("sense data");
    (s[2] & 0x0F, s[12], s[13])
}

fn cdb10(op: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn cdb16(op: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn vpd(lu: &LogicalUnit, n: &NexusId, page: u8) -> Vec<u8> {
    let r = lu.execute(n, &[0x12, 1, page, 0, 255, 0], &[]);
    assert_eq!(r.status, status::GOOD);
    r.data
}

#[test]
fn compare_and_write_of_zero_blocks_with_data_out_is_refused() {
    // CompareAndWrite.Simple: 256 blocks wrap to 0 in the 8-bit field, 256 KiB follow.
    let (_dev, lu) = setup(1024);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    let caw = cdb16(0x89, 0, 0);
    let r = lu.execute(&n, &caw, &vec![b'A'; 2 * 256 * 512]);
    assert_eq!(sense(&r), (5, 0x24, 0));
    // Zero blocks and no Data-Out is still a no-op.
    assert_eq!(lu.execute(&n, &caw, &[]).status, status::GOOD);
}

#[test]
fn extended_copy_ignores_the_lu_id_type() {
    // ExtendedCopy.ValidTgtDescr: SPC-4 ignores LU ID TYPE (even a reserved value).
    let (_dev, lu) = setup(4096);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    lu.execute(&n, &cdb10(0x2A, 0, 8), &vec![b'X'; 8 * 512]);
    let mut p = vec![0u8; 16 + 32 + 28];
    p[0] = 1;
    p[3] = 32;
    p[11] = 28;
    let t = &mut p[16..48];
    t[0] = 0xE4;
    t[1] = 0x80; // LU ID TYPE 10b (reserved)
    t[4] = 1;
    t[5] = 3;
    t[7] = 16;
    t[8..24].copy_from_slice(&NAA);
    t[30] = 2;
    let s = &mut p[48..];
    s[0] = 0x02;
    s[3] = 0x18;
    s[10..12].copy_from_slice(&8u16.to_be_bytes());
    s[20..28].copy_from_slice(&2048u64.to_be_bytes());
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&(p.len() as u32).to_be_bytes());
    assert_eq!(lu.execute(&n, &c, &p).status, status::GOOD);
    assert_eq!(
        lu.execute(&n, &cdb10(0x28, 2048, 8), &[]).data,
        vec![b'X'; 8 * 512]
    );
}

#[test]
fn sanitize_reserved_fields_are_refused_before_any_work() {
    // Sanitize.*Reserved: byte 1 bit 6 and bytes 2..=6; refused at once, not after the
    // minimum sanitize duration, and the LU never enters "sanitize in progress".
    let (dev, lu) = setup(64);
    lu.set_sanitize_min_duration(Duration::from_secs(30));
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    lu.execute(&n, &cdb10(0x2A, 0, 4), &[1u8; 2048]);
    let start = Instant::now();
    for sa in [0x01u8, 0x02, 0x03] {
        let mut c = vec![0x48, sa | 0x40, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sense(&lu.execute(&n, &c, &[])), (5, 0x24, 0));
        c[1] = sa;
        for i in 2..=6 {
            let mut c = c.clone();
            c[i] = i as u8;
            assert_eq!(sense(&lu.execute(&n, &c, &[])), (5, 0x24, 0), "byte {i}");
        }
    }
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!lu.sanitize_in_progress());
    assert_eq!(dev.mapped_blocks(), 4);
}

#[test]
fn sanitize_cryptographic_erase_deallocates_everything() {
    let (dev, lu) = setup(64);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    lu.execute(&n, &cdb10(0x2A, 0, 4), &[1u8; 2048]);
    let c = [0x48, 0x03, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(lu.execute(&n, &c, &[]).status, status::GOOD);
    assert_eq!(dev.mapped_blocks(), 0);
    assert_eq!(lu.execute(&n, &cdb10(0x28, 0, 1), &[]).data, vec![0u8; 512]);
    // A parameter list is refused.
    let c = [0x48, 0x03, 0, 0, 0, 0, 0, 0, 8, 0];
    assert_eq!(sense(&lu.execute(&n, &c, &[0u8; 8])), (5, 0x24, 0));
    // Advertised: REPORT SUPPORTED OPERATION CODES (one command) and WACEREQ = 01b.
    let rsoc = [0xA3, 0x0C, 0x02, 0x48, 0, 0x03, 0, 0, 0, 64, 0, 0];
    let r = lu.execute(&n, &rsoc, &[]);
    assert_eq!(r.data[1] & 0x07, 0x03);
    assert_eq!(vpd(&lu, &n, 0xB1)[7] & 0x30, 0x10);
}

#[test]
fn write_same_zero_blocks_runs_to_the_end_and_wsnz_is_clear() {
    let (_dev, lu) = setup(128);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    assert_eq!(vpd(&lu, &n, 0xB0)[4] & 0x01, 0, "WSNZ");
    assert_eq!(
        lu.execute(&n, &cdb16(0x93, 120, 0), &[5u8; 512]).status,
        status::GOOD
    );
    assert_eq!(
        lu.execute(&n, &cdb10(0x28, 119, 9), &[]).data[512..],
        vec![5u8; 8 * 512][..]
    );
    // One past the end is still out of range.
    let r = lu.execute(&n, &cdb10(0x41, 129, 0), &[0u8; 512]);
    assert_eq!(sense(&r), (5, 0x21, 0));
}

#[test]
fn write_same_with_unmap_deallocates_whatever_the_data() {
    // WriteSame10.UnmapUntilEnd sends 0xFF blocks with UNMAP set and expects zeros back.
    let (dev, lu) = setup(128);
    let n = nx("iqn.a", 1);
    ready(&lu, &n);
    lu.execute(&n, &cdb10(0x2A, 100, 28), &vec![0xFF; 28 * 512]);
    let mut ws = cdb10(0x41, 100, 0);
    ws[1] = 0x08;
    assert_eq!(lu.execute(&n, &ws, &[0xFF; 512]).status, status::GOOD);
    assert!(!dev.is_mapped(100) && !dev.is_mapped(127));
    assert_eq!(
        lu.execute(&n, &cdb10(0x28, 100, 28), &[]).data,
        vec![0u8; 28 * 512]
    );
}

#[test]
fn lun_reset_unit_attention_reaches_every_nexus() {
    // MultipathIO.Reset: after a LUN reset on one path, every path (the issuer's
    // included) reports 29/03 once.
    let (_dev, lu) = setup(64);
    let a = nx("iqn.a", 1);
    let b = nx("iqn.a", 2);
    ready(&lu, &a);
    ready(&lu, &b);
    lu.task_management(&a, TaskManagement::LogicalUnitReset);
    assert_eq!(sense(&lu.execute(&a, &[0; 6], &[])), (6, 0x29, 3));
    assert_eq!(sense(&lu.execute(&b, &[0; 6], &[])), (6, 0x29, 3));
    assert_eq!(lu.execute(&a, &[0; 6], &[]).status, status::GOOD);
}

#[test]
fn nexus_loss_releases_a_reserve6_reservation() {
    // Reserve6.Logout / ITNexusLoss: the transport calls nexus_lost when a session ends.
    let (_dev, lu) = setup(64);
    let a = nx("iqn.a", 1);
    let b = nx("iqn.b", 2);
    ready(&lu, &a);
    ready(&lu, &b);
    assert_eq!(
        lu.execute(&a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
    assert_eq!(
        lu.execute(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::RESERVATION_CONFLICT
    );
    lu.nexus_lost(&a);
    assert_eq!(
        lu.execute(&b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        status::GOOD
    );
}

#[test]
fn data_out_length_described_by_the_cdb() {
    // iSCSIResiduals.Write*Residuals: the transport compares this with the EDTL.
    let (_dev, lu) = setup(64);
    assert_eq!(lu.data_out_len(&cdb10(0x2A, 0, 2)), Some(1024));
    assert_eq!(lu.data_out_len(&[0x0A, 0, 0, 0, 0, 0]), Some(256 * 512));
    assert_eq!(lu.data_out_len(&cdb16(0x8A, 0, 3)), Some(1536));
    assert_eq!(lu.data_out_len(&cdb10(0x28, 0, 2)), Some(0));
    let mut caw = cdb16(0x89, 0, 0);
    caw[13] = 2;
    assert_eq!(lu.data_out_len(&caw), Some(2048));
    assert_eq!(lu.data_out_len(&cdb10(0x41, 0, 9)), Some(512));
    let mut ws16 = cdb16(0x93, 0, 9);
    ws16[1] = 0x01; // NDOB
    assert_eq!(lu.data_out_len(&ws16), Some(0));
    let mut verify = cdb10(0x2F, 0, 4);
    verify[1] = 0x02; // BYTCHK 01b
    assert_eq!(lu.data_out_len(&verify), Some(2048));
    verify[1] = 0x06; // BYTCHK 11b
    assert_eq!(lu.data_out_len(&verify), Some(512));
    assert_eq!(
        lu.data_out_len(&[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]),
        Some(24)
    );
    assert_eq!(lu.data_out_len(&[0xFF, 0, 0, 0, 0, 0]), None);
}

#[test]
fn a_write_fence_refuses_writes_from_every_other_initiator() {
    // The group fences a VM's volume to its host: another host gets RESERVATION CONFLICT
    // on writes, reads stay open, and lifting the fence opens writes again.
    let (_dev, lu) = setup(64);
    let owner = nx("iqn.host-2", 1);
    let old = nx("iqn.host-1", 2);
    ready(&lu, &owner);
    ready(&lu, &old);
    let write10 = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let block = vec![0x5a; 512];
    lu.set_writer(Some("iqn.host-2".into()));
    assert_eq!(lu.execute(&old, &write10, &block).status, 0x18);
    assert_eq!(lu.execute(&old, &read10, &[]).status, 0);
    assert_eq!(lu.execute(&owner, &write10, &block).status, 0);
    lu.set_writer(None);
    assert_eq!(lu.execute(&old, &write10, &block).status, 0);
}
