//! One logical unit whichever member portal an initiator uses.
//!
//! - COMPARE AND WRITE is atomic across members: clients on three member portals increment
//!   one counter with compare-and-write; every increment that succeeded is in the counter
//!   (two members each comparing and writing under their own lock would lose some).
//! - Persistent reservations are the unit's, not a member's: a reservation taken through
//!   one member's portal blocks another initiator's writes through another member's
//!   portal at once, and a PREEMPT through a third raises the unit attention on the first.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use support::initiator::{Initiator, IoError};
use support::Lab;

/// Sense key MISCOMPARE.
const MISCOMPARE: u8 = 0x0e;

#[test]
fn compare_and_write_is_one_step_across_member_portals() {
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "unit",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let target = "iqn.2026-11.org.haven:unit";
    let per_client: u64 = std::env::var("HAVEN_CAW_INCREMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let done = Arc::new(AtomicU64::new(0));
    let misses = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for (i, portal) in lab.member_portals().into_iter().enumerate() {
        let (done, misses) = (done.clone(), misses.clone());
        clients.push(thread::spawn(move || {
            let name = format!("iqn.2026-11.org.haven:caw-client-{i}");
            let mut c = Initiator::connect(&portal, target, &name).expect("login");
            c.settle();
            let mut ok = 0;
            while ok < per_client {
                let block = c.read(0, 1).expect("read the counter");
                let value = u64::from_be_bytes(block[..8].try_into().unwrap());
                let mut next = block.clone();
                next[..8].copy_from_slice(&(value + 1).to_be_bytes());
                match c.compare_and_write(0, &block, &next) {
                    Ok(()) => {
                        ok += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(IoError::Status {
                        key: MISCOMPARE, ..
                    }) => {
                        misses.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("compare and write through {portal}: {e:?}"),
                }
            }
        }));
    }
    for c in clients {
        c.join().unwrap();
    }
    let portal = lab.member_portals().remove(0);
    let mut c = Initiator::connect(&portal, target, "iqn.2026-11.org.haven:caw-check").unwrap();
    c.settle();
    let counter = u64::from_be_bytes(c.read(0, 1).unwrap()[..8].try_into().unwrap());
    let done = done.load(Ordering::Relaxed);
    println!(
        "{done} compare-and-writes succeeded through 3 member portals ({} miscompares); counter {counter}",
        misses.load(Ordering::Relaxed)
    );
    assert!(
        misses.load(Ordering::Relaxed) > 0,
        "the clients never raced"
    );
    assert_eq!(
        counter, done,
        "increments were lost: compare and write was not one step"
    );
}

/// SCSI status RESERVATION CONFLICT.
const RESERVATION_CONFLICT: u8 = 0x18;
/// WRITE EXCLUSIVE.
const WRITE_EXCLUSIVE: u8 = 1;

/// PERSISTENT RESERVE OUT with a basic parameter list.
fn prout(c: &mut Initiator, action: u8, rtype: u8, key: u64, sa_key: u64) -> Result<(), IoError> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = action;
    cdb[2] = rtype;
    cdb[8] = 24;
    let mut params = [0u8; 24];
    params[..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    c.command(&cdb, &params, 0).map(|_| ())
}

fn is_conflict(r: Result<(), IoError>) -> bool {
    matches!(
        r,
        Err(IoError::Status {
            status: RESERVATION_CONFLICT,
            ..
        })
    )
}

#[test]
fn persistent_reservations_hold_across_member_portals() {
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "pr",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let target = "iqn.2026-11.org.haven:pr";
    let p = lab.member_portals();
    let connect = |i: usize, name: &str| {
        let mut c = Initiator::connect(&p[i], target, name).expect("login");
        c.settle();
        c
    };
    let mut a = connect(0, "iqn.2026-11.org.haven:host-a");
    let mut b = connect(1, "iqn.2026-11.org.haven:host-b");
    let mut c = connect(2, "iqn.2026-11.org.haven:host-c");
    // `volume show` lists the group's sessions, whichever member answers.
    let show: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "show", "pr", "--json"])).unwrap();
    let mut on: Vec<&str> = show["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["member"].as_str().unwrap())
        .collect();
    on.sort_unstable();
    assert_eq!(on, ["member-1", "member-2", "member-3"], "{show}");
    let block = vec![0x5au8; 512];
    // Write through every member first, so each has seen its nexus before the change.
    a.write(0, &block, false).unwrap();
    b.write(0, &block, false).unwrap();
    c.write(0, &block, false).unwrap();

    // A registers and reserves WRITE EXCLUSIVE through member 0.
    prout(&mut a, 0, 0, 0, 0xA).expect("register A");
    prout(&mut a, 1, WRITE_EXCLUSIVE, 0xA, 0).expect("reserve A");
    // B, through member 1, may read but not write; A still writes.
    assert!(
        is_conflict(b.write(0, &block, false)),
        "a write through another member's portal ignored the reservation"
    );
    b.read(0, 1)
        .expect("reads stay allowed under WRITE EXCLUSIVE");
    a.write(0, &block, false).expect("the holder writes");

    // C registers through member 2 and preempts A: A's next command sees the unit
    // attention REGISTRATIONS PREEMPTED, then conflicts; C writes.
    prout(&mut c, 0, 0, 0, 0xC).expect("register C");
    prout(&mut c, 4, WRITE_EXCLUSIVE, 0xC, 0xA).expect("C preempts A");
    match a.read(0, 1) {
        Err(IoError::Status {
            key: 0x06,
            asc: 0x2a,
            ascq: 0x05,
            ..
        }) => {}
        other => panic!("A through member 0 expected REGISTRATIONS PREEMPTED, got {other:?}"),
    }
    assert!(
        is_conflict(a.write(0, &block, false)),
        "A still wrote after being preempted"
    );
    c.write(0, &block, false).expect("the new holder writes");
    assert!(is_conflict(b.write(0, &block, false)));

    // C releases: everyone writes again.
    prout(&mut c, 2, WRITE_EXCLUSIVE, 0xC, 0).expect("release");
    b.write(0, &block, false)
        .expect("B writes once the reservation is gone");
    println!(
        "reservations held across 3 member portals: conflicts, preemption and release as one unit"
    );
}
