//! The full feature phase of one connection (RFC 7143 §4, §11), target side, at
//! ErrorRecoveryLevel 0.
//!
//! ```text
//!  SCSI Command (R)  ─►  Execute ──(complete)──►  Data-In … Data-In[S]  (or + SCSI Response)
//!  SCSI Command (W)  ─►  [immediate data] [unsolicited Data-Out]  ◄─ R2T …  Data-Out[F] ─►
//!                        all EDTL bytes in ─► Execute ──(complete)──►  SCSI Response
//!  NOP-Out ─► NOP-In      Text ─► Text (SendTargets)      Logout ─► Logout Response, close
//!  Task Mgmt ─► TaskManagement ──(tmf_done)──► TMF Response
//! ```
//! Commands are admitted by CmdSN within the window [ExpCmdSN, MaxCmdSN]; every response
//! carries StatSN, ExpCmdSN and MaxCmdSN. The session does no I/O: the driver feeds it
//! PDUs, completions and clock ticks and carries out the actions it returns.

use crate::directory::Directory;
use crate::login::LoginOutcome;
use crate::pdu::{flags, sn_le, sn_lt, Opcode, Pdu, RESERVED_TAG};
use crate::text;
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// Commands an initiator may have outstanding beyond ExpCmdSN.
pub const QUEUE_DEPTH: u32 = 128;
/// Largest command transfer the target buffers (bigger ones are refused with a sense).
pub const MAX_TRANSFER: u32 = 32 << 20;
/// Idle time before the target pings the initiator with a NOP-In.
pub const NOP_INTERVAL: Duration = Duration::from_secs(5);
/// How long the initiator has to answer a ping before the connection is dropped.
/// Generous on purpose: initiators driven by a synchronous API (libiscsi's test tool
/// sleeps 60 s between polls in Sanitize.Reset) only read the socket when they send,
/// and dropping them makes their next login a new I_T nexus with a fresh unit attention.
pub const NOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tmf {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
}

impl Tmf {
    fn from_u8(v: u8) -> Option<Tmf> {
        Some(match v & 0x7f {
            1 => Tmf::AbortTask,
            2 => Tmf::AbortTaskSet,
            3 => Tmf::ClearAca,
            4 => Tmf::ClearTaskSet,
            5 => Tmf::LogicalUnitReset,
            6 => Tmf::TargetWarmReset,
            7 => Tmf::TargetColdReset,
            8 => Tmf::TaskReassign,
            _ => return None,
        })
    }
}

/// TMF response codes.
pub mod tmf_response {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const REASSIGN_UNSUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const REJECTED: u8 = 255;
}

/// A SCSI command ready to execute: every Data-Out byte has arrived.
#[derive(Debug, Clone)]
pub struct Command {
    pub itt: u32,
    pub lun: u64,
    pub cdb: Vec<u8>,
    pub data_out: Bytes,
    pub expected_len: u32,
    pub read: bool,
    pub write: bool,
}

/// The result of a command, handed back by the driver.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub status: u8,
    pub sense: Option<Vec<u8>>,
    pub data: Bytes,
    /// Data-In in several buffers (a read's extents where the store keeps them), in
    /// order; `data` is then empty. No Data-In PDU spans two of them.
    pub pieces: Vec<Bytes>,
}

impl Outcome {
    /// Data-In bytes in `data` and `pieces`.
    fn data_len(&self) -> usize {
        self.data.len() + self.pieces.iter().map(Bytes::len).sum::<usize>()
    }
}

/// At most `n` bytes from `offset` of the pieces' concatenation, within one piece.
fn piece_at(pieces: &[Bytes], offset: usize, n: usize) -> Bytes {
    let mut at = offset;
    for p in pieces {
        if at < p.len() {
            return p.slice(at..at + n.min(p.len() - at));
        }
        at -= p.len();
    }
    Bytes::new()
}

/// The pieces cut to their first `len` bytes.
fn cut(pieces: Vec<Bytes>, mut len: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces {
        if len == 0 {
            break;
        }
        let n = p.len().min(len);
        out.push(p.slice(..n));
        len -= n;
    }
    out
}

