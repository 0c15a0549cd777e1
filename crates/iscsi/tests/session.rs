//! The full feature phase engine, PDU by PDU.

mod support;

use bytes::Bytes;
use iscsi::keys::SessionParams;
use iscsi::pdu::{flags, Opcode, Pdu};
use iscsi::session::{reject, tmf_response, Action, Outcome, Tmf, NOP_INTERVAL, NOP_TIMEOUT};
use iscsi::Session;
use std::time::{Duration, Instant};
use support::*;

fn params() -> SessionParams {
    SessionParams {
        initiator_max_recv: 4096,
        max_burst: 65536,
        first_burst: 16384,
        ..SessionParams::default()
    }
}

fn session_with(p: SessionParams) -> (Session, TestDir, Instant) {
    let now = Instant::now();
    (
        Session::new(outcome(p, false), now),
        TestDir::standard(),
        now,
    )
}

fn owned(actions: &[Action]) -> Vec<Pdu> {
    sends(actions).into_iter().cloned().collect()
}

fn read_cmd(itt: u32, sn: u32, edtl: u32) -> Pdu {
    scsi_cmd(
        itt,
        sn,
        true,
        false,
        edtl,
        &read10(0, (edtl / 512) as u16),
        &[],
        true,
    )
}

fn good(data: Vec<u8>) -> Outcome {
    Outcome {
        data: Bytes::from(data),
        ..Outcome::default()
    }
}

/// Submit a read, check it reaches Execute, complete it with `data`.
fn run_read(
    s: &mut Session,
    dir: &TestDir,
    now: Instant,
    itt: u32,
    sn: u32,
    edtl: u32,
    o: Outcome,
) -> Vec<Pdu> {
    let a = s.on_pdu(read_cmd(itt, sn, edtl), dir, now);
    let ex = executes(&a);
    assert_eq!(ex.len(), 1);
    assert!(ex[0].read && !ex[0].write);
    assert_eq!(ex[0].expected_len, edtl);
    assert_eq!(ex[0].cdb[0], 0x28);
    owned(&s.complete(itt, o))
}

#[test]
fn read_is_split_at_the_initiators_max_recv() {
    let (mut s, dir, now) = session_with(params());
    let data = pattern(10_000, 1);
    let pdus = run_read(&mut s, &dir, now, 1, 10, 10_000, good(data.clone()));
    assert_eq!(pdus.len(), 3);
    let mut joined = Vec::new();
    for (i, p) in pdus.iter().enumerate() {
        assert_eq!(p.opcode(), Some(Opcode::DataIn));
        assert_eq!(p.itt(), 1);
        assert_eq!(p.ttt(), NO_TAG);
        assert_eq!(p.get32(36), i as u32, "DataSN");
        assert_eq!(p.get32(40), i as u32 * 4096, "buffer offset");
        assert!(p.data.len() <= 4096);
        let last = i == 2;
        assert_eq!(p.flags() & flags::STATUS != 0, last);
        assert_eq!(p.final_bit(), last);
        joined.extend_from_slice(&p.data);
    }
    assert_eq!(joined, data);
    let last = &pdus[2];
    assert_eq!(last.data.len(), 10_000 - 2 * 4096);
    assert_eq!(last.bhs[3], 0, "GOOD");
    assert_eq!(last.stat_sn(), 100);
    assert_eq!(last.flags() & (flags::UNDERFLOW | flags::OVERFLOW), 0);
    assert_eq!(last.get32(44), 0);
    assert_eq!(last.exp_cmd_sn(), 11);
    assert_eq!(s.outstanding(), 0);
    // StatSN advanced only once for the whole read.
    let nop = owned(&s.on_pdu(nop_out(9, NO_TAG, 11, false, &[]), &dir, now));
    assert_eq!(nop[0].stat_sn(), 101);
}

