//! Kill -9 the member under a writer, again and again: after each restart every flushed
//! block reads back exactly, and nothing reads back that was never written.
//!
//! CI runs 20 cycles; the long form runs 200:
//! `HAVEN_CRASH_CYCLES=200 cargo nextest run -E 'test(killed_member)' --no-capture`.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::initiator::{Initiator, IoError};
use support::*;

const UNIT: usize = 4096; // one write = 8 blocks of 512 B
const UNITS: u64 = 2048; // 8 MiB of the volume is written
const BLOCK: usize = 512;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What may be on disk for one unit: the content as of the last acknowledged flush, and
/// every write sent after it (acknowledged or not: the kill may land mid-write).
#[derive(Default, Clone)]
struct Unit {
    durable: Option<Vec<u8>>,
    since: Vec<Vec<u8>>,
}

fn content(rng: &mut Rng, cycle: u32, seq: u32, unit: u64) -> Vec<u8> {
    let mut v = vec![0u8; UNIT];
    for (i, chunk) in v.chunks_mut(8).enumerate() {
        let word = if i % 64 == 0 {
            ((cycle as u64) << 40) | ((seq as u64) << 16) | unit
        } else {
            rng.next()
        };
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    v
}

fn connect(lab: &Lab) -> Initiator {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Initiator::connect(
            &lab.portal,
            "iqn.2026-11.org.haven:crash",
            "iqn.2000-01.org.test:crash",
        ) {
            Ok(mut i) => {
                i.settle();
                return i;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("cannot reconnect: {e:?}"),
        }
    }
}

#[test]
fn killed_member_keeps_every_flushed_write() {
    let cycles: u32 = std::env::var("HAVEN_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let lab = Lab::up();
    lab.ok(&["volume", "create", "crash", "--size", "32MiB"]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let mut units: HashMap<u64, Unit> = HashMap::new();
    let mut total_writes = 0u64;
    let mut total_flushes = 0u64;
    for cycle in 0..cycles {
        let mut ini = connect(&lab);
        // Kill at a random moment while the writer runs.
        let kill_after = Duration::from_millis(50 + rng.below(400));
        let dir = lab.dir_str().to_string();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            haven(&["lab", "kill", "member-1", "--data", &dir], &[])
        });
        let mut seq = 0u32;
        let mut next_flush = 1 + rng.below(16);
        loop {
            seq += 1;
            if (seq as u64).is_multiple_of(next_flush) {
                match ini.flush() {
                    Ok(()) => {
                        total_flushes += 1;
                        for u in units.values_mut() {
                            if let Some(last) = u.since.pop() {
                                u.durable = Some(last);
                            }
                            u.since.clear();
                        }
                        next_flush = 1 + rng.below(16);
                    }
                    Err(IoError::Disconnected(_)) => break,
                    Err(e) => panic!("flush failed: {e:?}"),
                }
                continue;
            }
            let unit = rng.below(UNITS);
            let data = content(&mut rng, cycle, seq, unit);
            units.entry(unit).or_default().since.push(data.clone());
            match ini.write(unit * (UNIT / BLOCK) as u64, &data, false) {
                Ok(()) => total_writes += 1,
                Err(IoError::Disconnected(_)) => break,
                Err(e) => panic!("write failed: {e:?}"),
            }
        }
        let killed = killer.join().unwrap();
        assert!(
            killed.status.success(),
            "lab kill failed: {}",
            stderr(&killed)
        );
        let o = haven(&["lab", "start", "member-1", "--data", lab.dir_str()], &[]);
        assert!(o.status.success(), "restart failed: {}", stderr(&o));

        // Every unit reads back, block by block, as its flushed content or a later write.
        let mut ini = connect(&lab);
        for (&unit, u) in &units {
            let got = match ini.read(unit * (UNIT / BLOCK) as u64, (UNIT / BLOCK) as u32) {
                Ok(d) => d,
                Err(e) => panic!("cycle {cycle}: read of unit {unit} failed: {e:?}"),
            };
            let zero = vec![0u8; UNIT];
            let flushed = u.durable.as_ref().unwrap_or(&zero);
            for b in 0..UNIT / BLOCK {
                let r = b * BLOCK..(b + 1) * BLOCK;
                let ok = got[r.clone()] == flushed[r.clone()]
                    || u.since.iter().any(|s| got[r.clone()] == s[r.clone()]);
                assert!(ok, "cycle {cycle}: unit {unit} block {b} holds data that was never written there, or lost a flushed write");
            }
            // Narrow the model to what is actually there now: it is durable once flushed.
        }
        ini.flush().unwrap();
        for (&unit, u) in units.iter_mut() {
            let got = ini
                .read(unit * (UNIT / BLOCK) as u64, (UNIT / BLOCK) as u32)
                .unwrap();
            u.durable = Some(got);
            u.since.clear();
        }
        // Blocks never written read as zeroes.
        for _ in 0..16 {
            let unit = UNITS + rng.below(UNITS);
            let got = ini.read(unit * (UNIT / BLOCK) as u64, 8).unwrap();
            assert!(
                got.iter().all(|&b| b == 0),
                "unwritten unit {unit} is not zero"
            );
        }
    }
    println!("crash: {cycles} kill -9 cycles, {total_writes} writes, {total_flushes} flushes, {} units checked each cycle", units.len());
}
