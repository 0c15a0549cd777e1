//! `compute` against a simple model: valid groups, capacity-proportional fill, even
//! primaries, determinism, and little movement when a member joins or leaves.

use placement::{compute, moves, MemberId, MemberInfo, MemberState, PlacementMap};
use proptest::prelude::*;
use std::collections::BTreeMap;

const TIB: u64 = 1 << 40;

fn member_list() -> impl Strategy<Value = Vec<MemberInfo>> {
    proptest::collection::vec(
        (
            1u64..=8,
            prop_oneof![8 => Just(MemberState::Up), 1 => Just(MemberState::Down), 1 => Just(MemberState::Draining)],
        ),
        1..=10,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (units, state))| MemberInfo {
                id: MemberId(i as u64 * 7 + 1),
                capacity_bytes: units * TIB,
                state,
            })
            .collect()
    })
    .prop_filter("at least one member up", |ms: &Vec<MemberInfo>| ms.iter().any(|m| m.is_eligible()))
}

fn pg_counts() -> impl Strategy<Value = u32> {
    prop_oneof![Just(256u32), Just(512), Just(1000)]
}

/// The exact (real-valued) share of `total` per eligible member, proportional to capacity,
/// none above `cap`.
fn ideal(
    members: &[MemberInfo],
    total: f64,
    cap: impl Fn(MemberId) -> f64,
) -> BTreeMap<MemberId, f64> {
    let eligible: Vec<&MemberInfo> = members.iter().filter(|m| m.is_eligible()).collect();
    let mut fixed: BTreeMap<MemberId, f64> = BTreeMap::new();
    loop {
        let remaining = total - fixed.values().sum::<f64>();
        let free: Vec<&&MemberInfo> = eligible
            .iter()
            .filter(|m| !fixed.contains_key(&m.id))
            .collect();
        let weight: f64 = free.iter().map(|m| m.capacity_bytes as f64).sum();
        let over: Vec<_> = free
            .iter()
            .filter(|m| remaining * m.capacity_bytes as f64 / weight > cap(m.id) + 1e-9)
            .collect();
        if over.is_empty() {
            let mut out = fixed.clone();
            for m in free {
                out.insert(m.id, remaining * m.capacity_bytes as f64 / weight);
            }
            return out;
        }
        for m in over {
            fixed.insert(m.id, cap(m.id));
        }
    }
}

/// Extra moves balance can demand beyond the obvious ones: a member due a copy of every
/// group must enter each group it lacks, even one with no hole, displacing a copy there.
fn capped_entries(before: &PlacementMap, members: &[MemberInfo], replicas: usize) -> usize {
    let copies = replicas.min(eligible_count(members));
    let total = f64::from(before.pg_count) * copies as f64;
    let want = ideal(members, total, |_| f64::from(before.pg_count));
    let held = before.replica_counts();
    want.iter()
        .filter(|(_, &share)| share >= f64::from(before.pg_count) - 1e-9)
        .map(|(m, _)| before.pg_count as usize - held.get(m).copied().unwrap_or(0))
        .sum()
}