#[test]
fn read_in_pieces_never_puts_two_pieces_in_one_data_in() {
    let (mut s, dir, now) = session_with(params());
    let data = pattern(10_240, 5);
    // Three pieces (a store's extents): 3000, 5000 and 2240 bytes.
    let pieces = [0..3000, 3000..8000, 8000..10_240]
        .into_iter()
        .map(|r| Bytes::copy_from_slice(&data[r]))
        .collect();
    let o = Outcome {
        pieces,
        ..Outcome::default()
    };
    let pdus = run_read(&mut s, &dir, now, 1, 10, 10_240, o);
    let lens: Vec<usize> = pdus.iter().map(|p| p.data.len()).collect();
    assert_eq!(
        lens,
        vec![3000, 4096, 904, 2240],
        "cut at pieces and at 4096"
    );
    let offsets: Vec<u32> = pdus.iter().map(|p| p.get32(40)).collect();
    assert_eq!(offsets, vec![0, 3000, 7096, 8000]);
    let joined: Vec<u8> = pdus.iter().flat_map(|p| p.data.iter().copied()).collect();
    assert_eq!(joined, data);
    assert_ne!(pdus[3].flags() & flags::STATUS, 0);
    assert_eq!(pdus[3].get32(44), 0);

    // Overflow: the pieces hold more than the buffer; only 4096 bytes cross.
    let o = Outcome {
        pieces: vec![Bytes::from(pattern(3000, 6)), Bytes::from(pattern(3000, 7))],
        ..Outcome::default()
    };
    let pdus = run_read(&mut s, &dir, now, 2, 11, 4096, o);
    let lens: Vec<usize> = pdus.iter().map(|p| p.data.len()).collect();
    assert_eq!(lens, vec![3000, 1096]);
    let last = pdus.last().unwrap();
    assert_ne!(last.flags() & flags::OVERFLOW, 0);
    assert_eq!(last.get32(44), 1904);
}

#[test]
fn read_data_in_sequences_end_at_max_burst() {
    let p = SessionParams {
        initiator_max_recv: 4096,
        max_burst: 6144,
        ..SessionParams::default()
    };
    let (mut s, dir, now) = session_with(p);
    let pdus = run_read(&mut s, &dir, now, 1, 10, 12288, good(pattern(12288, 2)));
    let lens: Vec<usize> = pdus.iter().map(|p| p.data.len()).collect();
    assert_eq!(lens, vec![4096, 2048, 4096, 2048]);
    let finals: Vec<bool> = pdus.iter().map(|p| p.final_bit()).collect();
    assert_eq!(finals, vec![false, true, false, true]);
    let offsets: Vec<u32> = pdus.iter().map(|p| p.get32(40)).collect();
    assert_eq!(offsets, vec![0, 4096, 6144, 10240]);
}

#[test]
fn read_residual_underflow_and_overflow() {
    let (mut s, dir, now) = session_with(params());
    // Underflow: 5000 of 8192 bytes.
    let pdus = run_read(&mut s, &dir, now, 1, 10, 8192, good(pattern(5000, 3)));
    let last = pdus.last().unwrap();
    assert_ne!(last.flags() & flags::STATUS, 0);
    assert_ne!(last.flags() & flags::UNDERFLOW, 0);
    assert_eq!(last.flags() & flags::OVERFLOW, 0);
    assert_eq!(last.get32(44), 3192);
    assert_eq!(pdus.iter().map(|p| p.data.len()).sum::<usize>(), 5000);

    // Overflow: 6000 bytes for a 4096-byte buffer; only 4096 cross.
    let pdus = run_read(&mut s, &dir, now, 2, 11, 4096, good(pattern(6000, 4)));
    assert_eq!(pdus.len(), 1);
    let last = &pdus[0];
    assert_ne!(last.flags() & flags::OVERFLOW, 0);
    assert_eq!(last.flags() & flags::UNDERFLOW, 0);
    assert_eq!(last.get32(44), 1904);
    assert_eq!(last.data.len(), 4096);

    // No data at all: a SCSI Response with the whole buffer as underflow.
    let pdus = run_read(&mut s, &dir, now, 3, 12, 4096, good(vec![]));
    assert_eq!(pdus.len(), 1);
    assert_eq!(pdus[0].opcode(), Some(Opcode::ScsiResponse));
    assert_ne!(pdus[0].flags() & flags::UNDERFLOW, 0);
    assert_eq!(pdus[0].get32(44), 4096);
}

