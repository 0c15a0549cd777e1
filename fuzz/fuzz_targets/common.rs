//! A small target table shared by the fuzz targets.
#![allow(dead_code)]

use bytes::Bytes;
use iscsi::directory::{ChapSecrets, Directory, Lookup, TargetRecord};
use iscsi::pdu::{Opcode, Pdu};

pub struct FuzzDir;

impl Directory for FuzzDir {
    fn lookup(&self, target: &str, _initiator: &str) -> Lookup {
        match target {
            "iqn.t" => Lookup::Serve { auth: None },
            "iqn.chap" => Lookup::Serve {
                auth: Some(ChapSecrets {
                    user: "u".into(),
                    secret: b"secretsecret".to_vec(),
                    target: Some(("t".into(), b"targetsecret".to_vec())),
                }),
            },
            "iqn.r" => Lookup::Redirect {
                address: "192.0.2.250:3260,1".into(),
            },
            "iqn.d" => Lookup::Denied,
            _ => Lookup::NotFound,
        }
    }

    fn send_targets(&self, _initiator: &str, only: Option<&str>) -> Vec<TargetRecord> {
        (0..40)
            .map(|i| TargetRecord {
                name: format!("iqn.2024-01.dev.haven:target-number-{i}"),
                addresses: vec![format!("192.0.2.{i}:3260,1"), format!("[2001:db8::{i}]:3260,1")],
            })
            .filter(|r| only.map_or(true, |o| o == r.name))
            .collect()
    }

    fn portal_group_tag(&self) -> u16 {
        1
    }
}

/// A Login Request around `data`.
pub fn login_pdu(flags: u8, cmd_sn: u32, data: &[u8]) -> Pdu {
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.set_immediate(true);
    p.set_flags(flags);
    p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 1, 0, 1]);
    p.set_itt(1);
    p.put32(24, cmd_sn);
    p.data = Bytes::copy_from_slice(data);
    p.fix_lengths();
    p
}
