//! Snapshots of a volume spread over a three-member group are one point in time.
//!
//! One client writes numbered records one after another (each waits for the one before
//! to be acknowledged), alternately to two volumes (the disks of one VM) and each to
//! another chunk, so consecutive records live on different volumes, placement groups and
//! primaries. Snapshots of both volumes taken together meanwhile must hold a prefix of
//! the records: record n without record n-1 would be a cut torn across members or
//! volumes. Each snapshot reads the same through every member's portal, and the volumes
//! go on.

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

/// Records written at most (reading them all back is what takes the time).
const MAX_RECORDS: u64 = 40_000;

/// The two volumes records alternate between.
const VOLUMES: [&str; 2] = ["cut", "cut2"];

/// Where record `i` lives: volume `i % 2`; in it, chunk `j % CHUNKS`, block `j / CHUNKS`
/// (`j = i / 2`).
fn place_of(i: u64) -> (usize, u64) {
    let j = i / 2;
    ((i % 2) as usize, (j % CHUNKS) * CHUNK_BLOCKS + j / CHUNKS)
}

/// Which of records `0..n` the two targets hold (the volumes, or their snapshots `snap`),
/// read through `portal`.
fn records_in(portal: &str, snap: Option<&str>, n: u64) -> Vec<bool> {
    let mut readers: Vec<Initiator> = VOLUMES
        .iter()
        .map(|v| {
            let target = match snap {
                Some(s) => format!("iqn.2026-11.org.haven:{v}:snap:{s}"),
                None => format!("iqn.2026-11.org.haven:{v}"),
            };
            let mut c = Initiator::connect(portal, &target, "iqn.2026-11.org.haven:snap-reader")
                .unwrap_or_else(|e| panic!("login to {target} at {portal}: {e:?}"));
            c.settle();
            c
        })
        .collect();
    (0..n)
        .map(|i| {
            let (v, lba) = place_of(i);
            let block = readers[v].read(lba, 1).expect("read a record");
            u64::from_be_bytes(block[..8].try_into().unwrap()) == i + 1
        })
        .collect()
}

#[test]
fn a_group_snapshot_is_one_cut_across_members() {
    one_cut(3);
}

/// Two volumes on a single member: their snapshot is one cut too.
#[test]
fn a_snapshot_of_two_volumes_on_one_member_is_one_cut() {
    one_cut(1);
}

fn one_cut(members: usize) {
    let lab = Lab::up_group(members);
    let replicas = members.min(2).to_string();
    for v in VOLUMES {
        lab.ok(&[
            "volume",
            "create",
            v,
            "--size",
            "64MiB",
            "--replicas",
            &replicas,
        ]);
    }
    let p = lab.member_portals();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, portal) = (stop.clone(), written.clone(), p[0].clone());
        thread::spawn(move || {
            let mut disks: Vec<Initiator> = VOLUMES
                .iter()
                .map(|v| {
                    let target = format!("iqn.2026-11.org.haven:{v}");
                    let mut c =
                        Initiator::connect(&portal, &target, "iqn.2026-11.org.haven:recorder")
                            .expect("login");
                    c.settle();
                    c
                })
                .collect();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < MAX_RECORDS {
                let mut block = vec![0u8; 512];
                block[..8].copy_from_slice(&(i + 1).to_be_bytes());
                let (v, lba) = place_of(i);
                disks[v]
                    .write(lba, &block, false)
                    .unwrap_or_else(|e| panic!("record {i}: {e:?}"));
                i += 1;
                written.store(i, Ordering::Relaxed);
            }
        })
    };
    let snapshots = ["s1", "s2", "s3"];
    for name in snapshots {
        thread::sleep(Duration::from_millis(400));
        let before = written.load(Ordering::Relaxed);
        lab.ok(&["snapshot", "create", "cut", name, "--with", "cut2"]);
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
        let seen = records_in(p.last().unwrap(), Some(name), n);
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
        for portal in &p[..p.len() - 1] {
            let there = records_in(portal, Some(name), n);
            let differ: Vec<usize> = (0..seen.len()).filter(|&i| there[i] != seen[i]).collect();
            assert!(
                differ.is_empty(),
                "snapshot {name} reads differently through {portal}: records {:?}",
                &differ[..differ.len().min(10)]
            );
        }
        println!("snapshot {name}: records 0..{k} of {n}, the same through every portal");
    }
    // The volumes themselves hold every record.
    let live = records_in(&p[0], None, n);
    assert!(live.iter().all(|&x| x), "the volumes lost records");
}