#[test]
fn read_with_check_condition_sends_data_then_response() {
    let (mut s, dir, now) = session_with(params());
    let o = Outcome {
        status: 2,
        sense: Some(iscsi::sense_bytes(3, 0x11, 0)),
        data: Bytes::from(pattern(5000, 5)),
        ..Outcome::default()
    };
    let pdus = run_read(&mut s, &dir, now, 1, 10, 8192, o);
    assert_eq!(pdus.len(), 3);
    assert!(pdus[..2]
        .iter()
        .all(|p| p.opcode() == Some(Opcode::DataIn) && p.flags() & flags::STATUS == 0));
    let r = &pdus[2];
    assert_eq!(r.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(r.bhs[3], 2);
    assert_ne!(r.flags() & flags::UNDERFLOW, 0);
    assert_eq!(r.get32(44), 3192);
    // Sense data: 2-byte length then fixed-format sense.
    assert_eq!(
        u16::from_be_bytes([r.data[0], r.data[1]]) as usize,
        r.data.len() - 2
    );
    assert_eq!(r.data[2 + 2], 3);
}

#[test]
fn read_of_zero_length_with_data_still_answers() {
    // EDTL 0 but the device produced bytes (e.g. an allocation length the initiator
    // did not budget for): the initiator must still get a status, with overflow.
    let (mut s, dir, now) = session_with(params());
    let pdus = run_read(&mut s, &dir, now, 1, 10, 0, good(pattern(36, 6)));
    assert_eq!(pdus.len(), 1, "exactly one status-bearing PDU");
    let r = &pdus[0];
    assert_eq!(r.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(r.itt(), 1);
    assert_ne!(r.flags() & flags::OVERFLOW, 0);
    assert_eq!(r.get32(44), 36);
}

#[test]
fn write_with_immediate_data_only() {
    let (mut s, dir, now) = session_with(params());
    let data = pattern(2048, 7);
    let cmd = scsi_cmd(1, 10, false, true, 2048, &write10(0, 4), &data, true);
    let a = s.on_pdu(cmd, &dir, now);
    let ex = executes(&a);
    assert_eq!(ex.len(), 1);
    assert!(ex[0].write);
    assert_eq!(&ex[0].data_out[..], &data[..]);
    assert!(sends(&a).is_empty());
    let pdus = owned(&s.complete(1, Outcome::default()));
    assert_eq!(pdus.len(), 1);
    assert_eq!(pdus[0].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(pdus[0].bhs[3], 0);
    assert_eq!(pdus[0].flags() & (flags::UNDERFLOW | flags::OVERFLOW), 0);
}

#[test]
fn write_with_unsolicited_data_out() {
    let p = SessionParams {
        initial_r2t: false,
        ..params()
    };
    let (mut s, dir, now) = session_with(p);
    let data = pattern(16384, 8);
    // 4096 immediate, then unsolicited Data-Out up to FirstBurstLength (16384).
    let cmd = scsi_cmd(
        1,
        10,
        false,
        true,
        16384,
        &write10(0, 32),
        &data[..4096],
        false,
    );
    assert!(s.on_pdu(cmd, &dir, now).is_empty());
    let a = s.on_pdu(
        data_out(1, NO_TAG, 0, 4096, &data[4096..8192], false),
        &dir,
        now,
    );
    assert!(a.is_empty());
    let a = s.on_pdu(data_out(1, NO_TAG, 1, 8192, &data[8192..], true), &dir, now);
    let ex = executes(&a);
    assert_eq!(ex.len(), 1);
    assert_eq!(&ex[0].data_out[..], &data[..]);
}

#[test]
fn write_beyond_first_burst_gets_r2t_for_the_rest() {
    let p = SessionParams {
        initial_r2t: false,
        ..params()
    };
    let (mut s, dir, now) = session_with(p);
    let data = pattern(40000, 9);
    let cmd = scsi_cmd(
        1,
        10,
        false,
        true,
        40000,
        &write10(0, 79),
        &data[..4096],
        false,
    );
    assert!(s.on_pdu(cmd, &dir, now).is_empty());
    let a = s.on_pdu(
        data_out(1, NO_TAG, 0, 4096, &data[4096..16384], true),
        &dir,
        now,
    );
    let r2ts = owned(&a);
    assert_eq!(r2ts.len(), 1);
    assert_eq!(r2ts[0].opcode(), Some(Opcode::R2t));
    assert_eq!(r2ts[0].get32(36), 0, "R2TSN");
    assert_eq!(r2ts[0].get32(40), 16384);
    assert_eq!(r2ts[0].get32(44), 40000 - 16384);
    let ttt = r2ts[0].ttt();
    let a = s.on_pdu(data_out(1, ttt, 0, 16384, &data[16384..], true), &dir, now);
    assert_eq!(&executes(&a)[0].data_out[..], &data[..]);
}

#[test]
fn unsolicited_burst_ended_early_by_the_command_final_bit() {
    // InitialR2T=No, but the command says (F=1) no unsolicited Data-Out follows:
    // the target must solicit everything after the immediate data.
    let p = SessionParams {
        initial_r2t: false,
        ..params()
    };
    let (mut s, dir, now) = session_with(p);
    let data = pattern(8192, 10);
    let cmd = scsi_cmd(
        1,
        10,
        false,
        true,
        8192,
        &write10(0, 16),
        &data[..1024],
        true,
    );
    let pdus = owned(&s.on_pdu(cmd, &dir, now));
    assert_eq!(pdus.len(), 1, "an R2T for the rest");
    assert_eq!(pdus[0].opcode(), Some(Opcode::R2t));
    assert_eq!(pdus[0].get32(40), 1024);
    assert_eq!(pdus[0].get32(44), 8192 - 1024);
    let a = s.on_pdu(
        data_out(1, pdus[0].ttt(), 0, 1024, &data[1024..], true),
        &dir,
        now,
    );
    assert_eq!(&executes(&a)[0].data_out[..], &data[..]);
}

#[test]
fn write_with_r2ts_respects_max_burst_and_outstanding() {
    let p = SessionParams {
        initial_r2t: true,
        immediate_data: false,
        max_burst: 8192,
        max_outstanding_r2t: 2,
        ..params()
    };
    let (mut s, dir, now) = session_with(p);
    let edtl = 3 * 8192 + 1024;
    let data = pattern(edtl as usize, 11);
    let cmd = scsi_cmd(7, 10, false, true, edtl, &write10(0, 50), &[], true);
    let first = owned(&s.on_pdu(cmd, &dir, now));
    assert_eq!(first.len(), 2, "MaxOutstandingR2T=2");
    let mut seen = Vec::new();
    let mut outstanding: std::collections::VecDeque<Pdu> = first.into();
    let mut executed = None;
    while let Some(r2t) = outstanding.pop_front() {
        assert_eq!(r2t.opcode(), Some(Opcode::R2t));
        assert_eq!(r2t.itt(), 7);
        assert_ne!(r2t.ttt(), NO_TAG);
        assert!(r2t.final_bit());
        let (sn, off, len) = (r2t.get32(36), r2t.get32(40), r2t.get32(44));
        assert!(len <= 8192, "MaxBurstLength");
        seen.push((sn, off, len));
        // Answer in two Data-Out PDUs of at most 4096 bytes.
        let mut o = off;
        let mut dsn = 0;
        while o < off + len {
            let n = (off + len - o).min(4096);
            let fin = o + n == off + len;
            let a = s.on_pdu(
                data_out(
                    7,
                    r2t.ttt(),
                    dsn,
                    o,
                    &data[o as usize..(o + n) as usize],
                    fin,
                ),
                &dir,
                now,
            );
            for p in owned(&a) {
                outstanding.push_back(p);
            }
            if let Some(c) = executes(&a).first() {
                executed = Some(c.data_out.clone());
            }
            assert!(outstanding.len() <= 2, "never more than MaxOutstandingR2T");
            o += n;
            dsn += 1;
        }
    }
    assert_eq!(
        seen,
        vec![
            (0, 0, 8192),
            (1, 8192, 8192),
            (2, 16384, 8192),
            (3, 24576, 1024)
        ]
    );
    assert_eq!(&executed.expect("executed")[..], &data[..]);
}

#[test]
fn data_out_with_unknown_ttt_or_bad_offset_is_rejected() {
    let (mut s, dir, now) = session_with(params());
    let cmd = scsi_cmd(1, 10, false, true, 8192, &write10(0, 16), &[], true);
    let r2t = owned(&s.on_pdu(cmd, &dir, now)).remove(0);
    let a = owned(&s.on_pdu(
        data_out(1, r2t.ttt() ^ 0x55, 0, 0, &[0; 512], false),
        &dir,
        now,
    ));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
    assert_eq!(a[0].bhs[2], reject::INVALID_PDU_FIELD);
    let a = owned(&s.on_pdu(data_out(1, r2t.ttt(), 0, 512, &[0; 512], false), &dir, now));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
    // Unsolicited data when InitialR2T=Yes.
    let a = owned(&s.on_pdu(data_out(1, NO_TAG, 0, 0, &[0; 512], false), &dir, now));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
}

#[test]
fn immediate_data_not_allowed_is_rejected() {
    let p = SessionParams {
        immediate_data: false,
        ..params()
    };
    let (mut s, dir, now) = session_with(p);
    let cmd = scsi_cmd(1, 10, false, true, 512, &write10(0, 1), &[1; 512], true);
    let a = owned(&s.on_pdu(cmd, &dir, now));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
    assert_eq!(a[0].bhs[2], reject::PROTOCOL_ERROR);
}

fn nop(s: &mut Session, dir: &TestDir, now: Instant, itt: u32) -> Pdu {
    // An immediate NOP-Out: answered at once, reports ExpCmdSN.
    owned(&s.on_pdu(nop_out(itt, NO_TAG, 0, true, &[]), dir, now)).remove(0)
}

#[test]
fn cmd_sn_window() {
    let (mut s, dir, now) = session_with(params());
    let n = nop(&mut s, &dir, now, 100);
    assert_eq!(n.exp_cmd_sn(), 10);
    let max = n.max_cmd_sn();
    assert_eq!(max, 10 + iscsi::session::QUEUE_DEPTH - 1);
    // Below the window and beyond MaxCmdSN: dropped without a word.
    assert!(s.on_pdu(read_cmd(1, 9, 512), &dir, now).is_empty());
    assert!(s
        .on_pdu(read_cmd(2, max.wrapping_add(1), 512), &dir, now)
        .is_empty());
    assert_eq!(s.outstanding(), 0);
    // A gap: 11 and 12 are held until 10 arrives, then run in order.
    assert!(s.on_pdu(read_cmd(12, 12, 512), &dir, now).is_empty());
    assert!(s.on_pdu(read_cmd(11, 11, 512), &dir, now).is_empty());
    assert_eq!(nop(&mut s, &dir, now, 101).exp_cmd_sn(), 10);
    let a = s.on_pdu(read_cmd(10, 10, 512), &dir, now);
    let order: Vec<u32> = executes(&a).iter().map(|c| c.itt).collect();
    assert_eq!(order, vec![10, 11, 12]);
    assert_eq!(nop(&mut s, &dir, now, 102).exp_cmd_sn(), 13);
    // Immediate commands run at once and do not advance ExpCmdSN.
    let mut cmd = read_cmd(20, 13, 512);
    cmd.set_immediate(true);
    let a = s.on_pdu(cmd, &dir, now);
    assert_eq!(executes(&a).len(), 1);
    assert_eq!(nop(&mut s, &dir, now, 103).exp_cmd_sn(), 13);
    // The window moves with ExpCmdSN: the answer carries MaxCmdSN = ExpCmdSN + depth - 1.
    let out = owned(&s.complete(20, good(vec![0; 512])));
    assert_eq!(out[0].exp_cmd_sn(), 13);
    assert_eq!(out[0].max_cmd_sn(), 13 + iscsi::session::QUEUE_DEPTH - 1);
}

#[test]
fn cmd_sn_window_wraps() {
    let now = Instant::now();
    let mut o = outcome(params(), false);
    o.exp_cmd_sn = u32::MAX;
    let mut s = Session::new(o, now);
    let dir = TestDir::standard();
    assert!(s.on_pdu(read_cmd(2, 0, 512), &dir, now).is_empty());
    let a = s.on_pdu(read_cmd(1, u32::MAX, 512), &dir, now);
    assert_eq!(executes(&a).len(), 2);
    assert_eq!(nop(&mut s, &dir, now, 9).exp_cmd_sn(), 1);
}

#[test]
fn duplicate_itt_is_rejected() {
    let (mut s, dir, now) = session_with(params());
    s.on_pdu(read_cmd(1, 10, 512), &dir, now);
    let a = owned(&s.on_pdu(read_cmd(1, 11, 512), &dir, now));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
    assert_eq!(a[0].bhs[2], reject::INVALID_PDU_FIELD);
}

#[test]
fn nop_out_is_echoed() {
    let (mut s, dir, now) = session_with(params());
    let mut req = nop_out(0x77, NO_TAG, 10, false, b"are you there?");
    req.set_lun(3);
    let a = owned(&s.on_pdu(req, &dir, now));
    assert_eq!(a.len(), 1);
    let p = &a[0];
    assert_eq!(p.opcode(), Some(Opcode::NopIn));
    assert_eq!(p.itt(), 0x77);
    assert_eq!(p.ttt(), NO_TAG);
    assert_eq!(p.lun(), 3);
    assert_eq!(&p.data[..], b"are you there?");
    assert_eq!(p.stat_sn(), 100);
    assert_eq!(p.exp_cmd_sn(), 11);
    // A NOP-Out that wants no answer gets none.
    assert!(s
        .on_pdu(nop_out(NO_TAG, NO_TAG, 0, true, &[]), &dir, now)
        .is_empty());
}

#[test]
fn idle_initiator_is_pinged_then_dropped() {
    let (mut s, dir, t0) = session_with(params());
    assert!(s.tick(t0 + NOP_INTERVAL / 2).is_empty());
    let t1 = t0 + NOP_INTERVAL;
    let a = owned(&s.tick(t1));
    assert_eq!(a.len(), 1);
    let ping = &a[0];
    assert_eq!(ping.opcode(), Some(Opcode::NopIn));
    assert_eq!(ping.itt(), NO_TAG);
    assert_ne!(ping.ttt(), NO_TAG);
    // No second ping while one is outstanding; no close before the timeout.
    assert!(s.tick(t1 + Duration::from_secs(1)).is_empty());
    assert!(s.tick(t1 + NOP_TIMEOUT).is_empty());
    let a = s.tick(t1 + NOP_TIMEOUT + Duration::from_secs(1));
    assert!(closes(&a));
    let _ = dir;
}

#[test]
fn answered_ping_keeps_the_connection() {
    let (mut s, dir, t0) = session_with(params());
    let t1 = t0 + NOP_INTERVAL;
    let ping = owned(&s.tick(t1)).remove(0);
    let t2 = t1 + Duration::from_secs(1);
    assert!(s
        .on_pdu(nop_out(NO_TAG, ping.ttt(), 10, true, &[]), &dir, t2)
        .is_empty());
    assert!(!closes(&s.tick(t1 + NOP_TIMEOUT + Duration::from_secs(1))));
    // Traffic resets the idle clock.
    assert!(s.tick(t2 + NOP_INTERVAL / 2).is_empty());
}

#[test]
fn logout_closes() {
    let (mut s, dir, now) = session_with(params());
    let a = s.on_pdu(logout_req(5, 10, 0), &dir, now);
    let p = sends(&a)[0];
    assert_eq!(p.opcode(), Some(Opcode::LogoutResponse));
    assert_eq!(p.itt(), 5);
    assert_eq!(p.bhs[2], 0);
    assert_eq!(p.get16(40), 2, "Time2Wait");
    assert_eq!(p.get16(42), 20, "Time2Retain");
    assert!(closes(&a));
    // Recovery removal is not supported at ERL 0.
    let (mut s, dir, now) = session_with(params());
    let a = s.on_pdu(logout_req(5, 10, 2), &dir, now);
    assert_eq!(sends(&a)[0].bhs[2], 2);
    assert!(!closes(&a));
}

#[test]
fn abort_task() {
    let (mut s, dir, now) = session_with(params());
    // A write waiting for its R2T data.
    let r2t = owned(&s.on_pdu(
        scsi_cmd(1, 10, false, true, 4096, &write10(0, 8), &[], true),
        &dir,
        now,
    ))
    .remove(0);
    let a = owned(&s.on_pdu(tmf_req(50, 11, 1, 0, 1, 10), &dir, now));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].opcode(), Some(Opcode::TaskMgmtResponse));
    assert_eq!(a[0].itt(), 50);
    assert_eq!(a[0].bhs[2], tmf_response::COMPLETE);
    assert_eq!(s.outstanding(), 0);
    // Its data is no longer wanted.
    let a = owned(&s.on_pdu(data_out(1, r2t.ttt(), 0, 0, &[0; 4096], true), &dir, now));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));

    // An executing read: aborted, and its completion is swallowed.
    s.on_pdu(read_cmd(2, 11, 512), &dir, now);
    let a = owned(&s.on_pdu(tmf_req(51, 12, 1, 0, 2, 11), &dir, now));
    assert_eq!(a[0].bhs[2], tmf_response::COMPLETE);
    assert!(s.complete(2, good(vec![0; 512])).is_empty());

    // Wrong LUN: not that task.
    s.on_pdu(read_cmd(3, 12, 512), &dir, now);
    let a = owned(&s.on_pdu(tmf_req(52, 13, 1, 5, 3, 20), &dir, now));
    assert_eq!(a[0].bhs[2], tmf_response::NO_TASK);
    assert_eq!(s.outstanding(), 1);
    // A task long finished (RefCmdSN below the window): does not exist.
    let a = owned(&s.on_pdu(tmf_req(53, 13, 1, 0, 1, 10), &dir, now));
    assert_eq!(a[0].bhs[2], tmf_response::NO_TASK);
    // A task that may not have arrived yet (ExpCmdSN <= RefCmdSN < CmdSN): complete.
    let a = owned(&s.on_pdu(tmf_req(54, 15, 1, 0, 9, 13), &dir, now));
    assert_eq!(a[0].bhs[2], tmf_response::COMPLETE);
}

