//! The store through the iSCSI target: snapshots that each keep their own content, space
//! given back by UNMAP and by deleting snapshots, and a corrupted byte reported, never
//! returned as data.
//!
//! Long forms: `HAVEN_SNAPSHOTS=512 HAVEN_SNAPSHOT_VOLUME=10GiB HAVEN_SNAPSHOT_FILL=4GiB
//! cargo nextest run -E 'test(snapshots_each)' --no-capture`.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::initiator::{Initiator, IoError};
use support::*;

const UNIT_BLOCKS: u32 = 8; // 4 KiB

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn connect(lab: &Lab, target: &str) -> Initiator {
    // After a restart the member serves a volume once it has reopened it; until then a
    // login gets "not found" (0x0203).
    let t = Instant::now();
    loop {
        match Initiator::connect(&lab.portal, target, "iqn.2000-01.org.test:store") {
            Ok(mut i) => {
                i.settle();
                return i;
            }
            Err(IoError::Login(0x0203)) if t.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("login: {e:?}"),
        }
    }
}

fn pattern(tag: u32, unit: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    for (k, c) in v.chunks_mut(16).enumerate() {
        c[..4].copy_from_slice(&tag.to_le_bytes());
        c[4..12].copy_from_slice(&unit.to_le_bytes());
        c[12..16].copy_from_slice(&(k as u32).to_le_bytes());
    }
    v
}

