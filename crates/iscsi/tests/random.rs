//! A short randomized run on stable: random bytes and PDU sequences through the codec,
//! the text parser, Login and Session must never panic, and basic invariants hold.

mod support;

use bytes::{Bytes, BytesMut};
use iscsi::keys::{self, SessionParams, TargetLimits};
use iscsi::pdu::{Opcode, Pdu, BHS_LEN, RESERVED_TAG};
use iscsi::session::{Action, Outcome};
use iscsi::{text, Codec, CodecError, Login, LoginStep, Session};
use proptest::prelude::*;
use std::time::{Duration, Instant};
use support::*;

/// Decode everything in `bytes`, checking the framing invariants.
fn decode_all(codec: &Codec, bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(pdu)) => {
                let used = before - buf.len();
                assert!(used > 0 && used <= before);
                assert!(pdu.data.len() <= codec.max_recv_data);
                let enc = codec.encode(pdu.clone());
                assert_eq!(enc.len(), used);
                let mut again = BytesMut::from(&enc.to_vec()[..]);
                assert_eq!(codec.decode(&mut again).unwrap().unwrap(), pdu);
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return;
            }
            Err(CodecError::DataDigest { .. }) => assert!(buf.len() < before),
            Err(_) => {
                assert!(buf.len() <= before);
                return;
            }
        }
    }
}

fn codec_of(hd: bool, dd: bool, small: bool) -> Codec {
    Codec {
        header_digest: hd,
        data_digest: dd,
        max_recv_data: if small { 512 } else { 1 << 20 },
    }
}

/// Frames that are valid for `codec`, then damaged at a few places.
/// (BHS bytes, AHS words, data) of one frame.
type Frame = (Vec<u8>, usize, Vec<u8>);

fn frames() -> impl Strategy<Value = (Vec<Frame>, Vec<(usize, u8)>)> {
    let frame = (
        prop::collection::vec(any::<u8>(), BHS_LEN),
        0usize..3,
        prop::collection::vec(any::<u8>(), 0..700),
    );
    (
        prop::collection::vec(frame, 1..4),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    )
}

/// Text made mostly of the characters that matter to the parser.
fn texty() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"=\0abcXYZ019-.:_@ ".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..200)
}

const KEYS: &[&str] = &[
    "InitiatorName=iqn.i",
    "TargetName=iqn.2024-01.dev.haven:vol1",
    "TargetName=nope",
    "SessionType=Discovery",
    "SessionType=Normal",
    "AuthMethod=None",
    "AuthMethod=CHAP",
    "CHAP_A=5",
    "CHAP_N=alice",
    "CHAP_R=0x00112233445566778899aabbccddeeff",
    "CHAP_I=1",
    "CHAP_C=0x0102",
    "HeaderDigest=CRC32C,None",
    "DataDigest=CRC32C",
    "MaxRecvDataSegmentLength=512",
    "MaxBurstLength=99999999",
    "FirstBurstLength=0x1000",
    "InitialR2T=No",
    "X-Unknown=1",
    "MaxConnections=junk",
];

