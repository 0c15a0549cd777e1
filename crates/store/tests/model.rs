//! Model-based test: random operations, including simulated power loss and process kill,
//! against a simple in-memory model of what each block may contain.
//!
//! Per block the model keeps `now` (the content a read must return) and `durable` (the
//! contents a read may return after power loss: the last flushed one and every one
//! written since). After a crash every block must read one of its `durable` contents —
//! never garbage, never content it was not given — and then becomes exactly that.

use proptest::prelude::*;
use scsi::BlockDevice;
use std::sync::Arc;
use store::{ErrorKind, SimDisk, Store, StoreOptions};

const BS: usize = 512;
const BLOCKS: u64 = 64; // 4 extents of 16 blocks
const MAXV: usize = 4;

fn block(id: u64, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    if id == 0 {
        return b;
    }
    b[..8].copy_from_slice(&id.to_le_bytes());
    b[8..16].copy_from_slice(&lba.to_le_bytes());
    for (i, x) in b[16..].iter_mut().enumerate() {
        *x = (id.wrapping_mul(31).wrapping_add(i as u64 * 7)) as u8;
    }
    b
}

fn decode(b: &[u8], lba: u64) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let id = u64::from_le_bytes(b[..8].try_into().unwrap());
    if b != block(id, lba).as_slice() {
        return Err(format!("garbage at lba {lba}"));
    }
    Ok(id)
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        v: usize,
        lba: u64,
        n: u64,
        fua: bool,
    },
    Unmap {
        v: usize,
        lba: u64,
        n: u64,
    },
    Flush {
        v: usize,
    },
    SetWce {
        v: usize,
        on: bool,
    },
    Snapshot {
        v: usize,
    },
    DeleteSnap {
        v: usize,
        k: usize,
    },
    ReadSnap {
        v: usize,
        k: usize,
    },
    Clone {
        v: usize,
        k: usize,
    },
    Restore {
        v: usize,
        k: usize,
    },
    Flatten {
        v: usize,
    },
    DeleteVol {
        v: usize,
    },
    Read {
        v: usize,
        lba: u64,
        n: u64,
    },
    Checkpoint,
    PowerLoss {
        seed: u64,
    },
    /// Power fails `after` disk operations into a checkpoint or a flush.
    PowerLossDuring {
        seed: u64,
        after: u64,
        flush: bool,
    },
    Kill,
}

fn op() -> impl Strategy<Value = Op> {
    let v = 0..MAXV;
    prop_oneof![
        12 => (v.clone(), 0..BLOCKS, 1..9u64, any::<bool>()).prop_map(|(v, lba, n, f)| Op::Write { v, lba, n, fua: f && n % 4 == 0 }),
        2 => (v.clone(), 0..BLOCKS, 1..48u64).prop_map(|(v, lba, n)| Op::Unmap { v, lba, n }),
        3 => v.clone().prop_map(|v| Op::Flush { v }),
        1 => (v.clone(), any::<bool>()).prop_map(|(v, on)| Op::SetWce { v, on }),
        3 => v.clone().prop_map(|v| Op::Snapshot { v }),
        2 => (v.clone(), 0..8usize).prop_map(|(v, k)| Op::DeleteSnap { v, k }),
        2 => (v.clone(), 0..8usize).prop_map(|(v, k)| Op::ReadSnap { v, k }),
        1 => (v.clone(), 0..8usize).prop_map(|(v, k)| Op::Clone { v, k }),
        1 => (v.clone(), 0..8usize).prop_map(|(v, k)| Op::Restore { v, k }),
        1 => v.clone().prop_map(|v| Op::Flatten { v }),
        1 => v.clone().prop_map(|v| Op::DeleteVol { v }),
        4 => (v.clone(), 0..BLOCKS, 1..32u64).prop_map(|(v, lba, n)| Op::Read { v, lba, n }),
        2 => Just(Op::Checkpoint),
        3 => any::<u64>().prop_map(|seed| Op::PowerLoss { seed }),
        3 => (any::<u64>(), 0..40u64, any::<bool>()).prop_map(|(seed, after, flush)| Op::PowerLossDuring { seed, after, flush }),
        1 => Just(Op::Kill),
    ]
}