#[test]
fn lun_reset_goes_to_the_driver() {
    let (mut s, dir, now) = session_with(params());
    s.on_pdu(read_cmd(1, 10, 512), &dir, now);
    let a = s.on_pdu(tmf_req(60, 11, 5, 0, NO_TAG, 0), &dir, now);
    assert!(matches!(
        a[..],
        [Action::TaskManagement {
            itt: 60,
            function: Tmf::LogicalUnitReset,
            ..
        }]
    ));
    assert!(
        s.complete(1, good(vec![0; 512])).is_empty(),
        "reset aborted the read"
    );
    let done = owned(&s.tmf_done(60, Tmf::LogicalUnitReset, tmf_response::COMPLETE));
    assert_eq!(done[0].opcode(), Some(Opcode::TaskMgmtResponse));
    assert_eq!(done[0].bhs[2], 0);
}

fn discovery_session(mrdsl: u32) -> (Session, TestDir, Instant) {
    let mut dir = TestDir::new();
    for i in 0..30 {
        dir = dir.serve(&format!("iqn.2024-01.dev.haven:volume-{i:03}"), None);
    }
    let p = SessionParams {
        initiator_max_recv: mrdsl,
        ..SessionParams::default()
    };
    let now = Instant::now();
    (Session::new(outcome(p, true), now), dir, now)
}