fn login_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(prop::sample::select(KEYS), 0..6).prop_map(|ks| {
            let mut v = Vec::new();
            for k in ks {
                v.extend_from_slice(k.as_bytes());
                v.push(0);
            }
            v
        }),
        1 => texty(),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Cmd {
        read: bool,
        write: bool,
        itt: u32,
        sn: i8,
        edtl: u32,
        imm: usize,
        fin: bool,
        immediate: bool,
    },
    DataOut {
        itt: u32,
        ttt: u8,
        offset: u32,
        len: usize,
        fin: bool,
    },
    Nop {
        itt: u32,
        ttt: u8,
        sn: i8,
        len: usize,
    },
    Text {
        ttt: u8,
        sn: i8,
        cont: bool,
        data: Vec<u8>,
    },
    Tmf {
        function: u8,
        itt: u32,
        sn: i8,
    },
    Logout {
        reason: u8,
    },
    Complete {
        pick: usize,
        len: usize,
        status: u8,
        sense: bool,
    },
    Tick {
        secs: u8,
    },
    Raw {
        bhs: Vec<u8>,
        len: usize,
    },
    DigestError {
        itt: u32,
        cmd: bool,
        sn: i8,
    },
    /// Answer an R2T the target sent, in Data-Out PDUs of `split` bytes.
    AnswerR2t {
        pick: usize,
        split: usize,
    },
    /// Unsolicited Data-Out at the offset the command has reached.
    Unsolicited {
        itt: u32,
        len: usize,
        fin: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let itt = 0u32..6;
    prop_oneof![
        6 => (any::<bool>(), any::<bool>(), itt.clone(), -1i8..3, 0u32..40_000, 0usize..3000, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(read, write, itt, sn, edtl, imm, fin, immediate)| Op::Cmd { read, write, itt, sn, edtl, imm, fin, immediate }),
        2 => (itt.clone(), any::<u8>(), 0u32..40_000, 0usize..9000, any::<bool>())
            .prop_map(|(itt, ttt, offset, len, fin)| Op::DataOut { itt, ttt, offset, len, fin }),
        1 => (prop_oneof![Just(RESERVED_TAG), 0u32..4], any::<u8>(), -2i8..3, 0usize..20_000)
            .prop_map(|(itt, ttt, sn, len)| Op::Nop { itt, ttt, sn, len }),
        1 => (any::<u8>(), -2i8..3, any::<bool>(), prop_oneof![Just(b"SendTargets=All\0".to_vec()), texty()])
            .prop_map(|(ttt, sn, cont, data)| Op::Text { ttt, sn, cont, data }),
        1 => (0u8..10, itt.clone(), -2i8..3).prop_map(|(function, itt, sn)| Op::Tmf { function, itt, sn }),
        1 => (0u8..8).prop_map(|reason| Op::Logout { reason }),
        6 => (any::<usize>(), 256usize..9000).prop_map(|(pick, split)| Op::AnswerR2t { pick, split }),
        3 => (0u32..6, 0usize..20_000, any::<bool>()).prop_map(|(itt, len, fin)| Op::Unsolicited { itt, len, fin }),
        3 => (any::<usize>(), 0usize..50_000, prop::sample::select(vec![0u8, 2, 8]), any::<bool>())
            .prop_map(|(pick, len, status, sense)| Op::Complete { pick, len, status, sense }),
        1 => (0u8..30).prop_map(|secs| Op::Tick { secs }),
        1 => (prop::collection::vec(any::<u8>(), BHS_LEN), 0usize..600).prop_map(|(bhs, len)| Op::Raw { bhs, len }),
        1 => (itt, any::<bool>(), -1i8..2).prop_map(|(itt, cmd, sn)| Op::DigestError { itt, cmd, sn }),
    ]
}

fn session_params() -> impl Strategy<Value = SessionParams> {
    (
        512u32..20_000,
        512u32..70_000,
        512u32..70_000,
        any::<bool>(),
        any::<bool>(),
        1u32..4,
    )
        .prop_map(
            |(mrdsl, max_burst, first_burst, initial_r2t, immediate_data, max_outstanding_r2t)| {
                SessionParams {
                    initiator_max_recv: mrdsl,
                    max_burst,
                    first_burst: first_burst.min(max_burst),
                    initial_r2t,
                    immediate_data,
                    max_outstanding_r2t,
                    ..SessionParams::default()
                }
            },
        )
}

struct Driver {
    s: Session,
    dir: TestDir,
    now: Instant,
    mrdsl: usize,
    exp: u32,
    ttts: Vec<u32>,
    executing: Vec<u32>,
    closed: bool,
    /// R2Ts seen: (ITT, TTT, offset, length).
    r2ts: Vec<(u32, u32, u32, u32)>,
    /// Next unsolicited offset of each write sent.
    next_off: std::collections::HashMap<u32, u32>,
}

