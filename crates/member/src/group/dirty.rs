//! What changed while a copy was away, so a returning member resyncs only that.
//!
//! Every member that holds an in-sync copy of a placement group records the chunks written
//! to it (as primary or as replica), with the epoch of the write:
//!
//! ```text
//!  write/unmap applied here ──► recent[(volume, chunk)] = (now, epoch)
//!                          └──► absent[M].chunks[(volume, chunk)] for every copy M away
//!  new state: M left the in-sync set, this member in sync before and after (one step)
//!      ──► absent[M] = the chunks of `recent` written in the last RECENT_WINDOW
//!  fill of M by the primary: copy only absent[M] (if its copy id is still the one it left
//!      with), else every chunk
//! ```
//!
//! Seeding from `recent` covers writes M may have missed just before the group noticed it
//! was gone (they were retried, or abandoned unacknowledged, within the window); a primary
//! also keeps the chunks whose write to M failed, and adds them. Records
//! are kept only while this member stays in sync: a copy that was away itself cannot know
//! what it missed. A fill compares the records of writes made under epochs before it began
//! (those were not sent to M live) with what it copied, so a record that arrived late sends
//! it round again.

use control::{ClusterState, CHUNK_BYTES, PG_COUNT};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back a copy that just left is assumed to have missed writes: a write it missed
/// was tried after it stopped answering, and the group marks it down within seconds.
const RECENT_WINDOW: Duration = Duration::from_secs(15);

/// (volume id, chunk index within the volume).
pub type ChunkId = (u64, u64);

/// One chunk's last write: when, and under which epoch.
#[derive(Debug, Clone, Copy)]
struct Written {
    at: Instant,
    epoch: u64,
}

#[derive(Debug, Default)]
struct PgRecords {
    recent: HashMap<ChunkId, Written>,
    /// Prune `recent` when it grows past this (amortized).
    prune_at: usize,
    absent: HashMap<u64, Absent>,
    /// Chunks whose write to an in-sync copy failed (the write was retried or abandoned),
    /// by copy: they join that copy's records when it leaves the in-sync set.
    unconfirmed: HashMap<u64, HashMap<ChunkId, u64>>,
    /// Chunks this member changed as primary that some in-sync copy never confirmed: if
    /// it was cut off, its copy may hold writes nobody acknowledged, and its own fill must
    /// overwrite them (it tells the filling primary, `DirtyQuery`). Kept until this member
    /// is filled back in sync.
    own_unconfirmed: HashSet<ChunkId>,
}

/// The chunks a copy missed since it left the in-sync set.
#[derive(Debug)]
struct Absent {
    /// The copy id the member had when it left: a fill trusts the records only while the
    /// member still has it.
    copy_id: String,
    /// Chunk → the newest epoch it was written under.
    chunks: HashMap<ChunkId, u64>,
}

/// Dirty-region records of every placement group this member holds in sync.
pub struct DirtyRecords {
    node: u64,
    /// Indexed by placement group; keyed inside by replica class.
    pgs: Vec<Mutex<HashMap<u8, PgRecords>>>,
}

/// What a fill of one copy must move.
#[derive(Debug, Clone)]
pub struct Resync {
    pub chunks: HashSet<ChunkId>,
}

impl Resync {
    /// Add the chunks the target reports it changed alone.
    pub fn add_regions(&mut self, regions: &[peer::Region]) {
        for r in regions {
            let first = r.offset / CHUNK_BYTES;
            let last = (r.offset + r.len.max(1) - 1) / CHUNK_BYTES;
            self.chunks.extend((first..=last).map(|c| (r.volume, c)));
        }
    }
}

impl DirtyRecords {
    pub fn new(node: u64) -> Self {
        DirtyRecords {
            node,
            pgs: (0..PG_COUNT).map(|_| Mutex::default()).collect(),
        }
    }

    fn slot(&self, pg: u32) -> &Mutex<HashMap<u8, PgRecords>> {
        &self.pgs[pg as usize % self.pgs.len()]
    }

    /// Bytes `[offset, offset + len)` of `volume` (class `replicas`, group `pg`) were
    /// written or unmapped here under `epoch`. Called before the change is applied.
    pub fn record(&self, replicas: u8, pg: u32, volume: u64, offset: u64, len: u64, epoch: u64) {
        if fault_injected() {
            return;
        }
        let first = offset / CHUNK_BYTES;
        let last = (offset + len.max(1) - 1) / CHUNK_BYTES;
        let now = Instant::now();
        let mut slot = self.slot(pg).lock().unwrap();
        let records = slot.entry(replicas).or_default();
        for chunk in first..=last {
            let id = (volume, chunk);
            records.recent.insert(id, Written { at: now, epoch });
            for absent in records.absent.values_mut() {
                let e = absent.chunks.entry(id).or_insert(epoch);
                *e = (*e).max(epoch);
            }
        }
        if records.recent.len() > records.prune_at {
            records
                .recent
                .retain(|_, w| now.duration_since(w.at) <= RECENT_WINDOW);
            records.prune_at = (records.recent.len() * 2).max(1024);
        }
    }