#[test]
fn send_targets_long_answer_is_continued() {
    let (mut s, dir, now) = discovery_session(512);
    let mut sn = 10;
    let mut a = owned(&s.on_pdu(
        text_req(1, NO_TAG, sn, false, &kv(&[("SendTargets", "All")])),
        &dir,
        now,
    ));
    let mut all = Vec::new();
    let mut rounds = 0;
    loop {
        assert_eq!(a.len(), 1);
        let p = a.remove(0);
        assert_eq!(p.opcode(), Some(Opcode::TextResponse));
        assert_eq!(p.itt(), 1);
        assert!(p.data.len() <= 512);
        all.extend_from_slice(&p.data);
        rounds += 1;
        if p.final_bit() {
            assert_eq!(p.ttt(), NO_TAG);
            assert_eq!(p.flags() & flags::TEXT_CONTINUE, 0);
            break;
        }
        assert_ne!(
            p.flags() & flags::TEXT_CONTINUE,
            0,
            "C bit on a partial answer"
        );
        assert_ne!(p.ttt(), NO_TAG);
        sn += 1;
        a = owned(&s.on_pdu(text_req(1, p.ttt(), sn, false, &[]), &dir, now));
    }
    assert!(rounds > 2);
    let pairs = iscsi::text::parse(&all).unwrap();
    let names: Vec<&String> = pairs
        .iter()
        .filter(|(k, _)| k == "TargetName")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(names.len(), 30);
    assert_eq!(names[29], "iqn.2024-01.dev.haven:volume-029");
    assert_eq!(
        pairs.iter().filter(|(k, _)| k == "TargetAddress").count(),
        30
    );
}

