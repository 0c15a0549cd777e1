//! `check` against histories with a known answer: runs of a simulated linearizable
//! register (accepted), the same runs with one read made impossible (rejected), and small
//! arbitrary histories compared with a brute-force search over every order.

use linearize::{check, Anomaly, Kind, Op};
use proptest::prelude::*;
use std::ops::RangeInclusive;

/// One op a simulated client issues, before the register gives it a value.
#[derive(Debug, Clone)]
struct Spec {
    write: bool,
    block: u64,
    /// Idle time before it is issued, and how long it takes.
    gap: u64,
    len: u64,
    /// Where in its interval it takes effect, in thousandths.
    at: u64,
    /// Writes: the client never learns the outcome; `lands` says whether it took effect.
    /// Reads: the read fails.
    unknown: bool,
    lands: bool,
}

fn spec(blocks: u64) -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        0..blocks,
        0u64..8,
        1u64..40,
        0u64..=1000,
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(|(write, block, gap, len, at, unknown, lands)| Spec {
            write,
            block,
            gap,
            len,
            at,
            unknown,
            lands,
        })
}

/// Per client, its ops in order.
fn clients(
    clients: RangeInclusive<usize>,
    per_client: RangeInclusive<usize>,
    blocks: u64,
) -> impl Strategy<Value = Vec<Vec<Spec>>> {
    prop::collection::vec(prop::collection::vec(spec(blocks), per_client), clients)
}

/// Runs the clients against one register per block (all starting at 0): each op takes
/// effect at one instant inside its interval (an indeterminate write: any time after it
/// was issued, or never), so the history is linearizable by construction. Write values
/// are unique and non-zero: client and sequence number.
fn simulate(clients: &[Vec<Spec>]) -> Vec<Op> {
    // (effect time, op index, lands)
    let mut effects: Vec<(u64, usize, bool)> = Vec::new();
    let mut ops = Vec::new();
    for (c, specs) in clients.iter().enumerate() {
        let mut now = 0;
        for (k, s) in specs.iter().enumerate() {
            let invoke = now + s.gap;
            let complete = invoke + s.len;
            now = complete;
            let (stretch, lands) = if s.write && s.unknown {
                (3, s.lands)
            } else {
                (1, true)
            };
            effects.push((invoke + s.len * stretch * s.at / 1000, ops.len(), lands));
            let client = c as u64;
            ops.push(match (s.write, s.unknown) {
                (true, false) => Op::write(client, s.block, value(c, k), invoke, complete),
                (true, true) => Op::write_indeterminate(client, s.block, value(c, k), invoke),
                (false, false) => Op::read(client, s.block, 0, invoke, complete),
                (false, true) => Op::read_failed(client, s.block, invoke, Some(complete)),
            });
        }
    }
    effects.sort_unstable();
    let mut registers = std::collections::HashMap::new();
    for (_, i, lands) in effects {
        let register = registers.entry(ops[i].block).or_insert(0);
        match &mut ops[i].kind {
            Kind::Write { value } if lands => *register = *value,
            Kind::Read { value: Some(v) } => *v = *register,
            _ => {}
        }
    }
    ops
}

fn value(client: usize, seq: usize) -> u64 {
    ((client as u64 + 1) << 32) | (seq as u64 + 1)
}

fn read_value(op: &Op) -> Option<u64> {
    match op.kind {
        Kind::Read { value } => value.filter(|_| op.complete.is_some()),
        Kind::Write { .. } => None,
    }
}

/// Every (A, B, value) where read A completed with `value`, then (strictly later) a write
/// of another value was invoked and completed, and then read B was invoked, on one block.
fn stale_read_sites(ops: &[Op]) -> Vec<(usize, usize, u64)> {
    let mut sites = Vec::new();
    for (a, op_a) in ops.iter().enumerate() {
        let Some(old) = read_value(op_a) else {
            continue;
        };
        let a_done = op_a.complete.expect("completed read");
        for w in ops
            .iter()
            .filter(|w| w.block == op_a.block && w.invoke > a_done)
        {
            let (Kind::Write { value }, Some(w_done)) = (w.kind, w.complete) else {
                continue;
            };
            if value == old {
                continue;
            }
            for (b, op_b) in ops.iter().enumerate() {
                if op_b.block == op_a.block && op_b.invoke > w_done && read_value(op_b).is_some() {
                    sites.push((a, b, old));
                }
            }
        }
    }
    sites.sort_unstable();
    sites.dedup();
    sites
}

