//! The store's data path, single-threaded: a 4 KiB read of checkpointed blocks, a 4 KiB
//! read of journaled blocks (the overlay), and a 4 KiB write (a journal append).
//!
//! `cargo bench -p microbench --bench store` (files in /dev/shm when it exists, so the disk is
//! out of the picture, as in haven-bench).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scsi::BlockDevice;
use std::hint::black_box;
use std::time::Duration;
use store::{Store, StoreOptions};

const BLOCKS: u64 = (64 << 20) / 512;

fn dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

fn open(dir: &std::path::Path, opts: StoreOptions) -> Store {
    let s = Store::open(dir, opts).unwrap();
    s.create_volume(1, BLOCKS * 512, 512, false).unwrap();
    s
}

/// The 4 KiB requests walk the volume, as a sequential benchmark would.
fn lba(i: &mut u64) -> u64 {
    *i = (*i + 8) % BLOCKS;
    *i
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(4096));
    let data = vec![0x42u8; 4096];
    let mut buf = vec![0u8; 4096];
    let mut i = 0;
    {
        // Reads: no background checkpointer, so the first figure reads the overlay.
        let d = dir();
        let opts = StoreOptions {
            checkpoint_interval: None,
            ..StoreOptions::default()
        };
        let s = open(d.path(), opts);
        let v = s.volume(1).unwrap();
        for l in (0..BLOCKS).step_by(8) {
            v.write(l, &data, false).unwrap();
        }
        g.bench_function("read_4k_journaled", |b| {
            b.iter(|| v.read(black_box(lba(&mut i)), &mut buf).unwrap())
        });
        s.checkpoint().unwrap();
        g.bench_function("read_4k_checkpointed", |b| {
            b.iter(|| v.read(black_box(lba(&mut i)), &mut buf).unwrap())
        });
    }
    {
        // Writes: the member's options (the checkpointer keeps the journal bounded).
        let d = dir();
        let s = open(d.path(), StoreOptions::default());
        let v = s.volume(1).unwrap();
        g.bench_function("write_4k", |b| {
            b.iter(|| v.write(black_box(lba(&mut i)), &data, false).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
