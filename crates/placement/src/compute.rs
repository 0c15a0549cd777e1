//! Computing a pool's placement map: which members hold each placement group.
//!
//! The method is a greedy rebalancer that starts from the previous map:
//!
//! 1. **Quotas.** Every eligible member (Up, capacity > 0) gets a number of copies
//!    proportional to its capacity, out of `pg_count × replicas`, by largest remainder. No
//!    member can hold two copies of one group, so a member worth more than `pg_count`
//!    copies is capped there and the rest shared among the others ("water-filling").
//! 2. **Keep.** The previous map's groups are kept, minus members no longer eligible.
//! 3. **Trim.** A group above the replica count (it went down) drops the member most
//!    urgently above its quota. Then a member above its quota gives up copies, at most one per group while that
//!    suffices (two holes in one group may need a third copy to move), the most urgent
//!    member first (largest excess against the groups left to take it), groups in a hash
//!    order that spreads the holes over the pool.
//! 4. **Fill.** Each hole goes to a member below its quota that the group does not hold yet,
//!    the most constrained first (fewest open groups left against what it still needs). If all such members are already in the group, copies placed earlier in the
//!    pass are re-routed to make room, or, failing that, one existing copy swaps with another
//!    group (always possible: see `fill_holes`).
//! 5. **Primaries.** Primaries are apportioned by capacity as well (capped by the copies a
//!    member holds); a group keeps its primary while that member is within its primary
//!    quota; the rest are assigned greedily and balanced by augmenting paths.
//!
//! Nearly every copy that moves is one that had to: a removed member's copies, or the copies
//! a changed quota takes away. Adding a member to `n` moves about `1/(n+1)` of all copies,
//! removing one moves exactly its copies, plus a few from rounding. Only when a member is
//! due a copy of (nearly) every group must it displace copies from groups that had no hole;
//! the property tests bound those extra moves by the flow lower bound plus a quarter.
//! Iteration is in member id and placement group order and ties break on a stable hash, so
//! the same input always gives the same map.
//!
//! A pool with fewer eligible members than the replica count gets groups of as many copies
//! as it has members (not an error: a one-member pool still serves, unprotected); the map
//! keeps the requested count so the groups grow back when members join.

use crate::error::PlacementError;
use crate::hash::mix_pair;
use crate::map::{MemberId, MemberInfo, PgId, PlacementMap};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Most copies a placement group may have.
pub const MAX_REPLICAS: usize = 3;

/// Most placement groups a pool may have (the map is a vector of them, kept in Raft).
pub const MAX_PG_COUNT: u32 = 1 << 16;

/// The replica count of a pool that does not set one: 2 when the pool has two members or
/// more, else 1.
pub fn default_replicas(members: &[MemberInfo]) -> usize {
    if members.iter().filter(|m| m.is_eligible()).count() >= 2 {
        2
    } else {
        1
    }
}

/// The placement map for `members`, moving as little as possible from `prev`.
///
/// The epoch is `prev.epoch + 1` when any group changed, `prev.epoch` when none did, and 1
/// for a first map.
pub fn compute(
    prev: Option<&PlacementMap>,
    members: &[MemberInfo],
    replicas: usize,
    pg_count: u32,
) -> Result<PlacementMap, PlacementError> {
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(PlacementError::InvalidReplicas {
            replicas,
            max: MAX_REPLICAS,
        });
    }
    if pg_count == 0 {
        return Err(PlacementError::NoPlacementGroups);
    }
    if pg_count > MAX_PG_COUNT {
        return Err(PlacementError::TooManyPlacementGroups {
            pg_count,
            max: MAX_PG_COUNT,
        });
    }
    if let Some(prev) = prev {
        if prev.pg_count != pg_count {
            return Err(PlacementError::PgCountChanged {
                previous: prev.pg_count,
                requested: pg_count,
            });
        }
    }
    let mut capacity = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for m in members {
        if !seen.insert(m.id) {
            return Err(PlacementError::DuplicateMember { member: m.id.0 });
        }
        if m.is_eligible() {
            capacity.insert(m.id, m.capacity_bytes);
        }
    }
    if capacity.is_empty() {
        return Err(PlacementError::NoEligibleMembers);
    }
    let copies = replicas.min(capacity.len());

    let quota = apportion(
        u64::from(pg_count) * copies as u64,
        capacity
            .iter()
            .map(|(&id, &c)| (id, c, u64::from(pg_count))),
    );
    let mut groups = kept_groups(prev, &capacity, pg_count);
    trim_over_quota(&mut groups, &quota, copies);
    fill_holes(&mut groups, &quota, copies);
    assign_primaries(&mut groups, &capacity);

    let epoch = match prev {
        None => 1,
        Some(p) if p.groups == groups && usize::from(p.replicas) == replicas => p.epoch,
        Some(p) => p.epoch + 1,
    };
    Ok(PlacementMap {
        epoch,
        pg_count,
        replicas: replicas as u8,
        groups,
    })
}

