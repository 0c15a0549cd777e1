//! A small blocking iSCSI initiator over TCP, built on haven's own codec, for tests that
//! must know exactly which writes were acknowledged (crash tests, checkers).

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use iscsi::pdu::{flags, Opcode, Pdu, RESERVED_TAG};
use iscsi::{text, Codec};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Why an exchange failed.
#[derive(Debug)]
pub enum IoError {
    /// The connection broke (the target went away).
    Disconnected(String),
    /// The target answered with CHECK CONDITION (sense key, ASC, ASCQ) or another status.
    Status {
        status: u8,
        key: u8,
        asc: u8,
        ascq: u8,
    },
    /// The login was refused.
    Login(u16),
}

pub struct Initiator {
    stream: TcpStream,
    codec: Codec,
    buf: BytesMut,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    pub block_size: u32,
    max_recv_out: usize,
}

fn status_of(p: &Pdu) -> u16 {
    ((p.bhs[36] as u16) << 8) | p.bhs[37] as u16
}

impl Initiator {
    /// Log in to `target` at `portal` (host:port), following one redirect.
    pub fn connect(portal: &str, target: &str, initiator: &str) -> Result<Initiator, IoError> {
        let mut addr = portal.to_string();
        for _ in 0..3 {
            let stream =
                TcpStream::connect(&addr).map_err(|e| IoError::Disconnected(e.to_string()))?;
            stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
            stream.set_nodelay(true).ok();
            let mut me = Initiator {
                stream,
                codec: Codec {
                    max_recv_data: 1 << 20,
                    ..Codec::default()
                },
                buf: BytesMut::new(),
                cmd_sn: 1,
                exp_stat_sn: 0,
                itt: 1,
                block_size: 512,
                max_recv_out: 8192,
            };
            let mut login = Pdu::new(Opcode::LoginRequest);
            login.set_immediate(true);
            login.set_flags(flags::TRANSIT | (1 << 2) | 3); // CSG=1 (operational) → NSG=3
            login.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0x12, 0x34, 0x56]);
            login.set_itt(0);
            login.put32(24, me.cmd_sn);
            let pairs: Vec<(String, String)> = [
                ("InitiatorName", initiator),
                ("TargetName", target),
                ("SessionType", "Normal"),
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "262144"),
                ("ImmediateData", "Yes"),
                ("InitialR2T", "Yes"),
                ("MaxBurstLength", "1048576"),
                ("FirstBurstLength", "65536"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            login.data = Bytes::from(text::encode(&pairs));
            me.send(login)?;
            let resp = me.recv()?;
            let st = status_of(&resp);
            if st == 0x0101 {
                let answer = text::parse(&resp.data).unwrap_or_default();
                let to = answer
                    .iter()
                    .find(|(k, _)| k == "TargetAddress")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                addr = to.split(',').next().unwrap_or_default().to_string();
                continue;
            }
            if st != 0 {
                return Err(IoError::Login(st));
            }
            me.exp_stat_sn = resp.stat_sn().wrapping_add(1);
            let answer = text::parse(&resp.data).unwrap_or_default();
            let get = |k: &str| {
                answer
                    .iter()
                    .find(|(kk, _)| kk == k)
                    .map(|(_, v)| v.clone())
            };
            me.codec.header_digest = get("HeaderDigest").as_deref() == Some("CRC32C");
            me.codec.data_digest = get("DataDigest").as_deref() == Some("CRC32C");
            me.max_recv_out = get("MaxRecvDataSegmentLength")
                .and_then(|v| v.parse().ok())
                .unwrap_or(8192);
            return Ok(me);
        }
        Err(IoError::Login(0x0101))
    }

    fn send(&mut self, pdu: Pdu) -> Result<(), IoError> {
        let bytes = self.codec.encode(pdu).to_vec();
        self.stream
            .write_all(&bytes)
            .map_err(|e| IoError::Disconnected(e.to_string()))
    }

    fn recv(&mut self) -> Result<Pdu, IoError> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(p)) => {
                    if p.opcode() == Some(Opcode::NopIn) && p.itt() == RESERVED_TAG {
                        // Answer the target's ping.
                        let mut nop = Pdu::new(Opcode::NopOut);
                        nop.set_immediate(true);
                        nop.set_flags(flags::FINAL);
                        nop.set_itt(RESERVED_TAG);
                        nop.put32(20, p.ttt());
                        nop.put32(24, self.cmd_sn);
                        nop.put32(28, self.exp_stat_sn);
                        self.send(nop)?;
                        continue;
                    }
                    return Ok(p);
                }
                Ok(None) => {}
                Err(e) => return Err(IoError::Disconnected(e.to_string())),
            }
            let mut chunk = [0u8; 65536];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| IoError::Disconnected(e.to_string()))?;
            if n == 0 {
                return Err(IoError::Disconnected("connection closed".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Run one command; returns the Data-In bytes.
    pub fn command(
        &mut self,
        cdb: &[u8],
        data_out: &[u8],
        expect_in: u32,
    ) -> Result<Vec<u8>, IoError> {
        let itt = self.itt;
        self.itt = self.itt.wrapping_add(1).max(1);
        let mut p = Pdu::new(Opcode::ScsiCommand);
        let mut f = flags::FINAL;
        if !data_out.is_empty() {
            f |= flags::WRITE;
        }
        if expect_in > 0 {
            f |= flags::READ;
        }
        p.set_flags(f | 1); // SIMPLE task attribute
        p.set_itt(itt);
        p.put32(
            20,
            if data_out.is_empty() {
                expect_in
            } else {
                data_out.len() as u32
            },
        );
        p.put32(24, self.cmd_sn);
        p.put32(28, self.exp_stat_sn);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        let immediate = data_out.len().min(65536).min(self.max_recv_out);
        p.data = Bytes::copy_from_slice(&data_out[..immediate]);
        self.send(p)?;
        let mut data_in = Vec::new();
        loop {
            let r = self.recv()?;
            match r.opcode() {
                Some(Opcode::R2t) => {
                    let ttt = r.ttt();
                    let offset = r.get32(40) as usize;
                    let len = r.get32(44) as usize;
                    let mut sent = 0;
                    let mut data_sn = 0;
                    while sent < len {
                        let n = (len - sent).min(self.max_recv_out);
                        let mut d = Pdu::new(Opcode::DataOut);
                        d.set_flags(if sent + n == len { flags::FINAL } else { 0 });
                        d.set_itt(itt);
                        d.put32(20, ttt);
                        d.put32(28, self.exp_stat_sn);
                        d.put32(36, data_sn);
                        d.put32(40, (offset + sent) as u32);
                        d.data =
                            Bytes::copy_from_slice(&data_out[offset + sent..offset + sent + n]);
                        self.send(d)?;
                        sent += n;
                        data_sn += 1;
                    }
                }
                Some(Opcode::DataIn) => {
                    data_in.extend_from_slice(&r.data);
                    if r.flags() & flags::STATUS != 0 {
                        self.exp_stat_sn = r.stat_sn().wrapping_add(1);
                        return Ok(data_in);
                    }
                }
                Some(Opcode::ScsiResponse) => {
                    self.exp_stat_sn = r.stat_sn().wrapping_add(1);
                    let status = r.bhs[3];
                    if status == 0 {
                        return Ok(data_in);
                    }
                    let sense = if r.data.len() > 2 {
                        r.data[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    let g = |i: usize| sense.get(i).copied().unwrap_or(0);
                    return Err(IoError::Status {
                        status,
                        key: g(2) & 0x0f,
                        asc: g(12),
                        ascq: g(13),
                    });
                }
                _ => {}
            }
        }
    }

    pub fn write(&mut self, lba: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        let blocks = (data.len() / self.block_size as usize) as u32;
        let mut cdb = [0u8; 16];
        cdb[0] = 0x8a;
        if fua {
            cdb[1] = 0x08;
        }
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.command(&cdb, data, 0).map(|_| ())
    }

    pub fn read(&mut self, lba: u64, blocks: u32) -> Result<Vec<u8>, IoError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        self.command(&cdb, &[], blocks * self.block_size)
    }

    /// COMPARE AND WRITE of `compare.len()` bytes at `lba`: writes `data` if the blocks
    /// hold `compare` (else CHECK CONDITION, MISCOMPARE).
    pub fn compare_and_write(
        &mut self,
        lba: u64,
        compare: &[u8],
        data: &[u8],
    ) -> Result<(), IoError> {
        let blocks = (compare.len() / self.block_size as usize) as u8;
        let mut cdb = [0u8; 16];
        cdb[0] = 0x89;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[13] = blocks;
        let mut out = compare.to_vec();
        out.extend_from_slice(data);
        self.command(&cdb, &out, 0).map(|_| ())
    }

    /// SYNCHRONIZE CACHE (16) of the whole device.
    pub fn flush(&mut self) -> Result<(), IoError> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x91;
        self.command(&cdb, &[], 0).map(|_| ())
    }

    /// Clear the power-on unit attention a new nexus gets.
    pub fn settle(&mut self) {
        for _ in 0..5 {
            if self.command(&[0u8; 6], &[], 0).is_ok() {
                return;
            }
        }
    }
}