    /// The write of bytes `[offset, offset + len)` under `epoch` did not reach `node`'s copy.
    #[allow(clippy::too_many_arguments)]
    pub fn unconfirmed(
        &self,
        replicas: u8,
        pg: u32,
        node: u64,
        volume: u64,
        offset: u64,
        len: u64,
        epoch: u64,
    ) {
        let first = offset / CHUNK_BYTES;
        let last = (offset + len.max(1) - 1) / CHUNK_BYTES;
        let mut slot = self.slot(pg).lock().unwrap();
        let records = slot.entry(replicas).or_default();
        let set = records.unconfirmed.entry(node).or_default();
        for chunk in first..=last {
            let e = set.entry((volume, chunk)).or_insert(epoch);
            *e = (*e).max(epoch);
            records.own_unconfirmed.insert((volume, chunk));
        }
    }

    /// The chunks of group `pg` (every replica class) this member changed and never got
    /// confirmed by its copies.
    pub fn own_unconfirmed(&self, pg: u32) -> Vec<ChunkId> {
        let slot = self.slot(pg).lock().unwrap();
        slot.values()
            .flat_map(|r| r.own_unconfirmed.iter().copied())
            .collect()
    }

    /// Follow the change from `prev` to `now` (any number of epochs apart: states arrive
    /// coalesced), which this member received at `seen_at`: start records for copies that
    /// left the in-sync set while this member stayed in it, drop those that came back or
    /// can no longer be trusted.
    pub fn observe(&self, prev: Option<&ClusterState>, now: &ClusterState, seen_at: Instant) {
        let me = self.node;
        // Writes a departed copy may have missed were made shortly before the group noticed,
        // which was before this state arrived.
        let cutoff = seen_at.min(Instant::now()).checked_sub(RECENT_WINDOW);
        for (&replicas, table) in &now.layout.tables {
            let before = prev.and_then(|p| p.table(replicas).map(|t| (p, t)));
            for pg in 0..table.map.pg_count {
                let mut slot = self.slot(pg).lock().unwrap();
                let records = slot.entry(replicas).or_default();
                if !table.is_in_sync(pg, me) {
                    records.absent.clear();
                    records.unconfirmed.clear();
                    continue;
                }
                // Filled back in sync: the fill overwrote what it changed alone.
                let filled = prev
                    .and_then(|p| p.table(replicas))
                    .is_some_and(|t| !t.is_in_sync(pg, me));
                if filled {
                    records.own_unconfirmed.clear();
                }
                // Only a member in sync throughout saw every write the absent copies missed.
                let Some((prev_state, old)) = before.filter(|(p, t)| {
                    t.is_in_sync(pg, me) && table.in_sync_since(pg, me, p.layout.epoch)
                }) else {
                    records.absent.clear();
                    continue;
                };
                let away: Vec<u64> = table
                    .planned(pg)
                    .filter(|m| *m != me && !table.is_in_sync(pg, *m))
                    .collect();
                records.absent.retain(|m, _| away.contains(m));
                for m in away {
                    if records.absent.contains_key(&m) || !old.is_in_sync(pg, m) {
                        continue;
                    }
                    let Some(copy_id) = prev_state.member_by_node(m).map(|x| x.copy_id.clone())
                    else {
                        continue;
                    };
                    let mut chunks: HashMap<ChunkId, u64> = records
                        .recent
                        .iter()
                        .filter(|(_, w)| cutoff.is_none_or(|c| w.at >= c))
                        .map(|(id, w)| (*id, w.epoch))
                        .collect();
                    for (id, e) in records.unconfirmed.remove(&m).unwrap_or_default() {
                        let at = chunks.entry(id).or_insert(e);
                        *at = (*at).max(e);
                    }
                    records.absent.insert(m, Absent { copy_id, chunks });
                }
            }
        }
    }

    /// What a fill of `target`'s copy of `pg` must move, when this member recorded it since
    /// the copy left and the copy is still the one that left (`copy_id`); `None`: all of it.
    pub fn resync(&self, replicas: u8, pg: u32, target: u64, copy_id: &str) -> Option<Resync> {
        let slot = self.slot(pg).lock().unwrap();
        let absent = slot.get(&replicas)?.absent.get(&target)?;
        (!copy_id.is_empty() && absent.copy_id == copy_id).then(|| Resync {
            chunks: absent.chunks.keys().copied().collect(),
        })
    }

