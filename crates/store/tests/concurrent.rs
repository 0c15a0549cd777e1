//! Many threads doing I/O while the background checkpointer, snapshots and unmaps run:
//! every read must return the thread's own last write.

use rand::prelude::*;
use scsi::BlockDevice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{ReservePolicy, Store, StoreOptions};

#[test]
fn concurrent_io_with_background_checkpoints() {
    let t = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        checkpoint_interval: Some(Duration::from_millis(2)),
        journal_limit: 256 << 10,
        extent_size: 16384,
        index_cache: 4 << 20,
        ..StoreOptions::default()
    };
    let s = Arc::new(Store::open(t.path(), o).unwrap());
    s.create_volume(1, 8 << 20, 512, false).unwrap();
    s.set_snapshot_reserve(1, 100_000, ReservePolicy::DeleteOldest)
        .unwrap();
    let v = s.volume(1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let per = v.num_blocks() / 8;
    let workers: Vec<_> = (0..8u64)
        .map(|th| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(th);
                let mut model = vec![0u64; per as usize];
                for i in 1..3000u64 {
                    let off = rng.gen_range(0..per - 8);
                    let n = rng.gen_range(1..8u64);
                    if rng.gen_bool(0.6) {
                        let mut d = vec![0u8; n as usize * 512];
                        for k in 0..n {
                            let tag = i * 16 + k;
                            d[k as usize * 512..][..8].copy_from_slice(&tag.to_le_bytes());
                            model[(off + k) as usize] = tag;
                        }
                        v.write(th * per + off, &d, rng.gen_bool(0.05)).unwrap();
                    } else if rng.gen_bool(0.05) {
                        v.unmap(th * per + off, n).unwrap();
                        for k in 0..n {
                            model[(off + k) as usize] = 0;
                        }
                    } else {
                        let mut d = vec![0u8; n as usize * 512];
                        v.read(th * per + off, &mut d).unwrap();
                        for k in 0..n {
                            let got =
                                u64::from_le_bytes(d[k as usize * 512..][..8].try_into().unwrap());
                            assert_eq!(
                                got,
                                model[(off + k) as usize],
                                "thread {th} lba {}",
                                off + k
                            );
                        }
                    }
                }
            })
        })
        .collect();
    let snapper = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                s.snapshot(1, n).unwrap();
                if n >= 3 {
                    s.delete_snapshot(1, n - 3).unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    snapper.join().unwrap();
    assert!(s.checkpoints() > 0);
    assert_eq!(s.medium_errors(), 0);
    assert!(s.scrub(1).unwrap().bad.is_empty());
}
