//! libiscsi's conformance suite against a haven volume: no failure, and no test skipped
//! for a command or feature haven lacks.
//!
//! `cargo nextest run -E 'test(conformance)' --no-capture` prints the whole run.

mod support;

use std::process::Command;
use support::*;

/// Skip reasons that mean haven lacks something the suite tests.
const MISSING: [&str; 5] = [
    "not implemented",
    "fully provision",
    "not working",
    "not support",
    "is not supported",
];

struct Summary {
    ran: u32,
    failed: u32,
    missing: Vec<String>,
    skipped: Vec<String>,
}

fn run_suite(args: &[&str]) -> (Summary, String) {
    let o = Command::new("iscsi-test-cu")
        .args(args)
        .output()
        .expect("iscsi-test-cu (run scripts/setup)");
    let out = format!("{}{}", stdout(&o), stderr(&o));
    // CUnit's run summary: "tests  <total> <ran> <passed> <failed> <inactive>".
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("tests"))
        .unwrap_or_else(|| panic!("no CUnit summary in: {out}"));
    let n: Vec<u32> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let skipped: Vec<String> = out
        .lines()
        .filter(|l| l.contains("[SKIPPED]"))
        .map(|l| l.trim().to_string())
        .collect();
    let missing = skipped
        .iter()
        .filter(|l| MISSING.iter().any(|m| l.to_lowercase().contains(m)))
        .cloned()
        .collect();
    (
        Summary {
            ran: n[1],
            failed: n[3],
            missing,
            skipped,
        },
        out,
    )
}

#[test]
fn conformance_all_tests_pass_with_no_missing_feature() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "cu", "--size", "64MiB"]);
    let started = std::time::Instant::now();
    let (s, out) = run_suite(&[
        "--dataloss",
        "--allow-sanitize",
        "--test=ALL",
        &lab.iscsi_url("cu"),
    ]);
    println!("{out}");
    println!(
        "iscsi-test-cu ALL: {} ran, {} failed, {} skipped in {:.0?}",
        s.ran,
        s.failed,
        s.skipped.len(),
        started.elapsed()
    );
    for l in &s.skipped {
        println!("  skip: {l}");
    }
    assert!(s.ran > 200, "the suite ran only {} tests", s.ran);
    assert_eq!(
        s.failed, 0,
        "iscsi-test-cu reported failures (run with --no-capture)"
    );
    assert!(
        s.missing.is_empty(),
        "tests skipped for missing features: {:#?}",
        s.missing
    );
}

#[test]
fn conformance_multipath_suite_through_two_portals() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "mp", "--size", "64MiB"]);
    // The member's own portal and the group portal (which redirects to the member).
    let status = lab.status_json();
    let member_portal = status["members"][0]["portal"].as_str().unwrap().to_string();
    let url2 = format!("iscsi://{member_portal}/iqn.2026-11.org.haven:mp/0");
    let (s, out) = run_suite(&[
        "--dataloss",
        "--test=ALL.MultipathIO",
        &lab.iscsi_url("mp"),
        &url2,
    ]);
    println!("{out}");
    assert!(s.ran > 0, "{out}");
    assert_eq!(s.failed, 0, "MultipathIO failures:\n{out}");
    assert!(s.skipped.is_empty(), "MultipathIO skips: {:#?}", s.skipped);
}

#[test]
fn conformance_read_only_suite_against_a_snapshot_target() {
    let lab = Lab::up();
    lab.ok(&["volume", "create", "ro", "--size", "64MiB"]);
    run_tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x33 0 4M",
            &lab.iscsi_url("ro"),
        ],
    );
    lab.ok(&["snapshot", "create", "ro", "s1"]);
    let url = format!("iscsi://{}/iqn.2026-11.org.haven:ro:snap:s1/0", lab.portal);
    let (s, out) = run_suite(&["--dataloss", "--test=ALL.ReadOnly", &url]);
    println!("{out}");
    assert!(s.ran > 0, "{out}");
    assert_eq!(s.failed, 0, "ReadOnly failures:\n{out}");
    assert!(s.skipped.is_empty(), "ReadOnly skips: {:#?}", s.skipped);
}

/// Suites of the CI form through a group: the ones whose commands travel member to member
/// (data, provisioning, COMPARE AND WRITE, reservations across sessions).
/// `HAVEN_GROUP_CONFORMANCE=all` runs `ALL` instead (about 160 s).
const GROUP_SUITES: [&str; 14] = [
    "ALL.CompareAndWrite",
    "ALL.GetLBAStatus",
    "ALL.OrWrite",
    "ALL.ProutRegister",
    "ALL.ProutReserve",
    "ALL.Read16",
    "ALL.ReadCapacity16",
    "ALL.Reserve6",
    "ALL.Unmap",
    "ALL.Verify16",
    "ALL.Write16",
    "ALL.WriteSame16",
    "ALL.WriteVerify16",
    "ALL.iSCSITMF",
];

/// libiscsi's suite through the group portal of a three-member group: the volume's chunks
/// have their primaries on all three members, so most commands travel member to member.
#[test]
fn conformance_through_a_three_member_group() {
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "cu3",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let started = std::time::Instant::now();
    let suites: Vec<&str> = if std::env::var("HAVEN_GROUP_CONFORMANCE").as_deref() == Ok("all") {
        vec!["ALL"]
    } else {
        GROUP_SUITES.to_vec()
    };
    let (mut ran, mut skipped) = (0, 0);
    for suite in suites {
        let (s, out) = run_suite(&[
            "--dataloss",
            "--allow-sanitize",
            &format!("--test={suite}"),
            &lab.iscsi_url("cu3"),
        ]);
        println!("{out}");
        assert!(s.ran > 0, "{suite} ran nothing:\n{out}");
        assert_eq!(s.failed, 0, "{suite} failed through the group:\n{out}");
        assert!(s.missing.is_empty(), "missing features: {:#?}", s.missing);
        ran += s.ran;
        skipped += s.skipped.len();
    }
    println!(
        "iscsi-test-cu through a 3-member group: {ran} ran, 0 failed, {skipped} skipped in {:.0?}",
        started.elapsed()
    );

    // Two paths on two members: plain I/O, COMPARE AND WRITE (sync and 64 at once), and a
    // LUN reset on one path raising the unit attention on the other.
    let status = lab.status_json();
    let url = |i: usize| {
        format!(
            "iscsi://{}/iqn.2026-11.org.haven:cu3/0",
            status["members"][i]["portal"].as_str().unwrap()
        )
    };
    let (s, out) = run_suite(&["--dataloss", "--test=ALL.MultipathIO", &url(1), &url(2)]);
    println!("{out}");
    assert!(s.ran >= 4, "MultipathIO ran {} tests:\n{out}", s.ran);
    assert_eq!(s.failed, 0, "MultipathIO across members:\n{out}");
    assert!(s.skipped.is_empty(), "MultipathIO skips: {:#?}", s.skipped);
}
