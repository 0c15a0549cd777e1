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
    /// `joined[pg][node]`: the layout epoch at which `node` last joined the group's in-sync
    /// set through a fill (absent: in sync since the table began). A member that sees two
    /// states tells from it whether a copy stayed in sync between them, however many
    /// epochs passed unseen.
    #[serde(default)]
    pub joined: Vec<BTreeMap<u64, u64>>,
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

    /// The epoch at which `node`'s copy of `pg` last joined the in-sync set (0: when the
    /// table began).
    pub fn joined_at(&self, pg: PgId, node: u64) -> u64 {
        self.joined
            .get(pg as usize)
            .and_then(|j| j.get(&node))
            .copied()
            .unwrap_or(0)
    }

    /// `node`'s copy of `pg` was in sync under `then` (an earlier layout epoch) and has
    /// been ever since, up to this table.
    pub fn in_sync_since(&self, pg: PgId, node: u64, then: u64) -> bool {
        self.is_in_sync(pg, node) && self.joined_at(pg, node) <= then
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

    /// The member with node id `node`.
    pub fn member_by_node(&self, node: u64) -> Option<&crate::state::Member> {
        self.members.values().find(|m| m.node_id == node)
    }

    /// Node ids of the members marked down.
    pub fn down_nodes(&self) -> std::collections::HashSet<u64> {
        self.members
            .values()
            .filter(|m| m.down)
            .map(|m| m.node_id)
            .collect()
    }

    /// Members that are up (not marked down by the group).
    pub fn up_members(&self) -> impl Iterator<Item = &crate::state::Member> {
        self.members.values().filter(|m| !m.down)
    }

    /// The replica count a new volume gets when none is asked for.
    pub fn default_replicas(&self) -> u8 {
        if self.placeable_members().count() >= 2 {
            2
        } else {
            1
        }
    }

    /// Members as placement sees them. A member that is down but not out keeps its place
    /// (its copies come back with a resync of what changed); one that is out gets none; one
    /// being removed drains.
    fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .values()
            .map(|m| MemberInfo {
                id: MemberId(m.node_id),
                capacity_bytes: m.capacity.max(1),
                state: if m.removing {
                    MemberState::Draining
                } else if m.out {
                    MemberState::Down
                } else {
                    MemberState::Up
                },
            })
            .collect()
    }

    /// Members that placement may give copies to.
    pub fn placeable_members(&self) -> impl Iterator<Item = &crate::state::Member> {
        self.members.values().filter(|m| !m.out && !m.removing)
    }

    /// Whether any table still names `node` (planned, or holding a complete copy).
    pub fn holds_copies(&self, node: u64) -> bool {
        self.layout
            .tables
            .values()
            .any(|t| (0..t.map.pg_count).any(|pg| t.copies(pg).contains(&node)))
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
        let down = self.down_nodes();
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
                    // A new class starts complete on its up members (it holds no data yet);
                    // a down member is filled when it returns.
                    in_sync: map
                        .groups
                        .iter()
                        .map(|g| {
                            let up: Vec<u64> = g
                                .iter()
                                .map(|m| m.0)
                                .filter(|n| !down.contains(n))
                                .collect();
                            if up.is_empty() {
                                g.iter().map(|m| m.0).collect()
                            } else {
                                up
                            }
                        })
                        .collect(),
                    pg_epoch: vec![next; map.groups.len()],
                    joined: Vec::new(),
                    map,
                },
                Some(prev) => {
                    let mut table = PgTable {
                        map,
                        in_sync: prev.in_sync.clone(),
                        pg_epoch: prev.pg_epoch.clone(),
                        joined: prev.joined.clone(),
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

    /// Add or update a member's record. What the group decided about it (down, out, being
    /// removed) stays; a changed copy id means its copies cannot be trusted: they leave the
    /// in-sync sets (except last copies) and are filled completely.
    pub(crate) fn apply_register_member(&mut self, mut m: crate::state::Member) -> Outcome {
        if let Some(old) = self.members.get(&m.name) {
            m.down = old.down;
            m.out = old.out;
            m.removing = old.removing;
            if !old.copy_id.is_empty() && old.copy_id != m.copy_id {
                let node = m.node_id;
                self.members.insert(m.name.clone(), m);
                self.bump_all_changed(|s| {
                    s.drop_from_in_sync(node);
                    s.relayout()
                });
                return Outcome::Ok;
            }
        }
        self.members.insert(m.name.clone(), m);
        self.relayout();
        Outcome::Ok
    }

    /// A member is unreachable: its copies leave the in-sync sets (except last copies), so
    /// its placement groups fail over to their other copies. It keeps its place in the map
    /// until it is out.
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
            // Fills of its copies that were running are void: they may have missed writes.
            let next = s.layout.epoch + 1;
            let mut touched = false;
            for table in s.layout.tables.values_mut() {
                for pg in 0..table.map.pg_count {
                    if table.planned(pg).any(|m| m == node) {
                        table.pg_epoch[pg as usize] = next;
                        touched = true;
                    }
                }
            }
            if touched {
                s.layout.epoch = next;
            }
            s.relayout()
        });
        Outcome::Ok
    }

    /// A member is back (or restarted): its copies may lack writes, so it leaves the
    /// in-sync sets (except last copies) and is filled again. The leader's word that it
    /// hears a member that is not down is a no-op: repeated, it would send copies that were
    /// just filled round again.
    pub(crate) fn apply_member_up(&mut self, name: &str, restarted: bool) -> Outcome {
        let Some(m) = self.members.get_mut(name) else {
            return refuse(RefusalKind::NotFound, format!("no member named {name}"));
        };
        if !m.down && !restarted {
            return Outcome::Ok;
        }
        m.down = false;
        m.out = false;
        let node = m.node_id;
        self.bump_all_changed(|s| {
            s.drop_from_in_sync(node);
            s.relayout()
        });
        Outcome::Ok
    }

    /// A member stayed down too long: its placement groups get new copies elsewhere.
    pub(crate) fn apply_member_out(&mut self, name: &str) -> Outcome {
        let Some(m) = self.members.get_mut(name) else {
            return refuse(RefusalKind::NotFound, format!("no member named {name}"));
        };
        if !m.down {
            return refuse(RefusalKind::Busy, format!("{name} is up again"));
        }
        if m.out {
            return Outcome::Ok;
        }
        m.out = true;
        self.relayout();
        Outcome::Ok
    }

    /// The operator removes a member: the others must be able to hold every replica class;
    /// its data moves to them, then [`apply_forget_member`](Self::apply_forget_member).
    pub(crate) fn apply_remove_member(&mut self, name: &str) -> Outcome {
        let Some(m) = self.members.get(name) else {
            return refuse(RefusalKind::NotFound, format!("no member named {name}"));
        };
        if m.removing {
            return Outcome::Ok;
        }
        let node = m.node_id;
        let rest = self
            .placeable_members()
            .filter(|o| o.node_id != node && !o.down)
            .count();
        if rest == 0 {
            return refuse(
                RefusalKind::Invalid,
                format!("{name} is the group's last member: delete the group instead"),
            );
        }
        let widest = self.volumes.values().map(|v| v.replicas).max().unwrap_or(1);
        if rest < usize::from(widest) {
            return refuse(
                RefusalKind::Invalid,
                format!(
                    "removing {name} leaves {rest} up member(s) for volumes with {widest} replicas"
                ),
            );
        }
        if let Some(sole) = self.sole_snapshot_holder(node) {
            return refuse(
                RefusalKind::Invalid,
                format!("{name} holds the only copy of {sole} left; delete that snapshot first"),
            );
        }
        if let Some(m) = self.members.get_mut(name) {
            m.removing = true;
        }
        self.relayout();
        Outcome::Ok
    }

    /// A group snapshot's placement group whose only up holder is `node` (snapshot copies
    /// do not move with the data yet, so removing it would lose them), as `volume@name`.
    fn sole_snapshot_holder(&self, node: u64) -> Option<String> {
        let down = self.down_nodes();
        self.snapshots
            .values()
            .flat_map(|s| s.values())
            .find_map(|s| {
                let holders = s.holders.as_ref()?;
                holders
                    .iter()
                    .any(|h| h.contains(&node) && h.iter().all(|m| *m == node || down.contains(m)))
                    .then(|| format!("snapshot {}@{}", s.volume, s.name))
            })
    }

    /// A member being removed holds no copy any more: forget it.
    pub(crate) fn apply_forget_member(&mut self, name: &str) -> Outcome {
        let Some(m) = self.members.get(name) else {
            return Outcome::Ok;
        };
        if !m.removing {
            return refuse(RefusalKind::Invalid, format!("{name} is not being removed"));
        }
        if self.holds_copies(m.node_id) {
            return refuse(
                RefusalKind::Busy,
                format!("{name} still holds copies; its data is still moving"),
            );
        }
        self.members.remove(name);
        self.relayout();
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
        if self.member_by_node(node).is_some_and(|m| m.down) {
            return refuse(
                RefusalKind::Busy,
                format!("member {node} is down; its copy is filled when it returns"),
            );
        }
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
            if table.joined.len() <= pg as usize {
                table
                    .joined
                    .resize(table.map.pg_count as usize, BTreeMap::new());
            }
            table.joined[pg as usize].insert(node, next);
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

#[cfg(test)]
mod tests {
    use crate::state::{ClusterState, Command, Member, Outcome, RefusalKind};

    fn member(n: u64, copy: &str) -> Member {
        Member {
            name: format!("member-{n}"),
            node_id: n,
            api_addr: format!("127.0.0.1:{}", 7000 + n),
            portal: String::new(),
            capacity: 8 << 30,
            peer: String::new(),
            down: false,
            out: false,
            removing: false,
            copy_id: copy.into(),
        }
    }

    /// Three members, one 2-replica volume, every copy in sync.
    fn group() -> ClusterState {
        let mut s = ClusterState::default();
        for n in 1..=3 {
            assert_eq!(
                s.apply(Command::RegisterMember(member(n, "a"))),
                Outcome::Ok
            );
        }
        let created = s.apply(Command::CreateVolume {
            name: "v".into(),
            size: 1 << 30,
            block_size: 512,
            replicas: 2,
            thick: false,
            allow: vec![],
            chap: None,
            created: 0,
        });
        assert!(matches!(created, Outcome::Volume(_)), "{created:?}");
        s
    }

    fn planned_on(s: &ClusterState, node: u64) -> usize {
        let t = s.table(2).unwrap();
        (0..t.map.pg_count)
            .filter(|&pg| t.planned(pg).any(|m| m == node))
            .count()
    }

    fn in_sync_on(s: &ClusterState, node: u64) -> usize {
        let t = s.table(2).unwrap();
        (0..t.map.pg_count)
            .filter(|&pg| t.is_in_sync(pg, node))
            .count()
    }

    fn refused(o: Outcome) -> Option<RefusalKind> {
        match o {
            Outcome::Refused { kind, .. } => Some(kind),
            _ => None,
        }
    }

    #[test]
    fn a_down_member_keeps_its_place_until_it_is_out() {
        let mut s = group();
        let held = planned_on(&s, 3);
        assert!(held > 0 && in_sync_on(&s, 3) == held);
        s.apply(Command::MemberDown {
            name: "member-3".into(),
        });
        assert_eq!(planned_on(&s, 3), held, "a down member keeps its groups");
        assert_eq!(in_sync_on(&s, 3), 0, "but none of its copies counts");
        let t = s.table(2).unwrap();
        assert!((0..t.map.pg_count).all(|pg| t.primary(pg).is_some_and(|p| p != 3)));

        s.apply(Command::MemberOut {
            name: "member-3".into(),
        });
        assert_eq!(planned_on(&s, 3), 0, "an out member's groups move");

        s.apply(Command::MemberUp {
            name: "member-3".into(),
            restarted: false,
        });
        assert!(planned_on(&s, 3) > 0, "it gets groups again");
        assert_eq!(in_sync_on(&s, 3), 0, "which are filled before they count");
    }

    #[test]
    fn only_a_restart_drops_the_copies_of_a_member_that_is_up() {
        let mut s = group();
        let held = in_sync_on(&s, 2);
        let up = |restarted| Command::MemberUp {
            name: "member-2".into(),
            restarted,
        };
        s.apply(up(false));
        assert_eq!(
            in_sync_on(&s, 2),
            held,
            "heard again while up: nothing changes"
        );
        s.apply(up(true));
        assert_eq!(in_sync_on(&s, 2), 0, "restarted: filled again");
    }

    #[test]
    fn out_is_refused_for_a_member_that_came_back() {
        let mut s = group();
        let o = s.apply(Command::MemberOut {
            name: "member-2".into(),
        });
        assert_eq!(refused(o), Some(RefusalKind::Busy));
    }

    #[test]
    fn a_new_copy_id_drops_the_members_copies() {
        let mut s = group();
        let epoch = s.layout.epoch;
        s.apply(Command::RegisterMember(member(2, "a")));
        assert!(in_sync_on(&s, 2) > 0, "the same copies re-register");
        s.apply(Command::RegisterMember(member(2, "b")));
        assert_eq!(in_sync_on(&s, 2), 0);
        assert!(s.layout.epoch > epoch);
    }

    #[test]
    fn removal_drains_then_forgets() {
        let mut s = group();
        assert_eq!(
            s.apply(Command::RemoveMember {
                name: "member-1".into()
            }),
            Outcome::Ok
        );
        assert_eq!(planned_on(&s, 1), 0, "its groups are planned elsewhere");
        assert!(
            s.holds_copies(1),
            "but it holds the data until they are filled"
        );
        let o = s.apply(Command::ForgetMember {
            name: "member-1".into(),
        });
        assert_eq!(refused(o), Some(RefusalKind::Busy));

        // Declare every new copy filled.
        let t = s.table(2).unwrap().clone();
        for pg in 0..t.map.pg_count {
            for node in t.backfills(pg) {
                let pg_epoch = s.table(2).unwrap().pg_epoch(pg);
                let o = s.apply(Command::PgInSync {
                    replicas: 2,
                    pg,
                    node,
                    pg_epoch,
                });
                assert_eq!(o, Outcome::Ok);
            }
        }
        assert!(!s.holds_copies(1));
        assert_eq!(
            s.apply(Command::ForgetMember {
                name: "member-1".into()
            }),
            Outcome::Ok
        );
        assert!(!s.members.contains_key("member-1"));
    }

    #[test]
    fn removal_is_refused_when_the_rest_cannot_hold_the_replicas() {
        let mut s = group();
        assert_eq!(
            s.apply(Command::RemoveMember {
                name: "member-1".into()
            }),
            Outcome::Ok
        );
        let o = s.apply(Command::RemoveMember {
            name: "member-2".into(),
        });
        assert_eq!(refused(o), Some(RefusalKind::Invalid));
        let o = s.apply(Command::ForgetMember {
            name: "member-3".into(),
        });
        assert_eq!(refused(o), Some(RefusalKind::Invalid), "not being removed");
    }

    #[test]
    fn removal_is_refused_for_the_last_holder_of_a_snapshot_copy() {
        let mut s = group();
        let snap = |name: &str| Command::CreateSnapshot {
            volume: "v".into(),
            name: name.into(),
            created: 0,
            in_group: true,
        };
        assert!(matches!(s.apply(snap("s")), Outcome::Snapshot(_)));
        let mut holders = vec![vec![1, 2]; super::PG_COUNT as usize];
        holders[7] = vec![3];
        let done = s.apply(Command::CompleteSnapshot {
            volume: "v".into(),
            name: "s".into(),
            holders,
        });
        assert!(matches!(done, Outcome::Snapshot(_)), "{done:?}");
        let remove = |n: u64| Command::RemoveMember {
            name: format!("member-{n}"),
        };
        assert_eq!(refused(s.apply(remove(3))), Some(RefusalKind::Invalid));
        s.apply(Command::MemberDown {
            name: "member-2".into(),
        });
        assert_eq!(
            refused(s.apply(remove(1))),
            Some(RefusalKind::Invalid),
            "member-2, the other holder, is down"
        );
        s.apply(Command::MemberUp {
            name: "member-2".into(),
            restarted: false,
        });
        s.apply(Command::DeleteSnapshot {
            volume: "v".into(),
            name: "s".into(),
        });
        assert_eq!(s.apply(remove(3)), Outcome::Ok);
    }

    #[test]
    fn a_clone_in_a_group_is_a_copy_that_keeps_its_source_until_whole() {
        let mut s = group();
        let snapshot = |name: &str, in_group| Command::CreateSnapshot {
            volume: "v".into(),
            name: name.into(),
            created: 0,
            in_group,
        };
        let clone = |from: &str, name: &str| Command::CloneVolume {
            volume: "v".into(),
            snapshot: from.into(),
            name: name.into(),
            created: 0,
        };
        assert!(matches!(s.apply(snapshot("s", true)), Outcome::Snapshot(_)));
        let pending = s.apply(clone("s", "c"));
        assert_eq!(
            refused(pending),
            Some(RefusalKind::Busy),
            "a snapshot nobody holds yet"
        );
        s.apply(Command::CompleteSnapshot {
            volume: "v".into(),
            name: "s".into(),
            holders: vec![vec![1, 2]; super::PG_COUNT as usize],
        });
        let Outcome::Volume(c) = s.apply(clone("s", "c")) else {
            panic!("the clone was refused");
        };
        let source = c.copy_from.expect("a clone in a group is copied");
        assert_eq!((source.volume_id, source.done), (s.volumes["v"].id, 0));
        assert_eq!(c.parent, None, "it shares nothing with its origin");
        assert_eq!(
            c.placement_key(),
            c.id,
            "it is placed as a volume of its own"
        );

        let delete_snapshot = Command::DeleteSnapshot {
            volume: "v".into(),
            name: "s".into(),
        };
        let delete_volume = Command::DeleteVolume { name: "v".into() };
        assert_eq!(
            refused(s.apply(delete_snapshot.clone())),
            Some(RefusalKind::Invalid)
        );
        assert_eq!(
            refused(s.apply(delete_volume.clone())),
            Some(RefusalKind::Invalid)
        );

        let copied = |done| Command::CloneCopied {
            name: "c".into(),
            done,
        };
        s.apply(copied(64 << 20));
        s.apply(copied(32 << 20));
        assert_eq!(
            s.volumes["c"].copy_from.map(|c| c.done),
            Some(64 << 20),
            "progress never goes back"
        );
        s.apply(copied(c.size));
        assert_eq!(s.volumes["c"].copy_from, None, "whole");
        assert_eq!(s.apply(delete_snapshot), Outcome::Ok);
        assert_eq!(s.apply(delete_volume), Outcome::Ok);
    }

    #[test]
    fn a_volume_wider_than_the_group_is_refused() {
        let mut s = ClusterState::default();
        s.apply(Command::RegisterMember(member(1, "a")));
        let o = s.apply(Command::CreateVolume {
            name: "v".into(),
            size: 1 << 20,
            block_size: 512,
            replicas: 2,
            thick: false,
            allow: vec![],
            chap: None,
            created: 0,
        });
        assert_eq!(refused(o), Some(RefusalKind::Invalid));
    }
}
