//! Snapshots of a volume spread over a three-member group are one point in time.
//!
//! One client writes numbered records one after another (each waits for the one before
//! to be acknowledged), alternately to two volumes (the disks of one VM) and each to
//! another chunk, so consecutive records live on different volumes, placement groups and
//! primaries. Snapshots of both volumes taken together meanwhile must hold a prefix of
//! the records: record n without record n-1 would be a cut torn across members or
//! volumes. Each snapshot reads the same through every member's portal, and the volumes
//! go on.
//!
//! A clone of a group snapshot is a copy the leader makes: it must read as the snapshot
//! through every portal, and the copy must go on, byte for byte, when the leader is killed
//! in the middle of it.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
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

/// A clone of a group snapshot is a copy of the cut: it reads as the snapshot through every
/// member's portal, its copies agree, its writes leave the snapshot alone, and its source
/// cannot be deleted before the copy is whole.
#[test]
fn a_clone_of_a_group_snapshot_is_a_copy_of_the_cut() {
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "origin",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let p = lab.member_portals();
    let connect = |portal: &str, target: &str| {
        let mut c = Initiator::connect(portal, target, "iqn.2026-11.org.haven:cloner")
            .unwrap_or_else(|e| panic!("login to {target} at {portal}: {e:?}"));
        c.settle();
        c
    };
    let block = |tag: u8, chunk: u64| {
        let mut b = vec![tag; 512];
        b[..8].copy_from_slice(&chunk.to_be_bytes());
        b
    };
    // A block in every chunk (so on every placement group's primary), then the snapshot,
    // then other bytes in the same blocks.
    let mut origin = connect(&p[0], "iqn.2026-11.org.haven:origin");
    for chunk in 0..CHUNKS {
        origin
            .write(chunk * CHUNK_BLOCKS + 7, &block(0xaa, chunk), false)
            .unwrap();
    }
    lab.ok(&["snapshot", "create", "origin", "s"]);
    for chunk in 0..CHUNKS {
        origin
            .write(chunk * CHUNK_BLOCKS + 7, &block(0xbb, chunk), false)
            .unwrap();
    }
    let out = lab.ok(&["volume", "clone", "origin@s", "copy"]);
    assert!(out.contains("cloned origin@s as copy"), "{out}");
    let view: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "show", "copy", "--json"])).unwrap();
    assert!(
        view.get("copying").is_none(),
        "whole when the clone returns: {view}"
    );
    assert_eq!(
        view["parent"],
        serde_json::Value::Null,
        "a copy shares nothing"
    );

    for portal in &p {
        let mut copy = connect(portal, "iqn.2026-11.org.haven:copy");
        for chunk in 0..CHUNKS {
            let lba = chunk * CHUNK_BLOCKS + 7;
            assert_eq!(
                copy.read(lba, 1).unwrap(),
                block(0xaa, chunk),
                "chunk {chunk} of the copy through {portal}"
            );
            assert_eq!(
                copy.read(lba + 1, 1).unwrap(),
                vec![0; 512],
                "never written"
            );
        }
    }
    let agree = lab.ok(&["volume", "verify-copies", "copy"]);
    assert!(agree.contains(" 0 diverged"), "{agree}");

    // The copy is a volume of its own: its writes reach neither the snapshot nor the origin.
    let mut copy = connect(&p[1], "iqn.2026-11.org.haven:copy");
    copy.write(7, &block(0xcc, 0), false).unwrap();
    let mut snapshot = connect(&p[2], "iqn.2026-11.org.haven:origin:snap:s");
    assert_eq!(snapshot.read(7, 1).unwrap(), block(0xaa, 0));
    assert_eq!(origin.read(7, 1).unwrap(), block(0xbb, 0));

    // Once whole, nothing holds the source.
    lab.ok(&["snapshot", "delete", "origin", "s"]);
    lab.ok(&["volume", "delete", "origin", "--force"]);
    assert_eq!(copy.read(CHUNK_BLOCKS + 7, 1).unwrap(), block(0xaa, 1));
}

/// The leader copies a clone; SIGKILLed mid-copy, the next leader goes on from the last
/// recorded point, and the clone is still the snapshot byte for byte.
#[test]
fn a_clone_copy_goes_on_when_the_leader_is_killed() {
    const SIZE: usize = 512 << 20;
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "source",
        "--size",
        "512MiB",
        "--replicas",
        "2",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("source.img");
    support::write_random(&image, SIZE, 41);
    support::qemu_img_put(image.to_str().unwrap(), &lab.iscsi_url("source"));
    lab.ok(&["snapshot", "create", "source", "s"]);
    // Changed after the cut: the clone must not have it.
    let mut source = Initiator::connect(
        &lab.member_portals()[0],
        "iqn.2026-11.org.haven:source",
        "iqn.2026-11.org.haven:cloner",
    )
    .unwrap();
    source.settle();
    source.write(0, &[0x5a; 512], false).unwrap();

    let copied = |lab: &Lab| -> Option<u64> {
        let v: serde_json::Value =
            serde_json::from_str(&lab.ok(&["volume", "show", "copy", "--json"])).unwrap();
        v.get("copying").map(|c| c["copied"].as_u64().unwrap())
    };
    lab.ok(&["volume", "clone", "source@s", "copy", "--no-wait"]);
    let t = Instant::now();
    let at_kill = loop {
        match copied(&lab) {
            Some(0) => {}
            Some(done) => break done,
            None => panic!("the copy ended before the leader could be killed"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the copy never started"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let victim = lab.leader();
    lab.ok(&["lab", "kill", &victim, "--data", lab.dir_str()]);
    println!("{victim} (leader) killed with {at_kill} of {SIZE} bytes copied");
    assert!(at_kill < SIZE as u64);
    let t = Instant::now();
    while copied(&lab).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the copy did not go on after the leader died"
        );
        thread::sleep(Duration::from_millis(200));
    }
    println!("whole {:?} after the kill", t.elapsed());
    assert_ne!(lab.leader(), victim);

    // Read it through a member that stayed.
    let portals = lab.member_portals();
    let victim_index: usize = victim
        .trim_start_matches("member-")
        .parse::<usize>()
        .unwrap()
        - 1;
    let portal = &portals[(victim_index + 1) % portals.len()];
    let back = dir.path().join("copy.img");
    support::qemu_img_get(
        &format!("iscsi://{portal}/iqn.2026-11.org.haven:copy/0"),
        back.to_str().unwrap(),
    );
    let (want, got) = (
        std::fs::read(&image).unwrap(),
        std::fs::read(&back).unwrap(),
    );
    assert_eq!(got.len(), want.len());
    let first_bad = want.iter().zip(&got).position(|(a, b)| a != b);
    assert_eq!(first_bad, None, "the copy differs from the snapshot");
}
