//! Scenario tests of the store: many snapshots, space reclaim, checksums, full pool,
//! reserve policies, thick volumes, clones, format version.

use rand::prelude::*;
use scsi::{BlockDevice, DeviceError};
use std::sync::Arc;
use store::{ErrorKind, ReservePolicy, SimDisk, Store, StoreOptions};

const BS: usize = 4096;

fn opts() -> StoreOptions {
    StoreOptions {
        checkpoint_interval: None,
        index_cache: 4 << 20,
        ..StoreOptions::default()
    }
}

fn pat(tag: u64, lba: u64) -> Vec<u8> {
    let mut b = vec![(tag % 251) as u8; BS];
    b[..8].copy_from_slice(&tag.to_le_bytes());
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    b
}

fn read(d: &dyn BlockDevice, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    d.read(lba, &mut b).unwrap();
    b
}

#[test]
fn five_hundred_twelve_snapshots_each_keep_their_content() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    s.create_volume(1, 64 << 20, BS as u32, false).unwrap();
    s.set_snapshot_reserve(1, 100_000, ReservePolicy::DeleteOldest)
        .unwrap();
    let v = s.volume(1).unwrap();
    let bpe = s.extent_size() / BS as u64; // blocks per extent
                                           // Snapshot i: blocks in extents (i % 16) and 16 + (i % 7) hold tag i.
    let lbas = |i: u64| [(i % 16) * bpe + i % 5, (16 + i % 7) * bpe + 3];
    for i in 0..512u64 {
        for l in lbas(i) {
            v.write(l, &pat(i, l), false).unwrap();
        }
        s.snapshot(1, i).unwrap();
    }
    assert_eq!(s.snapshots(1).unwrap().len(), 512);
    // Expected content of snapshot i at lba l: the last j <= i that wrote l.
    for i in (0..512u64).step_by(1) {
        let d = s.open_snapshot(1, i).unwrap();
        for l in lbas(i) {
            assert_eq!(read(&*d, l), pat(i, l), "snapshot {i} lba {l}");
        }
        // An older write elsewhere, still visible.
        if i >= 16 {
            let k = i - 1;
            let l = lbas(k)[0];
            if !lbas(i).contains(&l) {
                assert_eq!(read(&*d, l), pat(k, l), "snapshot {i} keeps {k}'s write");
            }
        }
    }
    // Survives a reopen.
    drop(v);
    drop(s);
    let s = Store::open(t.path(), opts()).unwrap();
    let d = s.open_snapshot(1, 300).unwrap();
    for l in lbas(300) {
        assert_eq!(read(&*d, l), pat(300, l));
    }
}

#[test]
fn unmapping_everything_returns_the_space() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    let size = 128u64 << 20;
    s.create_volume(1, size, BS as u32, false).unwrap();
    let v = s.volume(1).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let blocks = size / BS as u64;
    for i in 0..3000u64 {
        let l = rng.gen_range(0..blocks);
        v.write(l, &pat(i, l), false).unwrap();
    }
    v.write(4096, &vec![9u8; 1 << 20], false).unwrap();
    s.checkpoint().unwrap();
    let used = s.space().in_use;
    let du = s.data_allocated().unwrap();
    assert!(used > 0 && du > 0);
    assert!(v.lba_status(4096).unwrap().mapped);
    v.unmap(0, blocks).unwrap();
    s.checkpoint().unwrap();
    let sp = s.space();
    assert!(
        sp.in_use * 100 <= used,
        "allocator: {} of {used}",
        sp.in_use
    );
    let du2 = s.data_allocated().unwrap();
    assert!(du2 * 100 <= du, "st_blocks: {du2} of {du}");
    let st = v.lba_status(0).unwrap();
    assert!(!st.mapped && st.blocks > 0);
    assert_eq!(read(&*v, 4096), vec![0u8; BS]);
    // Unaligned unmap zeroes the edges.
    v.write(10, &pat(1, 10), false).unwrap();
    v.write(11, &pat(2, 11), false).unwrap();
    v.unmap(11, 1).unwrap();
    assert_eq!(read(&*v, 10), pat(1, 10));
    assert_eq!(read(&*v, 11), vec![0u8; BS]);
}