impl Driver {
    fn absorb(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(p) => {
                    assert!(
                        p.data.len() <= self.mrdsl,
                        "{p:?} carries {} bytes, initiator accepts {}",
                        p.data.len(),
                        self.mrdsl
                    );
                    if p.opcode() == Some(Opcode::R2t) {
                        assert!(p.get32(44) > 0);
                        self.r2ts.push((p.itt(), p.ttt(), p.get32(40), p.get32(44)));
                    }
                    if p.ttt() != RESERVED_TAG && p.opcode() != Some(Opcode::DataIn) {
                        self.ttts.push(p.ttt());
                    }
                    if matches!(
                        p.opcode(),
                        Some(Opcode::ScsiResponse | Opcode::NopIn | Opcode::TextResponse)
                    ) {
                        self.exp = p.exp_cmd_sn();
                    }
                }
                Action::Execute(c) => {
                    if c.write {
                        assert_eq!(
                            c.data_out.len(),
                            c.expected_len as usize,
                            "a write runs with all its data"
                        );
                    } else {
                        assert!(c.data_out.is_empty());
                    }
                    self.executing.push(c.itt);
                }
                Action::TaskManagement { itt, function, .. } => {
                    let more = self.s.tmf_done(itt, function, 0);
                    self.absorb(more);
                }
                Action::Close => self.closed = true,
            }
        }
    }

    fn ttt(&self, pick: u8) -> u32 {
        match pick {
            0 => RESERVED_TAG,
            i if self.ttts.is_empty() => i as u32,
            i => self.ttts[i as usize % self.ttts.len()],
        }
    }

    fn sn(&self, d: i8) -> u32 {
        self.exp.wrapping_add(d as i32 as u32)
    }

    fn apply(&mut self, op: Op) {
        let pdu = match op {
            Op::Cmd {
                read,
                write,
                itt,
                sn,
                edtl,
                imm,
                fin,
                immediate,
            } => {
                let imm = if write { imm.min(edtl as usize) } else { 0 };
                if write {
                    self.next_off.insert(itt, imm as u32);
                }
                let mut p = scsi_cmd(
                    itt,
                    self.sn(sn),
                    read,
                    write,
                    edtl,
                    &read10(0, 1),
                    &pattern(imm, 1),
                    fin,
                );
                p.set_immediate(immediate);
                p
            }
            Op::DataOut {
                itt,
                ttt,
                offset,
                len,
                fin,
            } => data_out(itt, self.ttt(ttt), 0, offset, &pattern(len, 2), fin),
            Op::Nop { itt, ttt, sn, len } => nop_out(
                itt,
                self.ttt(ttt),
                self.sn(sn),
                itt == RESERVED_TAG,
                &pattern(len, 3),
            ),
            Op::Text {
                ttt,
                sn,
                cont,
                data,
            } => text_req(9, self.ttt(ttt), self.sn(sn), cont, &data),
            Op::Tmf { function, itt, sn } => {
                tmf_req(20 + itt, self.sn(sn), function, 0, itt, self.sn(-1))
            }
            Op::Logout { reason } => logout_req(30, self.exp, reason),
            Op::Complete {
                pick,
                len,
                status,
                sense,
            } => {
                if !self.executing.is_empty() {
                    let itt = self.executing.remove(pick % self.executing.len());
                    let data = Bytes::from(pattern(len, 4));
                    // Some reads come back in pieces (a store's extents).
                    let o = if pick % 3 == 0 && len > 0 {
                        let cut = len * (pick % 7 + 1) / 8;
                        Outcome {
                            status,
                            sense: sense.then(|| iscsi::sense_bytes(5, 0x24, 0)),
                            pieces: vec![data.slice(..cut), data.slice(cut..)],
                            ..Outcome::default()
                        }
                    } else {
                        Outcome {
                            status,
                            sense: sense.then(|| iscsi::sense_bytes(5, 0x24, 0)),
                            data,
                            ..Outcome::default()
                        }
                    };
                    let a = self.s.complete(itt, o);
                    self.absorb(a);
                }
                return;
            }
            Op::AnswerR2t { pick, split } => {
                if self.r2ts.is_empty() {
                    return;
                }
                let (itt, ttt, offset, len) = self.r2ts.remove(pick % self.r2ts.len());
                let mut o = offset;
                while o < offset + len && !self.closed {
                    let n = (offset + len - o).min(split as u32);
                    let fin = o + n == offset + len;
                    let p = data_out(itt, ttt, 0, o, &pattern(n as usize, 6), fin);
                    let a = self.s.on_pdu(p, &self.dir, self.now);
                    self.absorb(a);
                    o += n;
                }
                return;
            }
            Op::Unsolicited { itt, len, fin } => {
                let off = self.next_off.get(&itt).copied().unwrap_or(0);
                self.next_off.insert(itt, off + len as u32);
                data_out(itt, RESERVED_TAG, 0, off, &pattern(len, 7), fin)
            }
            Op::Tick { secs } => {
                self.now += Duration::from_secs(secs as u64);
                let a = self.s.tick(self.now);
                self.absorb(a);
                return;
            }
            Op::Raw { bhs, len } => {
                let mut p = Pdu::new(Opcode::NopOut);
                p.bhs.copy_from_slice(&bhs);
                p.data = Bytes::from(pattern(len, 5));
                p.fix_lengths();
                p
            }
            Op::DigestError { itt, cmd, sn } => {
                let p = if cmd {
                    scsi_cmd(
                        itt,
                        self.sn(sn),
                        false,
                        true,
                        512,
                        &write10(0, 1),
                        &[0; 512],
                        true,
                    )
                } else {
                    data_out(itt, self.ttt(1), 0, 0, &[0; 512], true)
                };
                let a = self.s.on_data_digest_error(&p);
                self.absorb(a);
                return;
            }
        };
        let a = self.s.on_pdu(pdu, &self.dir, self.now);
        self.absorb(a);
    }
}

