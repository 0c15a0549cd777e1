//! Session behaviours libiscsi's iscsi-test-cu checks (iSCSIdatasn, iSCSIResiduals).

mod support;

use iscsi::keys::SessionParams;
use iscsi::pdu::{flags, Opcode, Pdu};
use iscsi::session::Outcome;
use iscsi::Session;
use std::time::Instant;
use support::*;

fn session() -> (Session, TestDir, Instant) {
    let p = SessionParams {
        initial_r2t: true,
        immediate_data: false,
        max_burst: 65536,
        first_burst: 16384,
        ..SessionParams::default()
    };
    let now = Instant::now();
    (
        Session::new(outcome(p, false), now),
        TestDir::standard(),
        now,
    )
}

/// Sends a 2-block WRITE(10) and returns the R2T's TTT.
fn start_write(s: &mut Session, dir: &TestDir, now: Instant, itt: u32, edtl: u32) -> u32 {
    let a = s.on_pdu(
        scsi_cmd(itt, 10, false, true, edtl, &write10(0, 2), &[], true),
        dir,
        now,
    );
    let r2t: Vec<Pdu> = sends(&a).into_iter().cloned().collect();
    assert_eq!(r2t.len(), 1);
    assert_eq!(r2t[0].opcode(), Some(Opcode::R2t));
    r2t[0].ttt()
}

#[test]
fn data_out_with_a_wrong_data_sn_fails_the_command() {
    for bad in [1u32, 27, u32::MAX] {
        let (mut s, dir, now) = session();
        let ttt = start_write(&mut s, &dir, now, 7, 1024);
        let a = s.on_pdu(data_out(7, ttt, bad, 0, &[0u8; 512], false), &dir, now);
        assert!(executes(&a).is_empty());
        let resp: Vec<&Pdu> = sends(&a);
        assert_eq!(resp.len(), 1);
        assert_eq!(resp[0].opcode(), Some(Opcode::ScsiResponse));
        assert_eq!(resp[0].bhs[3], 0x02, "CHECK CONDITION");
        assert!(!closes(&a));
        // The rest of the data is for a task that no longer exists.
        let a = s.on_pdu(data_out(7, ttt, 1, 512, &[0u8; 512], true), &dir, now);
        assert!(executes(&a).is_empty());
    }
}

#[test]
fn data_out_in_sequence_executes() {
    let (mut s, dir, now) = session();
    let ttt = start_write(&mut s, &dir, now, 7, 1024);
    let a = s.on_pdu(data_out(7, ttt, 0, 0, &[0u8; 512], false), &dir, now);
    assert!(sends(&a).is_empty());
    let a = s.on_pdu(data_out(7, ttt, 1, 512, &[0u8; 512], true), &dir, now);
    assert_eq!(executes(&a).len(), 1);
}

#[test]
fn write_residual_compares_the_cdb_with_the_edtl() {
    // WRITE(10) of 2 blocks with EDTL 1 block: overflow of 512.
    let (mut s, dir, now) = session();
    let ttt = start_write(&mut s, &dir, now, 9, 512);
    let a = s.on_pdu(data_out(9, ttt, 0, 0, &[0u8; 512], true), &dir, now);
    assert_eq!(executes(&a).len(), 1);
    let a = s.complete_with_described(9, Outcome::default(), Some(1024));
    let r = sends(&a);
    assert_eq!(r[0].flags() & flags::OVERFLOW, flags::OVERFLOW);
    assert_eq!(r[0].get32(44), 512);

    // EDTL 10000 for 2 blocks: underflow of 10000 - 1024.
    let (mut s, dir, now) = session();
    let ttt = start_write(&mut s, &dir, now, 9, 10000);
    let a = s.on_pdu(data_out(9, ttt, 0, 0, &[0u8; 10000], true), &dir, now);
    assert_eq!(executes(&a).len(), 1);
    let a = s.complete_with_described(9, Outcome::default(), Some(1024));
    let r = sends(&a);
    assert_eq!(r[0].flags() & flags::UNDERFLOW, flags::UNDERFLOW);
    assert_eq!(r[0].get32(44), 10000 - 1024);
}
