//! Known-good and known-bad histories. Times are logical; `Op::write(client, block, value,
//! invoke, complete)`.

use crate::*;

const B: u64 = 7;

fn accepts(ops: &[Op]) -> Report {
    check(ops, 0).unwrap_or_else(|a| panic!("rejected a linearizable history:\n{a}"))
}

/// Rejects, with a violation on block `B` whose window holds exactly `window` (in order).
fn rejects(ops: &[Op], reason: Reason, window: &[Op]) -> Violation {
    match check(ops, 0) {
        Ok(r) => panic!("accepted a non-linearizable history: {r:?}"),
        Err(Anomaly::NotLinearizable(v)) => {
            assert_eq!(v.block, B);
            assert_eq!(v.reason, reason, "{v}");
            assert_eq!(v.window, window, "{v}");
            // The window alone is a witness.
            assert!(check(&v.window, 0).is_err(), "{v}");
            v
        }
        Err(other) => panic!("unexpected: {other}"),
    }
}

#[test]
fn empty_history() {
    assert_eq!(accepts(&[]), Report::default());
}

#[test]
fn sequential_history_on_two_blocks() {
    let ops = [
        Op::read(1, B, 0, 0, 1),
        Op::write(1, B, 1, 2, 3),
        Op::read(2, B, 1, 4, 5),
        Op::write(2, B, 2, 6, 7),
        Op::read(1, B, 2, 8, 9),
        // Values are unique per block only: block 8 may reuse them.
        Op::write(1, 8, 1, 0, 1),
        Op::read(1, 8, 1, 2, 3),
    ];
    let r = accepts(&ops);
    assert_eq!((r.blocks, r.ops, r.reads, r.writes), (2, 7, 4, 3));
}

#[test]
fn read_overlapping_a_write_sees_old_or_new() {
    for seen in [0, 1] {
        accepts(&[Op::write(1, B, 1, 10, 20), Op::read(2, B, seen, 15, 25)]);
    }
    // Two overlapping reads may even disagree, if the write lands between them.
    accepts(&[
        Op::write(1, B, 1, 10, 50),
        Op::read(2, B, 1, 15, 25),
        Op::read(3, B, 0, 12, 30),
    ]);
}

#[test]
fn concurrent_writes_in_either_order() {
    for last in [1, 2] {
        accepts(&[
            Op::write(1, B, 1, 0, 10),
            Op::write(2, B, 2, 0, 10),
            Op::read(3, B, last, 20, 30),
        ]);
    }
}

#[test]
fn indeterminate_write_that_took_effect_or_not() {
    let before = [
        Op::write(1, B, 1, 0, 10),
        Op::write_indeterminate(2, B, 2, 20),
    ];
    for seen in [1, 2] {
        let mut ops = before.to_vec();
        ops.push(Op::read(3, B, seen, 100, 110));
        let r = accepts(&ops);
        assert_eq!((r.writes, r.indeterminate_writes), (2, 1));
    }
    // It may land late: after a write that was invoked after it and completed.
    accepts(&[
        Op::write_indeterminate(2, B, 2, 0),
        Op::write(1, B, 1, 10, 20),
        Op::read(3, B, 1, 30, 40),
        Op::read(3, B, 2, 50, 60),
    ]);
}

#[test]
fn failed_and_unfinished_reads_are_ignored() {
    let ops = [
        Op::write(1, B, 1, 0, 10),
        Op::read_failed(2, B, 20, Some(30)),
        Op {
            client: 3,
            block: B,
            kind: Kind::Read { value: Some(99) },
            invoke: 20,
            complete: None,
        },
        Op::read(2, B, 1, 40, 50),
    ];
    let r = accepts(&ops);
    assert_eq!((r.reads, r.dropped_reads), (1, 2));
}

#[test]
fn stale_read_after_a_completed_write() {
    let (w1, w2, r) = (
        Op::write(1, B, 1, 0, 10),
        Op::write(1, B, 2, 20, 30),
        Op::read(2, B, 1, 40, 50),
    );
    rejects(
        &[w1.clone(), w2.clone(), r.clone()],
        Reason::NoOrder,
        &[w1, w2, r],
    );
}