/// The fewest copies that must move besides those filling holes: members that grow must
/// enter groups they lack, through a hole if one is free (`holes[g]` per group), else by
/// displacing a copy. That is total growth minus the maximum flow of growth into holes,
/// computed here by augmenting paths.
fn forced_displacements(before: &PlacementMap, after: &PlacementMap, holes: &[usize]) -> usize {
    let before_counts = before.replica_counts();
    let growth: Vec<(MemberId, usize)> = after
        .replica_counts()
        .into_iter()
        .map(|(m, c)| {
            (
                m,
                c.saturating_sub(before_counts.get(&m).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, g)| *g > 0)
        .collect();
    let total: usize = growth.iter().map(|(_, g)| g).sum();
    // Residual graph: source 0, members 1..=M, groups after them, sink last.
    let (members, groups) = (growth.len(), before.groups.len());
    let sink = members + groups + 1;
    let mut cap: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); sink + 1];
    let add = |cap: &mut Vec<BTreeMap<usize, usize>>, a: usize, b: usize, c: usize| {
        *cap[a].entry(b).or_insert(0) += c;
        cap[b].entry(a).or_insert(0);
    };
    for (i, (m, g)) in growth.iter().enumerate() {
        add(&mut cap, 0, i + 1, *g);
        for (pg, group) in before.groups.iter().enumerate() {
            if holes[pg] > 0 && !group.contains(m) {
                add(&mut cap, i + 1, members + 1 + pg, 1);
            }
        }
    }
    for (pg, &h) in holes.iter().enumerate() {
        if h > 0 {
            add(&mut cap, members + 1 + pg, sink, h);
        }
    }
    // A greedy start, so that few augmenting paths remain to be searched.
    let mut flow = 0;
    let push_path = |cap: &mut Vec<BTreeMap<usize, usize>>, path: &[usize]| {
        for w in path.windows(2) {
            *cap[w[0]].get_mut(&w[1]).unwrap() -= 1;
            *cap[w[1]].get_mut(&w[0]).unwrap() += 1;
        }
    };
    for i in 0..members {
        for pg in 0..groups {
            let (m, g) = (i + 1, members + 1 + pg);
            if cap[0][&m] > 0 && cap[m].get(&g) == Some(&1) && cap[g].get(&sink) > Some(&0) {
                push_path(&mut cap, &[0, m, g, sink]);
                flow += 1;
            }
        }
    }
    loop {
        let mut prev = vec![usize::MAX; sink + 1];
        prev[0] = 0;
        let mut queue = std::collections::VecDeque::from([0]);
        while let Some(u) = queue.pop_front() {
            for (&v, &c) in &cap[u] {
                if c > 0 && prev[v] == usize::MAX {
                    prev[v] = u;
                    queue.push_back(v);
                }
            }
        }
        if prev[sink] == usize::MAX {
            break;
        }
        let mut push = usize::MAX;
        let mut v = sink;
        while v != 0 {
            push = push.min(cap[prev[v]][&v]);
            v = prev[v];
        }
        let mut v = sink;
        while v != 0 {
            let u = prev[v];
            *cap[u].get_mut(&v).unwrap() -= push;
            *cap[v].get_mut(&u).unwrap() += push;
            v = u;
        }
        flow += push;
    }
    total - flow
}

fn eligible_count(members: &[MemberInfo]) -> usize {
    members.iter().filter(|m| m.is_eligible()).count()
}

fn check_valid(map: &PlacementMap, members: &[MemberInfo], replicas: usize, pg_count: u32) {
    let eligible: Vec<MemberId> = members
        .iter()
        .filter(|m| m.is_eligible())
        .map(|m| m.id)
        .collect();
    let copies = replicas.min(eligible.len());
    assert_eq!(map.groups.len(), pg_count as usize);
    assert_eq!(map.pg_count, pg_count);
    for group in &map.groups {
        assert_eq!(group.len(), copies, "{group:?}");
        let mut distinct = group.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), copies, "distinct members: {group:?}");
        assert!(group.iter().all(|m| eligible.contains(m)), "{group:?}");
    }
}

