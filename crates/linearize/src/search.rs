//! The exact search for a linearization of one block: depth-first over states
//! (placed ops, register value), each state expanded at most once. The crate docs say why
//! it is sound and complete, and why reads are placed eagerly.

use crate::history::Entry;
use std::collections::HashSet;

/// What the search concluded, and how many states it explored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Linearizable {
        states: usize,
    },
    Violated {
        states: usize,
    },
    /// More than the budget of states were needed.
    GaveUp {
        states: usize,
    },
}

/// Searches for a linearization of `entries` (sorted by invoke) from `initial`, exploring
/// at most `max_states` states.
pub(crate) fn search(entries: &[Entry], initial: u64, max_states: usize) -> Outcome {
    debug_assert!(entries.windows(2).all(|w| w[0].invoke <= w[1].invoke));
    let mut s = Search {
        entries,
        placed: vec![0; entries.len().div_ceil(64)],
        value: initial,
        left: entries.iter().filter(|e| e.required).count(),
        seen: HashSet::new(),
    };
    // Each frame is one write placed (or the root), with the reads placed eagerly after it.
    let mut stack: Vec<Frame> = Vec::new();
    let mut placed = Vec::new();
    match s.enter(&mut placed) {
        Step::Done => {
            return Outcome::Linearizable {
                states: s.seen.len(),
            }
        }
        Step::Seen => unreachable!("the first state is new"),
        Step::Fresh(writes) => stack.push(Frame {
            placed,
            before: initial,
            writes,
            next: 0,
        }),
    }
    while let Some(top) = stack.last_mut() {
        let Some(&w) = top.writes.get(top.next) else {
            let frame = stack.pop().expect("the loop saw it");
            s.undo(&frame.placed, frame.before);
            continue;
        };
        top.next += 1;
        let before = s.value;
        let mut placed = vec![w];
        s.place(w);
        s.value = s.entries[w].value;
        match s.enter(&mut placed) {
            Step::Done => {
                return Outcome::Linearizable {
                    states: s.seen.len(),
                }
            }
            Step::Seen => s.undo(&placed, before),
            Step::Fresh(writes) => {
                if s.seen.len() > max_states {
                    return Outcome::GaveUp {
                        states: s.seen.len(),
                    };
                }
                stack.push(Frame {
                    placed,
                    before,
                    writes,
                    next: 0,
                });
            }
        }
    }
    Outcome::Violated {
        states: s.seen.len(),
    }
}

/// One level of the depth-first search.
struct Frame {
    /// Ops placed on entering this level, to take back when leaving it.
    placed: Vec<usize>,
    /// The register's value before them.
    before: u64,
    /// The writes that may be placed next, and the next one to try.
    writes: Vec<usize>,
    next: usize,
}

/// What entering a state found.
enum Step {
    /// Every required op is placed: a linearization exists.
    Done,
    /// This state was explored before (and failed, or the search would have ended).
    Seen,
    /// A new state; these writes may be placed next.
    Fresh(Vec<usize>),
}

struct Search<'a> {
    entries: &'a [Entry],
    /// Bitset of the ops placed so far.
    placed: Vec<u64>,
    value: u64,
    /// Required ops not yet placed.
    left: usize,
    /// States explored: (placed, value).
    seen: HashSet<(Box<[u64]>, u64)>,
}

