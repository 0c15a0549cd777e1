//! A linearizability checker for block storage: every block (LBA) is an independent
//! read/write register, and a history of timed reads and writes from many clients is
//! checked against it.
//!
//! ```
//! use linearize::{check, Op};
//! let history = [
//!     Op::write(1, 7, 0x11, 0, 10),  // client 1 writes 0x11 to block 7 during [0, 10]
//!     Op::read(2, 7, 0x11, 5, 15),   // client 2 reads it back, overlapping the write
//!     Op::write_indeterminate(3, 7, 0x31, 20), // client 3 timed out: it may or may not land
//!     Op::read(1, 7, 0x11, 30, 40),  // ... it did not (yet)
//! ];
//! let report = check(&history, 0).unwrap();
//! assert_eq!(report.writes, 2);
//! ```
//!
//! # What is checked
//!
//! A history is *linearizable* when there is one order of its operations that (a) respects
//! real time: an op that completed before another was invoked comes first, and (b) is a
//! legal run of a register: each read returns the value of the latest write before it, or
//! the initial value. Timing: `a` precedes `b` exactly when `a.complete < b.invoke`; equal
//! timestamps count as overlapping, so coarse clocks never produce false alarms. All times
//! must come from one clock (or one logical clock).
//!
//! Operations whose outcome is unknown: a write that never completed may take effect at any
//! point after its invoke, or never (exact). A read that failed is dropped: it changes
//! nothing and shows nothing (exact). A read with no completion time is dropped too, which
//! could hide a violation but never invents one.
//!
//! # The algorithm, and why it is exact
//!
//! 1. **Split by block** ([`check`]). Linearizability is *local* (Herlihy and Wing): a
//!    history of independent objects is linearizable iff each object's sub-history is. So
//!    each block is checked alone, which keeps every search small.
//! 2. **Prepare a block** (`history.rs`). Each step accepts exactly the same histories:
//!    * an indeterminate write whose value no read returned is dropped: given any
//!      linearization, taking it out changes no read (none read it, so none sits between
//!      it and the next write), and "never took effect" is one of its allowed outcomes;
//!    * a write whose value is unique on the block (and not the initial value; the test
//!      writers guarantee this by encoding client and sequence number) must take effect
//!      before every read of that value, so its deadline becomes the earliest such read's
//!      completion when that is sooner than its own. An indeterminate but observed write
//!      thus becomes a required op with a deadline, and fewer ops look concurrent;
//!    * an indeterminate write whose value is *not* unique keeps no deadline and is
//!      optional.
//! 3. **Quick checks** with unique values: a read of a value never written (nor initial),
//!    and a read of a value whose every write was invoked after the read completed, are
//!    reported at once, explained by the read (and that write).
//! 4. **Search** (`search.rs`), after Wing and Gong and Lowe's "just-in-time"
//!    linearization: a state is (the set `L` of ops already placed, the register's value).
//!    An op may be placed next iff every op that must precede it in real time is in `L`,
//!    i.e. its invoke is no later than the completion of every op outside `L`. Writes set
//!    the value; a read may be placed only when it returns the current value. Depth-first
//!    search over these steps succeeds when every required op is placed.
//!    * *Sound* (a rejection is a real violation): a state's future depends only on
//!      `(L, value)`, so skipping a state already explored loses no ordering; the search
//!      rejects only after every legal ordering was tried.
//!    * *Complete* (an acceptance is real): a success path is itself a linearization that
//!      respects real time and the register at every step.
//!    * *Eager reads*: a read that returns the current value and may be placed is placed
//!      at once, without branching. Any linearization from this state that places it later
//!      stays legal with it moved here: reads do not change the value, and nothing placed
//!      in between had to precede it (it was already placeable). This removes the branching
//!      on reads; only writes branch.
//!    * *Bounded*: every state is expanded at most once, at most
//!      [`Limits::max_states`] of them, after which the block is reported as
//!      [`Anomaly::Budget`] instead of hanging. With concurrency `c` the reachable sets `L`
//!      are about "all ops up to a point, plus a subset of the `c` open ones", so a few
//!      hundred ops at concurrency 8 stay far below the default budget.
//! 5. **Explain** (`shrink.rs`). A failing block is narrowed to a small window, each step
//!    keeping "the window has no linearization, hence the block has none":
//!    * the shortest failing *prefix* in time (cut at a completion time; ops completing
//!      after the cut become pending): a prefix of a linearizable history is linearizable;
//!    * then deletion, in halves and then one by one, of ops that cannot rescue the
//!      window: any read (removing a read only removes constraints) and any write whose
//!      value no remaining read returns (shown above). What is left is 1-minimal: removing
//!      any further removable op makes it linearizable.

mod anomaly;
mod history;
mod search;
mod shrink;
#[cfg(test)]
mod tests;

pub use anomaly::{Anomaly, Reason, Violation};

