//! Why a history was rejected, written for a person.

use crate::{Kind, Op};
use std::fmt;

/// Why [`check`](crate::check) did not accept a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A block has no linearization; the violation shows a small window of ops.
    NotLinearizable(Violation),
    /// Deciding a block needed more search states than [`Limits::max_states`](crate::Limits):
    /// neither accepted nor rejected.
    Budget {
        block: u64,
        ops: usize,
        states: usize,
    },
    /// An op completed before it was invoked: the history's clock is broken.
    Malformed { op: Op },
}

/// A block whose history cannot be linearized, with a window of its ops that cannot be
/// linearized on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub block: u64,
    /// The value every block held before the history.
    pub initial: u64,
    pub reason: Reason,
    /// The ops that show it, in invoke order: a subset of the block's ops that admits no
    /// linearization on its own. Every other op was removed if that kept it failing (a
    /// write only once no remaining read returned its value), so each op left is needed.
    pub window: Vec<Op>,
    /// How many ops the block had in all.
    pub block_ops: usize,
}

/// The kind of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A read returned a value that no write on the block wrote and that is not initial.
    NeverWritten { value: u64 },
    /// A read returned a value whose every write was invoked after the read completed.
    ReadBeforeWrite { value: u64 },
    /// No order of the window's ops respects both real time and the register.
    NoOrder,
}

impl Anomaly {
    /// The block concerned.
    pub fn block(&self) -> u64 {
        match self {
            Anomaly::NotLinearizable(v) => v.block,
            Anomaly::Budget { block, .. } => *block,
            Anomaly::Malformed { op } => op.block,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::NotLinearizable(v) => v.fmt(f),
            Anomaly::Budget { block, ops, states } => write!(
                f,
                "block {block}: undecided after {states} search states over {ops} ops; \
                 raise Limits::max_states or check a shorter history"
            ),
            Anomaly::Malformed { op } => write!(
                f,
                "block {}: op completes before it is invoked: {op}",
                op.block
            ),
        }
    }
}

impl std::error::Error for Anomaly {}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "block {} is not linearizable (initial value {:#x}): ",
            self.block, self.initial
        )?;
        match self.reason {
            Reason::NeverWritten { value } => write!(
                f,
                "a read returned {value:#x}, which no write to this block wrote \
                 and which is not the initial value"
            )?,
            Reason::ReadBeforeWrite { value } => write!(
                f,
                "a read returned {value:#x}, but every write of {value:#x} was invoked \
                 after the read completed"
            )?,
            Reason::NoOrder => write!(
                f,
                "no order of these ops respects both real time (an op that completed before \
                 another was invoked comes first) and the register (a read returns the latest \
                 write before it)"
            )?,
        }
        writeln!(f)?;
        write!(
            f,
            "{} of the block's {} ops, by invoke time [invoke, complete]:",
            self.window.len(),
            self.block_ops
        )?;
        for op in &self.window {
            write!(f, "\n  {op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Op {
    /// `client 3  write 0x2a  [100, 180]`; unknown outcomes show `?`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Write { value } => format!("write {value:#x}"),
            Kind::Read { value: Some(value) } => format!("read  {value:#x}"),
            Kind::Read { value: None } => "read  (failed)".to_string(),
        };
        let done = self.complete.map_or("?".to_string(), |c| c.to_string());
        write!(
            f,
            "client {:<3} {what:<24} [{}, {done}]",
            self.client, self.invoke
        )
    }
}
