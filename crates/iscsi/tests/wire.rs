//! End to end over bytes: a test initiator logs in, writes and reads through the real
//! codec on both sides with header and data digests on.

mod support;

use iscsi::digest;
use iscsi::directory::ChapSecrets;
use iscsi::pdu::{Opcode, BHS_LEN};
use iscsi::session::reject;
use support::initiator::{Offer, Pair, BLOCK};
use support::*;

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Check one frame's layout and both digests byte by byte.
fn check_frame(frame: &[u8]) {
    let ahs = frame[4] as usize * 4;
    let dlen = ((frame[5] as usize) << 16) | ((frame[6] as usize) << 8) | frame[7] as usize;
    let head = BHS_LEN + ahs;
    let hd = u32::from_le_bytes(frame[head..head + 4].try_into().unwrap());
    assert_eq!(hd, digest::crc32c(&frame[..head]), "header digest");
    let data_at = head + 4;
    let padded = dlen + pad4(dlen);
    if dlen == 0 {
        assert_eq!(frame.len(), data_at, "no data digest without data");
        return;
    }
    assert_eq!(frame.len(), data_at + padded + 4, "frame length");
    let dd = u32::from_le_bytes(frame[data_at + padded..].try_into().unwrap());
    assert_eq!(
        dd,
        digest::crc32c(&frame[data_at..data_at + padded]),
        "data digest"
    );
}

#[test]
fn login_write_read_with_digests() {
    let secrets = ChapSecrets {
        user: "alice".into(),
        secret: b"twelve-chars".to_vec(),
        target: None,
    };
    let dir = TestDir::new().serve(TARGET, Some(secrets));
    let offer = Offer {
        chap: Some(("alice".into(), b"twelve-chars".to_vec())),
        max_recv: 1024,
        ..Offer::default()
    };
    let mut pair = Pair::new(dir, offer, 256);
    let login_frames = pair.frames_to_target.len();
    let out = pair.login(TARGET);
    assert!(out.params.header_digest && out.params.data_digest);
    assert!(pair.i_codec.header_digest && pair.i_codec.data_digest);
    assert!(pair.t_codec.header_digest && pair.t_codec.data_digest);
    // Login PDUs crossed without digests: their length is exactly BHS + padded data.
    for f in &pair.frames_to_target[login_frames..] {
        let dlen = ((f[5] as usize) << 16) | ((f[6] as usize) << 8) | f[7] as usize;
        assert_eq!(f.len(), BHS_LEN + dlen + pad4(dlen));
    }
    let after_login_t = pair.frames_to_target.len();
    let after_login_i = pair.frames_to_initiator.len();

    // A write that needs immediate data plus R2Ts (InitialR2T=Yes), then a read back.
    let data = pattern(40 * BLOCK, 3);
    assert_eq!(pair.write(8, &data), 0);
    assert_eq!(&pair.disk[8 * BLOCK..48 * BLOCK], &data[..]);
    let (back, status) = pair.read(8, 40);
    assert_eq!(status, 0);
    assert_eq!(back, data);

    let ffp_t = &pair.frames_to_target[after_login_t..];
    let ffp_i = &pair.frames_to_initiator[after_login_i..];
    assert!(ffp_t.len() >= 3 && ffp_i.len() > 3);
    for f in ffp_t.iter().chain(ffp_i) {
        check_frame(f);
    }
    // Some Data-In and Data-Out crossed with data digests.
    assert!(ffp_i
        .iter()
        .any(|f| f[0] & 0x3f == Opcode::DataIn as u8 && f[5..8] != [0, 0, 0]));
    assert!(ffp_t.iter().any(|f| f[0] & 0x3f == Opcode::DataOut as u8));
    // Data-In honoured the initiator's 1024-byte MaxRecvDataSegmentLength.
    for f in ffp_i {
        let dlen = ((f[5] as usize) << 16) | ((f[6] as usize) << 8) | f[7] as usize;
        assert!(dlen <= 1024);
    }

    // Logout closes.
    let sn = pair.cmd_sn;
    let got = pair.exchange(logout_req(99, sn, 0));
    assert_eq!(got[0].opcode(), Some(Opcode::LogoutResponse));
    assert!(pair.closed());
}

#[test]
fn flipped_data_byte_is_rejected_with_data_digest_error() {
    let mut pair = Pair::new(TestDir::standard(), Offer::default(), 64);
    pair.login(TARGET);
    let sn = pair.cmd_sn;
    pair.cmd_sn += 1;
    let imm = pattern(2 * BLOCK, 9);
    let cmd = scsi_cmd(
        5,
        sn,
        false,
        true,
        imm.len() as u32,
        &write10(0, 2),
        &imm,
        true,
    );
    let bhs = cmd.bhs;
    let mut bytes = pair.i_codec.encode(cmd).to_vec();
    // Flip one byte inside the data segment (after BHS + header digest).
    bytes[BHS_LEN + 4 + 100] ^= 0x40;
    pair.send_bytes(&bytes);
    pair.pump();
    let got = pair.recv();
    let rej = got
        .iter()
        .find(|p| p.opcode() == Some(Opcode::Reject))
        .expect("a Reject");
    assert_eq!(rej.bhs[2], reject::DATA_DIGEST_ERROR);
    assert_eq!(
        &rej.data[..],
        &bhs[..],
        "the Reject carries the rejected header"
    );
    assert!(
        pair.executed.is_empty(),
        "the corrupt write never reached the disk"
    );
    assert!(pair.disk.iter().all(|&b| b == 0));
    // The command is finished with CHECK CONDITION so the initiator retries it.
    let resp = got
        .iter()
        .find(|p| p.opcode() == Some(Opcode::ScsiResponse))
        .expect("a response");
    assert_eq!(resp.itt(), 5);
    assert_eq!(resp.bhs[3], 2);
    assert!(!pair.closed());
    // The connection still works afterwards (and the CmdSN was consumed).
    assert_eq!(pair.write(0, &imm), 0);
    assert_eq!(&pair.disk[..imm.len()], &imm[..]);
}

#[test]
fn unsolicited_data_out_over_the_wire() {
    let offer = Offer {
        initial_r2t: false,
        first_burst: 8192,
        max_recv: 2048,
        ..Offer::default()
    };
    let mut pair = Pair::new(TestDir::standard(), offer, 128);
    let out = pair.login(TARGET);
    assert!(!out.params.initial_r2t);
    let data = pattern(64 * BLOCK, 1);
    assert_eq!(pair.write(0, &data), 0);
    let (back, _) = pair.read(0, 64);
    assert_eq!(back, data);
}

#[test]
fn without_digests_frames_carry_none() {
    let offer = Offer {
        digests: false,
        ..Offer::default()
    };
    let mut pair = Pair::new(TestDir::standard(), offer, 16);
    let out = pair.login(TARGET);
    assert!(!out.params.header_digest && !out.params.data_digest);
    let n = pair.frames_to_initiator.len();
    let data = pattern(BLOCK, 4);
    assert_eq!(pair.write(1, &data), 0);
    for f in &pair.frames_to_initiator[n..] {
        let dlen = ((f[5] as usize) << 16) | ((f[6] as usize) << 8) | f[7] as usize;
        assert_eq!(f.len(), BHS_LEN + dlen + pad4(dlen));
    }
}