impl Search<'_> {
    fn is_placed(&self, i: usize) -> bool {
        self.placed[i / 64] & (1 << (i % 64)) != 0
    }

    fn place(&mut self, i: usize) {
        self.placed[i / 64] |= 1 << (i % 64);
        self.left -= usize::from(self.entries[i].required);
    }

    fn undo(&mut self, ops: &[usize], before: u64) {
        for &i in ops {
            self.placed[i / 64] &= !(1 << (i % 64));
            self.left += usize::from(self.entries[i].required);
        }
        self.value = before;
    }

    /// The first op not yet placed (`entries.len()` if none).
    fn first_open(&self) -> usize {
        let word = self.placed.iter().position(|&w| w != u64::MAX);
        word.map_or(self.entries.len(), |w| {
            (w * 64 + self.placed[w].trailing_ones() as usize).min(self.entries.len())
        })
    }

    /// The ops that may be placed next: not placed, and invoked no later than every
    /// unplaced op's deadline (else that op would have to come first).
    fn candidates(&self) -> Vec<usize> {
        let mut horizon = u64::MAX;
        let mut open = Vec::new();
        // Sorted by invoke: once an invoke passes the horizon (which only shrinks), no
        // later op can be a candidate, nor lower the horizon (deadline >= invoke).
        for i in self.first_open()..self.entries.len() {
            if self.is_placed(i) {
                continue;
            }
            let e = &self.entries[i];
            if e.invoke > horizon {
                break;
            }
            horizon = horizon.min(e.deadline);
            open.push(i);
        }
        open.retain(|&i| self.entries[i].invoke <= horizon);
        open
    }

    /// Places every read that may go next and returns the current value (repeatedly: each
    /// placed read can only widen the candidates), then records the state.
    fn enter(&mut self, placed: &mut Vec<usize>) -> Step {
        let writes = loop {
            let candidates = self.candidates();
            let before = placed.len();
            for &i in &candidates {
                let e = &self.entries[i];
                if !e.write && e.value == self.value {
                    self.place(i);
                    placed.push(i);
                }
            }
            if placed.len() == before {
                break candidates
                    .into_iter()
                    .filter(|&i| self.entries[i].write)
                    .collect();
            }
        };
        if self.left == 0 {
            return Step::Done;
        }
        if self
            .seen
            .insert((self.placed.clone().into_boxed_slice(), self.value))
        {
            Step::Fresh(writes)
        } else {
            Step::Seen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NEVER;

    fn w(invoke: u64, deadline: u64, value: u64) -> Entry {
        Entry {
            invoke,
            deadline,
            write: true,
            value,
            required: deadline != NEVER,
        }
    }

    fn r(invoke: u64, deadline: u64, value: u64) -> Entry {
        Entry {
            invoke,
            deadline,
            write: false,
            value,
            required: true,
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert!(matches!(search(&[], 0, 10), Outcome::Linearizable { .. }));
    }

    #[test]
    fn optional_write_need_not_be_placed() {
        let e = [w(0, NEVER, 1), r(5, 6, 0)];
        assert!(matches!(search(&e, 0, 10), Outcome::Linearizable { .. }));
    }

    #[test]
    fn ties_count_as_overlap() {
        // The write completes at 5 and the read is invoked at 5: either order is allowed.
        let e = [w(0, 5, 1), r(5, 6, 0)];
        assert!(matches!(search(&e, 0, 10), Outcome::Linearizable { .. }));
        let e = [w(0, 4, 1), r(5, 6, 0)];
        assert!(matches!(search(&e, 0, 10), Outcome::Violated { .. }));
    }

    #[test]
    fn budget_is_enforced() {
        // Nine concurrent writes and a read of the initial value after them all: no
        // order works, and proving it needs every subset of the writes.
        let mut e: Vec<Entry> = (1..=9).map(|v| w(0, 10, v)).collect();
        e.push(r(20, 21, 0));
        assert!(matches!(search(&e, 0, 50), Outcome::GaveUp { .. }));
        assert!(matches!(search(&e, 0, 100_000), Outcome::Violated { .. }));
    }

    #[test]
    fn first_open_skips_full_words() {
        let e: Vec<Entry> = (0..70).map(|v| w(v, v, v + 1)).collect();
        let mut s = Search {
            entries: &e,
            placed: vec![u64::MAX, 0b11],
            value: 0,
            left: 0,
            seen: HashSet::new(),
        };
        assert_eq!(s.first_open(), 66);
        s.placed = vec![u64::MAX, (1 << 6) - 1];
        assert_eq!(s.first_open(), 70);
    }
}
