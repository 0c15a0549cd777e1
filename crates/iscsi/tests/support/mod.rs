//! Shared helpers for the iSCSI engine tests: a table-backed [`Directory`], builders for
//! initiator PDUs, and small accessors for target PDUs.
#![allow(dead_code)]

pub mod initiator;

use bytes::Bytes;
use iscsi::directory::{ChapSecrets, Directory, Lookup, TargetRecord};
use iscsi::keys::SessionParams;
use iscsi::login::LoginOutcome;
use iscsi::pdu::{flags, Opcode, Pdu, RESERVED_TAG};
use iscsi::session::{Action, Command};
use iscsi::text;

pub const INITIATOR: &str = "iqn.2024-01.test:host1";
pub const TARGET: &str = "iqn.2024-01.dev.haven:vol1";
pub const ISID: [u8; 6] = [0x80, 0x00, 0x12, 0x34, 0x00, 0x01];

/// How a table entry answers a lookup.
#[derive(Clone)]
pub enum Kind {
    Serve(Option<ChapSecrets>),
    Redirect(String),
}

/// One target in the table.
#[derive(Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    /// Initiators allowed; `None` lets everyone in.
    pub acl: Option<Vec<String>>,
    pub addresses: Vec<String>,
}

/// A [`Directory`] over a small table.
#[derive(Clone)]
pub struct TestDir {
    pub entries: Vec<Entry>,
    pub tpgt: u16,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            entries: Vec::new(),
            tpgt: 7,
        }
    }

    pub fn serve(mut self, name: &str, auth: Option<ChapSecrets>) -> Self {
        self.entries.push(Entry {
            name: name.into(),
            kind: Kind::Serve(auth),
            acl: None,
            addresses: vec![format!("127.0.0.1:3260,{}", self.tpgt)],
        });
        self
    }

    pub fn acl(mut self, name: &str, allowed: &[&str]) -> Self {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.name == name)
            .expect("no such entry");
        e.acl = Some(allowed.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn redirect(mut self, name: &str, address: &str) -> Self {
        self.entries.push(Entry {
            name: name.into(),
            kind: Kind::Redirect(address.into()),
            acl: None,
            addresses: vec![],
        });
        self
    }

    /// The default table: one open target.
    pub fn standard() -> Self {
        TestDir::new().serve(TARGET, None)
    }
}

impl Directory for TestDir {
    fn lookup(&self, target: &str, initiator: &str) -> Lookup {
        let Some(e) = self.entries.iter().find(|e| e.name == target) else {
            return Lookup::NotFound;
        };
        if let Some(acl) = &e.acl {
            if !acl.iter().any(|a| a == initiator) {
                return Lookup::Denied;
            }
        }
        match &e.kind {
            Kind::Serve(auth) => Lookup::Serve { auth: auth.clone() },
            Kind::Redirect(a) => Lookup::Redirect { address: a.clone() },
        }
    }

    fn send_targets(&self, initiator: &str, only: Option<&str>) -> Vec<TargetRecord> {
        self.entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Serve(_)))
            .filter(|e| match &e.acl {
                None => true,
                Some(a) => a.iter().any(|x| x == initiator),
            })
            .filter(|e| match only {
                None => true,
                Some(o) => o == e.name,
            })
            .map(|e| TargetRecord {
                name: e.name.clone(),
                addresses: e.addresses.clone(),
            })
            .collect()
    }

    fn portal_group_tag(&self) -> u16 {
        self.tpgt
    }
}

/// Text bytes of `key=value` pairs.
pub fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    text::encode(&owned)
}

/// A Login Request with raw text bytes.
pub fn login_raw(csg: u8, nsg: u8, transit: bool, cont: bool, cmd_sn: u32, data: Vec<u8>) -> Pdu {
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.set_immediate(true);
    let mut f = (csg & 3) << 2;
    if transit {
        f |= flags::TRANSIT | (nsg & 3);
    }
    if cont {
        f |= flags::CONTINUE;
    }
    p.set_flags(f);
    p.bhs[8..14].copy_from_slice(&ISID);
    p.set_itt(0x1000);
    p.put16(20, 1); // CID
    p.put32(24, cmd_sn);
    p.data = Bytes::from(data);
    p.fix_lengths();
    p
}

/// A Login Request with key=value pairs.
pub fn login(csg: u8, nsg: u8, transit: bool, cmd_sn: u32, pairs: &[(&str, &str)]) -> Pdu {
    login_raw(csg, nsg, transit, false, cmd_sn, kv(pairs))
}

/// Status-Class and Status-Detail of a Login Response.
pub fn login_status(p: &Pdu) -> u16 {
    p.get16(36)
}