struct MVol {
    id: u64,
    now: Vec<u64>,
    durable: Vec<Vec<u64>>,
    snaps: Vec<(u64, Vec<u64>)>,
    parent: Option<(u64, u64)>,
    wce: bool,
}

impl MVol {
    fn new(id: u64, content: Vec<u64>, parent: Option<(u64, u64)>) -> Self {
        MVol {
            id,
            durable: content.iter().map(|c| vec![*c]).collect(),
            now: content,
            snaps: Vec::new(),
            parent,
            wce: true,
        }
    }
    fn put(&mut self, lba: u64, c: u64, durable: bool) {
        let i = lba as usize;
        self.now[i] = c;
        if durable {
            self.durable[i] = vec![c];
        } else if !self.durable[i].contains(&c) {
            self.durable[i].push(c);
        }
    }
}

fn opts() -> StoreOptions {
    StoreOptions {
        extent_size: 8192,
        checkpoint_interval: None,
        journal_limit: 1 << 40,
        index_cache: 1 << 20,
        ..StoreOptions::default()
    }
}

fn read_all(dev: &dyn BlockDevice) -> Result<Vec<u64>, String> {
    let n = dev.num_blocks();
    let mut buf = vec![0u8; n as usize * BS];
    dev.read(0, &mut buf).map_err(|e| format!("read: {e}"))?;
    (0..n)
        .map(|l| decode(&buf[l as usize * BS..(l as usize + 1) * BS], l))
        .collect()
}