#[test]
fn send_targets_in_a_normal_session_reports_only_its_target() {
    let (mut s, _, now) = session_with(params());
    let dir = TestDir::standard().serve("iqn.2024-01.dev.haven:other", None);
    let a = owned(&s.on_pdu(
        text_req(1, NO_TAG, 10, false, &kv(&[("SendTargets", "All")])),
        &dir,
        now,
    ));
    let pairs = pairs_of(&a[0]);
    assert_eq!(get(&pairs, "TargetName").as_deref(), Some(TARGET));
    assert_eq!(pairs.iter().filter(|(k, _)| k == "TargetName").count(), 1);
}

#[test]
fn text_request_spanning_several_pdus() {
    let (mut s, dir, now) = discovery_session(8192);
    let req = kv(&[("SendTargets", "iqn.2024-01.dev.haven:volume-007")]);
    let (a, b) = req.split_at(15);
    let ack = owned(&s.on_pdu(text_req(1, NO_TAG, 10, true, a), &dir, now)).remove(0);
    assert_eq!(ack.opcode(), Some(Opcode::TextResponse));
    assert!(ack.data.is_empty());
    assert_ne!(ack.ttt(), NO_TAG);
    // RFC 7143 §11.10.4: the initiator copies the TTT of the response into its next request.
    let out = owned(&s.on_pdu(text_req(1, ack.ttt(), 11, false, b), &dir, now)).remove(0);
    assert_eq!(out.opcode(), Some(Opcode::TextResponse), "got {out:?}");
    let pairs = pairs_of(&out);
    assert_eq!(
        get(&pairs, "TargetName").as_deref(),
        Some("iqn.2024-01.dev.haven:volume-007")
    );
}

