//! Snapshots of a volume spread over a three-member group are one point in time.
//!
//! One client writes numbered records one after another (each waits for the one before
//! to be acknowledged), each to another chunk, so consecutive records live on different
//! placement groups and primaries. Snapshots taken meanwhile must each hold a prefix of
//! the records: record n without record n-1 would be a cut torn across members. Each
//! snapshot reads the same through every member's portal, and the volume goes on.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use support::initiator::Initiator;
use support::Lab;

/// 512-byte blocks in a 4 MiB chunk.
const CHUNK_BLOCKS: u64 = 8192;
/// Chunks the records rotate over (the volume is 64 MiB).
const CHUNKS: u64 = 16;

/// Where record `i` lives: chunk `i % CHUNKS`, block `i / CHUNKS` within it.
fn lba_of(i: u64) -> u64 {
    (i % CHUNKS) * CHUNK_BLOCKS + i / CHUNKS
}

fn portals(lab: &Lab) -> Vec<String> {
    lab.status_json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["portal"].as_str().unwrap().to_string())
        .collect()
}

/// Which of records `0..n` a snapshot target holds, read through `portal`.
fn records_in(portal: &str, target: &str, n: u64) -> Vec<bool> {
    let mut c = Initiator::connect(portal, target, "iqn.2026-11.org.haven:snap-reader")
        .unwrap_or_else(|e| panic!("login to {target} at {portal}: {e:?}"));
    c.settle();
    (0..n)
        .map(|i| {
            let block = c.read(lba_of(i), 1).expect("read the snapshot");
            u64::from_be_bytes(block[..8].try_into().unwrap()) == i + 1
        })
        .collect()
}

#[test]
fn a_group_snapshot_is_one_cut_across_members() {
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "cut",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let p = portals(&lab);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, portal) = (stop.clone(), written.clone(), p[0].clone());
        thread::spawn(move || {
            let mut c = Initiator::connect(
                &portal,
                "iqn.2026-11.org.haven:cut",
                "iqn.2026-11.org.haven:recorder",
            )
            .expect("login");
            c.settle();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < CHUNKS * CHUNK_BLOCKS {
                let mut block = vec![0u8; 512];
                block[..8].copy_from_slice(&(i + 1).to_be_bytes());
                c.write(lba_of(i), &block, false)
                    .unwrap_or_else(|e| panic!("record {i}: {e:?}"));
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
        })
    };
    let snapshots = ["s1", "s2", "s3"];
    for name in snapshots {
        thread::sleep(Duration::from_millis(700));
        let before = written.load(Ordering::Relaxed);
        lab.ok(&["snapshot", "create", "cut", name]);
        let after = written.load(Ordering::Relaxed);
        println!("snapshot {name} taken while records {before}..{after} were written");
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let n = written.load(Ordering::Relaxed);
    assert!(n > 100, "the writer wrote only {n} records");

    let mut prev = 0;
    for name in snapshots {
        let target = format!("iqn.2026-11.org.haven:cut:snap:{name}");
        let seen = records_in(&p[1], &target, n);
        let k = seen.iter().take_while(|&&x| x).count();
        let torn: Vec<usize> = (k..seen.len()).filter(|&i| seen[i]).collect();
        assert!(
            torn.is_empty(),
            "snapshot {name} holds records 0..{k} and then {:?}: not one cut",
            &torn[..torn.len().min(10)]
        );
        assert!(
            k >= prev,
            "snapshot {name} holds fewer records than the one before"
        );
        prev = k;
        for portal in [&p[0], &p[2]] {
            let there = records_in(portal, &target, n);
            let differ: Vec<usize> = (0..seen.len()).filter(|&i| there[i] != seen[i]).collect();
            assert!(
                differ.is_empty(),
                "snapshot {name} reads differently through {portal}: records {:?}",
                &differ[..differ.len().min(10)]
            );
        }
        println!("snapshot {name}: records 0..{k} of {n}, the same through every portal");
    }
    // The volume itself holds every record.
    let live = records_in(&p[2], "iqn.2026-11.org.haven:cut", n);
    assert!(live.iter().all(|&x| x), "the volume lost records");
}