proptest! {
    #[test]
    fn runs_of_a_register_are_accepted(clients in clients(1..=6, 0..=30, 3)) {
        let ops = simulate(&clients);
        if let Err(a) = check(&ops, 0) {
            prop_assert!(false, "rejected a linearizable history:\n{}", a);
        }
    }

    /// B must follow the write, which follows A, which follows the only write of A's value
    /// (or A saw the initial value, which no write restores): B cannot return it.
    #[test]
    fn a_read_returning_an_overwritten_value_is_rejected(clients in clients(2..=5, 5..=25, 2), pick in any::<prop::sample::Index>()) {
        let mut ops = simulate(&clients);
        let sites = stale_read_sites(&ops);
        prop_assume!(!sites.is_empty());
        let (_, b, old) = sites[pick.index(sites.len())];
        ops[b].kind = Kind::Read { value: Some(old) };
        match check(&ops, 0) {
            Err(Anomaly::NotLinearizable(v)) => {
                prop_assert_eq!(v.block, ops[b].block);
                prop_assert!(check(&v.window, 0).is_err(), "the window alone is linearizable:\n{}", v);
            }
            other => prop_assert!(false, "expected a violation, got {:?}", other),
        }
    }

    /// Concurrency 8 on one block, a few hundred ops: stays quick.
    #[test]
    fn busy_block_is_checked(clients in clients(8..=8, 30..=50, 1)) {
        let ops = simulate(&clients);
        prop_assert!(check(&ops, 0).is_ok());
    }
}

/// A small arbitrary op on block 0, with values from a tiny set (so repeated).
fn small_op() -> impl Strategy<Value = Op> {
    (
        0u64..3,
        any::<bool>(),
        0u64..20,
        0u64..10,
        prop::option::weighted(0.8, 0u64..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(client, write, invoke, len, value, unknown)| {
            let complete = if unknown { None } else { Some(invoke + len) };
            let kind = match value {
                Some(value) if write => Kind::Write { value },
                value => Kind::Read { value },
            };
            Op {
                client,
                block: 0,
                kind,
                invoke,
                complete,
            }
        })
}

/// Linearizability by trying every order of every subset that keeps the completed writes
/// and the completed reads with a value.
fn brute_force(ops: &[Op], initial: u64) -> bool {
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Write { .. }) || read_value(op).is_some())
        .collect();
    let optional: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].complete.is_none())
        .collect();
    (0..1u32 << optional.len()).any(|mask| {
        let chosen: Vec<&Op> = (0..ops.len())
            .filter(|i| {
                optional
                    .iter()
                    .position(|o| o == i)
                    .map_or(true, |bit| mask & (1 << bit) != 0)
            })
            .map(|i| ops[i])
            .collect();
        any_order(&chosen, &mut Vec::new(), initial)
    })
}

/// Whether some order of `ops`, extending `prefix`, is legal.
fn any_order<'a>(ops: &[&'a Op], prefix: &mut Vec<&'a Op>, value: u64) -> bool {
    if prefix.len() == ops.len() {
        return true;
    }
    ops.iter().any(|&op| {
        if prefix.iter().any(|p| std::ptr::eq(*p, op)) {
            return false;
        }
        // Nothing left may have had to come before it.
        let blocked = ops.iter().any(|&o| {
            !std::ptr::eq(o, op)
                && !prefix.iter().any(|p| std::ptr::eq(*p, o))
                && o.complete.is_some_and(|c| c < op.invoke)
        });
        let next = match op.kind {
            Kind::Write { value } => value,
            Kind::Read { value: v } if v == Some(value) => value,
            Kind::Read { .. } => return false,
        };
        if blocked {
            return false;
        }
        prefix.push(op);
        let ok = any_order(ops, prefix, next);
        prefix.pop();
        ok
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Exact on small histories, repeated values and all: accepts iff some order exists.
    #[test]
    fn agrees_with_brute_force(ops in prop::collection::vec(small_op(), 0..=6), initial in 0u64..2) {
        let expected = brute_force(&ops, initial);
        let got = check(&ops, initial);
        prop_assert_eq!(got.is_ok(), expected, "{:?}\n{:?}", ops, got);
        if let Err(Anomaly::NotLinearizable(v)) = got {
            prop_assert!(!brute_force(&v.window, initial), "the window alone is linearizable:\n{}", v);
        }
    }
}
