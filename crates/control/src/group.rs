//! The group's data layout: which members hold each placement group, which of those copies
//! are complete ("in sync"), and the epoch every data-path decision is made under.
//!
//! A volume's bytes are cut into 4 MiB chunks, each hashed to one of [`PG_COUNT`] placement
//! groups (`placement::Striping`). Volumes with the same replica count share one
//! [`PgTable`]: the placement map for that count plus, per placement group, the in-sync set.
//!
//! Rules this module keeps (every one is decided in `apply`, so every member agrees):
//! - Only a committed command changes an in-sync set. A primary that loses a replica waits
//!   for the epoch that drops it; it never drops it on its own, so a primary cut off from
//!   the group cannot acknowledge writes alone.
//! - A member that went down, or restarted (its unsynced journal tail may be gone), leaves
//!   every in-sync set, except where it is the last complete copy: that copy stays, and the
//!   placement group waits for it.
//! - A member the map adds to a group joins its in-sync set only through [`PgInSync`],
//!   proposed by the primary after it copied the group over, under an unchanged
//!   `pg_epoch`.
//! - Members the map removed from a group stay in its in-sync set (they still hold the data)
//!   until every member the map names is in sync; then the set becomes exactly the map's.
//!
//! The primary of a placement group is the first in-sync member in map order.
//!
//! [`PgInSync`]: crate::Command::PgInSync

use crate::state::{refuse, ClusterState, Outcome, RefusalKind};
use placement::{MemberId, MemberInfo, MemberState, PgId, PlacementMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Placement groups per replica class.
pub const PG_COUNT: u32 = 128;

/// Bytes of a volume that map to one placement group together.
pub const CHUNK_BYTES: u64 = 4 << 20;

/// Where every placement group lives, for each replica count in use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Raised by one whenever any table changes: members refuse peer requests made under
    /// another epoch than theirs.
    pub epoch: u64,
    /// Tables by replica count.
    pub tables: BTreeMap<u8, PgTable>,
}

/// The placement groups of one replica class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgTable {
    pub map: PlacementMap,
    /// `in_sync[pg]`: node ids whose copy of the group is complete.
    pub in_sync: Vec<Vec<u64>>,
    /// `pg_epoch[pg]`: the layout epoch of the group's last change (copies or in-sync set).
    pub pg_epoch: Vec<u64>,
}

impl PgTable {
    /// The members the map names for `pg`, primary first.
    pub fn planned(&self, pg: PgId) -> impl Iterator<Item = u64> + '_ {
        self.map.group(pg).iter().map(|m| m.0)
    }

    fn in_sync_of(&self, pg: PgId) -> &[u64] {
        self.in_sync.get(pg as usize).map_or(&[], Vec::as_slice)
    }

    pub fn is_in_sync(&self, pg: PgId, node: u64) -> bool {
        self.in_sync_of(pg).contains(&node)
    }

    /// The member that orders and acknowledges the group's writes: the first in-sync member
    /// in map order, else the first in-sync member at all (a copy the map moved away that
    /// is still the only complete one).
    pub fn primary(&self, pg: PgId) -> Option<u64> {
        self.planned(pg)
            .find(|m| self.is_in_sync(pg, *m))
            .or_else(|| self.in_sync_of(pg).first().copied())
    }

    /// Every member holding or receiving a copy: the map's members, then in-sync members
    /// the map moved away.
    pub fn copies(&self, pg: PgId) -> Vec<u64> {
        let mut out: Vec<u64> = self.planned(pg).collect();
        for m in self.in_sync_of(pg) {
            if !out.contains(m) {
                out.push(*m);
            }
        }
        out
    }

    /// Members the map names that are not in sync yet: the primary copies the group to them.
    pub fn backfills(&self, pg: PgId) -> Vec<u64> {
        self.planned(pg)
            .filter(|m| !self.is_in_sync(pg, *m))
            .collect()
    }

    pub fn pg_epoch(&self, pg: PgId) -> u64 {
        self.pg_epoch.get(pg as usize).copied().unwrap_or(0)
    }
}

impl ClusterState {
    /// The table a volume with `replicas` copies uses.
    pub fn table(&self, replicas: u8) -> Option<&PgTable> {
        self.layout.tables.get(&replicas)
    }

    /// The volume with id `id` (peer messages name volumes by id).
    pub fn volume_by_id(&self, id: u64) -> Option<&crate::state::Volume> {
        self.volumes.values().find(|v| v.id == id)
    }

    /// Members that are up (not marked down by the group).
    pub fn up_members(&self) -> impl Iterator<Item = &crate::state::Member> {
        self.members.values().filter(|m| !m.down)
    }

    /// The replica count a new volume gets when none is asked for.
    pub fn default_replicas(&self) -> u8 {
        if self.up_members().count() >= 2 {
            2
        } else {
            1
        }
    }

    fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .values()
            .map(|m| MemberInfo {
                id: MemberId(m.node_id),
                capacity_bytes: m.capacity.max(1),
                state: if m.down {
                    MemberState::Down
                } else {
                    MemberState::Up
                },
            })
            .collect()
    }

    /// Take `node` out of every in-sync set where another complete copy remains.
    fn drop_from_in_sync(&mut self, node: u64) {
        for table in self.layout.tables.values_mut() {
            for set in table.in_sync.iter_mut() {
                if set.contains(&node) && set.len() > 1 {
                    set.retain(|m| *m != node);
                }
            }
        }
    }

    /// Recompute every table for today's members and replica classes. Groups whose copies or
    /// in-sync sets changed get the new epoch.
    pub(crate) fn relayout(&mut self) {
        let infos = self.member_infos();
        let mut classes: Vec<u8> = self.volumes.values().map(|v| v.replicas).collect();
        classes.extend(self.layout.tables.keys().copied());
        classes.sort_unstable();
        classes.dedup();
        let next = self.layout.epoch + 1;
        let mut changed = false;
        for r in classes {
            let prev = self.layout.tables.get(&r);
            let Ok(map) = placement::compute(prev.map(|t| &t.map), &infos, r as usize, PG_COUNT)
            else {
                // No member is up: keep the last table; nothing can be served anyway.
                continue;
            };
            let table = match prev {
                None => PgTable {
                    in_sync: map
                        .groups
                        .iter()
                        .map(|g| g.iter().map(|m| m.0).collect())
                        .collect(),
                    pg_epoch: vec![next; map.groups.len()],
                    map,
                },
                Some(prev) => {
                    let mut table = PgTable {
                        map,
                        in_sync: prev.in_sync.clone(),
                        pg_epoch: prev.pg_epoch.clone(),
                    };
                    for pg in 0..PG_COUNT {
                        prune_if_complete(&mut table, pg);
                        let i = pg as usize;
                        if table.map.groups[i] != prev.map.groups[i]
                            || table.in_sync[i] != prev.in_sync[i]
                        {
                            table.pg_epoch[i] = next;
                        }
                    }
                    table
                }
            };
            if self.layout.tables.get(&r) != Some(&table) {
                self.layout.tables.insert(r, table);
                changed = true;
            }
        }
        if changed {
            self.layout.epoch = next;
        }
    }

    /// A member is unreachable: its copies leave the in-sync sets (except last copies) and
    /// its groups move elsewhere.
    pub(crate) fn apply_member_down(&mut self, name: &str) -> Outcome {
        let Some(m) = self.members.get_mut(name) else {
            return refuse(RefusalKind::NotFound, format!("no member named {name}"));
        };
        if m.down {
            return Outcome::Ok;
        }
        m.down = true;
        let node = m.node_id;
        self.bump_all_changed(|s| {
            s.drop_from_in_sync(node);
            s.relayout()
        });
        Outcome::Ok
    }

    /// A member is back (or restarted): its copies may lack writes it acknowledged but had
    /// not synced, so it leaves the in-sync sets (except last copies) and is copied to again.
    pub(crate) fn apply_member_up(&mut self, name: &str) -> Outcome {
        let Some(m) = self.members.get_mut(name) else {
            return refuse(RefusalKind::NotFound, format!("no member named {name}"));
        };
        m.down = false;
        let node = m.node_id;
        self.bump_all_changed(|s| {
            s.drop_from_in_sync(node);
            s.relayout()
        });
        Outcome::Ok
    }

    /// The primary copied group `pg` of class `replicas` to `node` under `pg_epoch`.
    pub(crate) fn apply_pg_in_sync(
        &mut self,
        replicas: u8,
        pg: PgId,
        node: u64,
        pg_epoch: u64,
    ) -> Outcome {
        let next = self.layout.epoch + 1;
        let Some(table) = self.layout.tables.get_mut(&replicas) else {
            return refuse(
                RefusalKind::NotFound,
                format!("no table for {replicas} replicas"),
            );
        };
        if pg >= table.map.pg_count {
            return refuse(RefusalKind::Invalid, format!("no placement group {pg}"));
        }
        if table.pg_epoch(pg) != pg_epoch || !table.planned(pg).any(|m| m == node) {
            return refuse(
                RefusalKind::Busy,
                format!("placement group {pg} changed since epoch {pg_epoch}; copy it again"),
            );
        }
        let set = &mut table.in_sync[pg as usize];
        if !set.contains(&node) {
            set.push(node);
        }
        prune_if_complete(table, pg);
        table.pg_epoch[pg as usize] = next;
        self.layout.epoch = next;
        Outcome::Ok
    }

    /// Run a change that may alter in-sync sets before `relayout`, making sure any group
    /// whose in-sync set changed gets the new epoch even if the map did not move.
    fn bump_all_changed(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.layout.clone();
        change(self);
        let next = before.epoch + 1;
        let mut changed = self.layout.epoch != before.epoch;
        for (r, table) in self.layout.tables.iter_mut() {
            let Some(old) = before.tables.get(r) else {
                continue;
            };
            for i in 0..table.in_sync.len() {
                if table.in_sync[i] != old.in_sync[i] && table.pg_epoch[i] != next {
                    table.pg_epoch[i] = next;
                    changed = true;
                }
            }
        }
        if changed {
            self.layout.epoch = next;
        }
    }
}

/// Once every member the map names is in sync, the set becomes exactly the map's.
fn prune_if_complete(table: &mut PgTable, pg: PgId) {
    let i = pg as usize;
    let planned: Vec<u64> = table.planned(pg).collect();
    if planned.iter().all(|m| table.in_sync[i].contains(m)) {
        table.in_sync[i].retain(|m| planned.contains(m));
    }
}