    /// Chunks recorded for `target` under an epoch before `epoch` that `copied` lacks: a
    /// fill that began at `epoch` must go round again for them.
    pub fn late(&self, replicas: u8, pg: u32, target: u64, epoch: u64, copied: &Resync) -> usize {
        let slot = self.slot(pg).lock().unwrap();
        slot.get(&replicas)
            .and_then(|r| r.absent.get(&target))
            .map_or(0, |a| {
                a.chunks
                    .iter()
                    .filter(|(id, e)| **e < epoch && !copied.chunks.contains(id))
                    .count()
            })
    }

    /// Copies being tracked and the chunks they await, over every group.
    pub fn pending(&self) -> (usize, usize) {
        let mut copies = 0;
        let mut chunks = 0;
        for slot in &self.pgs {
            for records in slot.lock().unwrap().values() {
                copies += records.absent.len();
                chunks += records
                    .absent
                    .values()
                    .map(|a| a.chunks.len())
                    .sum::<usize>();
            }
        }
        (copies, chunks)
    }
}

/// `HAVEN_FAULT_NO_DIRTY_RECORDS=1` makes members record no writes: a returning copy then
/// gets nothing and serves stale data, the fault the group tests must catch.
fn fault_injected() -> bool {
    static FAULT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAULT.get_or_init(|| std::env::var_os("HAVEN_FAULT_NO_DIRTY_RECORDS").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::{Command, Member};

    fn member(n: u64) -> Member {
        Member {
            name: format!("member-{n}"),
            node_id: n,
            api_addr: String::new(),
            portal: String::new(),
            capacity: 8 << 30,
            peer: String::new(),
            down: false,
            out: false,
            removing: false,
            copy_id: format!("store-{n}"),
        }
    }

    fn group() -> ClusterState {
        let mut s = ClusterState::default();
        for n in 1..=3 {
            s.apply(Command::RegisterMember(member(n)));
        }
        s.apply(Command::CreateVolume {
            name: "v".into(),
            size: 1 << 30,
            block_size: 512,
            replicas: 2,
            thick: false,
            allow: vec![],
            chap: None,
            created: 0,
        });
        s
    }

    /// A group of class 2 where `a` and `b` are the planned copies.
    fn shared_pg(s: &ClusterState, a: u64, b: u64) -> u32 {
        let t = s.table(2).unwrap();
        (0..t.map.pg_count)
            .find(|&pg| {
                let p: Vec<u64> = t.planned(pg).collect();
                p.contains(&a) && p.contains(&b)
            })
            .unwrap()
    }

    #[test]
    fn a_copy_that_left_gets_the_recent_and_later_writes_only() {
        let s0 = group();
        let pg = shared_pg(&s0, 1, 3);
        let records = DirtyRecords::new(1);
        records.observe(None, &s0, Instant::now());
        records.record(2, pg, 1, 5 * CHUNK_BYTES, 4096, s0.layout.epoch);

        let mut s1 = s0.clone();
        s1.apply(Command::MemberDown {
            name: "member-3".into(),
        });
        records.observe(Some(&s0), &s1, Instant::now());
        records.record(2, pg, 1, 9 * CHUNK_BYTES - 512, 1024, s1.layout.epoch);

        let resync = records.resync(2, pg, 3, "store-3").expect("tracked");
        let mut chunks: Vec<_> = resync.chunks.into_iter().collect();
        chunks.sort_unstable();
        assert_eq!(chunks, vec![(1, 5), (1, 8), (1, 9)]);
        assert!(
            records.resync(2, pg, 3, "wiped").is_none(),
            "new copy id: full fill"
        );

        let mut s2 = s1.clone();
        s2.apply(Command::MemberUp {
            name: "member-3".into(),
            restarted: true,
        });
        records.observe(Some(&s1), &s2, Instant::now());
        assert!(
            records.resync(2, pg, 3, "store-3").is_some(),
            "kept while away"
        );
        let t = s2.table(2).unwrap();
        let mut s3 = s2.clone();
        s3.apply(Command::PgInSync {
            replicas: 2,
            pg,
            node: 3,
            pg_epoch: t.pg_epoch(pg),
        });
        records.observe(Some(&s2), &s3, Instant::now());
        assert!(
            records.resync(2, pg, 3, "store-3").is_none(),
            "in sync again"
        );
    }

    #[test]
    fn a_departure_seen_among_other_changes_is_still_tracked() {
        let s0 = group();
        let pg = shared_pg(&s0, 1, 3);
        let records = DirtyRecords::new(1);
        records.observe(None, &s0, Instant::now());
        records.record(2, pg, 1, 5 * CHUNK_BYTES, 4096, s0.layout.epoch);
        // Several epochs arrive as one state: another group filled, then member-3 down.
        let mut s1 = s0.clone();
        let other = (0..PG_COUNT).find(|&p| p != pg).unwrap();
        s1.apply(Command::MemberDown {
            name: "member-2".into(),
        });
        s1.apply(Command::MemberUp {
            name: "member-2".into(),
            restarted: true,
        });
        let t = s1.table(2).unwrap().clone();
        for m in t.backfills(other) {
            s1.apply(Command::PgInSync {
                replicas: 2,
                pg: other,
                node: m,
                pg_epoch: t.pg_epoch(other),
            });
        }
        s1.apply(Command::MemberDown {
            name: "member-3".into(),
        });
        assert!(s1.layout.epoch > s0.layout.epoch + 2, "several steps");
        records.observe(Some(&s0), &s1, Instant::now());
        let resync = records.resync(2, pg, 3, "store-3").expect("tracked");
        assert!(resync.chunks.contains(&(1, 5)));
    }

    #[test]
    fn a_member_that_missed_a_step_keeps_no_records() {
        let s0 = group();
        let pg = shared_pg(&s0, 1, 3);
        let records = DirtyRecords::new(1);
        records.observe(None, &s0, Instant::now());
        // This member was away (down, back, filled again from member-3), then member-3
        // left: all seen as one state, this member cannot know what member-3 missed while
        // it was away itself.
        let mut s1 = s0.clone();
        s1.apply(Command::MemberDown {
            name: "member-1".into(),
        });
        s1.apply(Command::MemberUp {
            name: "member-1".into(),
            restarted: false,
        });
        let t = s1.table(2).unwrap().clone();
        assert!(t.backfills(pg).contains(&1));
        s1.apply(Command::PgInSync {
            replicas: 2,
            pg,
            node: 1,
            pg_epoch: t.pg_epoch(pg),
        });
        s1.apply(Command::MemberDown {
            name: "member-3".into(),
        });
        assert!(s1.table(2).unwrap().is_in_sync(pg, 1));
        records.observe(Some(&s0), &s1, Instant::now());
        assert!(records.resync(2, pg, 3, "store-3").is_none());
    }

    #[test]
    fn late_records_of_earlier_epochs_send_a_fill_round_again() {
        let s0 = group();
        let pg = shared_pg(&s0, 1, 3);
        let records = DirtyRecords::new(1);
        records.observe(None, &s0, Instant::now());
        let mut s1 = s0.clone();
        s1.apply(Command::MemberDown {
            name: "member-3".into(),
        });
        records.observe(Some(&s0), &s1, Instant::now());
        let e = s1.layout.epoch;
        records.record(2, pg, 1, 0, 512, e);
        let copied = records.resync(2, pg, 3, "store-3").unwrap();
        records.record(2, pg, 1, CHUNK_BYTES, 512, e + 5);
        assert_eq!(records.late(2, pg, 3, e + 1, &copied), 0, "sent live");
        records.record(2, pg, 1, 2 * CHUNK_BYTES, 512, e);
        assert_eq!(records.late(2, pg, 3, e + 1, &copied), 1);
    }

    #[test]
    fn what_a_cut_off_primary_changed_alone_stays_until_it_is_filled() {
        let s0 = group();
        let pg = shared_pg(&s0, 1, 3);
        let records = DirtyRecords::new(3);
        records.observe(None, &s0, Instant::now());
        records.unconfirmed(2, pg, 1, 7, 3 * CHUNK_BYTES, 4096, s0.layout.epoch);
        assert_eq!(records.own_unconfirmed(pg), vec![(7, 3)]);

        // The group drops this member; it is still what it changed alone.
        let mut s1 = s0.clone();
        s1.apply(Command::MemberDown {
            name: "member-3".into(),
        });
        s1.apply(Command::MemberUp {
            name: "member-3".into(),
            restarted: true,
        });
        records.observe(Some(&s0), &s1, Instant::now());
        assert_eq!(records.own_unconfirmed(pg), vec![(7, 3)]);

        // Filled back in sync: the fill overwrote it.
        let mut s2 = s1.clone();
        let pg_epoch = s1.table(2).unwrap().pg_epoch(pg);
        s2.apply(Command::PgInSync {
            replicas: 2,
            pg,
            node: 3,
            pg_epoch,
        });
        records.observe(Some(&s1), &s2, Instant::now());
        assert!(records.own_unconfirmed(pg).is_empty());
    }
}