fn run(ops: Vec<Op>) -> Result<(), String> {
    let disk = SimDisk::new();
    let open =
        |d: &SimDisk| Store::open_disk(Arc::new(d.clone()), opts()).map_err(|e| e.to_string());
    let mut store = open(&disk)?;
    let mut vols: Vec<MVol> = Vec::new();
    for id in 1..=2 {
        store
            .create_volume(id, BLOCKS * BS as u64, BS as u32, false)
            .map_err(|e| e.to_string())?;
        // Room for every snapshot: the reserve policy has its own test.
        store
            .set_snapshot_reserve(id, 100_000, store::ReservePolicy::DeleteOldest)
            .map_err(|e| e.to_string())?;
        vols.push(MVol::new(id, vec![0; BLOCKS as usize], None));
    }
    let mut next_id = 3u64;
    let mut next_content = 1u64;
    let mut next_snap = 100u64;
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = |s: String| format!("step {step} {op:?}: {s}");
        if vols.is_empty() {
            break;
        }
        match op.clone() {
            Op::Write { v, lba, n, fua } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                let n = n.min(BLOCKS - lba);
                let mut data = Vec::new();
                let mut ids = Vec::new();
                for l in lba..lba + n {
                    let c = next_content;
                    next_content += 1;
                    data.extend(block(c, l));
                    ids.push(c);
                }
                let dev = store.volume(mv.id).map_err(|e| ctx(e.to_string()))?;
                dev.write(lba, &data, fua).map_err(|e| ctx(e.to_string()))?;
                for (i, c) in ids.into_iter().enumerate() {
                    mv.put(lba + i as u64, c, fua || !mv.wce);
                }
            }
            Op::Unmap { v, lba, n } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                let n = n.min(BLOCKS - lba);
                let dev = store.volume(mv.id).map_err(|e| ctx(e.to_string()))?;
                dev.unmap(lba, n).map_err(|e| ctx(e.to_string()))?;
                for l in lba..lba + n {
                    let d = !mv.wce;
                    mv.put(l, 0, d);
                }
            }
            Op::Flush { v } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                store
                    .volume(mv.id)
                    .unwrap()
                    .flush()
                    .map_err(|e| ctx(e.to_string()))?;
                mv.durable = mv.now.iter().map(|c| vec![*c]).collect();
            }
            Op::SetWce { v, on } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                store
                    .volume(mv.id)
                    .unwrap()
                    .set_write_cache(on)
                    .map_err(|e| ctx(e.to_string()))?;
                if !on {
                    mv.durable = mv.now.iter().map(|c| vec![*c]).collect();
                }
                mv.wce = on;
            }
            Op::Snapshot { v } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                store
                    .snapshot(mv.id, next_snap)
                    .map_err(|e| ctx(e.to_string()))?;
                mv.snaps.push((next_snap, mv.now.clone()));
                next_snap += 1;
            }
            Op::DeleteSnap { v, k } => {
                let vi = v % vols.len();
                if vols[vi].snaps.is_empty() {
                    continue;
                }
                let k = k % vols[vi].snaps.len();
                let (sid, _) = vols[vi].snaps[k];
                let id = vols[vi].id;
                let has_clone = vols.iter().any(|m| m.parent == Some((id, sid)));
                match store.delete_snapshot(id, sid) {
                    Ok(()) if !has_clone => {
                        vols[vi].snaps.remove(k);
                    }
                    Err(e) if has_clone && e.kind == ErrorKind::Conflict => {}
                    r => return Err(ctx(format!("unexpected {r:?} (clone: {has_clone})"))),
                }
            }
            Op::ReadSnap { v, k } => {
                let mv = &vols[v % vols.len()];
                if mv.snaps.is_empty() {
                    continue;
                }
                let (sid, content) = &mv.snaps[k % mv.snaps.len()];
                let dev = store
                    .open_snapshot(mv.id, *sid)
                    .map_err(|e| ctx(e.to_string()))?;
                let got = read_all(&*dev).map_err(ctx)?;
                if &got != content {
                    return Err(ctx(format!(
                        "snapshot {sid} reads {got:?}, model {content:?}"
                    )));
                }
                if dev.write(0, &[0u8; BS], false).is_ok() {
                    return Err(ctx("snapshot accepted a write".into()));
                }
            }
            Op::Clone { v, k } => {
                let mv = &vols[v % vols.len()];
                if mv.snaps.is_empty() || vols.len() >= MAXV {
                    continue;
                }
                let (sid, content) = mv.snaps[k % mv.snaps.len()].clone();
                let pid = mv.id;
                store
                    .clone_volume(pid, sid, next_id)
                    .map_err(|e| ctx(e.to_string()))?;
                vols.push(MVol::new(next_id, content, Some((pid, sid))));
                next_id += 1;
            }
            Op::Restore { v, k } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                if mv.snaps.is_empty() {
                    continue;
                }
                let (sid, content) = mv.snaps[k % mv.snaps.len()].clone();
                store.restore(mv.id, sid).map_err(|e| ctx(e.to_string()))?;
                mv.durable = content.iter().map(|c| vec![*c]).collect();
                mv.now = content;
            }
            Op::Flatten { v } => {
                let nv = vols.len();
                let mv = &mut vols[v % nv];
                let mut last = (0, 0);
                store
                    .flatten(mv.id, |d, t| last = (d, t))
                    .map_err(|e| ctx(e.to_string()))?;
                if mv.parent.is_some() && last.0 != last.1 {
                    return Err(ctx(format!("flatten ended at {last:?}")));
                }
                mv.parent = None;
            }
            Op::DeleteVol { v } => {
                let vi = v % vols.len();
                let id = vols[vi].id;
                let has_clone = vols.iter().any(|m| m.parent.map(|p| p.0) == Some(id));
                match store.delete_volume(id) {
                    Ok(()) if !has_clone => {
                        vols.remove(vi);
                    }
                    Err(e) if has_clone && e.kind == ErrorKind::Conflict => {}
                    r => return Err(ctx(format!("unexpected {r:?}"))),
                }
            }
            Op::Read { v, lba, n } => {
                let mv = &vols[v % vols.len()];
                let n = n.min(BLOCKS - lba);
                let dev = store.volume(mv.id).unwrap();
                let mut buf = vec![0u8; n as usize * BS];
                dev.read(lba, &mut buf).map_err(|e| ctx(e.to_string()))?;
                for i in 0..n {
                    let l = lba + i;
                    let got =
                        decode(&buf[i as usize * BS..(i as usize + 1) * BS], l).map_err(&ctx)?;
                    if got != mv.now[l as usize] {
                        return Err(ctx(format!(
                            "lba {l} reads {got}, model {}",
                            mv.now[l as usize]
                        )));
                    }
                    if got != 0 && !dev.lba_status(l).map_err(|e| ctx(e.to_string()))?.mapped {
                        return Err(ctx(format!("lba {l} holds data but reports unmapped")));
                    }
                }
            }
            Op::Checkpoint => store.checkpoint().map_err(|e| ctx(e.to_string()))?,
            Op::PowerLoss { seed } => {
                disk.power_loss(seed);
                drop(store);
                store = open(&disk).map_err(&ctx)?;
                check_after_crash(&store, &mut vols, true).map_err(ctx)?;
            }
            Op::PowerLossDuring { seed, after, flush } => {
                disk.arm_power_loss(after, seed);
                let r = if flush {
                    store.flush().map_err(|e| e.to_string())
                } else {
                    store.checkpoint().map_err(|e| e.to_string())
                };
                if disk.disarm() {
                    drop(store);
                    store = open(&disk).map_err(&ctx)?;
                    check_after_crash(&store, &mut vols, true).map_err(ctx)?;
                } else {
                    r.map_err(&ctx)?;
                    if flush {
                        for mv in vols.iter_mut() {
                            mv.durable = mv.now.iter().map(|c| vec![*c]).collect();
                        }
                    }
                }
            }
            Op::Kill => {
                drop(store);
                store = open(&disk).map_err(&ctx)?;
                check_after_crash(&store, &mut vols, false).map_err(ctx)?;
            }
        }
    }
    // Final: everything reads as the model says.
    check_after_crash(&store, &mut vols, false)
}