#[test]
fn unknown_text_keys_are_not_understood() {
    let (mut s, dir, now) = discovery_session(8192);
    let a = owned(&s.on_pdu(
        text_req(1, NO_TAG, 10, false, &kv(&[("X-Thing", "1")])),
        &dir,
        now,
    ));
    assert_eq!(
        get(&pairs_of(&a[0]), "X-Thing").as_deref(),
        Some("NotUnderstood")
    );
}

#[test]
fn unknown_opcode_is_rejected() {
    let (mut s, dir, now) = session_with(params());
    let mut p = Pdu::new(Opcode::NopOut);
    p.bhs[0] = 0x1c; // not an initiator opcode
    p.set_itt(3);
    let bhs = p.bhs;
    let a = owned(&s.on_pdu(p, &dir, now));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
    assert_eq!(a[0].bhs[2], reject::COMMAND_NOT_SUPPORTED);
    assert_eq!(a[0].itt(), NO_TAG);
    assert_eq!(&a[0].data[..], &bhs[..]);
    // SCSI commands have no place in a discovery session.
    let (mut s, dir, now) = discovery_session(8192);
    let a = owned(&s.on_pdu(read_cmd(1, 10, 512), &dir, now));
    assert_eq!(a[0].bhs[2], reject::COMMAND_NOT_SUPPORTED);
    // A Login in full feature phase is a protocol error that closes.
    let (mut s, dir, now) = session_with(params());
    let a = s.on_pdu(login(0, 1, true, 10, &[]), &dir, now);
    assert_eq!(sends(&a)[0].bhs[2], reject::PROTOCOL_ERROR);
    assert!(closes(&a));
}