/// Split `total` among `(member, weight, cap)` in proportion to weight, no member above its
/// cap, by largest remainder (ties to the lower id). The caller guarantees the caps can hold
/// `total`; otherwise members end at their caps and the shortfall stays unassigned.
pub(crate) fn apportion(
    total: u64,
    items: impl IntoIterator<Item = (MemberId, u64, u64)>,
) -> BTreeMap<MemberId, u64> {
    let items: Vec<(MemberId, u64, u64)> = items.into_iter().collect();
    let mut share: BTreeMap<MemberId, u64> = BTreeMap::new();
    let mut capped: BTreeSet<MemberId> = BTreeSet::new();
    loop {
        let remaining = total.saturating_sub(capped.iter().map(|m| share[m]).sum::<u64>());
        let free: Vec<&(MemberId, u64, u64)> = items
            .iter()
            .filter(|(m, _, _)| !capped.contains(m))
            .collect();
        let weight_sum: u128 = free.iter().map(|(_, w, _)| u128::from(*w)).sum();
        if free.is_empty() || weight_sum == 0 {
            for (m, _, _) in free {
                share.insert(*m, 0);
            }
            return share;
        }
        // Members whose exact share exceeds their cap take the cap; the others share again.
        let over: Vec<&(MemberId, u64, u64)> = free
            .iter()
            .copied()
            .filter(|(_, w, cap)| {
                u128::from(remaining) * u128::from(*w) > u128::from(*cap) * weight_sum
            })
            .collect();
        if !over.is_empty() {
            for (m, _, cap) in over {
                capped.insert(*m);
                share.insert(*m, *cap);
            }
            continue;
        }
        let mut remainders = Vec::with_capacity(free.len());
        let mut given = 0u64;
        for (m, w, _) in &free {
            let exact = u128::from(remaining) * u128::from(*w);
            let floor = (exact / weight_sum) as u64;
            share.insert(*m, floor);
            given += floor;
            remainders.push((exact % weight_sum, *m));
        }
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, m) in remainders.iter().take((remaining - given) as usize) {
            *share.get_mut(m).expect("every free member has a share") += 1;
        }
        return share;
    }
}

/// The previous groups, without members that are no longer eligible or duplicates.
fn kept_groups(
    prev: Option<&PlacementMap>,
    eligible: &BTreeMap<MemberId, u64>,
    pg_count: u32,
) -> Vec<Vec<MemberId>> {
    let mut groups = prev.map(|p| p.groups.clone()).unwrap_or_default();
    groups.resize(pg_count as usize, Vec::new());
    for group in &mut groups {
        let mut seen = BTreeSet::new();
        group.retain(|m| eligible.contains_key(m) && seen.insert(*m));
    }
    groups
}

fn replica_counts(groups: &[Vec<MemberId>]) -> BTreeMap<MemberId, u64> {
    let mut counts = BTreeMap::new();
    for m in groups.iter().flatten() {
        *counts.entry(*m).or_insert(0) += 1;
    }
    counts
}