fn check_after_crash(store: &Store, vols: &mut [MVol], power: bool) -> Result<(), String> {
    let mut ids: Vec<u64> = vols.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    if store.volumes() != ids {
        return Err(format!("volumes {:?}, model {ids:?}", store.volumes()));
    }
    for mv in vols.iter_mut() {
        let dev = store.volume(mv.id).map_err(|e| e.to_string())?;
        let got = read_all(&*dev)?;
        for (l, g) in got.iter().enumerate() {
            let ok = if power {
                mv.durable[l].contains(g)
            } else {
                *g == mv.now[l]
            };
            if !ok {
                return Err(format!(
                    "vol {} lba {l} reads {g}; allowed {:?} (now {})",
                    mv.id, mv.durable[l], mv.now[l]
                ));
            }
        }
        mv.now = got.clone();
        mv.durable = got.iter().map(|c| vec![*c]).collect();
        mv.wce = true;
        let snaps: Vec<u64> = mv.snaps.iter().map(|s| s.0).collect();
        if store.snapshots(mv.id).map_err(|e| e.to_string())? != snaps {
            return Err(format!("vol {} snapshots differ", mv.id));
        }
        for (sid, content) in &mv.snaps {
            let d = store
                .open_snapshot(mv.id, *sid)
                .map_err(|e| e.to_string())?;
            if &read_all(&*d)? != content {
                return Err(format!("vol {} snapshot {sid} differs after crash", mv.id));
            }
        }
    }
    Ok(())
}

/// Found by the model: flattening a clone must keep what its older snapshots saw of the
/// parent beneath extents written later.
#[test]
fn regression_flatten_keeps_clone_snapshot_view() {
    let ops = vec![
        Op::DeleteVol { v: 0 },
        Op::Write {
            v: 0,
            lba: 9,
            n: 8,
            fua: false,
        },
        Op::Snapshot { v: 0 },
        Op::Clone { v: 0, k: 0 },
        Op::Snapshot { v: 1 },
        Op::Write {
            v: 1,
            lba: 0,
            n: 1,
            fua: false,
        },
        Op::Checkpoint,
        Op::Flatten { v: 1 },
        Op::Kill,
    ];
    run(ops).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96), max_shrink_iters: 2000, ..ProptestConfig::default() })]
    #[test]
    fn store_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        if let Err(e) = run(ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