#[test]
fn data_digest_error_on_data_out() {
    let (mut s, dir, now) = session_with(params());
    let r2t = owned(&s.on_pdu(
        scsi_cmd(4, 10, false, true, 1024, &write10(0, 2), &[], true),
        &dir,
        now,
    ))
    .remove(0);
    let bad = data_out(4, r2t.ttt(), 0, 0, &[7; 1024], true);
    let a = owned(&s.on_data_digest_error(&bad));
    assert_eq!(a[0].opcode(), Some(Opcode::Reject));
    assert_eq!(a[0].bhs[2], reject::DATA_DIGEST_ERROR);
    assert_eq!(&a[0].data[..], &bad.bhs[..]);
    let r = &a[1];
    assert_eq!(r.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(r.itt(), 4);
    assert_eq!(r.bhs[3], 2, "CHECK CONDITION");
    assert_eq!(r.data[2 + 2], 0x0b, "ABORTED COMMAND");
    assert_eq!(s.outstanding(), 0);
}

#[test]
fn data_digest_error_on_a_command_consumes_its_cmd_sn() {
    let (mut s, dir, now) = session_with(params());
    // Command 11 arrives first (held), then 10 arrives with a bad data digest.
    assert!(s.on_pdu(read_cmd(11, 11, 512), &dir, now).is_empty());
    let bad = scsi_cmd(10, 10, false, true, 512, &write10(0, 1), &[1; 512], true);
    let a = s.on_data_digest_error(&bad);
    assert_eq!(sends(&a)[0].bhs[2], reject::DATA_DIGEST_ERROR);
    // The held command must not be stuck behind the consumed CmdSN.
    let a = s.on_pdu(nop_out(NO_TAG, NO_TAG, 0, true, &[]), &dir, now);
    let mut ran: Vec<u32> = executes(&a).iter().map(|c| c.itt).collect();
    let a = s.on_pdu(read_cmd(12, 12, 512), &dir, now);
    ran.extend(executes(&a).iter().map(|c| c.itt));
    assert_eq!(ran, vec![11, 12]);
}

#[test]
fn request_logout_sends_async_message() {
    let (mut s, _, _) = session_with(params());
    let a = owned(&s.request_logout(10));
    assert_eq!(a[0].opcode(), Some(Opcode::AsyncMessage));
    assert_eq!(a[0].bhs[36], 1);
    assert_eq!(a[0].get16(42), 10);
}

#[test]
fn snack_is_rejected_at_erl0() {
    let (mut s, dir, now) = session_with(params());
    let p = Pdu::new(Opcode::Snack);
    let a = owned(&s.on_pdu(p, &dir, now));
    assert_eq!(a[0].bhs[2], reject::PROTOCOL_ERROR);
}