#[test]
fn deleting_snapshots_in_any_order_frees_their_space() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    s.create_volume(1, 16 << 20, BS as u32, false).unwrap();
    s.set_snapshot_reserve(1, 100_000, ReservePolicy::DeleteOldest)
        .unwrap();
    let v = s.volume(1).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    for l in 0..4096u64 {
        if l % 7 == 0 {
            v.write(l, &pat(0, l), false).unwrap();
        }
    }
    for snap in 0..20u64 {
        s.snapshot(1, snap).unwrap();
        for _ in 0..40 {
            let l = rng.gen_range(0..4096u64);
            v.write(l, &pat(snap + 1, l), false).unwrap();
        }
    }
    s.checkpoint().unwrap();
    let live = s.volume_space(1).unwrap().in_use;
    assert!(s.space().in_use > live);
    let mut order: Vec<u64> = (0..20).collect();
    order.shuffle(&mut rng);
    for snap in order {
        s.delete_snapshot(1, snap).unwrap();
    }
    let vs = s.volume_space(1).unwrap();
    assert_eq!(vs.snapshot_in_use, 0);
    assert_eq!(
        s.space().in_use,
        live,
        "only the live volume's extents remain"
    );
    assert!(s.snapshots(1).unwrap().is_empty());
}

#[test]
fn flipped_byte_is_a_medium_error_and_scrub_finds_it() {
    let disk = SimDisk::new();
    let s = Store::open_disk(Arc::new(disk.clone()), opts()).unwrap();
    s.create_volume(1, 4 << 20, BS as u32, false).unwrap();
    let v = s.volume(1).unwrap();
    for l in 0..8 {
        v.write(l, &pat(l, l), false).unwrap();
    }
    s.checkpoint().unwrap();
    // Slot 1 holds extent 0: 4 KiB header, then the blocks.
    disk.corrupt("extents.dat", 4096 + 5 * BS as u64 + 100);
    let mut b = vec![0u8; 8 * BS];
    assert!(matches!(
        v.read(0, &mut b),
        Err(DeviceError::Medium { lba: 5 })
    ));
    assert_eq!(read(&*v, 4), pat(4, 4));
    assert!(s.medium_errors() >= 1);
    let rep = s.scrub(1).unwrap();
    assert_eq!(rep.bad, vec![5]);
    assert_eq!(rep.blocks_checked, 8);
    // Repair from a "replica".
    let rep = s.scrub_with(1, |l| Some(pat(l, l))).unwrap();
    assert_eq!(rep.repaired, 1);
    assert_eq!(read(&*v, 5), pat(5, 5));
    assert!(s.scrub(1).unwrap().bad.is_empty());
}

#[test]
fn full_pool_refuses_allocation_and_keeps_data() {
    let t = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        capacity: Some(4 * 256 * 1024),
        ..opts()
    };
    let s = Store::open(t.path(), o).unwrap();
    s.create_volume(1, 16 << 20, BS as u32, false).unwrap();
    let v = s.volume(1).unwrap();
    let bpe = 64;
    for x in 0..4 {
        v.write(x * bpe, &pat(x, x * bpe), false).unwrap();
    }
    assert!(matches!(
        v.write(4 * bpe, &pat(9, 4 * bpe), false),
        Err(DeviceError::NoSpace)
    ));
    // Writes into allocated extents still work.
    v.write(1, &pat(1, 1), false).unwrap();
    s.checkpoint().unwrap();
    assert!(matches!(
        v.write(10 * bpe, &pat(9, 10 * bpe), true),
        Err(DeviceError::NoSpace)
    ));
    for x in 0..4 {
        assert_eq!(read(&*v, x * bpe), pat(x, x * bpe));
    }
    assert_eq!(read(&*v, 4 * bpe), vec![0u8; BS]);
    assert_eq!(s.space().free, 0);
    // Snapshots need room too: copy-on-write is refused when full.
    s.snapshot(1, 1).unwrap();
    assert!(matches!(
        v.write(0, &pat(5, 0), false),
        Err(DeviceError::NoSpace)
    ));
    s.delete_snapshot(1, 1).unwrap();
    v.unmap(0, bpe).unwrap();
    v.write(5 * bpe, &pat(5, 5 * bpe), false).unwrap();
    s.checkpoint().unwrap();
    assert_eq!(read(&*v, 5 * bpe), pat(5, 5 * bpe));
}