/// Take copies away from members above their quota, and from groups above `copies` (the
/// replica count went down): there the member furthest above its quota gives its copy up.
fn trim_over_quota(groups: &mut [Vec<MemberId>], quota: &BTreeMap<MemberId, u64>, copies: usize) {
    let mut counts = replica_counts(groups);
    // Groups above `copies` (the replica count went down) drop the member that most urgently
    // needs to shed copies: its excess over quota against the oversized groups left that
    // still hold it. Greedy by excess alone runs out of groups for some member near the end.
    let mut oversized_left: BTreeMap<MemberId, i64> = BTreeMap::new();
    for m in groups.iter().filter(|g| g.len() > copies).flatten() {
        *oversized_left.entry(*m).or_insert(0) += 1;
    }
    for (pg, group) in groups.iter_mut().enumerate() {
        if group.len() <= copies {
            continue;
        }
        while group.len() > copies {
            let urgency = |m: &MemberId| {
                let excess = counts[m] as i64 - quota.get(m).copied().unwrap_or(0) as i64;
                (excess, oversized_left[m])
            };
            let (at, _) = group
                .iter()
                .enumerate()
                .max_by(|(a_at, a), (b_at, b)| {
                    let ((ea, la), (eb, lb)) = (urgency(a), urgency(b));
                    // ea/la against eb/lb, without division.
                    (i128::from(ea) * i128::from(lb))
                        .cmp(&(i128::from(eb) * i128::from(la)))
                        .then(ea.cmp(&eb))
                        .then((*a_at != 0).cmp(&(*b_at != 0)))
                        .then(mix_pair(pg as u64, a.0).cmp(&mix_pair(pg as u64, b.0)))
                })
                .expect("a group above `copies` is not empty");
            let gone = group.remove(at);
            *counts.get_mut(&gone).expect("counted") -= 1;
            *oversized_left.get_mut(&gone).expect("counted") -= 1;
        }
        for m in group.iter() {
            *oversized_left.get_mut(m).expect("counted") -= 1;
        }
    }
    // Members above quota give copies up, at most one per group while that suffices: a
    // group with two holes may be fillable only by displacing a third copy. Groups go in a
    // hash order (holes spread over the pool); in each, the member whose excess is largest
    // against the groups left that could still take its hole gives up its copy.
    let mut excess: BTreeMap<MemberId, u64> = counts
        .iter()
        .map(|(m, c)| (*m, c.saturating_sub(quota.get(m).copied().unwrap_or(0))))
        .filter(|(_, e)| *e > 0)
        .collect();
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&pg| (mix_pair(pg as u64, u64::MAX), pg));
    for one_hole_per_group in [true, false] {
        let mut left: BTreeMap<MemberId, u64> = BTreeMap::new();
        for &pg in &order {
            if one_hole_per_group && groups[pg].len() < copies {
                continue;
            }
            for m in &groups[pg] {
                if excess.contains_key(m) {
                    *left.entry(*m).or_insert(0) += 1;
                }
            }
        }
        for &pg in &order {
            if excess.is_empty() {
                return;
            }
            if one_hole_per_group && groups[pg].len() < copies {
                continue;
            }
            let candidates: Vec<(usize, MemberId)> = groups[pg]
                .iter()
                .enumerate()
                .filter(|(_, m)| excess.contains_key(m))
                .map(|(at, m)| (at, *m))
                .collect();
            for &(_, m) in &candidates {
                *left.get_mut(&m).expect("counted") -= 1;
            }
            let chosen = candidates.iter().max_by(|(a_at, a), (b_at, b)| {
                let (ea, la) = (excess[a], left[a] + 1);
                let (eb, lb) = (excess[b], left[b] + 1);
                (u128::from(ea) * u128::from(lb))
                    .cmp(&(u128::from(eb) * u128::from(la)))
                    .then((*a_at != 0).cmp(&(*b_at != 0)))
                    .then(b.cmp(a))
            });
            let Some(&(at, m)) = chosen else { continue };
            groups[pg].remove(at);
            let e = excess.get_mut(&m).expect("has excess");
            *e -= 1;
            if *e == 0 {
                excess.remove(&m);
            }
            if !one_hole_per_group {
                // Keep trimming this group while members in it still have excess.
                while let Some(at) = groups[pg].iter().position(|m| excess.contains_key(m)) {
                    let m = groups[pg].remove(at);
                    let e = excess.get_mut(&m).expect("has excess");
                    *e -= 1;
                    if *e == 0 {
                        excess.remove(&m);
                    }
                }
            }
        }
    }
}