/// What the driver must do.
#[derive(Debug)]
pub enum Action {
    Send(Pdu),
    Execute(Command),
    /// Carry out a task management function at the logical unit, then call
    /// [`Session::tmf_done`]. ABORT TASK never reaches here: the session owns its tasks.
    TaskManagement {
        itt: u32,
        lun: u64,
        function: Tmf,
    },
    Close,
}

#[derive(Debug)]
struct Task {
    lun: u64,
    cdb: Vec<u8>,
    edtl: u32,
    read: bool,
    write: bool,
    data: DataOut,
    /// Bytes of unsolicited Data-Out still allowed.
    unsolicited_left: u32,
    /// Next offset an R2T will ask for.
    next_r2t_offset: u32,
    /// Outstanding R2Ts: (TTT, offset, length).
    r2ts: VecDeque<(u32, u32, u32)>,
    r2tsn: u32,
    /// The Data-Out sequence in progress (its TTT; the reserved tag for unsolicited
    /// data) and the DataSN its next PDU must carry.
    seq_ttt: u32,
    next_data_sn: u32,
    executing: bool,
    aborted: bool,
}

/// Tasks by ITT, held commands by CmdSN: 32-bit keys, looked up several times per
/// command. The map is per connection, so an initiator choosing colliding tags only
/// slows itself; a folded multiply is enough and much cheaper than SipHash.
type TagMap<V> = HashMap<u32, V, BuildHasherDefault<TagHasher>>;

#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        // Mixes every key bit into both ends: hashbrown takes the bucket from the low
        // bits and the tag from the high ones.
        let p = u128::from(self.0) * 0x9e37_79b9_7f4a_7c15;
        (p as u64) ^ ((p >> 64) as u64)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v);
    }
}

/// The Data-Out bytes of a write received so far. A command whose data arrives in one
/// segment (4 KiB writes with immediate data) keeps that segment as it was received, so
/// the bytes go from the receive buffer to the store without a copy; data in several
/// segments is gathered into one buffer.
#[derive(Debug, Default)]
struct DataOut {
    whole: Bytes,
    gathered: BytesMut,
}

impl DataOut {
    fn len(&self) -> usize {
        self.whole.len() + self.gathered.len()
    }

    fn append(&mut self, data: &Bytes, edtl: u32) {
        if data.is_empty() {
            return;
        }
        if self.len() == 0 {
            self.whole = data.clone();
            return;
        }
        if !self.whole.is_empty() {
            self.gathered.reserve(edtl as usize);
            self.gathered.extend_from_slice(&self.whole);
            self.whole = Bytes::new();
        }
        self.gathered.extend_from_slice(data);
    }

    fn take(&mut self) -> Bytes {
        if self.gathered.is_empty() {
            std::mem::take(&mut self.whole)
        } else {
            std::mem::take(&mut self.gathered).freeze()
        }
    }
}

/// One full-feature connection (and its session: one connection per session).
pub struct Session {
    pub info: LoginOutcome,
    exp_cmd_sn: u32,
    stat_sn: u32,
    tasks: TagMap<Task>,
    held: TagMap<Pdu>,
    next_ttt: u32,
    text_in: Vec<u8>,
    text_out: Option<(u32, Vec<u8>)>,
    /// TTT of the empty response that acknowledged a request with the C bit.
    text_in_ttt: Option<u32>,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    closing: bool,
}

impl Session {
    pub fn new(info: LoginOutcome, now: Instant) -> Self {
        Session {
            exp_cmd_sn: info.exp_cmd_sn,
            stat_sn: info.stat_sn,
            info,
            tasks: TagMap::default(),
            held: TagMap::default(),
            next_ttt: 1,
            text_in: Vec::new(),
            text_out: None,
            text_in_ttt: None,
            last_rx: now,
            ping: None,
            closing: false,
        }
    }

    pub fn discovery(&self) -> bool {
        self.info.target_name.is_none()
    }