fn du_kib(path: &std::path::Path) -> u64 {
    let o = Command::new("du")
        .args(["-sk", path.to_str().unwrap()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn snapshots_each_read_their_own_content_through_their_targets() {
    let count: u32 = env_or("HAVEN_SNAPSHOTS", "64").parse().unwrap();
    let size = env_or("HAVEN_SNAPSHOT_VOLUME", "1GiB");
    let fill = api::parse_size(&env_or("HAVEN_SNAPSHOT_FILL", "128MiB")).unwrap();
    let lab = Lab::up();
    lab.ok(&["volume", "create", "snapvol", "--size", &size]);
    let bytes = api::parse_size(&size).unwrap();
    // Background data, so snapshots share real extents.
    let src = lab.tmp.path().join("fill.img");
    write_random(&src, fill as usize, 11);
    qemu_img_put(src.to_str().unwrap(), &lab.iscsi_url("snapvol"));
    std::fs::remove_file(&src).unwrap();

    let units = bytes / 4096;
    // Snapshot i owns three units spread over the volume, plus one unit every snapshot rewrites.
    let own = |i: u32, j: u64| ((i as u64 * 7919 + j * (units / 3)) % (units - 1)) + 1;
    let shared = 0u64;
    let mut ini = connect(&lab, "iqn.2026-11.org.haven:snapvol");
    let mut create_ms = Vec::new();
    for i in 0..count {
        for j in 0..3 {
            let u = own(i, j);
            ini.write(u * UNIT_BLOCKS as u64, &pattern(i, u), false)
                .unwrap();
        }
        ini.write(shared, &pattern(i, shared), false).unwrap();
        let t = Instant::now();
        lab.ok(&["snapshot", "create", "snapvol", &format!("s{i}")]);
        create_ms.push(t.elapsed().as_millis());
    }
    for i in 0..count {
        let mut s = connect(&lab, &format!("iqn.2026-11.org.haven:snapvol:snap:s{i}"));
        assert_eq!(
            s.read(shared, UNIT_BLOCKS).unwrap(),
            pattern(i, shared),
            "snapshot s{i}: shared unit"
        );
        for j in 0..3 {
            let u = own(i, j);
            assert_eq!(
                s.read(u * UNIT_BLOCKS as u64, UNIT_BLOCKS).unwrap(),
                pattern(i, u),
                "snapshot s{i}: unit {u}"
            );
            if i + 1 < count {
                let later = own(i + 1, j);
                let got = s.read(later * UNIT_BLOCKS as u64, UNIT_BLOCKS).unwrap();
                assert_ne!(
                    got,
                    pattern(i + 1, later),
                    "snapshot s{i} sees a write made after it"
                );
            }
        }
        // Read-only: a write is refused with DATA PROTECT.
        match s.write(1, &[0u8; 512], false) {
            Err(IoError::Status { key: 7, .. }) => {}
            other => panic!("snapshot s{i} accepted a write: {other:?}"),
        }
    }
    create_ms.sort();
    println!(
        "{count} snapshots of a {size} volume ({} written): creation median {} ms, max {} ms",
        api::format_size(fill),
        create_ms[create_ms.len() / 2],
        create_ms[create_ms.len() - 1]
    );
}

#[test]
fn unmap_and_snapshot_deletion_give_space_back() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "space", "--size", "2GiB"]);
    let data = lab.dir.join("member-1/data");
    let url = lab.iscsi_url("space");
    let before = du_kib(&data);
    let src = lab.tmp.path().join("g.img");
    write_random(&src, 1 << 30, 5);
    qemu_img_put(src.to_str().unwrap(), &url);
    std::fs::remove_file(&src).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // let the checkpointer move the journal into extents
    let written = du_kib(&data);
    assert!(
        written - before > 1000 * 1024,
        "1 GiB written but du grew only {} KiB",
        written - before
    );
    run_tool("qemu-io", &["-f", "raw", "-c", "discard 0 1G", &url]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = du_kib(&data);
    while (written - after) * 100 < (written - before) * 99 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        after = du_kib(&data);
    }
    let given_back = (written - after) as f64 / (written - before) as f64;
    println!("unmap: du {before} KiB → {written} KiB after 1 GiB → {after} KiB after unmap ({:.2}% given back)", given_back * 100.0);
    assert!(
        given_back >= 0.99,
        "unmap gave back only {:.2}% of the space",
        given_back * 100.0
    );

    // Snapshots of successive overwrites, deleted in a scrambled order: all their space returns.
    let mut ini = connect(&lab, "iqn.2026-11.org.haven:space");
    let chunk = vec![0x5au8; 1 << 20];
    for round in 0..6u8 {
        for mib in 0..32u64 {
            let mut c = chunk.clone();
            c[0] = round;
            ini.write(mib * 2048, &c, false).unwrap();
        }
        ini.flush().unwrap();
        lab.ok(&["snapshot", "create", "space", &format!("r{round}")]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let with_snaps = du_kib(&data);
    for round in [3u8, 0, 5, 1, 4, 2] {
        lab.ok(&["snapshot", "delete", "space", &format!("r{round}")]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut end = du_kib(&data);
    // What remains is the live 32 MiB (plus index and journal overhead).
    while end > after + 40 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        end = du_kib(&data);
    }
    println!("snapshots: du {with_snaps} KiB with 6 snapshots → {end} KiB after deleting them");
    assert!(
        end <= after + 40 * 1024,
        "deleting snapshots left {end} KiB (live data is 32 MiB over {after} KiB)"
    );
}

#[test]
fn a_flipped_byte_is_a_medium_error_and_scrub_finds_it() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "flip", "--size", "64MiB"]);
    let mut ini = connect(&lab, "iqn.2026-11.org.haven:flip");
    // A whole 256 KiB extent (blocks 512..1024), so that large reads of it are served
    // from the mapped extent file (`store`'s `mapped`), small ones by copying.
    let mut extent = vec![0u8; 256 * 1024];
    let marker = b"HAVEN-FLIP-MARKER-0123456789";
    for c in extent.chunks_mut(512) {
        c[..marker.len()].copy_from_slice(marker);
    }
    ini.write(512, &extent, true).unwrap();
    drop(ini);
    // A clean stop checkpoints: the blocks are now in the extent file.
    let o = haven(&["lab", "down", "--data", lab.dir_str()], &[]);
    assert!(o.status.success());
    let extents = lab.dir.join("member-1/data/store/extents.dat");
    let mut bytes = std::fs::read(&extents).expect("extents.dat");
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker not found in the extent file");
    bytes[at + 3] ^= 0x01;
    std::fs::write(&extents, &bytes).unwrap();
    lab.up_again();

    let mut ini = connect(&lab, "iqn.2026-11.org.haven:flip");
    for (what, blocks) in [("a one-block read", 1), ("a whole-extent read", 512)] {
        match ini.read(512, blocks) {
            Err(IoError::Status {
                key: 3, asc: 0x11, ..
            }) => {}
            other => panic!("{what} of a corrupted block was no medium error: {other:?}"),
        }
    }
    // The other blocks of the write still read.
    assert_eq!(&ini.read(513, 1).unwrap()[..marker.len()], marker);
    let o = lab.cli(&["volume", "scrub", "flip", "--json"]);
    assert!(
        !o.status.success(),
        "scrub should fail on a bad block: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["bad"], serde_json::json!([512]), "{report}");
}
