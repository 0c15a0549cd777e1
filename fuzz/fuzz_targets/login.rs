//! A sequence of arbitrary PDUs through Login and, once it completes, Session.
//!
//! The input is a script of steps `[kind, len, payload…]`. Login steps mix raw PDUs
//! with templates that get past the declarations, so the fuzzer reaches full feature
//! phase; session steps build each PDU type from payload bytes and replay the TTTs the
//! target handed out, so R2T and Text continuations are exercised.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use iscsi::keys::TargetLimits;
use iscsi::pdu::{Opcode, Pdu, BHS_LEN, RESERVED_TAG};
use iscsi::session::{Action, Outcome};
use iscsi::{Login, LoginStep, Session};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

const TARGETS: [&str; 6] = ["iqn.t", "iqn.chap", "iqn.r", "iqn.d", "iqn.none", ""];
const AUTH: [&str; 4] = ["None", "CHAP", "CHAP,None", "SRP"];

fn check(actions: &[Action], mrdsl: usize, ttts: &mut Vec<u32>, pending: &mut Vec<u32>) {
    for a in actions {
        match a {
            Action::Send(p) => {
                assert!(p.data.len() <= mrdsl, "{:?} exceeds MaxRecvDataSegmentLength {mrdsl}", p);
                if p.ttt() != RESERVED_TAG {
                    ttts.push(p.ttt());
                }
            }
            Action::Execute(c) => pending.push(c.itt),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = common::FuzzDir;
    let mut c = Cursor(data);
    let mut now = Instant::now();
    let mut login = Login::new(TargetLimits::default(), c.u32());
    let outcome = loop {
        if c.done() {
            return;
        }
        let kind = c.u8();
        let len = c.u8() as usize * 4;
        let mut pc = Cursor(c.take(len));
        let pdu = match kind % 4 {
            0 => {
                let flags = pc.u8();
                let sn = pc.u32();
                common::login_pdu(flags, sn, pc.0)
            }
            1 => {
                let t = TARGETS[pc.u8() as usize % TARGETS.len()];
                let a = AUTH[pc.u8() as usize % AUTH.len()];
                let st = if pc.u8() & 1 == 0 { "Normal" } else { "Discovery" };
                let mut text = format!("InitiatorName=iqn.i\0TargetName={t}\0SessionType={st}\0AuthMethod={a}\0").into_bytes();
                text.extend_from_slice(pc.0);
                common::login_pdu(0x81, 1, &text)
            }
            2 => common::login_pdu(0x87, 1, pc.0),
            _ => {
                let mut p = Pdu::new(Opcode::LoginRequest);
                let head = pc.take(BHS_LEN);
                p.bhs[..head.len()].copy_from_slice(head);
                p.data = Bytes::copy_from_slice(pc.0);
                p
            }
        };
        match login.step(&pdu, &dir) {
            LoginStep::Continue(r) => assert!(r.data.len() <= 64 * 1024 + 4096),
            LoginStep::Fail(_) => return,
            LoginStep::Done(_, o) => break o,
        }
    };

    let mrdsl = outcome.params.initiator_max_recv as usize;
    let mut exp = outcome.exp_cmd_sn;
    let mut session = Session::new(outcome, now);
    let mut ttts: Vec<u32> = Vec::new();
    let mut pending: Vec<u32> = Vec::new();
    while !c.done() {
        let kind = c.u8();
        let len = c.u8() as usize * 4;
        let mut pc = Cursor(c.take(len));
        let itt = (pc.u8() % 8) as u32;
        let sn = exp.wrapping_add((pc.u8() as i8) as u32);
        let ttt = match pc.u8() {
            0 => RESERVED_TAG,
            i => ttts.get(i as usize % ttts.len().max(1)).copied().unwrap_or(i as u32),
        };
        let flags = pc.u8();
        let mut p = match kind % 12 {
            0 | 1 => {
                let mut p = Pdu::new(Opcode::ScsiCommand);
                p.put32(20, pc.u16() as u32);
                let cdb = pc.take(16);
                p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
                p
            }
            2 | 3 => {
                let mut p = Pdu::new(Opcode::DataOut);
                p.put32(40, pc.u16() as u32);
                p
            }
            4 => Pdu::new(Opcode::NopOut),
            5 => Pdu::new(Opcode::TextRequest),
            6 => {
                let mut p = Pdu::new(Opcode::TaskMgmtRequest);
                p.put32(32, exp.wrapping_add((pc.u8() as i8) as u32));
                p
            }
            7 => Pdu::new(Opcode::LogoutRequest),
            8 => {
                // Complete an executing command with some data.
                if !pending.is_empty() {
                    let i = pending.remove(pc.u8() as usize % pending.len());
                    let outcome = Outcome {
                        status: if flags & 1 == 0 { 0 } else { 2 },
                        sense: (flags & 2 != 0).then(|| iscsi::sense_bytes(5, 0x24, 0)),
                        data: Bytes::from(vec![0xa5; pc.u16() as usize * 4]),
                    };
                    let actions = session.complete(i, outcome);
                    check(&actions, mrdsl, &mut ttts, &mut pending);
                }
                continue;
            }
            9 => {
                now += Duration::from_secs(pc.u8() as u64);
                let actions = session.tick(now);
                check(&actions, mrdsl, &mut ttts, &mut pending);
                continue;
            }
            10 => {
                let mut p = Pdu::new(Opcode::LoginRequest);
                let head = pc.take(BHS_LEN);
                p.bhs[..head.len()].copy_from_slice(head);
                p
            }
            _ => {
                let mut p = Pdu::new(Opcode::NopOut);
                let head = pc.take(BHS_LEN);
                p.bhs[..head.len()].copy_from_slice(head);
                p.data = Bytes::copy_from_slice(pc.0);
                let actions = session.on_pdu(p, &dir, now);
                check(&actions, mrdsl, &mut ttts, &mut pending);
                continue;
            }
        };
        if kind % 12 >= 6 || kind & 0x80 != 0 {
            p.set_immediate(true);
        }
        p.set_flags(p.flags() | flags);
        p.set_itt(itt);
        if p.opcode() != Some(Opcode::ScsiCommand) && p.opcode() != Some(Opcode::TaskMgmtRequest) {
            p.put32(20, ttt);
        } else if p.opcode() == Some(Opcode::TaskMgmtRequest) {
            p.put32(20, itt ^ (ttt & 1));
        }
        p.put32(24, sn);
        p.data = Bytes::copy_from_slice(pc.0);
        p.fix_lengths();
        let digest_error = kind & 0x40 != 0 && kind & 0x20 != 0;
        let actions = if digest_error {
            session.on_data_digest_error(&p)
        } else {
            session.on_pdu(p, &dir, now)
        };
        check(&actions, mrdsl, &mut ttts, &mut pending);
        if actions.iter().any(|a| matches!(a, Action::Close)) {
            return;
        }
        // Track ExpCmdSN as the target announces it.
        if let Some(Action::Send(p)) = actions.iter().rev().find(|a| matches!(a, Action::Send(_))) {
            exp = p.exp_cmd_sn();
        }
    }
});