/// Give every group `copies` members, taking members below their quota.
///
/// A hole goes to the most constrained member below quota that the group lacks. When every member
/// below quota is already in the group, a copy placed earlier in this pass (not yet moved,
/// so free to re-route) is moved into the group along an alternating path ([`reroute`]).
/// Only when no such path exists does an existing copy make room ([`make_room`]): then
/// balance itself demands the extra move (a member due a copy of nearly every group).
fn fill_holes(groups: &mut [Vec<MemberId>], quota: &BTreeMap<MemberId, u64>, copies: usize) {
    let counts = replica_counts(groups);
    let mut deficit: BTreeMap<MemberId, u64> = quota
        .iter()
        .map(|(m, q)| (*m, q.saturating_sub(counts.get(m).copied().unwrap_or(0))))
        .collect();
    // Members placed by this pass, per group: these copies do not exist yet.
    let mut placed: Vec<Vec<MemberId>> = vec![Vec::new(); groups.len()];
    let mut open = open_groups(groups, quota, copies);
    for x in 0..groups.len() {
        while groups[x].len() < copies {
            // The most constrained member first: fewest groups left that could take it,
            // against what it still needs (a member due a copy of nearly every group must
            // take each hole it can), then the largest need, then a spreading hash.
            let best = deficit
                .iter()
                .filter(|(m, d)| **d > 0 && !groups[x].contains(m))
                .min_by_key(|(m, d)| {
                    (
                        open[*m] - **d as i64,
                        std::cmp::Reverse(**d),
                        mix_pair(x as u64, m.0),
                    )
                })
                .map(|(m, _)| *m);
            let m = match best {
                Some(m) => {
                    groups[x].push(m);
                    placed[x].push(m);
                    // x is no longer open to m; once full, to nobody.
                    *open.get_mut(&m).expect("eligible") -= 1;
                    if groups[x].len() == copies {
                        for (k, n) in open.iter_mut() {
                            if !groups[x].contains(k) {
                                *n -= 1;
                            }
                        }
                    }
                    m
                }
                None => match reroute(groups, &mut placed, &deficit, x) {
                    Some(m) => {
                        open = open_groups(groups, quota, copies);
                        m
                    }
                    None => {
                        let Some(m) = deficit
                            .iter()
                            .filter(|(_, d)| **d > 0)
                            .max_by_key(|(m, d)| (**d, std::cmp::Reverse(**m)))
                            .map(|(m, _)| *m)
                        else {
                            debug_assert!(false, "a hole with no deficit left");
                            return;
                        };
                        if !make_room(groups, x, m, copies) {
                            debug_assert!(false, "no group to swap with");
                            return;
                        }
                        open = open_groups(groups, quota, copies);
                        m
                    }
                },
            };
            *deficit.get_mut(&m).expect("member has a deficit") -= 1;
        }
    }
}

/// For each member, the groups with a hole that it is not in.
fn open_groups(
    groups: &[Vec<MemberId>],
    quota: &BTreeMap<MemberId, u64>,
    copies: usize,
) -> BTreeMap<MemberId, i64> {
    quota
        .keys()
        .map(|m| {
            let n = groups
                .iter()
                .filter(|g| g.len() < copies && !g.contains(m))
                .count();
            (*m, n as i64)
        })
        .collect()
}