#[test]
fn snapshot_reserve_policies() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    s.create_volume(1, 1 << 20, BS as u32, false).unwrap(); // 4 extents
    let v = s.volume(1).unwrap();
    let fill = |tag: u64| {
        for x in 0..4u64 {
            v.write(x * 64, &pat(tag, x * 64), false).unwrap();
        }
    };
    fill(1);
    s.snapshot(1, 1).unwrap();
    fill(2);
    s.checkpoint().unwrap();
    let vs = s.volume_space(1).unwrap();
    assert_eq!(vs.snapshot_in_use, 1 << 20);
    assert!(vs.reserve_warn, "100% of reserve used warns");
    s.snapshot(1, 2).unwrap();
    fill(3);
    s.checkpoint().unwrap();
    assert_eq!(s.snapshots(1).unwrap(), vec![2], "oldest snapshot deleted");
    assert_eq!(read(&*s.open_snapshot(1, 2).unwrap(), 0), pat(2, 0));
    assert_eq!(
        s.set_snapshot_reserve(1, 5, ReservePolicy::Offline)
            .unwrap_err()
            .kind,
        ErrorKind::Invalid
    );
    s.set_snapshot_reserve(1, 10, ReservePolicy::Offline)
        .unwrap();
    s.checkpoint().unwrap();
    assert!(s.volume_space(1).unwrap().offline);
    assert!(v.write(0, &pat(4, 0), false).is_err());
    s.set_snapshot_reserve(1, 200, ReservePolicy::Offline)
        .unwrap();
    v.write(0, &pat(4, 0), false).unwrap();
}

#[test]
fn thick_volumes_reserve_their_space() {
    let t = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        capacity: Some(6 * 256 * 1024),
        ..opts()
    };
    let s = Store::open(t.path(), o).unwrap();
    s.create_volume(1, 1 << 20, BS as u32, true).unwrap();
    assert_eq!(s.space().in_use, 1 << 20);
    let v = s.volume(1).unwrap();
    assert!(!v.thin());
    assert!(v.lba_status(0).unwrap().mapped);
    assert_eq!(
        s.create_volume(2, 1 << 20, BS as u32, true)
            .unwrap_err()
            .kind,
        ErrorKind::NoSpace
    );
    v.write(3, &pat(3, 3), true).unwrap();
    s.resize(1, 1536 << 10).unwrap();
    assert_eq!(s.space().in_use, 6 << 18);
    assert_eq!(v.num_blocks(), 384);
    assert_eq!(read(&*v, 3), pat(3, 3));
    assert_eq!(s.resize(1, 1 << 20).unwrap_err().kind, ErrorKind::Conflict);
}

