//! One block's ops turned into what the search needs, and the quick checks that unique
//! write values allow. Why each preparation step is exact is in the crate docs.

use crate::{Kind, Op, Reason};
use std::collections::HashMap;

/// "No deadline": an indeterminate write that need never take effect.
pub(crate) const NEVER: u64 = u64::MAX;

/// One op as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub invoke: u64,
    /// The latest time it may take effect: its completion, tightened for writes with a
    /// unique value to the earliest completion of a read of that value; [`NEVER`] if none.
    pub deadline: u64,
    pub write: bool,
    pub value: u64,
    /// Whether a linearization must include it: false only for an indeterminate write
    /// whose value is not unique (it may never have taken effect).
    pub required: bool,
}

/// The value of a read that counts: completed, with data.
fn read_value(op: &Op) -> Option<u64> {
    match op.kind {
        Kind::Read { value } if op.complete.is_some() => value,
        _ => None,
    }
}

fn write_value(op: &Op) -> Option<u64> {
    match op.kind {
        Kind::Write { value } => Some(value),
        Kind::Read { .. } => None,
    }
}

/// Per value written on the block: how many writes wrote it.
fn write_counts(ops: &[Op]) -> HashMap<u64, usize> {
    let mut counts = HashMap::new();
    for v in ops.iter().filter_map(write_value) {
        *counts.entry(v).or_insert(0) += 1;
    }
    counts
}

/// The search's view of one block's ops, sorted by invoke (the search relies on it).
pub(crate) fn prepare(ops: &[Op], initial: u64) -> Vec<Entry> {
    let counts = write_counts(ops);
    // Earliest completion of a read of each value: a unique write must precede it.
    let mut first_read: HashMap<u64, u64> = HashMap::new();
    for op in ops {
        if let (Some(v), Some(c)) = (read_value(op), op.complete) {
            let t = first_read.entry(v).or_insert(c);
            *t = (*t).min(c);
        }
    }
    let mut entries = Vec::with_capacity(ops.len());
    for op in ops {
        if let Some(value) = read_value(op) {
            let deadline = op.complete.unwrap_or(NEVER);
            entries.push(Entry {
                invoke: op.invoke,
                deadline,
                write: false,
                value,
                required: true,
            });
            continue;
        }
        let Some(value) = write_value(op) else {
            continue;
        }; // a failed read
        let observed = first_read.get(&value).copied();
        if op.complete.is_none() && observed.is_none() {
            continue; // may never have happened, and nothing shows it did
        }
        let unique = counts[&value] == 1 && value != initial;
        let own = op.complete.unwrap_or(NEVER);
        let (deadline, required) = match (unique, observed) {
            (true, Some(read)) => (own.min(read), true),
            _ => (own, op.complete.is_some()),
        };
        entries.push(Entry {
            invoke: op.invoke,
            deadline,
            write: true,
            value,
            required,
        });
    }
    entries.sort_by_key(|e| (e.invoke, e.deadline));
    entries
}

/// The violations unique values reveal without a search: a read of a value nobody wrote,
/// and a read of a value all of whose writes were invoked after the read completed.
/// Returns the reason and the ops (indices into `ops`) that show it.
pub(crate) fn quick_check(ops: &[Op], initial: u64) -> Option<(Reason, Vec<usize>)> {
    // Per value: the write invoked earliest (index into `ops`).
    let mut earliest: HashMap<u64, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(v) = write_value(op) {
            let e = earliest.entry(v).or_insert(i);
            if op.invoke < ops[*e].invoke {
                *e = i;
            }
        }
    }
    let mut found: Option<(Reason, Vec<usize>)> = None;
    for (i, op) in ops.iter().enumerate() {
        let (Some(value), Some(done)) = (read_value(op), op.complete) else {
            continue;
        };
        if value == initial {
            continue;
        }
        let this = match earliest.get(&value) {
            None => (Reason::NeverWritten { value }, vec![i]),
            Some(&w) if ops[w].invoke > done => (Reason::ReadBeforeWrite { value }, vec![i, w]),
            Some(_) => continue,
        };
        // Report the earliest such read, so the explanation is stable under reordering.
        if found
            .as_ref()
            .map_or(true, |(_, f)| op.invoke < ops[f[0]].invoke)
        {
            found = Some(this);
        }
    }
    found.map(|(reason, mut window)| {
        window.sort_by_key(|&i| ops[i].invoke);
        (reason, window)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unobserved_indeterminate_writes_are_dropped() {
        let ops = [
            Op::write_indeterminate(1, 0, 5, 0),
            Op::write(2, 0, 6, 1, 2),
        ];
        let e = prepare(&ops, 0);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].value, 6);
    }

    #[test]
    fn observed_unique_write_gets_the_readers_deadline() {
        let ops = [
            Op::write_indeterminate(1, 0, 5, 0),
            Op::read(2, 0, 5, 3, 9),
            Op::read(3, 0, 5, 4, 7),
            Op::write(4, 0, 6, 1, 20),
            Op::read(5, 0, 6, 2, 8),
        ];
        let e = prepare(&ops, 0);
        let w5 = e.iter().find(|e| e.write && e.value == 5).unwrap();
        assert_eq!((w5.deadline, w5.required), (7, true));
        let w6 = e.iter().find(|e| e.write && e.value == 6).unwrap();
        assert_eq!(w6.deadline, 8);
    }

    #[test]
    fn repeated_values_keep_their_own_deadlines() {
        let ops = [
            Op::write_indeterminate(1, 0, 5, 0),
            Op::write(2, 0, 5, 1, 20),
            Op::read(3, 0, 5, 3, 4),
        ];
        let e = prepare(&ops, 0);
        assert_eq!(e[0].deadline, NEVER);
        assert!(!e[0].required);
        assert_eq!(e[1].deadline, 20);
    }

    #[test]
    fn quick_check_reports_the_read_and_the_late_write() {
        let ops = [Op::read(1, 0, 9, 0, 5), Op::write(2, 0, 9, 6, 8)];
        let (reason, window) = quick_check(&ops, 0).unwrap();
        assert_eq!(reason, Reason::ReadBeforeWrite { value: 9 });
        assert_eq!(window, vec![0, 1]);
        assert_eq!(quick_check(&[Op::read(1, 0, 0, 0, 5)], 0), None);
    }
}