/// Fill a hole of group `x` by re-routing copies placed in this pass: `k1` placed in `y1`
/// moves to `x`, `k2` placed in `y2` moves to `y1`, …, and a member below quota takes the
/// last group's freed slot. Breadth-first over groups; returns the member that was added.
fn reroute(
    groups: &mut [Vec<MemberId>],
    placed: &mut [Vec<MemberId>],
    deficit: &BTreeMap<MemberId, u64>,
    x: usize,
) -> Option<MemberId> {
    // Groups where each member was placed in this pass. Once a member's list has been
    // scanned, every group in it is visited: later steps skip it, so one search costs
    // O(placements + groups × members) rather than O(groups²).
    let mut placed_in: BTreeMap<MemberId, Vec<usize>> = BTreeMap::new();
    for (y, members) in placed.iter().enumerate() {
        for k in members {
            placed_in.entry(*k).or_default().push(y);
        }
    }
    let mut scanned = BTreeSet::new();
    let mut visited = vec![false; groups.len()];
    visited[x] = true;
    // parent[y] = (group that receives y's member, the member).
    let mut parent: BTreeMap<usize, (usize, MemberId)> = BTreeMap::new();
    let mut queue = VecDeque::from([x]);
    while let Some(g) = queue.pop_front() {
        for (&k, ys) in &placed_in {
            if scanned.contains(&k) || groups[g].contains(&k) {
                continue;
            }
            scanned.insert(k);
            for &y in ys {
                if visited[y] {
                    continue;
                }
                visited[y] = true;
                parent.insert(y, (g, k));
                let taker = deficit
                    .iter()
                    .filter(|(m, d)| **d > 0 && **m != k && !groups[y].contains(m))
                    .max_by_key(|(m, d)| (**d, mix_pair(y as u64, m.0)))
                    .map(|(m, _)| *m);
                if let Some(m) = taker {
                    // Shift each member one group along the path, then add `m` at its end.
                    let mut at = y;
                    while at != x {
                        let (to, k) = parent[&at];
                        groups[at].retain(|v| *v != k);
                        placed[at].retain(|v| *v != k);
                        groups[to].push(k);
                        placed[to].push(k);
                        at = to;
                    }
                    groups[y].push(m);
                    placed[y].push(m);
                    return Some(m);
                }
                queue.push_back(y);
            }
        }
    }
    None
}

/// Place `m` (already in group `x`, which has a hole) in another group, moving one of that
/// group's members into `x` if it is full. Such a group exists: `m` is below its quota, so
/// in fewer than all groups; a group without `m` either has a hole or is full while `x` is
/// not, so it holds a member `x` lacks.
fn make_room(groups: &mut [Vec<MemberId>], x: usize, m: MemberId, copies: usize) -> bool {
    let n = groups.len();
    for y in (x + 1..n).chain(0..x) {
        if groups[y].contains(&m) {
            continue;
        }
        if groups[y].len() < copies {
            groups[y].push(m);
            return true;
        }
        if let Some(at) = groups[y].iter().position(|k| !groups[x].contains(k)) {
            let k = std::mem::replace(&mut groups[y][at], m);
            groups[x].push(k);
            return true;
        }
    }
    false
}

/// Choose each group's primary and put it first.
fn assign_primaries(groups: &mut [Vec<MemberId>], capacity: &BTreeMap<MemberId, u64>) {
    let held = replica_counts(groups);
    let quota = apportion(
        groups.len() as u64,
        capacity
            .iter()
            .map(|(&m, &c)| (m, c, held.get(&m).copied().unwrap_or(0))),
    );
    let mut count: BTreeMap<MemberId, u64> = quota.keys().map(|m| (*m, 0)).collect();
    let mut primary: Vec<Option<MemberId>> = vec![None; groups.len()];

    // A group keeps its primary while that member is within quota.
    for (pg, group) in groups.iter().enumerate() {
        if let Some(&first) = group.first() {
            if count[&first] < quota[&first] {
                primary[pg] = Some(first);
                *count.get_mut(&first).expect("eligible member") += 1;
            }
        }
    }
    // The others go to the member of the group furthest below its quota.
    for (pg, group) in groups.iter().enumerate() {
        if primary[pg].is_some() {
            continue;
        }
        let best = group
            .iter()
            .copied()
            .max_by_key(|m| (quota[m] as i64 - count[m] as i64, mix_pair(pg as u64, m.0)));
        if let Some(m) = best {
            primary[pg] = Some(m);
            *count.get_mut(&m).expect("eligible member") += 1;
        }
    }
    balance_primaries(groups, &mut primary, &mut count, &quota);

    for (group, primary) in groups.iter_mut().zip(primary) {
        if let Some(p) = primary {
            let at = group
                .iter()
                .position(|m| *m == p)
                .expect("primary is a member");
            let p = group.remove(at);
            group.insert(0, p);
        }
    }
}

