//! Store micro-benchmark: 4 KiB random writes and reads at QD1 and QD32 (32 threads),
//! without and with a snapshot present, and snapshot creation time against data held.
//!
//! `cargo run --release -p store --example store_bench [dir]`
//! Env: STORE_BENCH_SECS (per test, default 3), STORE_BENCH_GIB (volume size, default 1).

use rand::prelude::*;
use scsi::BlockDevice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Store, StoreOptions, Volume};

const BS: usize = 4096;

fn run(v: &Arc<Volume>, threads: usize, write: bool, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let blocks = v.num_blocks();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (v, stop, ops) = (v.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(t as u64 * 7919 + write as u64);
                let mut buf = vec![t as u8; BS];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let l = rng.gen_range(0..blocks);
                    if write {
                        buf[0] = n as u8;
                        v.write(l, &buf, false).unwrap();
                    } else {
                        v.read(l, &mut buf).unwrap();
                    }
                    n += 1;
                }
                ops.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    ops.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn suite(s: &Store, v: &Arc<Volume>, label: &str, secs: f64) {
    for (qd, th) in [("QD1", 1), ("QD32", 32)] {
        let w = run(v, th, true, secs);
        s.flush().unwrap();
        let r = run(v, th, false, secs);
        println!("{label:<18} {qd:<5} randwrite {w:>10.0} IOPS   randread {r:>10.0} IOPS");
    }
}

fn main() {
    let secs: f64 = std::env::var("STORE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let gib: u64 = std::env::var("STORE_BENCH_GIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    println!("store in {}", dir.path().display());
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let size = gib << 30;
    s.create_volume(1, size, BS as u32, false).unwrap();
    let v = s.volume(1).unwrap();
    // Snapshot of an empty volume.
    let t = Instant::now();
    s.snapshot(1, 900).unwrap();
    let empty_snap = t.elapsed();
    s.delete_snapshot(1, 900).unwrap();
    // Fill the volume so reads hit data.
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for off in (0..size).step_by(1 << 20) {
        v.write(off / BS as u64, &chunk, false).unwrap();
    }
    s.flush().unwrap();
    s.checkpoint().unwrap();
    println!(
        "fill {} GiB sequential 1 MiB: {:.0} MiB/s",
        gib,
        size as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
    );
    suite(&s, &v, "no snapshot", secs);
    s.checkpoint().unwrap();
    let t = Instant::now();
    s.snapshot(1, 1).unwrap();
    let full_snap = t.elapsed();
    suite(&s, &v, "with snapshot", secs);
    println!(
        "snapshot creation: empty volume {:.2} ms, {} GiB written {:.2} ms",
        empty_snap.as_secs_f64() * 1e3,
        gib,
        full_snap.as_secs_f64() * 1e3
    );
    let sp = s.space();
    println!(
        "space: in use {} MiB, snapshot {} MiB, checkpoints {}",
        sp.in_use >> 20,
        sp.snapshot_in_use >> 20,
        s.checkpoints()
    );
}
