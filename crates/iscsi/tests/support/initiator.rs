//! An in-memory initiator that talks to a target [`Login`] + [`Session`] pair through
//! the real [`Codec`] on both sides: every PDU crosses as bytes, so header and data
//! digests are exercised exactly as they would be on a socket.

use super::{
    data_out, get, kv, login_raw, login_status, pairs_of, read10, scsi_cmd, write10, TestDir,
    INITIATOR, NO_TAG,
};
use bytes::{Bytes, BytesMut};
use iscsi::chap;
use iscsi::keys::TargetLimits;
use iscsi::pdu::{flags, Opcode, Pdu};
use iscsi::session::{tmf_response, Action, Outcome};
use iscsi::text;
use iscsi::{Codec, CodecError, Login, LoginOutcome, LoginStep, Session};
use std::time::Instant;

pub const BLOCK: usize = 512;

enum Phase {
    Login(Box<Login>),
    Full(Box<Session>),
    Closed,
}

/// What the initiator offers during login.
#[derive(Clone)]
pub struct Offer {
    pub digests: bool,
    pub chap: Option<(String, Vec<u8>)>,
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_recv: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_burst: u32,
    pub first_burst: u32,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            digests: true,
            chap: None,
            max_recv: 4096,
            immediate_data: true,
            initial_r2t: true,
            max_burst: 16384,
            first_burst: 8192,
        }
    }
}

/// Initiator and target joined by two byte queues.
pub struct Pair {
    pub dir: TestDir,
    phase: Phase,
    /// The target's codec (its receive limits; digests as negotiated).
    pub t_codec: Codec,
    /// The initiator's codec.
    pub i_codec: Codec,
    pub to_target: BytesMut,
    pub to_initiator: BytesMut,
    /// Every frame each side put on the wire, as bytes.
    pub frames_to_target: Vec<Vec<u8>>,
    pub frames_to_initiator: Vec<Vec<u8>>,
    /// The target's backing store.
    pub disk: Vec<u8>,
    pub now: Instant,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    next_itt: u32,
    /// The target's MaxRecvDataSegmentLength as it declared it.
    pub target_max_recv: u32,
    pub outcome: Option<LoginOutcome>,
    pub offer: Offer,
    /// Commands the target executed (ITT, bytes of Data-Out).
    pub executed: Vec<(u32, usize)>,
}

