//! Narrowing a block that has no linearization to a small window of ops that has none
//! either: the shortest failing prefix in time, then deletion of every op that cannot
//! rescue it. Each step keeps "the window fails, hence the block fails" (crate docs).

use crate::history::prepare;
use crate::search::{search, Outcome};
use crate::{Kind, Op};

/// The window, as indices into `ops` (one block, known to fail) in invoke order.
pub(crate) fn window(ops: &[Op], initial: u64, max_states: usize) -> Vec<usize> {
    // Candidate cuts: a violation becomes visible when some op completes. The last one
    // keeps every op, so it is known to fail.
    let mut cuts: Vec<u64> = ops.iter().filter_map(|op| op.complete).collect();
    cuts.push(u64::MAX);
    cuts.sort_unstable();
    cuts.dedup();
    let all: Vec<usize> = (0..ops.len()).collect();
    let fails_at = |cut: u64, set: &[usize]| fails(ops, set, cut, initial, max_states);
    // Failing is monotone in the cut (prefixes of linearizable histories are
    // linearizable); a search that gives up counts as "not shown to fail", so `hi` only
    // ever moves to a cut that was seen to fail.
    let (mut lo, mut hi) = (0, cuts.len() - 1);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails_at(cuts[mid], &all) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let cut = cuts[hi];
    // What the cut keeps: ops invoked by then, less reads that had not completed.
    let mut set: Vec<usize> = all
        .into_iter()
        .filter(|&i| kept(&ops[i], cut) && !is_dropped_read(&ops[i]))
        .collect();
    set.sort_by_key(|&i| (ops[i].invoke, i));
    // Delete chunks, halving their size, then single ops until nothing more goes.
    let mut size = (set.len() / 2).max(1);
    loop {
        let mut changed = false;
        let mut start = 0;
        while start < set.len() {
            let end = (start + size).min(set.len());
            let rest: Vec<usize> = set[..start].iter().chain(&set[end..]).copied().collect();
            if removable(ops, &set[start..end], &rest) && fails_at(cut, &rest) {
                set = rest;
                changed = true;
            } else {
                start = end;
            }
        }
        if size > 1 {
            size /= 2;
        } else if !changed {
            return set;
        }
    }
}

/// Whether the ops in `set`, seen at time `cut`, have no linearization. Ops completing
/// after the cut are pending: reads are dropped, writes become indeterminate.
fn fails(ops: &[Op], set: &[usize], cut: u64, initial: u64, max_states: usize) -> bool {
    let seen: Vec<Op> = set
        .iter()
        .map(|&i| &ops[i])
        .filter(|op| kept(op, cut))
        .map(|op| {
            let mut op = op.clone();
            op.complete = op.complete.filter(|&c| c <= cut);
            op
        })
        .collect();
    let entries = prepare(&seen, initial);
    matches!(
        search(&entries, initial, max_states),
        Outcome::Violated { .. }
    )
}

/// Whether the prefix up to `cut` keeps `op`: invoked by then and, for a read, completed.
fn kept(op: &Op, cut: u64) -> bool {
    let completed_by_cut = op.complete.is_some_and(|c| c <= cut);
    op.invoke <= cut && (matches!(op.kind, Kind::Write { .. }) || completed_by_cut)
}

/// A read the checker ignores anyway (failed, or no completion).
fn is_dropped_read(op: &Op) -> bool {
    matches!(op.kind, Kind::Read { value: None })
        || (matches!(op.kind, Kind::Read { .. }) && op.complete.is_none())
}

/// Whether deleting `gone` from the window keeps a failure a failure: reads always can
/// go; a write only if no remaining read returned its value.
fn removable(ops: &[Op], gone: &[usize], rest: &[usize]) -> bool {
    gone.iter().all(|&g| match ops[g].kind {
        Kind::Read { .. } => true,
        Kind::Write { value } => !rest
            .iter()
            .any(|&r| matches!(ops[r].kind, Kind::Read { value: Some(v) } if v == value)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_read_after_many_writes_shrinks_to_three_ops() {
        // Sequential writes 1..=20, then a read of 5: only write 5, a later write and the
        // read explain it.
        let mut ops: Vec<Op> = (1..=20)
            .map(|v| Op::write(1, 0, v, v * 10, v * 10 + 5))
            .collect();
        ops.push(Op::read(2, 0, 5, 300, 305));
        let w = window(&ops, 0, 10_000);
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(ops[w[0]].kind, Kind::Write { value: 5 });
        assert_eq!(ops[w[2]].kind, Kind::Read { value: Some(5) });
        assert!(fails(&ops, &w, u64::MAX, 0, 10_000));
    }

    #[test]
    fn the_cut_drops_what_happened_after_the_violation() {
        let ops = [
            Op::write(1, 0, 1, 0, 10),
            Op::read(2, 0, 0, 20, 30), // lost write
            Op::write(1, 0, 2, 40, 50),
            Op::read(2, 0, 2, 60, 70),
        ];
        assert_eq!(window(&ops, 0, 10_000), vec![0, 1]);
    }
}