#[test]
fn new_then_old() {
    // A sees the new value 2 while the write is still running; B starts after A completes
    // and sees the older 1.
    let ops = [
        Op::write(1, B, 1, 0, 10),
        Op::write(2, B, 2, 20, 100),
        Op::read(3, B, 2, 30, 40),
        Op::read(4, B, 1, 50, 60),
    ];
    rejects(&ops, Reason::NoOrder, &ops);
}

#[test]
fn read_of_a_value_never_written() {
    let r = Op::read(2, B, 0x77, 20, 30);
    rejects(
        &[Op::write(1, B, 1, 0, 10), r.clone()],
        Reason::NeverWritten { value: 0x77 },
        &[r],
    );
}

#[test]
fn read_of_a_value_written_only_later() {
    let (r, w) = (Op::read(2, B, 5, 0, 10), Op::write(1, B, 5, 11, 20));
    rejects(
        &[w.clone(), r.clone()],
        Reason::ReadBeforeWrite { value: 5 },
        &[r, w],
    );
}

#[test]
fn lost_acknowledged_write() {
    let (w, r) = (Op::write(1, B, 1, 0, 10), Op::read(2, B, 0, 20, 30));
    let noise = [Op::read(3, B, 0, 0, 5), Op::write(4, 9, 5, 0, 1)];
    let ops = [noise.to_vec(), vec![w.clone(), r.clone()]].concat();
    rejects(&ops, Reason::NoOrder, &[w, r]);
}

#[test]
fn two_readers_see_concurrent_writes_in_opposite_orders() {
    let ops = [
        Op::write(1, B, 1, 0, 100),
        Op::write(2, B, 2, 0, 100),
        Op::read(3, B, 1, 10, 20),
        Op::read(4, B, 2, 10, 20),
        Op::read(3, B, 2, 30, 40),
        Op::read(4, B, 1, 30, 40),
    ];
    rejects(&ops, Reason::NoOrder, &ops);
}

#[test]
fn indeterminate_write_seen_then_unseen() {
    let ops = [
        Op::write_indeterminate(1, B, 1, 0),
        Op::read(2, B, 1, 10, 20),
        Op::read(2, B, 0, 30, 40),
    ];
    rejects(&ops, Reason::NoOrder, &ops);
}

#[test]
fn explanation_names_the_block_ops_times_and_values() {
    let ops = [Op::write(1, B, 0x2a, 0, 10), Op::read(2, B, 0, 20, 30)];
    let text = check(&ops, 0).unwrap_err().to_string();
    println!("{text}");
    for needle in [
        "block 7",
        "client 1",
        "write 0x2a",
        "[0, 10]",
        "read  0x0",
        "[20, 30]",
        "2 of the block's 2 ops",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let undecided = Op::write_indeterminate(1, B, 3, 5).to_string();
    assert!(undecided.ends_with("[5, ?]"), "{undecided}");
}

#[test]
fn budget_gives_up_instead_of_hanging() {
    // Twelve concurrent writes, then a read of the initial value: refuting it needs every
    // subset of the writes.
    let mut ops: Vec<Op> = (1..=12).map(|v| Op::write(v, B, v, 0, 10)).collect();
    ops.push(Op::read(0, B, 0, 20, 30));
    let limits = Limits { max_states: 100 };
    assert!(matches!(
        check_with(&ops, 0, &limits),
        Err(Anomaly::Budget { block: B, .. })
    ));
    assert!(matches!(check(&ops, 0), Err(Anomaly::NotLinearizable(_))));
}

#[test]
fn op_completing_before_invoke_is_malformed() {
    let bad = Op::write(1, B, 1, 10, 5);
    let got = check(std::slice::from_ref(&bad), 0);
    assert_eq!(got, Err(Anomaly::Malformed { op: bad }));
}