/// Move primaries from members above quota to members below it along alternating paths:
/// `a` primary of a group holding `c`, `c` primary of a group holding `b`, … each group's
/// primary shifts one step, so only the ends' counts change.
fn balance_primaries(
    groups: &[Vec<MemberId>],
    primary: &mut [Option<MemberId>],
    count: &mut BTreeMap<MemberId, u64>,
    quota: &BTreeMap<MemberId, u64>,
) {
    let mut stuck = BTreeSet::new();
    loop {
        let Some(source) = count
            .iter()
            .find(|(m, c)| **c > quota[*m] && !stuck.contains(*m))
            .map(|(m, _)| *m)
        else {
            return;
        };
        let mut by_primary: BTreeMap<MemberId, Vec<PgId>> = BTreeMap::new();
        for (pg, p) in primary.iter().enumerate() {
            if let Some(p) = p {
                by_primary.entry(*p).or_default().push(pg as PgId);
            }
        }
        // Breadth-first from the source; `via[v] = (u, pg)`: v reached from u through pg.
        let mut via: BTreeMap<MemberId, (MemberId, PgId)> = BTreeMap::new();
        let mut queue = VecDeque::from([source]);
        let mut target = None;
        'search: while let Some(u) = queue.pop_front() {
            for &pg in by_primary.get(&u).map_or(&[][..], Vec::as_slice) {
                for &v in &groups[pg as usize] {
                    if v == source || via.contains_key(&v) {
                        continue;
                    }
                    via.insert(v, (u, pg));
                    if count[&v] < quota[&v] {
                        target = Some(v);
                        break 'search;
                    }
                    queue.push_back(v);
                }
            }
        }
        let Some(target) = target else {
            stuck.insert(source);
            continue;
        };
        let mut v = target;
        while v != source {
            let (u, pg) = via[&v];
            primary[pg as usize] = Some(v);
            v = u;
        }
        *count.get_mut(&source).expect("eligible") -= 1;
        *count.get_mut(&target).expect("eligible") += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{moves, MemberState};

    fn ids(n: u64) -> Vec<MemberInfo> {
        (1..=n).map(|i| MemberInfo::up(i, 1 << 40)).collect()
    }

    #[test]
    fn apportion_is_proportional_capped_and_exact() {
        let a = apportion(
            10,
            [
                (MemberId(1), 1, 10),
                (MemberId(2), 1, 10),
                (MemberId(3), 2, 10),
            ],
        );
        assert_eq!(a.values().sum::<u64>(), 10);
        assert_eq!(a[&MemberId(3)], 5);
        // Member 1 is worth 90 % but can hold only 4; the others share the rest evenly.
        let a = apportion(
            8,
            [
                (MemberId(1), 90, 4),
                (MemberId(2), 5, 4),
                (MemberId(3), 5, 4),
            ],
        );
        assert_eq!(a[&MemberId(1)], 4);
        assert_eq!(a[&MemberId(2)], 2);
        assert_eq!(a[&MemberId(3)], 2);
    }

    #[test]
    fn a_first_map_is_balanced_with_distinct_members() {
        let map = compute(None, &ids(4), 2, 64).unwrap();
        assert_eq!(map.epoch, 1);
        for g in &map.groups {
            assert_eq!(g.len(), 2);
            assert_ne!(g[0], g[1]);
        }
        assert!(map.replica_counts().values().all(|&c| c == 32));
        assert!(map.primary_counts().values().all(|&c| c == 16));
    }

    #[test]
    fn recomputing_changes_nothing_and_keeps_the_epoch() {
        let first = compute(None, &ids(5), 3, 128).unwrap();
        let again = compute(Some(&first), &ids(5), 3, 128).unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn a_drained_member_loses_exactly_its_copies() {
        let members = ids(4);
        let before = compute(None, &members, 2, 256).unwrap();
        let mut drained = members.clone();
        drained[2].state = MemberState::Draining;
        let after = compute(Some(&before), &drained, 2, 256).unwrap();
        assert_eq!(after.epoch, 2);
        let moved = moves(&before, &after);
        assert_eq!(moved.len(), 128);
        assert!(moved.iter().all(|m| m.from == Some(MemberId(3))));
        assert_eq!(after.pgs_of(MemberId(3)).count(), 0);
    }

    #[test]
    fn fewer_members_than_replicas_gives_smaller_groups_that_grow_back() {
        let one = compute(None, &ids(1), 2, 16).unwrap();
        assert!(one.groups.iter().all(|g| g == &[MemberId(1)]));
        assert_eq!(one.replicas, 2);
        let two = compute(Some(&one), &ids(2), 2, 16).unwrap();
        assert!(two.groups.iter().all(|g| g.len() == 2));
        assert_eq!(two.epoch, 2);
    }

    #[test]
    fn degenerate_inputs_are_errors() {
        assert_eq!(
            compute(None, &ids(3), 0, 16),
            Err(PlacementError::InvalidReplicas {
                replicas: 0,
                max: 3
            })
        );
        assert_eq!(
            compute(None, &ids(3), 4, 16).unwrap_err(),
            PlacementError::InvalidReplicas {
                replicas: 4,
                max: 3
            }
        );
        assert_eq!(
            compute(None, &ids(3), 2, 0),
            Err(PlacementError::NoPlacementGroups)
        );
        assert_eq!(
            compute(None, &ids(3), 2, MAX_PG_COUNT + 1),
            Err(PlacementError::TooManyPlacementGroups {
                pg_count: MAX_PG_COUNT + 1,
                max: MAX_PG_COUNT
            })
        );
        assert_eq!(
            compute(None, &[], 2, 16),
            Err(PlacementError::NoEligibleMembers)
        );
        assert_eq!(
            compute(None, &[MemberInfo::up(1, 0)], 1, 16),
            Err(PlacementError::NoEligibleMembers)
        );
        let mut twice = ids(2);
        twice.push(MemberInfo::up(1, 5));
        assert_eq!(
            compute(None, &twice, 2, 16),
            Err(PlacementError::DuplicateMember { member: 1 })
        );
        let map = compute(None, &ids(2), 2, 16).unwrap();
        assert_eq!(
            compute(Some(&map), &ids(2), 2, 32),
            Err(PlacementError::PgCountChanged {
                previous: 16,
                requested: 32
            })
        );
    }

    #[test]
    fn a_big_member_holds_at_most_one_copy_per_group() {
        let members = [
            MemberInfo::up(1, 1000),
            MemberInfo::up(2, 10),
            MemberInfo::up(3, 10),
        ];
        let map = compute(None, &members, 2, 100).unwrap();
        let counts = map.replica_counts();
        assert_eq!(counts[&MemberId(1)], 100);
        assert_eq!(counts[&MemberId(2)] + counts[&MemberId(3)], 100);
    }

    #[test]
    fn default_replicas_follow_the_member_count() {
        assert_eq!(default_replicas(&ids(1)), 1);
        assert_eq!(default_replicas(&ids(2)), 2);
        let mut down = ids(2);
        down[1].state = MemberState::Down;
        assert_eq!(default_replicas(&down), 1);
    }
}
