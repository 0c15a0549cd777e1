//! Members, the placement map, and the diff between two maps.

use serde::{Deserialize, Serialize};

/// A member of the group, as the control plane numbers it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct MemberId(pub u64);

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "member {}", self.0)
    }
}

/// A placement group's index in its pool's map.
pub type PgId = u32;

/// Whether a member may hold placement groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Serving: placement groups are put here.
    Up,
    /// Unreachable: its placement groups go elsewhere.
    Down,
    /// Being removed: its placement groups go elsewhere, it still serves them until then.
    Draining,
}

/// What placement needs to know about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: MemberId,
    /// Space the member offers the pool; placement is proportional to it.
    pub capacity_bytes: u64,
    pub state: MemberState,
}

impl MemberInfo {
    pub fn up(id: u64, capacity_bytes: u64) -> Self {
        MemberInfo {
            id: MemberId(id),
            capacity_bytes,
            state: MemberState::Up,
        }
    }

    /// Up with capacity to offer.
    pub fn is_eligible(&self) -> bool {
        self.state == MemberState::Up && self.capacity_bytes > 0
    }
}

/// Where every placement group of a pool lives: for each, its members, primary first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementMap {
    /// Raised by one whenever `groups` changes; messages made under an older epoch are
    /// refused by the members.
    pub epoch: u64,
    pub pg_count: u32,
    /// Copies each placement group should have; a group holds fewer while the pool has
    /// fewer eligible members.
    pub replicas: u8,
    /// `groups[pg]`: distinct members, the primary first.
    pub groups: Vec<Vec<MemberId>>,
}

impl PlacementMap {
    /// The members of `pg`, primary first (empty for a pg outside the map).
    pub fn group(&self, pg: PgId) -> &[MemberId] {
        self.groups.get(pg as usize).map_or(&[], Vec::as_slice)
    }

    pub fn primary(&self, pg: PgId) -> Option<MemberId> {
        self.group(pg).first().copied()
    }

    /// The placement groups a member holds a copy of.
    pub fn pgs_of(&self, member: MemberId) -> impl Iterator<Item = PgId> + '_ {
        (0..self.pg_count).filter(move |&pg| self.group(pg).contains(&member))
    }

    /// Copies held by each member.
    pub fn replica_counts(&self) -> std::collections::BTreeMap<MemberId, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for m in self.groups.iter().flatten() {
            *counts.entry(*m).or_insert(0) += 1;
        }
        counts
    }

    /// Placement groups each member is primary of.
    pub fn primary_counts(&self) -> std::collections::BTreeMap<MemberId, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for m in self.groups.iter().filter_map(|g| g.first()) {
            *counts.entry(*m).or_insert(0) += 1;
        }
        counts
    }
}

/// One copy of a placement group changing hands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Move {
    pub pg: PgId,
    /// The member giving the copy up; `None` when the group gains a copy (copy it from
    /// the primary).
    pub from: Option<MemberId>,
    /// The member receiving the copy; `None` when the group loses a copy.
    pub to: Option<MemberId>,
}

/// The copies the rebalancer must move to go from `old` to `new`. A change of primary
/// among the same members moves no data and is not listed.
pub fn moves(old: &PlacementMap, new: &PlacementMap) -> Vec<Move> {
    let pg_count = old.pg_count.max(new.pg_count);
    let mut out = Vec::new();
    for pg in 0..pg_count {
        let (before, after) = (old.group(pg), new.group(pg));
        let mut leaving = before.iter().filter(|m| !after.contains(m));
        let mut arriving = after.iter().filter(|m| !before.contains(m));
        loop {
            let (from, to) = (leaving.next().copied(), arriving.next().copied());
            if from.is_none() && to.is_none() {
                break;
            }
            out.push(Move { pg, from, to });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(groups: &[&[u64]]) -> PlacementMap {
        PlacementMap {
            epoch: 1,
            pg_count: groups.len() as u32,
            replicas: 2,
            groups: groups
                .iter()
                .map(|g| g.iter().map(|&m| MemberId(m)).collect())
                .collect(),
        }
    }

    #[test]
    fn moves_pair_leaving_with_arriving_copies() {
        let old = map(&[&[1, 2], &[2, 3], &[3, 1]]);
        let new = map(&[&[2, 1], &[2, 4], &[3, 1, 4]]);
        assert_eq!(
            moves(&old, &new),
            vec![
                Move {
                    pg: 1,
                    from: Some(MemberId(3)),
                    to: Some(MemberId(4))
                },
                Move {
                    pg: 2,
                    from: None,
                    to: Some(MemberId(4))
                },
            ]
        );
        assert_eq!(
            moves(&new, &old)[1],
            Move {
                pg: 2,
                from: Some(MemberId(4)),
                to: None
            }
        );
    }

    #[test]
    fn lookups() {
        let m = map(&[&[1, 2], &[2, 3]]);
        assert_eq!(m.primary(1), Some(MemberId(2)));
        assert_eq!(m.primary(5), None);
        assert_eq!(m.pgs_of(MemberId(2)).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(m.replica_counts()[&MemberId(2)], 2);
        assert_eq!(m.primary_counts().get(&MemberId(3)), None);
    }

    #[test]
    fn the_map_serialises() {
        let m = map(&[&[1, 2], &[2, 3]]);
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<PlacementMap>(&json).unwrap(), m);
    }
}