fn check_balanced(map: &PlacementMap, members: &[MemberInfo], replicas: usize) {
    let copies = replicas.min(eligible_count(members));
    let total = f64::from(map.pg_count) * copies as f64;
    let want = ideal(members, total, |_| f64::from(map.pg_count));
    let have = map.replica_counts();
    for (m, &share) in &want {
        let got = have.get(m).copied().unwrap_or(0) as f64;
        // Whole copies: never more than one away from the exact share…
        assert!(
            (got - share).abs() < 1.0 + 1e-9,
            "{m}: {got} copies, ideal {share}"
        );
        // …which is within 10 % once a member is due ten copies or more.
        if share >= 10.0 {
            assert!((got - share).abs() <= 0.1 * share, "{m}: {got} vs {share}");
        }
    }
    // Primaries by capacity too, limited to the groups a member is in.
    let want = ideal(members, f64::from(map.pg_count), |m| {
        have.get(&m).copied().unwrap_or(0) as f64
    });
    let primaries = map.primary_counts();
    for (m, &share) in &want {
        let got = primaries.get(m).copied().unwrap_or(0) as f64;
        assert!(
            (got - share).abs() <= (0.1 * share).max(2.0),
            "{m}: primary of {got}, ideal {share}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_global_rejects: 100_000, ..ProptestConfig::default() })]

    #[test]
    fn a_map_is_valid_balanced_and_deterministic(
        members in member_list(),
        replicas in 1usize..=3,
        pg_count in pg_counts(),
    ) {
        let map = compute(None, &members, replicas, pg_count).unwrap();
        check_valid(&map, &members, replicas, pg_count);
        check_balanced(&map, &members, replicas);
        prop_assert_eq!(&compute(None, &members, replicas, pg_count).unwrap(), &map);
        let again = compute(Some(&map), &members, replicas, pg_count).unwrap();
        prop_assert_eq!(again, map);
    }

    #[test]
    fn a_new_member_takes_its_share_and_little_else_moves(
        members in member_list(),
        replicas in 1usize..=3,
        pg_count in pg_counts(),
        units in 1u64..=8,
    ) {
        prop_assume!(eligible_count(&members) >= replicas);
        let before = compute(None, &members, replicas, pg_count).unwrap();
        let newcomer = MemberInfo::up(1_000, units * TIB);
        let mut grown = members.clone();
        grown.push(newcomer);
        let after = compute(Some(&before), &grown, replicas, pg_count).unwrap();
        check_valid(&after, &grown, replicas, pg_count);
        check_balanced(&after, &grown, replicas);
        prop_assert_eq!(after.epoch, before.epoch + 1);

        let moved = moves(&before, &after);
        let to_newcomer = moved.iter().filter(|m| m.to == Some(newcomer.id)).count();
        prop_assert_eq!(to_newcomer, after.pgs_of(newcomer.id).count());
        // Apart from the newcomer's copies, only rounding moves anything.
        let slack = eligible_count(&grown) + 2 + capped_entries(&before, &grown, replicas);
        prop_assert!(
            moved.len() - to_newcomer <= slack,
            "{} extra moves; before {:?} after {:?}",
            moved.len() - to_newcomer,
            before.replica_counts(),
            after.replica_counts()
        );
        prop_assert!(moved.iter().all(|m| m.from.is_some() && m.to.is_some()));
    }

    #[test]
    fn a_leaving_member_gives_up_its_copies_and_little_else_moves(
        members in member_list(),
        replicas in 1usize..=3,
        pg_count in pg_counts(),
        pick in any::<proptest::sample::Index>(),
        how in prop_oneof![Just(MemberState::Down), Just(MemberState::Draining)],
    ) {
        let eligible: Vec<usize> = (0..members.len()).filter(|&i| members[i].is_eligible()).collect();
        prop_assume!(eligible.len() > replicas);
        let leaving = eligible[pick.index(eligible.len())];
        let before = compute(None, &members, replicas, pg_count).unwrap();
        let mut shrunk = members.clone();
        shrunk[leaving].state = how;
        let gone = shrunk[leaving].id;
        let after = compute(Some(&before), &shrunk, replicas, pg_count).unwrap();
        check_valid(&after, &shrunk, replicas, pg_count);
        check_balanced(&after, &shrunk, replicas);

        let moved = moves(&before, &after);
        let from_gone = moved.iter().filter(|m| m.from == Some(gone)).count();
        prop_assert_eq!(from_gone, before.pgs_of(gone).count());
        let holes: Vec<usize> = before.groups.iter().map(|g| usize::from(g.contains(&gone))).collect();
        let forced = forced_displacements(&before, &after, &holes);
        // The greedy stays near that lower bound (it is not a min-cost flow): within a
        // quarter of it, plus rounding.
        let slack = eligible_count(&shrunk) + 2 + forced + forced / 4;
        prop_assert!(
            moved.len() - from_gone <= slack,
            "{} extra moves, {} forced; before {:?} after {:?}",
            moved.len() - from_gone,
            forced,
            before.replica_counts(),
            after.replica_counts()
        );

        // Taking the member out of the list altogether places the same way.
        let without: Vec<MemberInfo> = members.iter().filter(|m| m.id != gone).copied().collect();
        prop_assert_eq!(compute(Some(&before), &without, replicas, pg_count).unwrap(), after);
    }

    #[test]
    fn a_changed_replica_count_keeps_the_copies_it_can(
        members in member_list(),
        from in 1usize..=3,
        to in 1usize..=3,
        pg_count in pg_counts(),
    ) {
        let before = compute(None, &members, from, pg_count).unwrap();
        let after = compute(Some(&before), &members, to, pg_count).unwrap();
        check_valid(&after, &members, to, pg_count);
        check_balanced(&after, &members, to);
        let copies = |r: usize| r.min(eligible_count(&members));
        let moved = moves(&before, &after);
        // Each group gains or loses exactly the difference, plus rounding and caps.
        let needed = pg_count as usize * copies(from).abs_diff(copies(to));
        let forced = if to > from {
            let holes = vec![copies(to) - copies(from); pg_count as usize];
            forced_displacements(&before, &after, &holes)
        } else {
            0
        };
        let slack = eligible_count(&members) + 2 + forced + forced / 4;
        prop_assert!(moved.len() <= needed + slack, "{} moves, {} needed", moved.len(), needed);
        prop_assert_eq!(after.epoch == before.epoch, from == to);
    }
}