    /// Tasks not yet answered.
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }

    fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(QUEUE_DEPTH - 1)
    }

    fn ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    /// Stamp StatSN (advancing it when `advance`), ExpCmdSN and MaxCmdSN.
    fn stamp(&mut self, p: &mut Pdu, advance: bool) {
        p.set_stat_sn(self.stat_sn);
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        p.set_exp_cmd_sn(self.exp_cmd_sn);
        p.set_max_cmd_sn(self.max_cmd_sn());
    }

    fn reject(&mut self, rejected: &Pdu, reason: u8) -> Pdu {
        let mut p = Pdu::new(Opcode::Reject);
        p.set_flags(flags::FINAL);
        p.bhs[2] = reason;
        p.set_itt(RESERVED_TAG);
        self.stamp(&mut p, true);
        p.data = Bytes::copy_from_slice(&rejected.bhs);
        p
    }

    /// A PDU whose data digest failed: reject it and, for a command, end the task.
    pub fn on_data_digest_error(&mut self, pdu: &Pdu) -> Vec<Action> {
        let mut out = vec![Action::Send(self.reject(pdu, reject::DATA_DIGEST_ERROR))];
        let itt = pdu.itt();
        let is_cmd = pdu.opcode() == Some(Opcode::ScsiCommand);
        if pdu.opcode() == Some(Opcode::DataOut) || is_cmd {
            if is_cmd && !pdu.immediate() && pdu.cmd_sn() == self.exp_cmd_sn {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            }
            if let Some(t) = self.tasks.remove(&itt) {
                let _ = t;
            }
            // PROTOCOL SERVICE CRC ERROR: the initiator retries the command.
            let sense = crate::sense_bytes(0x0b, 0x47, 0x05);
            let resp = self.scsi_response(itt, 0x02, Some(sense), 0, 0);
            out.push(Action::Send(resp));
        }
        out
    }

    /// Consume one PDU from the initiator.
    pub fn on_pdu(&mut self, pdu: Pdu, dir: &dyn Directory, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.on_pdu_into(pdu, dir, now, &mut out);
        out
    }

    /// As [`Session::on_pdu`], appending the actions to `out` (a driver reuses one vector).
    pub fn on_pdu_into(
        &mut self,
        pdu: Pdu,
        dir: &dyn Directory,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.last_rx = now;
        while let Some(next) = self.held.remove(&self.exp_cmd_sn) {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch(next, dir, now, out);
        }
        let op = pdu.opcode();
        // PDUs that carry a CmdSN are admitted in order within the window.
        let numbered = matches!(
            op,
            Some(
                Opcode::ScsiCommand
                    | Opcode::NopOut
                    | Opcode::TaskMgmtRequest
                    | Opcode::TextRequest
                    | Opcode::LogoutRequest
            )
        );
        if numbered && !pdu.immediate() {
            let sn = pdu.cmd_sn();
            if sn_lt(sn, self.exp_cmd_sn) || !sn_le(sn, self.max_cmd_sn()) {
                // Outside the window: silently ignored (RFC 7143 §4.2.2.1).
                tracing::debug!(
                    sn,
                    exp = self.exp_cmd_sn,
                    "command outside the CmdSN window dropped"
                );
                return;
            }
            if sn != self.exp_cmd_sn {
                self.held.insert(sn, pdu);
                return;
            }
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            self.dispatch(pdu, dir, now, out);
            while let Some(next) = self.held.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                self.dispatch(next, dir, now, out);
            }
        } else {
            self.dispatch(pdu, dir, now, out);
        }
    }

    fn dispatch(&mut self, pdu: Pdu, dir: &dyn Directory, now: Instant, out: &mut Vec<Action>) {
        match pdu.opcode() {
            Some(Opcode::ScsiCommand) if !self.discovery() => self.on_command(pdu, out),
            Some(Opcode::DataOut) if !self.discovery() => self.on_data_out(pdu, out),
            Some(Opcode::NopOut) => self.on_nop_out(pdu, now, out),
            Some(Opcode::TaskMgmtRequest) if !self.discovery() => self.on_tmf(pdu, out),
            Some(Opcode::TextRequest) => self.on_text(pdu, dir, out),
            Some(Opcode::LogoutRequest) => self.on_logout(pdu, out),
            Some(Opcode::Snack) => {
                let r = self.reject(&pdu, reject::PROTOCOL_ERROR);
                out.push(Action::Send(r));
            }
            Some(Opcode::LoginRequest) => {
                // A login on a connection already in full feature phase is a protocol error.
                let r = self.reject(&pdu, reject::PROTOCOL_ERROR);
                out.push(Action::Send(r));
                out.push(Action::Close);
            }
            _ => {
                let r = self.reject(&pdu, reject::COMMAND_NOT_SUPPORTED);
                out.push(Action::Send(r));
            }
        }
    }

    fn on_command(&mut self, pdu: Pdu, out: &mut Vec<Action>) {
        let itt = pdu.itt();
        let f = pdu.flags();
        let read = f & flags::READ != 0;
        let write = f & flags::WRITE != 0;
        let edtl = pdu.get32(20);
        let p = &self.info.params;
        if itt == RESERVED_TAG || self.tasks.contains_key(&itt) {
            let r = self.reject(&pdu, reject::INVALID_PDU_FIELD);
            out.push(Action::Send(r));
            return;
        }
        let immediate = pdu.data.len() as u32;
        if immediate > 0
            && (!write || !p.immediate_data || immediate > p.first_burst || immediate > edtl)
        {
            let r = self.reject(&pdu, reject::PROTOCOL_ERROR);
            out.push(Action::Send(r));
            return;
        }
        if edtl > MAX_TRANSFER {
            // Refuse before buffering anything; the initiator learns through sense data.
            let sense = crate::sense_bytes(0x05, 0x24, 0x00);
            let resp = self.scsi_response(itt, 0x02, Some(sense), 0, 0);
            out.push(Action::Send(resp));
            return;
        }
        let cdb = pdu.cdb();
        let unsolicited = if write && !p.initial_r2t && !pdu.final_bit() {
            p.first_burst.min(edtl).saturating_sub(immediate)
        } else {
            0
        };
        let mut data = DataOut::default();
        if write {
            data.append(&pdu.data, edtl);
        }
        let task = Task {
            lun: pdu.lun(),
            cdb,
            edtl,
            read,
            write,
            data,
            unsolicited_left: unsolicited,
            next_r2t_offset: immediate + unsolicited,
            r2ts: VecDeque::new(),
            r2tsn: 0,
            seq_ttt: RESERVED_TAG,
            next_data_sn: 0,
            executing: false,
            aborted: false,
        };
        self.tasks.insert(itt, task);
        self.progress(itt, out);
    }

    /// Issue R2Ts or start execution, whichever the task needs now.
    fn progress(&mut self, itt: u32, out: &mut Vec<Action>) {
        let max_r2t = self.info.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = self.info.params.max_burst.max(512);
        let mut r2ts = Vec::new();
        {
            let Some(t) = self.tasks.get_mut(&itt) else {
                return;
            };
            if t.executing {
                return;
            }
            let have = t.data.len() as u32;
            if !t.write || have >= t.edtl {
                t.executing = true;
                let cmd = Command {
                    itt,
                    lun: t.lun,
                    cdb: std::mem::take(&mut t.cdb),
                    data_out: t.data.take(),
                    expected_len: t.edtl,
                    read: t.read,
                    write: t.write,
                };
                out.push(Action::Execute(cmd));
                return;
            }
            // Wait for unsolicited data before soliciting the rest.
            if t.unsolicited_left > 0 {
                return;
            }
            while t.r2ts.len() + r2ts.len() < max_r2t && t.next_r2t_offset < t.edtl {
                let len = (t.edtl - t.next_r2t_offset).min(max_burst);
                r2ts.push((t.next_r2t_offset, len, t.r2tsn, t.lun));
                t.next_r2t_offset += len;
                t.r2tsn += 1;
            }
        }
        for (offset, len, r2tsn, lun) in r2ts {
            let ttt = self.ttt();
            if let Some(t) = self.tasks.get_mut(&itt) {
                t.r2ts.push_back((ttt, offset, len));
            }
            let mut p = Pdu::new(Opcode::R2t);
            p.set_flags(flags::FINAL);
            p.set_lun(lun);
            p.set_itt(itt);
            p.put32(20, ttt);
            self.stamp(&mut p, false);
            p.put32(36, r2tsn);
            p.put32(40, offset);
            p.put32(44, len);
            out.push(Action::Send(p));
        }
    }

    fn on_data_out(&mut self, pdu: Pdu, out: &mut Vec<Action>) {
        let itt = pdu.itt();
        let ttt = pdu.ttt();
        let offset = pdu.get32(40);
        let len = pdu.data.len() as u32;
        let fin = pdu.final_bit();
        let data_sn = pdu.get32(36);
        let ok = match self.tasks.get_mut(&itt) {
            Some(t) if t.write && !t.executing => {
                if ttt != t.seq_ttt {
                    t.seq_ttt = ttt;
                    t.next_data_sn = 0;
                }
                if data_sn != t.next_data_sn {
                    // A lost or reordered Data-Out. At ErrorRecoveryLevel 0 there is no
                    // recovery R2T: the command fails (ABORTED COMMAND / DATA PHASE ERROR)
                    // and any further Data-Out for it is rejected.
                    tracing::debug!(
                        itt,
                        data_sn,
                        expected = t.next_data_sn,
                        "Data-Out DataSN out of sequence"
                    );
                    self.tasks.remove(&itt);
                    let sense = crate::sense_bytes(0x0b, 0x4b, 0x00);
                    let resp = self.scsi_response(itt, 0x02, Some(sense), 0, 0);
                    out.push(Action::Send(resp));
                    return;
                }
                t.next_data_sn = t.next_data_sn.wrapping_add(1);
                let in_order = offset == t.data.len() as u32
                    && offset.checked_add(len).is_some_and(|e| e <= t.edtl);
                if !in_order {
                    false
                } else if ttt == RESERVED_TAG {
                    if len > t.unsolicited_left {
                        false
                    } else {
                        t.unsolicited_left -= len;
                        if fin {
                            // The unsolicited burst ended (perhaps short of FirstBurstLength).
                            t.next_r2t_offset = t.data.len() as u32 + len;
                            t.unsolicited_left = 0;
                        }
                        t.data.append(&pdu.data, t.edtl);
                        true
                    }
                } else {
                    match t.r2ts.iter().position(|(tt, _, _)| *tt == ttt) {
                        Some(i) => {
                            let (_, o, l) = t.r2ts[i];
                            if offset < o || offset + len > o + l {
                                false
                            } else {
                                t.data.append(&pdu.data, t.edtl);
                                if fin || t.data.len() as u32 >= o + l {
                                    t.r2ts.remove(i);
                                }
                                true
                            }
                        }
                        None => false,
                    }
                }
            }
            Some(t) if t.aborted => return,
            _ => false,
        };
        if !ok {
            let r = self.reject(&pdu, reject::INVALID_PDU_FIELD);
            out.push(Action::Send(r));
            return;
        }
        self.progress(itt, out);
    }

    /// The driver finished executing `itt`.
    pub fn complete(&mut self, itt: u32, outcome: Outcome) -> Vec<Action> {
        self.complete_with_described(itt, outcome, None)
    }

    /// As [`Session::complete`], with the number of Data-Out bytes the CDB described
    /// (when the driver knows it): a write then reports the residual between that and
    /// the expected data transfer length, overflow when the CDB wanted more.
    pub fn complete_with_described(
        &mut self,
        itt: u32,
        outcome: Outcome,
        described_out: Option<u64>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.complete_into(itt, outcome, described_out, &mut out);
        out
    }

    /// As [`Session::complete_with_described`], appending the actions to `out`.
    pub fn complete_into(
        &mut self,
        itt: u32,
        outcome: Outcome,
        described_out: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        let Some(task) = self.tasks.remove(&itt) else {
            return;
        };
        if task.aborted {
            return;
        }
        let edtl = task.edtl as usize;
        let total = outcome.data_len();
        if task.read && total > 0 && edtl > 0 {
            let sent = total.min(edtl);
            let data = outcome.data.slice(..outcome.data.len().min(edtl));
            let cut_pieces;
            let pieces: &[Bytes] = if outcome.pieces.is_empty() {
                std::slice::from_ref(&data)
            } else {
                cut_pieces = cut(outcome.pieces, sent);
                &cut_pieces
            };
            let (flag, residual) = residual(total, edtl);
            let with_status = outcome.status == crate::STATUS_GOOD && outcome.sense.is_none();
            let mrdsl = self.info.params.initiator_max_recv.max(512) as usize;
            let burst = self.info.params.max_burst.max(512) as usize;
            let mut offset = 0usize;
            let mut data_sn = 0u32;
            let mut in_burst = 0usize;
            while offset < sent {
                let most = (sent - offset).min(mrdsl).min(burst - in_burst);
                let payload = piece_at(pieces, offset, most);
                let n = payload.len();
                let last = offset + n == sent;
                in_burst += n;
                let mut p = Pdu::new(Opcode::DataIn);
                let mut f = 0u8;
                if last || in_burst == burst {
                    f |= flags::FINAL;
                    in_burst = 0;
                }
                p.set_lun(task.lun);
                p.set_itt(itt);
                p.put32(20, RESERVED_TAG);
                if last && with_status {
                    f |= flags::STATUS | flag;
                    p.bhs[3] = outcome.status;
                    p.put32(44, residual);
                    self.stamp(&mut p, true);
                } else {
                    self.stamp(&mut p, false);
                    p.set_stat_sn(0);
                }
                p.set_flags(f);
                p.put32(36, data_sn);
                p.put32(40, offset as u32);
                p.data = payload;
                out.push(Action::Send(p));
                offset += n;
                data_sn += 1;
            }
            if with_status {
                return;
            }
            let resp = self.scsi_response(itt, outcome.status, outcome.sense, flag, residual);
            out.push(Action::Send(resp));
            return;
        }
        let (flag, residual) = if task.read {
            residual(total, edtl)
        } else if task.write {
            match described_out {
                Some(n) => residual(usize::try_from(n).unwrap_or(usize::MAX), edtl),
                None => (0, 0),
            }
        } else if edtl > 0 {
            residual(0, edtl)
        } else {
            (0, 0)
        };
        let resp = self.scsi_response(itt, outcome.status, outcome.sense, flag, residual);
        out.push(Action::Send(resp));
    }

    fn scsi_response(
        &mut self,
        itt: u32,
        status: u8,
        sense: Option<Vec<u8>>,
        flag: u8,
        residual: u32,
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiResponse);
        p.set_flags(flags::FINAL | flag);
        p.bhs[2] = 0; // command completed at target
        p.bhs[3] = status;
        p.set_itt(itt);
        self.stamp(&mut p, true);
        p.put32(44, residual);
        if let Some(s) = sense {
            let mut d = Vec::with_capacity(2 + s.len());
            d.extend_from_slice(&(s.len() as u16).to_be_bytes());
            d.extend_from_slice(&s);
            p.data = Bytes::from(d);
        }
        p
    }

    fn on_nop_out(&mut self, pdu: Pdu, now: Instant, out: &mut Vec<Action>) {
        let itt = pdu.itt();
        if itt == RESERVED_TAG {
            // An answer to our ping (or a ping that wants no answer).
            if self.ping.is_some_and(|(ttt, _)| ttt == pdu.ttt()) {
                self.ping = None;
            }
            let _ = now;
            return;
        }
        let mut p = Pdu::new(Opcode::NopIn);
        p.set_flags(flags::FINAL);
        p.set_lun(pdu.lun());
        p.set_itt(itt);
        p.put32(20, RESERVED_TAG);
        self.stamp(&mut p, true);
        let mrdsl = self.info.params.initiator_max_recv as usize;
        p.data = pdu.data.slice(..pdu.data.len().min(mrdsl));
        out.push(Action::Send(p));
    }

    fn on_tmf(&mut self, pdu: Pdu, out: &mut Vec<Action>) {
        let itt = pdu.itt();
        let lun = pdu.lun();
        let Some(function) = Tmf::from_u8(pdu.flags()) else {
            let r = self.tmf_response(itt, tmf_response::NOT_SUPPORTED);
            out.push(Action::Send(r));
            return;
        };
        match function {
            Tmf::AbortTask => {
                let referenced = pdu.get32(20);
                let ref_cmd_sn = pdu.get32(32);
                let code = match self.tasks.get_mut(&referenced) {
                    Some(t) if t.lun == lun => {
                        t.aborted = true;
                        if !t.executing {
                            self.tasks.remove(&referenced);
                        }
                        tmf_response::COMPLETE
                    }
                    _ => {
                        // Not here: complete if it may simply not have arrived yet.
                        if sn_lt(ref_cmd_sn, pdu.cmd_sn()) && sn_le(self.exp_cmd_sn, ref_cmd_sn) {
                            tmf_response::COMPLETE
                        } else {
                            tmf_response::NO_TASK
                        }
                    }
                };
                let r = self.tmf_response(itt, code);
                out.push(Action::Send(r));
            }
            Tmf::ClearAca => {
                let r = self.tmf_response(itt, tmf_response::NOT_SUPPORTED);
                out.push(Action::Send(r));
            }
            Tmf::TaskReassign => {
                let r = self.tmf_response(itt, tmf_response::REASSIGN_UNSUPPORTED);
                out.push(Action::Send(r));
            }
            Tmf::AbortTaskSet
            | Tmf::ClearTaskSet
            | Tmf::LogicalUnitReset
            | Tmf::TargetWarmReset
            | Tmf::TargetColdReset => {
                let all_luns = matches!(function, Tmf::TargetWarmReset | Tmf::TargetColdReset);
                let doomed: Vec<u32> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| all_luns || t.lun == lun)
                    .map(|(k, _)| *k)
                    .collect();
                for k in doomed {
                    if let Some(t) = self.tasks.get_mut(&k) {
                        t.aborted = true;
                        if !t.executing {
                            self.tasks.remove(&k);
                        }
                    }
                }
                out.push(Action::TaskManagement { itt, lun, function });
            }
        }
    }

    /// The logical unit carried out a task management function.
    pub fn tmf_done(&mut self, itt: u32, function: Tmf, code: u8) -> Vec<Action> {
        let r = self.tmf_response(itt, code);
        let mut out = vec![Action::Send(r)];
        if function == Tmf::TargetColdReset && code == tmf_response::COMPLETE {
            self.closing = true;
            out.push(Action::Close);
        }
        out
    }

    fn tmf_response(&mut self, itt: u32, code: u8) -> Pdu {
        let mut p = Pdu::new(Opcode::TaskMgmtResponse);
        p.set_flags(flags::FINAL);
        p.bhs[2] = code;
        p.set_itt(itt);
        self.stamp(&mut p, true);
        p
    }

    fn on_text(&mut self, pdu: Pdu, dir: &dyn Directory, out: &mut Vec<Action>) {
        let itt = pdu.itt();
        let ttt = pdu.ttt();
        let mrdsl = self.info.params.initiator_max_recv.max(512) as usize;
        // The initiator asks for the rest of a long answer.
        if ttt != RESERVED_TAG && self.text_in_ttt.take() != Some(ttt) {
            match self.text_out.take() {
                Some((t, rest)) if t == ttt => {
                    let p = self.text_chunk(itt, rest, mrdsl);
                    out.push(Action::Send(p));
                }
                _ => {
                    let r = self.reject(&pdu, reject::INVALID_PDU_FIELD);
                    out.push(Action::Send(r));
                }
            }
            return;
        }
        self.text_out = None;
        self.text_in.extend_from_slice(&pdu.data);
        if self.text_in.len() > 64 * 1024 {
            self.text_in.clear();
            let r = self.reject(&pdu, reject::PROTOCOL_ERROR);
            out.push(Action::Send(r));
            return;
        }
        if pdu.flags() & flags::TEXT_CONTINUE != 0 {
            // More request text follows: acknowledge with an empty response.
            let mut p = Pdu::new(Opcode::TextResponse);
            p.set_itt(itt);
            let t = self.ttt();
            p.put32(20, t);
            self.text_in_ttt = Some(t);
            self.stamp(&mut p, true);
            out.push(Action::Send(p));
            return;
        }
        let data = std::mem::take(&mut self.text_in);
        let pairs = match text::parse(&data) {
            Ok(p) => p,
            Err(_) => {
                let r = self.reject(&pdu, reject::PROTOCOL_ERROR);
                out.push(Action::Send(r));
                return;
            }
        };
        let mut answer: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "SendTargets" => {
                    let only = match (v.as_str(), &self.info.target_name) {
                        ("All", None) => None,
                        // In a normal session, only the session's own target is reported.
                        ("All" | "", Some(t)) => Some(t.clone()),
                        ("", None) => {
                            answer.push((k.clone(), "Reject".into()));
                            continue;
                        }
                        (name, _) => Some(name.to_string()),
                    };
                    for rec in dir.send_targets(&self.info.initiator_name, only.as_deref()) {
                        answer.push(("TargetName".into(), rec.name));
                        for a in rec.addresses {
                            answer.push(("TargetAddress".into(), a));
                        }
                    }
                }
                _ => answer.push((k, "NotUnderstood".into())),
            }
        }
        let bytes = text::encode(&answer);
        let p = self.text_chunk(itt, bytes, mrdsl);
        out.push(Action::Send(p));
    }

    fn text_chunk(&mut self, itt: u32, mut bytes: Vec<u8>, mrdsl: usize) -> Pdu {
        let mut p = Pdu::new(Opcode::TextResponse);
        p.set_itt(itt);
        if bytes.len() > mrdsl {
            let rest = bytes.split_off(mrdsl);
            let ttt = self.ttt();
            self.text_out = Some((ttt, rest));
            p.set_flags(flags::TEXT_CONTINUE);
            p.put32(20, ttt);
        } else {
            p.set_flags(flags::FINAL);
            p.put32(20, RESERVED_TAG);
        }
        self.stamp(&mut p, true);
        p.data = Bytes::from(bytes);
        p
    }

    fn on_logout(&mut self, pdu: Pdu, out: &mut Vec<Action>) {
        let reason = pdu.flags() & 0x7f;
        let mut p = Pdu::new(Opcode::LogoutResponse);
        p.set_flags(flags::FINAL);
        // 0: close session, 1: close connection (the only one), 2: recovery (unsupported at ERL 0).
        p.bhs[2] = if reason <= 1 { 0 } else { 2 };
        p.set_itt(pdu.itt());
        self.stamp(&mut p, true);
        p.put16(40, self.info.params.default_time2wait as u16);
        p.put16(42, self.info.params.default_time2retain as u16);
        out.push(Action::Send(p));
        if reason <= 1 {
            self.closing = true;
            out.push(Action::Close);
        }
    }

    /// Ask the initiator to log out within `seconds` (Async Message, event 1).
    pub fn request_logout(&mut self, seconds: u16) -> Vec<Action> {
        let mut p = Pdu::new(Opcode::AsyncMessage);
        p.set_flags(flags::FINAL);
        p.set_itt(RESERVED_TAG);
        self.stamp(&mut p, true);
        p.bhs[36] = 1;
        p.put16(42, seconds);
        vec![Action::Send(p)]
    }

    /// The clock moved on: ping an idle initiator, or give up on a silent one.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.closing {
            return out;
        }
        if let Some((_, sent)) = self.ping {
            if now.duration_since(sent) > NOP_TIMEOUT {
                tracing::info!(initiator = %self.info.initiator_name, "initiator did not answer NOP-In; closing");
                self.closing = true;
                out.push(Action::Close);
            }
            return out;
        }
        if now.duration_since(self.last_rx) >= NOP_INTERVAL {
            let ttt = self.ttt();
            let mut p = Pdu::new(Opcode::NopIn);
            p.set_flags(flags::FINAL);
            p.set_itt(RESERVED_TAG);
            p.put32(20, ttt);
            self.stamp(&mut p, false);
            self.ping = Some((ttt, now));
            out.push(Action::Send(p));
        }
        out
    }
}

/// Residual flag and count for `produced` bytes against an expected `edtl`.
fn residual(produced: usize, edtl: usize) -> (u8, u32) {
    use std::cmp::Ordering::*;
    match produced.cmp(&edtl) {
        Less => (flags::UNDERFLOW, (edtl - produced) as u32),
        Greater => (
            flags::OVERFLOW,
            (produced - edtl).min(u32::MAX as usize) as u32,
        ),
        Equal => (0, 0),
    }
}