impl Pair {
    pub fn new(dir: TestDir, offer: Offer, disk_blocks: usize) -> Self {
        let limits = TargetLimits::default();
        Pair {
            dir,
            phase: Phase::Login(Box::new(Login::new(limits.clone(), 0x5000))),
            t_codec: Codec {
                max_recv_data: limits.max_recv_data_segment_length as usize,
                ..Codec::default()
            },
            i_codec: Codec {
                max_recv_data: offer.max_recv as usize,
                ..Codec::default()
            },
            to_target: BytesMut::new(),
            to_initiator: BytesMut::new(),
            frames_to_target: Vec::new(),
            frames_to_initiator: Vec::new(),
            disk: vec![0; disk_blocks * BLOCK],
            now: Instant::now(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            next_itt: 1,
            target_max_recv: 8192,
            outcome: None,
            offer,
            executed: Vec::new(),
        }
    }

    pub fn closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Full(s) => Some(s),
            _ => None,
        }
    }

    fn itt(&mut self) -> u32 {
        let i = self.next_itt;
        self.next_itt += 1;
        i
    }

    /// Encode `pdu` with the initiator's codec and queue its bytes for the target.
    pub fn send(&mut self, mut pdu: Pdu) -> Vec<u8> {
        pdu.put32(28, self.exp_stat_sn);
        let bytes = self.i_codec.encode(pdu).to_vec();
        self.send_bytes(&bytes);
        bytes
    }

    /// Queue raw bytes for the target (tests corrupt frames this way).
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.frames_to_target.push(bytes.to_vec());
        self.to_target.extend_from_slice(bytes);
    }

    fn target_send(&mut self, pdu: Pdu) {
        let bytes = self.t_codec.encode(pdu).to_vec();
        self.frames_to_initiator.push(bytes.clone());
        self.to_initiator.extend_from_slice(&bytes);
    }

    /// Let the target consume every complete PDU it has and answer.
    pub fn pump(&mut self) {
        loop {
            if self.closed() {
                return;
            }
            let pdu = match self.t_codec.decode(&mut self.to_target) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(CodecError::DataDigest { pdu }) => {
                    let actions = match &mut self.phase {
                        Phase::Full(s) => s.on_data_digest_error(&pdu),
                        _ => {
                            self.phase = Phase::Closed;
                            return;
                        }
                    };
                    self.run(actions);
                    continue;
                }
                Err(e) => panic!("target could not frame a PDU: {e}"),
            };
            let dir = self.dir.clone();
            match &mut self.phase {
                Phase::Login(login) => match login.step(&pdu, &dir) {
                    LoginStep::Continue(resp) => self.target_send(resp),
                    LoginStep::Fail(resp) => {
                        self.target_send(resp);
                        self.phase = Phase::Closed;
                    }
                    LoginStep::Done(resp, outcome) => {
                        self.target_send(resp);
                        self.t_codec.header_digest = outcome.params.header_digest;
                        self.t_codec.data_digest = outcome.params.data_digest;
                        self.t_codec.max_recv_data = outcome.params.target_max_recv as usize;
                        self.outcome = Some(outcome.clone());
                        self.phase = Phase::Full(Box::new(Session::new(outcome, self.now)));
                    }
                },
                Phase::Full(s) => {
                    let actions = s.on_pdu(pdu, &dir, self.now);
                    self.run(actions);
                }
                Phase::Closed => return,
            }
        }
    }

    /// Carry out session actions, executing commands against the RAM disk.
    fn run(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Send(p) => self.target_send(p),
                Action::Close => self.phase = Phase::Closed,
                Action::Execute(cmd) => {
                    self.executed.push((cmd.itt, cmd.data_out.len()));
                    let outcome = self.execute(&cmd.cdb, &cmd.data_out);
                    if let Phase::Full(s) = &mut self.phase {
                        queue.extend(s.complete(cmd.itt, outcome));
                    }
                }
                Action::TaskManagement { itt, function, .. } => {
                    if let Phase::Full(s) = &mut self.phase {
                        queue.extend(s.tmf_done(itt, function, tmf_response::COMPLETE));
                    }
                }
            }
        }
    }

    fn execute(&mut self, cdb: &[u8], data: &[u8]) -> Outcome {
        let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as usize;
        let blocks = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
        let range = lba * BLOCK..(lba + blocks) * BLOCK;
        let bad = || Outcome {
            status: 2,
            sense: Some(iscsi::sense_bytes(0x05, 0x21, 0x00)),
            ..Outcome::default()
        };
        match cdb[0] {
            0x28 if range.end <= self.disk.len() => Outcome {
                data: Bytes::copy_from_slice(&self.disk[range]),
                ..Outcome::default()
            },
            0x2a if range.end <= self.disk.len() && data.len() == range.len() => {
                self.disk[range].copy_from_slice(data);
                Outcome::default()
            }
            0x00 => Outcome::default(),
            _ => bad(),
        }
    }

    /// Decode everything the target sent, with the initiator's codec.
    pub fn recv(&mut self) -> Vec<Pdu> {
        let mut out = Vec::new();
        while let Some(p) = self
            .i_codec
            .decode(&mut self.to_initiator)
            .expect("initiator could not frame a PDU")
        {
            if p.opcode() != Some(Opcode::DataIn) || p.flags() & flags::STATUS != 0 {
                // Every PDU that carries a StatSN the initiator must acknowledge.
                if p.opcode() != Some(Opcode::R2t) {
                    self.exp_stat_sn = p.stat_sn().wrapping_add(1);
                }
            }
            out.push(p);
        }
        out
    }

    /// Send, let the target answer, and decode the answer.
    pub fn exchange(&mut self, pdu: Pdu) -> Vec<Pdu> {
        self.send(pdu);
        self.pump();
        self.recv()
    }

    fn login_step(&mut self, csg: u8, nsg: u8, transit: bool, pairs: &[(&str, &str)]) -> Pdu {
        let req = login_raw(csg, nsg, transit, false, self.cmd_sn, kv(pairs));
        let mut got = self.exchange(req);
        assert_eq!(got.len(), 1, "one Login Response per request");
        let resp = got.remove(0);
        assert_eq!(resp.opcode(), Some(Opcode::LoginResponse));
        assert_eq!(
            login_status(&resp),
            0,
            "login refused: {:?}",
            pairs_of(&resp)
        );
        resp
    }

    /// Log in to `target` with this pair's offer; panics if the target refuses.
    pub fn login(&mut self, target: &str) -> LoginOutcome {
        let offer = self.offer.clone();
        let auth = if offer.chap.is_some() { "CHAP" } else { "None" };
        let first = [
            ("InitiatorName", INITIATOR),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("AuthMethod", auth),
        ];
        let resp = self.login_step(0, 1, true, &first);
        let pairs = pairs_of(&resp);
        assert_eq!(get(&pairs, "AuthMethod").as_deref(), Some(auth));
        if let Some((user, secret)) = &offer.chap {
            assert_eq!(
                resp.flags() & flags::TRANSIT,
                0,
                "no transit before CHAP is done"
            );
            let resp = self.login_step(0, 1, false, &[("CHAP_A", "5")]);
            let pairs = pairs_of(&resp);
            let id: u8 = get(&pairs, "CHAP_I").unwrap().parse().unwrap();
            let challenge = text::parse_binary(&get(&pairs, "CHAP_C").unwrap()).unwrap();
            let r = text::hex(&chap::response(id, secret, &challenge));
            let resp = self.login_step(0, 1, true, &[("CHAP_N", user), ("CHAP_R", &r)]);
            assert_ne!(resp.flags() & flags::TRANSIT, 0);
        } else {
            assert_ne!(resp.flags() & flags::TRANSIT, 0);
        }
        let digest = if offer.digests { "CRC32C,None" } else { "None" };
        let yn = |b: bool| if b { "Yes" } else { "No" };
        let mrdsl = offer.max_recv.to_string();
        let mb = offer.max_burst.to_string();
        let fb = offer.first_burst.to_string();
        let op = [
            ("HeaderDigest", digest),
            ("DataDigest", digest),
            ("MaxRecvDataSegmentLength", mrdsl.as_str()),
            ("ImmediateData", yn(offer.immediate_data)),
            ("InitialR2T", yn(offer.initial_r2t)),
            ("MaxBurstLength", mb.as_str()),
            ("FirstBurstLength", fb.as_str()),
        ];
        let resp = self.login_step(1, 3, true, &op);
        assert_eq!(
            resp.flags() & 0x83,
            0x83,
            "final response transits to full feature phase"
        );
        assert_ne!(resp.get16(14), 0, "TSIH assigned");
        let pairs = pairs_of(&resp);
        let on = get(&pairs, "HeaderDigest").as_deref() == Some("CRC32C");
        self.i_codec.header_digest = on;
        self.i_codec.data_digest = get(&pairs, "DataDigest").as_deref() == Some("CRC32C");
        if let Some(v) = get(&pairs, "MaxRecvDataSegmentLength") {
            self.target_max_recv = v.parse().unwrap();
        }
        self.outcome
            .clone()
            .expect("target reached full feature phase")
    }

    fn next_cmd_sn(&mut self) -> u32 {
        let sn = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        sn
    }

    /// WRITE (10) `data` at `lba`, answering R2Ts; returns the SCSI status.
    pub fn write(&mut self, lba: u32, data: &[u8]) -> u8 {
        assert_eq!(data.len() % BLOCK, 0);
        let itt = self.itt();
        let params = self.outcome.clone().unwrap().params;
        let seg = self.target_max_recv as usize;
        let mut imm = 0;
        if params.immediate_data {
            imm = data.len().min(seg).min(params.first_burst as usize);
        }
        let unsolicited = if params.initial_r2t {
            0
        } else {
            data.len().min(params.first_burst as usize) - imm
        };
        let cdb = write10(lba, (data.len() / BLOCK) as u16);
        let sn = self.next_cmd_sn();
        let cmd = scsi_cmd(
            itt,
            sn,
            false,
            true,
            data.len() as u32,
            &cdb,
            &data[..imm],
            unsolicited == 0,
        );
        self.send(cmd);
        // Unsolicited Data-Out, F on the last one of the burst.
        let mut off = imm;
        let mut dsn = 0;
        while off < imm + unsolicited {
            let n = (imm + unsolicited - off).min(seg);
            let fin = off + n == imm + unsolicited;
            self.send(data_out(
                itt,
                NO_TAG,
                dsn,
                off as u32,
                &data[off..off + n],
                fin,
            ));
            off += n;
            dsn += 1;
        }
        loop {
            self.pump();
            let got = self.recv();
            assert!(!got.is_empty(), "target went silent during a write");
            for p in got {
                match p.opcode() {
                    Some(Opcode::R2t) => {
                        assert_eq!(p.itt(), itt);
                        let ttt = p.ttt();
                        let offset = p.get32(40) as usize;
                        let len = p.get32(44) as usize;
                        assert!(len <= params.max_burst as usize);
                        let mut o = offset;
                        let mut dsn = 0;
                        while o < offset + len {
                            let n = (offset + len - o).min(seg);
                            let fin = o + n == offset + len;
                            self.send(data_out(itt, ttt, dsn, o as u32, &data[o..o + n], fin));
                            o += n;
                            dsn += 1;
                        }
                    }
                    Some(Opcode::ScsiResponse) => {
                        assert_eq!(p.itt(), itt);
                        return p.bhs[3];
                    }
                    other => panic!("unexpected {other:?} during a write"),
                }
            }
        }
    }

    /// READ (10) `blocks` at `lba`; returns the data and the SCSI status.
    pub fn read(&mut self, lba: u32, blocks: u16) -> (Vec<u8>, u8) {
        let itt = self.itt();
        let len = blocks as usize * BLOCK;
        let sn = self.next_cmd_sn();
        let got = self.exchange(scsi_cmd(
            itt,
            sn,
            true,
            false,
            len as u32,
            &read10(lba, blocks),
            &[],
            true,
        ));
        let mut data = Vec::new();
        let mut dsn = 0;
        for p in got {
            assert_eq!(p.itt(), itt);
            match p.opcode() {
                Some(Opcode::DataIn) => {
                    assert!(p.data.len() <= self.offer.max_recv as usize);
                    assert_eq!(p.get32(36), dsn, "DataSN");
                    assert_eq!(p.get32(40) as usize, data.len(), "buffer offset");
                    dsn += 1;
                    data.extend_from_slice(&p.data);
                    if p.flags() & flags::STATUS != 0 {
                        return (data, p.bhs[3]);
                    }
                }
                Some(Opcode::ScsiResponse) => return (data, p.bhs[3]),
                other => panic!("unexpected {other:?} during a read"),
            }
        }
        panic!("read ended without status");
    }
}