use std::collections::BTreeMap;

/// One operation on one block, as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Who issued it (only shown in explanations).
    pub client: u64,
    /// The block (LBA) it addressed: each block is a separate register.
    pub block: u64,
    /// Read or write, with the value.
    pub kind: Kind,
    /// When it was issued (nanoseconds or logical time; one clock for the whole history).
    pub invoke: u64,
    /// When its outcome was known; `None` when it is not (client died, error, timeout).
    pub complete: Option<u64>,
}

/// What an [`Op`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Wrote `value` (unique per block, for fast checking; exact either way).
    Write { value: u64 },
    /// Returned `value`; `None` when the read failed or its data is unknown (ignored).
    Read { value: Option<u64> },
}

impl Op {
    /// A write that completed.
    pub fn write(client: u64, block: u64, value: u64, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            block,
            kind: Kind::Write { value },
            invoke,
            complete: Some(complete),
        }
    }

    /// A write whose outcome is unknown: it may take effect any time after `invoke`, or never.
    pub fn write_indeterminate(client: u64, block: u64, value: u64, invoke: u64) -> Op {
        Op {
            client,
            block,
            kind: Kind::Write { value },
            invoke,
            complete: None,
        }
    }

    /// A read that completed and returned `value`.
    pub fn read(client: u64, block: u64, value: u64, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            block,
            kind: Kind::Read { value: Some(value) },
            invoke,
            complete: Some(complete),
        }
    }

    /// A read that failed or never completed (it is ignored).
    pub fn read_failed(client: u64, block: u64, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client,
            block,
            kind: Kind::Read { value: None },
            invoke,
            complete,
        }
    }
}

/// Bounds on the work [`check_with`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most search states (distinct (placed ops, value) pairs) explored for one block
    /// before giving up with [`Anomaly::Budget`]. Each is remembered, at about 64 bytes
    /// plus a bit per op of the block.
    pub max_states: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_states: 1_000_000,
        }
    }
}

/// What a successful [`check`] covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct blocks in the history.
    pub blocks: usize,
    /// Operations checked: `reads + writes`.
    pub ops: usize,
    /// Completed reads with a value.
    pub reads: usize,
    /// Writes, completed or not.
    pub writes: usize,
    /// Writes whose outcome is unknown (included in `writes`).
    pub indeterminate_writes: usize,
    /// Reads ignored because they failed or never completed.
    pub dropped_reads: usize,
    /// Search states explored, summed over blocks.
    pub states: usize,
}

/// Checks that `ops` is linearizable, every block starting at `initial`, with default
/// [`Limits`]. On failure, explains the first failing block (lowest number).
pub fn check(ops: &[Op], initial: u64) -> Result<Report, Anomaly> {
    check_with(ops, initial, &Limits::default())
}

/// [`check`] with explicit limits.
pub fn check_with(ops: &[Op], initial: u64, limits: &Limits) -> Result<Report, Anomaly> {
    let mut report = Report::default();
    let mut blocks: BTreeMap<u64, Vec<Op>> = BTreeMap::new();
    for op in ops {
        if op.complete.is_some_and(|c| c < op.invoke) {
            return Err(Anomaly::Malformed { op: op.clone() });
        }
        match op.kind {
            Kind::Write { .. } => {
                report.writes += 1;
                report.indeterminate_writes += usize::from(op.complete.is_none());
            }
            Kind::Read { value } if value.is_some() && op.complete.is_some() => report.reads += 1,
            Kind::Read { .. } => report.dropped_reads += 1,
        }
        blocks.entry(op.block).or_default().push(op.clone());
    }
    report.blocks = blocks.len();
    report.ops = report.reads + report.writes;
    for (block, ops) in blocks {
        report.states += check_block(block, &ops, initial, limits)?;
    }
    Ok(report)
}

/// Checks one block's ops (all with `block`); returns the states explored.
fn check_block(block: u64, ops: &[Op], initial: u64, limits: &Limits) -> Result<usize, Anomaly> {
    let violation = |reason, window: Vec<usize>| {
        Anomaly::NotLinearizable(Violation {
            block,
            initial,
            reason,
            block_ops: ops.len(),
            window: window.into_iter().map(|i| ops[i].clone()).collect(),
        })
    };
    if let Some((reason, window)) = history::quick_check(ops, initial) {
        return Err(violation(reason, window));
    }
    let entries = history::prepare(ops, initial);
    match search::search(&entries, initial, limits.max_states) {
        search::Outcome::Linearizable { states } => Ok(states),
        search::Outcome::GaveUp { states } => Err(Anomaly::Budget {
            block,
            ops: ops.len(),
            states,
        }),
        search::Outcome::Violated { .. } => {
            let window = shrink::window(ops, initial, limits.max_states);
            Err(violation(Reason::NoOrder, window))
        }
    }
}
