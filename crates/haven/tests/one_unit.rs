//! One logical unit whichever member portal an initiator uses.
//!
//! - COMPARE AND WRITE is atomic across members: clients on three member portals increment
//!   one counter with compare-and-write; every increment that succeeded is in the counter
//!   (two members each comparing and writing under their own lock would lose some).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use support::initiator::{Initiator, IoError};
use support::Lab;

/// Sense key MISCOMPARE.
const MISCOMPARE: u8 = 0x0e;

fn portals(lab: &Lab) -> Vec<String> {
    lab.status_json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["portal"].as_str().unwrap().to_string())
        .collect()
}

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
    for (i, portal) in portals(&lab).into_iter().enumerate() {
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
    let portal = portals(&lab).remove(0);
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