/// Found by the text_keys fuzz target: a non-ASCII character after `0x` panicked.
#[test]
fn parse_binary_rejects_non_hex() {
    assert_eq!(text::parse_binary("0x\u{20ac}"), None);
    assert_eq!(text::parse_binary("0x\u{ba}"), None);
    assert_eq!(text::parse_binary("0xa\u{e9}b"), None);
    assert_eq!(text::parse_binary("0x+1"), None);
    assert_eq!(text::parse_binary("0x0g"), None);
    assert_eq!(text::parse_binary("0x01"), Some(vec![1]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn binary_and_number_values_random(v in "(0[xXbB])?\\PC{0,24}") {
        if let Some(b) = text::parse_binary(&v) {
            if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                prop_assert_eq!(b.len(), h.len().div_ceil(2));
            }
        }
        let _ = text::parse_number(&v);
    }

    #[test]
    fn codec_random_bytes(hd: bool, dd: bool, small: bool, bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&codec_of(hd, dd, small), &bytes);
    }

    #[test]
    fn codec_damaged_frames(hd: bool, dd: bool, small: bool, (fs, damage) in frames()) {
        let codec = codec_of(hd, dd, small);
        let mut wire = Vec::new();
        for (bhs, ahs_words, data) in fs {
            let mut p = Pdu::new(Opcode::NopOut);
            p.bhs.copy_from_slice(&bhs);
            p.ahs = Bytes::from(vec![0xab; ahs_words * 4]);
            p.data = Bytes::from(data);
            wire.extend_from_slice(&codec.encode(p).to_vec());
        }
        for (at, x) in damage {
            let n = wire.len();
            wire[at % n] ^= x;
        }
        decode_all(&codec, &wire);
        // Fed in two pieces, nothing is lost or invented.
        decode_all(&codec, &wire[..wire.len() / 2]);
    }

    #[test]
    fn text_parse_random(bytes in texty()) {
        if let Ok(pairs) = text::parse(&bytes) {
            prop_assert_eq!(text::parse(&text::encode(&pairs)).unwrap(), pairs.clone());
            let limits = TargetLimits::default();
            let mut p = SessionParams::default();
            for (k, v) in &pairs {
                let _ = keys::negotiate(&mut p, &limits, false, k, v);
                let _ = text::parse_binary(v);
            }
            keys::finish(&mut p, &limits);
            prop_assert!(p.first_burst <= p.max_burst);
            prop_assert!(p.initiator_max_recv >= 512);
        }
    }

    #[test]
    fn login_random_sequences(
        steps in prop::collection::vec((any::<u8>(), prop_oneof![Just(0x81u8), Just(0x87), Just(0x04), Just(0x40), any::<u8>()], login_text()), 1..8)
    ) {
        let dir = TestDir::standard();
        let mut l = Login::new(TargetLimits::default(), 1);
        let mut outcome = None;
        for (kind, flags, data) in steps {
            let mut p = login_raw(0, 0, false, false, 1, data);
            p.set_flags(flags);
            if kind % 8 == 0 {
                p.bhs[0] = kind & 0x7f; // an arbitrary opcode
            }
            match l.step(&p, &dir) {
                LoginStep::Continue(r) => prop_assert_eq!(r.opcode(), Some(Opcode::LoginResponse)),
                LoginStep::Fail(r) => {
                    prop_assert_ne!(r.get16(36), 0);
                    break;
                }
                LoginStep::Done(r, o) => {
                    prop_assert_eq!(r.get16(36), 0);
                    prop_assert!(o.params.initiator_max_recv >= 512);
                    outcome = Some(o);
                    break;
                }
            }
        }
        if let Some(o) = outcome {
            // The session it opens survives a NOP.
            let mut s = Session::new(o.clone(), Instant::now());
            let _ = s.on_pdu(nop_out(1, RESERVED_TAG, o.exp_cmd_sn, false, b"x"), &dir, Instant::now());
        }
    }

    #[test]
    fn session_random_sequences(params in session_params(), discovery in prop::bool::weighted(0.15), ops in prop::collection::vec(op(), 1..40)) {
        let now = Instant::now();
        let o = outcome(params.clone(), discovery);
        let mut d = Driver {
            exp: o.exp_cmd_sn,
            s: Session::new(o, now),
            dir: TestDir::standard(),
            now,
            mrdsl: params.initiator_max_recv as usize,
            ttts: Vec::new(),
            executing: Vec::new(),
            closed: false,
            r2ts: Vec::new(),
            next_off: Default::default(),
        };
        for op in ops {
            d.apply(op);
            if d.closed {
                break;
            }
        }
    }
}