pub fn pairs_of(p: &Pdu) -> Vec<(String, String)> {
    text::parse(&p.data).expect("target sent malformed text")
}

pub fn get(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// A SCSI Command PDU.
#[allow(clippy::too_many_arguments)]
pub fn scsi_cmd(
    itt: u32,
    cmd_sn: u32,
    read: bool,
    write: bool,
    edtl: u32,
    cdb: &[u8],
    imm: &[u8],
    fin: bool,
) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    let mut f = 0;
    if fin {
        f |= flags::FINAL;
    }
    if read {
        f |= flags::READ;
    }
    if write {
        f |= flags::WRITE;
    }
    p.set_flags(f | 1); // SIMPLE task attribute
    p.set_lun(0);
    p.set_itt(itt);
    p.put32(20, edtl);
    p.put32(24, cmd_sn);
    let n = cdb.len().min(16);
    p.bhs[32..32 + n].copy_from_slice(&cdb[..n]);
    p.data = Bytes::copy_from_slice(imm);
    p.fix_lengths();
    p
}

/// READ (10) of `blocks` 512-byte blocks at `lba`.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE (10) of `blocks` 512-byte blocks at `lba`.
pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

/// A Data-Out PDU.
pub fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, data: &[u8], fin: bool) -> Pdu {
    let mut p = Pdu::new(Opcode::DataOut);
    p.set_flags(if fin { flags::FINAL } else { 0 });
    p.set_itt(itt);
    p.put32(20, ttt);
    p.put32(36, data_sn);
    p.put32(40, offset);
    p.data = Bytes::copy_from_slice(data);
    p.fix_lengths();
    p
}

/// A NOP-Out PDU.
pub fn nop_out(itt: u32, ttt: u32, cmd_sn: u32, immediate: bool, data: &[u8]) -> Pdu {
    let mut p = Pdu::new(Opcode::NopOut);
    p.set_immediate(immediate);
    p.set_flags(flags::FINAL);
    p.set_itt(itt);
    p.put32(20, ttt);
    p.put32(24, cmd_sn);
    p.data = Bytes::copy_from_slice(data);
    p.fix_lengths();
    p
}

/// A Text Request PDU.
pub fn text_req(itt: u32, ttt: u32, cmd_sn: u32, cont: bool, data: &[u8]) -> Pdu {
    let mut p = Pdu::new(Opcode::TextRequest);
    p.set_flags(if cont {
        flags::TEXT_CONTINUE
    } else {
        flags::FINAL
    });
    p.set_itt(itt);
    p.put32(20, ttt);
    p.put32(24, cmd_sn);
    p.data = Bytes::copy_from_slice(data);
    p.fix_lengths();
    p
}

/// A Logout Request PDU.
pub fn logout_req(itt: u32, cmd_sn: u32, reason: u8) -> Pdu {
    let mut p = Pdu::new(Opcode::LogoutRequest);
    p.set_immediate(true);
    p.set_flags(flags::FINAL | reason);
    p.set_itt(itt);
    p.put32(24, cmd_sn);
    p
}

/// A Task Management Function Request PDU.
pub fn tmf_req(
    itt: u32,
    cmd_sn: u32,
    function: u8,
    lun: u64,
    ref_itt: u32,
    ref_cmd_sn: u32,
) -> Pdu {
    let mut p = Pdu::new(Opcode::TaskMgmtRequest);
    p.set_immediate(true);
    p.set_flags(flags::FINAL | function);
    p.set_lun(lun);
    p.set_itt(itt);
    p.put32(20, ref_itt);
    p.put32(24, cmd_sn);
    p.put32(32, ref_cmd_sn);
    p
}

/// A login outcome for starting a [`iscsi::Session`] directly with chosen parameters.
pub fn outcome(params: SessionParams, discovery: bool) -> LoginOutcome {
    LoginOutcome {
        initiator_name: INITIATOR.into(),
        target_name: if discovery { None } else { Some(TARGET.into()) },
        isid: 0x8000_1234_0001,
        tsih: 1,
        cid: 1,
        params,
        exp_cmd_sn: 10,
        stat_sn: 100,
    }
}

pub fn sends(actions: &[Action]) -> Vec<&Pdu> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p) => Some(p),
            _ => None,
        })
        .collect()
}

pub fn executes(actions: &[Action]) -> Vec<&Command> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Execute(c) => Some(c),
            _ => None,
        })
        .collect()
}

pub fn closes(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Close))
}

/// A byte pattern that makes misplaced data visible.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 8) as u8)
        })
        .collect()
}

pub const NO_TAG: u32 = RESERVED_TAG;