#[test]
fn clone_flatten_and_restore() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    s.create_volume(1, 4 << 20, BS as u32, false).unwrap();
    let v = s.volume(1).unwrap();
    v.write(0, &pat(1, 0), false).unwrap();
    v.write(100, &pat(1, 100), false).unwrap();
    s.snapshot(1, 10).unwrap();
    v.write(0, &pat(2, 0), false).unwrap();
    s.clone_volume(1, 10, 2).unwrap();
    let c = s.volume(2).unwrap();
    assert_eq!(read(&*c, 0), pat(1, 0));
    c.write(100, &pat(3, 100), false).unwrap();
    assert_eq!(read(&*v, 100), pat(1, 100));
    assert_eq!(
        s.delete_snapshot(1, 10).unwrap_err().kind,
        ErrorKind::Conflict
    );
    let mut seen = Vec::new();
    s.flatten(2, |d, t| seen.push((d, t))).unwrap();
    assert_eq!(seen.last(), Some(&(16, 16)));
    s.delete_snapshot(1, 10).unwrap();
    assert_eq!(read(&*c, 0), pat(1, 0));
    assert_eq!(read(&*c, 100), pat(3, 100));
    s.snapshot(1, 11).unwrap();
    v.write(0, &pat(5, 0), false).unwrap();
    s.restore(1, 11).unwrap();
    assert_eq!(read(&*v, 0), pat(2, 0));
    s.delete_volume(1).unwrap();
    assert_eq!(read(&*c, 0), pat(1, 0));
    assert!(v.read(0, &mut vec![0u8; BS]).is_err());
}

#[test]
fn newer_format_is_refused() {
    let t = tempfile::tempdir().unwrap();
    drop(Store::open(t.path(), opts()).unwrap());
    {
        let db = redb::Database::create(t.path().join("index.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            tx.open_table(def).unwrap().insert("format", 99).unwrap();
        }
        tx.commit().unwrap();
    }
    let e = Store::open(t.path(), opts()).err().unwrap();
    assert_eq!(e.kind, ErrorKind::FormatTooNew);
    assert!(e.to_string().contains("newer"), "{e}");
}

/// A fully written volume answers provisioning status as one mapped run (so an initiator
/// that caches the run stops asking), and what UNMAP or a restore empties reports as a
/// hole again even after a query saw it full.
#[test]
fn a_fully_written_volume_is_one_mapped_run_until_something_unmaps_it() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    let size = 64u64 << 20;
    s.create_volume(1, size, BS as u32, false).unwrap();
    let v = s.volume(1).unwrap();
    let blocks = size / BS as u64;
    let bpe = s.extent_size() / BS as u64;
    let half = vec![5u8; (size / 2) as usize];
    v.write(0, &half, false).unwrap();
    s.snapshot(1, 1).unwrap();
    v.write(blocks / 2, &half, false).unwrap();
    // The first answers read headers a few extents at a time; once every extent has been
    // seen, one answer covers the volume.
    let mut lba = 0;
    while lba < blocks {
        let st = v.lba_status(lba).unwrap();
        assert!(st.mapped, "lba {lba}");
        lba += st.blocks;
    }
    let st = v.lba_status(0).unwrap();
    assert!(st.mapped);
    assert_eq!(st.blocks, blocks, "one run from the start");
    let st = v.lba_status(3).unwrap();
    assert_eq!((st.mapped, st.blocks), (true, blocks - 3));
    // Unmap one whole extent in the middle: the run stops there, the hole shows.
    let x = blocks / bpe / 2 + 1;
    v.unmap(x * bpe, bpe).unwrap();
    let st = v.lba_status(0).unwrap();
    assert_eq!((st.mapped, st.blocks), (true, x * bpe));
    let st = v.lba_status(x * bpe).unwrap();
    assert_eq!((st.mapped, st.blocks), (false, bpe));
    // Restore to the half-written snapshot: the second half is holes again.
    v.write(x * bpe, &vec![6u8; (bpe * BS as u64) as usize], false)
        .unwrap();
    assert_eq!(v.lba_status(0).unwrap().blocks, blocks);
    s.checkpoint().unwrap();
    s.restore(1, 1).unwrap();
    let mut lba = 0;
    let mut mapped = 0;
    while lba < blocks {
        let st = v.lba_status(lba).unwrap();
        if st.mapped {
            mapped += st.blocks;
        }
        lba += st.blocks;
    }
    assert_eq!(mapped, blocks / 2, "after restore");
}
