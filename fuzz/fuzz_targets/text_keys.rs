//! text::parse and keys::negotiate on arbitrary text, and a Login step around it.
#![no_main]

#[path = "common.rs"]
mod common;

use iscsi::keys::{self, SessionParams, TargetLimits};
use iscsi::{text, Login};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = text::parse(data) {
        let limits = TargetLimits::default();
        for discovery in [false, true] {
            let mut p = SessionParams::default();
            for (k, v) in &pairs {
                let a = keys::negotiate(&mut p, &limits, discovery, k, v);
                let _ = a.text();
                let _ = text::parse_number(v);
                let _ = text::parse_binary(v);
            }
            keys::finish(&mut p, &limits);
            assert!(p.first_burst <= p.max_burst);
            assert!(p.initiator_max_recv >= 512);
        }
        assert_eq!(text::parse(&text::encode(&pairs)).unwrap(), pairs);
    }
    let s = String::from_utf8_lossy(data);
    let _ = text::parse_number(&s);
    let _ = text::parse_binary(&s);

    // The bytes as the whole first login request, then after valid declarations.
    let mut login = Login::new(TargetLimits::default(), 1);
    let _ = login.step(&common::login_pdu(0x81, 1, data), &common::FuzzDir);
    let mut prefix = b"InitiatorName=iqn.i\0TargetName=iqn.t\0".to_vec();
    prefix.extend_from_slice(data);
    let mut login = Login::new(TargetLimits::default(), 1);
    let _ = login.step(&common::login_pdu(0x87, 1, &prefix), &common::FuzzDir);
});
