//! A group of three members: replicated volumes survive the loss of any one member.
//!
//! - A standard initiator (qemu-io through the group portal) keeps writing while the member
//!   holding its session is SIGKILLed, and in a second round the member holding the group
//!   portal (the Raft leader); every block reads back through every portal. The restarted
//!   member gets only the chunks written while it was away; one restarted with its store
//!   wiped gets all of its copies.
//! - A member is removed under load (its data moves first, then it stops), then every
//!   remaining member is restarted in turn under load: the writer sees no error.
//! - Clients of our own initiator on every member portal read and write registers while
//!   members are killed and restarted; the history must be linearizable.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::initiator::Initiator;
use support::{stderr, stdout, Lab};

const MIB: u64 = 1 << 20;

/// The lab's members the group has not removed: (name, portal).
fn members(lab: &Lab) -> Vec<(String, String)> {
    lab.status_json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] != "removed")
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["portal"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn session_member(lab: &Lab, volume: &str) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_str(&lab.ok(&["volume", "show", volume, "--json"])).unwrap();
    v["sessions"][0]["member"].as_str().map(str::to_string)
}

/// `haven <args> --json` as every running member answers it (a member that just restarted
/// may answer from a state it has not caught up yet, so no single answer is trusted).
fn every_view(lab: &Lab, args: &[&str]) -> Vec<serde_json::Value> {
    lab.status_json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "running")
        .map(|m| {
            let api = m["api"].as_str().unwrap();
            let o = support::haven(args, &[("HAVEN_API", api)]);
            if o.status.success() {
                serde_json::from_slice(&o.stdout).unwrap()
            } else {
                serde_json::Value::Null
            }
        })
        .collect()
}

/// Wait until every running member reports no degraded group and no copy being filled;
/// the bytes they copied.
fn wait_settled(lab: &Lab, limit: Duration) -> u64 {
    let t = Instant::now();
    loop {
        let views = every_view(lab, &["member", "layout", "--json"]);
        if views.iter().all(support::is_settled) {
            break;
        }
        assert!(
            t.elapsed() < limit,
            "the group did not settle within {limit:?}: {views:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    resync_total(lab)
}

/// Wait until every running member counts `name` as up again (its `MemberUp` applied).
fn wait_online(lab: &Lab, name: &str) {
    let t = Instant::now();
    loop {
        let up = every_view(lab, &["member", "list", "--json"])
            .iter()
            .all(|list| {
                list.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|m| m["name"] == name && m["state"] == "online")
                })
            });
        if up {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} did not come back"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn pattern(round: u64, i: u64) -> u64 {
    (round * 61 + i) % 250 + 1
}

/// qemu-io writes `count` MiB with a pattern per MiB (a flush every 8) while `victim` is
/// killed after `kill_after` writes. Returns the longest pause between two completed
/// writes.
fn write_through_kill(
    lab: &Lab,
    round: u64,
    count: u64,
    victim: impl FnOnce() -> String,
) -> Duration {
    let mut args = vec!["-f".to_string(), "raw".into()];
    for i in 0..count {
        args.push("-c".into());
        args.push(format!("write -P {} {} 1M", pattern(round, i), i * MIB));
        args.push("-c".into());
        args.push("sleep 40".into());
        if i % 8 == 7 {
            args.push("-c".into());
            args.push("flush".into());
        }
    }
    args.push(lab.iscsi_url("g"));
    let mut child = Command::new("qemu-io")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-io");
    let out = child.stdout.take().unwrap();
    let lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let reader = {
        let lines = lines.clone();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push((Instant::now(), l));
            }
        })
    };
    let wrote = |lines: &Mutex<Vec<(Instant, String)>>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.starts_with("wrote"))
            .count() as u64
    };
    let t = Instant::now();
    while wrote(&lines) < count / 4 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "qemu-io made no progress"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let name = victim();
    let killed_at = Instant::now();
    lab.ok(&["lab", "kill", &name, "--data", lab.dir_str()]);
    eprintln!(
        "round {round}: killed {name} after {} writes",
        wrote(&lines)
    );
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let lines = lines.lock().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(
        status.success(),
        "qemu-io failed: {err}\n{}",
        text.join("\n")
    );
    assert!(
        !text
            .iter()
            .any(|l| l.contains("failed") || l.contains("error")),
        "qemu-io saw an error: {}",
        text.join("\n")
    );
    assert_eq!(
        wrote(&Mutex::new(lines.clone())),
        count,
        "{}",
        text.join("\n")
    );
    let stamps: Vec<Instant> = lines
        .iter()
        .filter(|(_, l)| l.starts_with("wrote"))
        .map(|(t, _)| *t)
        .collect();
    let gap = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let resumed = stamps
        .iter()
        .find(|t| **t > killed_at)
        .map(|t| *t - killed_at);
    eprintln!("round {round}: longest pause {gap:?}; first write after the kill {resumed:?}; qemu-io stderr: {}", err.trim());
    gap
}

/// Every MiB holds its pattern, read through `portal`.
fn verify(portal: &str, round: u64, count: u64) {
    verify_range(portal, round, 0, count)
}

/// MiB `first..first + count` hold their patterns, read through `portal`.
fn verify_range(portal: &str, round: u64, first: u64, count: u64) {
    let mut args = vec!["-f".to_string(), "raw".into()];
    for i in first..first + count {
        args.push("-c".into());
        args.push(format!("read -P {} {} 1M", pattern(round, i), i * MIB));
    }
    args.push(format!("iscsi://{portal}/iqn.2026-11.org.haven:g/0"));
    let o = Command::new("qemu-io").args(&args).output().unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success()
            && !out.contains("failed")
            && out.matches("read ").count() as u64 == count,
        "reading back through {portal}: {}{}",
        out,
        stderr(&o)
    );
}

/// Each member's capacity and the number of copies the placement gives it.
fn weights(lab: &Lab) -> Vec<(String, u64, u64)> {
    let list: serde_json::Value =
        serde_json::from_str(&lab.ok(&["member", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["capacity"].as_u64().unwrap(),
                m["copies"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Bytes every running member copied to others while filling copies.
fn resync_total(lab: &Lab) -> u64 {
    let mut bytes = 0;
    for m in lab.status_json()["members"].as_array().unwrap() {
        let api = m["api"].as_str().unwrap();
        let o = support::haven(&["member", "layout", "--json"], &[("HAVEN_API", api)]);
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            bytes += v["resync_bytes"].as_u64().unwrap_or(0);
        }
    }
    bytes
}

/// The first member listed as running that is not `but`.
fn another_running(lab: &Lab, but: &str) -> String {
    lab.status_json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "running" && m["name"] != but)
        .map(|m| m["name"].as_str().unwrap().to_string())
        .next()
        .expect("another running member")
}

/// MiB of the volume the writers never touch, written before anything is killed: a member
/// that returns must not be sent them again, one that lost its store must.
const OLD_FIRST: u64 = 128;
const OLD_COUNT: u64 = 128;
/// Write the MiB the writers never touch.
fn write_old(lab: &Lab) {
    let mut old = vec!["-f".to_string(), "raw".into()];
    for i in OLD_FIRST..OLD_FIRST + OLD_COUNT {
        old.extend([
            "-c".into(),
            format!("write -P {} {} 1M", pattern(0, i), i * MIB),
        ]);
    }
    old.push(lab.iscsi_url("g"));
    let o = Command::new("qemu-io").args(&old).output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// The group's window of recent writes a copy that leaves is assumed to have missed.
const RECENT_WINDOW: Duration = Duration::from_secs(15);

#[test]
fn member_loss_keeps_a_standard_initiator_writing() {
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "g",
        "--size",
        "256MiB",
        "--replicas",
        "2",
    ]);
    let count = 96;
    write_old(&lab);
    let placement = weights(&lab);
    thread::sleep(RECENT_WINDOW + Duration::from_secs(2));

    // Round 1: the member holding the writer's session dies.
    let gap = write_through_kill(&lab, 1, count, || {
        session_member(&lab, "g").expect("the writer has a session")
    });
    assert!(gap < Duration::from_secs(10), "the writer stalled {gap:?}");
    let down: Vec<_> = members(&lab);
    let status = lab.status_json();
    let dead: Vec<String> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] != "running")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    for (name, portal) in &down {
        if !dead.contains(name) {
            verify(portal, 1, count);
        }
    }
    verify(&lab.portal, 1, count);
    verify_range(&lab.portal, 0, OLD_FIRST, OLD_COUNT);
    let layout = lab.ok(&["member", "layout", "--json"]);
    eprintln!("without {}: {layout}", dead[0]);
    let replication = || -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&lab.ok(&["volume", "show", "g", "--json"]))
            .unwrap()["replication"]
            .clone()
    };
    let degraded = replication();
    eprintln!("volume g without {}: {degraded}", dead[0]);
    assert!(degraded["degraded"].as_u64().unwrap() > 0, "{degraded}");
    assert_eq!(degraded["unavailable"], 0, "{degraded}");

    // It comes back with its store: only the chunks written while it was away (and just
    // before) are copied to it.
    let before = resync_total(&lab);
    lab.ok(&["lab", "start", &dead[0], "--data", lab.dir_str()]);
    let t = Instant::now();
    wait_online(&lab, &dead[0]);
    let after = wait_settled(&lab, Duration::from_secs(60));
    let moved = after.saturating_sub(before);
    eprintln!(
        "{} back: layout settled in {:?}, {moved} bytes resynced to it",
        dead[0],
        t.elapsed(),
    );
    assert!(moved > 0, "the returning member missed writes but got none");
    assert!(
        moved <= count * MIB,
        "{moved} bytes resynced: more than the writer wrote, so old data moved again"
    );
    let healthy = replication();
    assert_eq!(healthy["degraded"], 0, "{healthy}");
    // A restart is no reason to move data: the member offers the capacity it joined with.
    assert_eq!(weights(&lab), placement, "the placement moved");
    for (_, portal) in members(&lab) {
        verify(&portal, 1, count);
        verify_range(&portal, 0, OLD_FIRST, OLD_COUNT);
    }

    // Another member comes back without its store: all of its copies are filled.
    let wiped = another_running(&lab, "");
    lab.ok(&["lab", "kill", &wiped, "--data", lab.dir_str()]);
    std::fs::remove_dir_all(lab.dir.join(&wiped).join("data/store")).unwrap();
    let before = resync_total(&lab);
    lab.ok(&["lab", "start", &wiped, "--data", lab.dir_str()]);
    wait_online(&lab, &wiped);
    let after = wait_settled(&lab, Duration::from_secs(120));
    let full = after.saturating_sub(before);
    eprintln!("{wiped} back with an empty store: {full} bytes filled");
    assert!(
        full > moved && full >= (OLD_COUNT / 2) * MIB,
        "an empty member got {full} bytes (a returning one got {moved})"
    );
    for (_, portal) in members(&lab) {
        verify(&portal, 1, count);
        verify_range(&portal, 0, OLD_FIRST, OLD_COUNT);
    }

    // Round 2: the member holding the group portal (the Raft leader) dies.
    let gap = write_through_kill(&lab, 2, count, || lab.leader());
    assert!(gap < Duration::from_secs(10), "the writer stalled {gap:?}");
    verify(&lab.portal, 2, count);
    let status = lab.status_json();
    for m in status["members"].as_array().unwrap() {
        if m["state"] == "running" {
            verify(m["portal"].as_str().unwrap(), 2, count);
        }
    }
}

/// A client of our own initiator that reconnects to any member portal after an error.
struct Client {
    id: u64,
    portals: Vec<String>,
    next: usize,
    conn: Option<Initiator>,
}

impl Client {
    fn conn(&mut self) -> &mut Initiator {
        while self.conn.is_none() {
            let portal = self.portals[self.next % self.portals.len()].clone();
            self.next += 1;
            if let Ok(mut i) = Initiator::connect(
                &portal,
                "iqn.2026-11.org.haven:lin",
                &format!("iqn.2000-01.org.test:lin{}", self.id),
            ) {
                i.settle();
                self.conn = Some(i);
            } else {
                thread::sleep(Duration::from_millis(100));
            }
        }
        self.conn.as_mut().unwrap()
    }
}

#[test]
fn linearizable_across_member_kills() {
    use linearize::Op;
    let lab = Lab::up_group(3);
    lab.ok(&[
        "volume",
        "create",
        "lin",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let portals: Vec<String> = members(&lab).into_iter().map(|(_, p)| p).collect();
    let registers = 24u64;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ops: Arc<Mutex<Vec<Op>>> = Arc::default();
    let now = move || start.elapsed().as_nanos() as u64;
    let mut clients = Vec::new();
    for id in 0..4u64 {
        let (stop, ops, portals) = (stop.clone(), ops.clone(), portals.clone());
        clients.push(thread::spawn(move || {
            let mut c = Client {
                id,
                next: id as usize,
                portals,
                conn: None,
            };
            let mut seq = 0u64;
            let mut rng = id * 7919 + 1;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let block = rng % registers;
                // Registers 1 MiB apart: several chunks, several placement groups.
                let lba = block * (MIB / 512);
                // High bits choose the op: the low ones chose the block.
                if (rng >> 40) % 2 == 0 {
                    seq += 1;
                    let value = (id + 1) << 32 | seq;
                    let mut data = vec![0u8; 512];
                    data[..8].copy_from_slice(&value.to_be_bytes());
                    let invoke = now();
                    let r = c.conn().write(lba, &data, false);
                    let done = now();
                    let op = match r {
                        Ok(()) => Op::write(id, block, value, invoke, done),
                        Err(_) => {
                            c.conn = None;
                            Op::write_indeterminate(id, block, value, invoke)
                        }
                    };
                    ops.lock().unwrap().push(op);
                } else {
                    let invoke = now();
                    let r = c.conn().read(lba, 1);
                    let done = now();
                    match r {
                        Ok(d) => {
                            let v = u64::from_be_bytes(d[..8].try_into().unwrap());
                            ops.lock()
                                .unwrap()
                                .push(Op::read(id, block, v, invoke, done));
                        }
                        Err(_) => c.conn = None,
                    }
                }
            }
        }));
    }
    let names: Vec<String> = members(&lab).into_iter().map(|(n, _)| n).collect();
    let cycles: usize = std::env::var("HAVEN_LIN_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for cycle in 0..cycles {
        thread::sleep(Duration::from_secs(2));
        let victim = &names[(cycle + 1) % names.len()];
        lab.ok(&["lab", "kill", victim, "--data", lab.dir_str()]);
        eprintln!("cycle {cycle}: killed {victim} at {:?}", start.elapsed());
        thread::sleep(Duration::from_secs(4));
        lab.ok(&["lab", "start", victim, "--data", lab.dir_str()]);
        wait_online(&lab, victim);
        wait_settled(&lab, Duration::from_secs(60));
    }
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let ops = ops.lock().unwrap();
    if let Ok(path) = std::env::var("HAVEN_LIN_DUMP") {
        let text: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        std::fs::write(path, text.join("\n")).unwrap();
    }
    match linearize::check(&ops, 0) {
        Ok(report) => eprintln!("linearizable: {report:?}"),
        Err(anomaly) => panic!("{anomaly}"),
    }
    assert!(ops.len() > 200, "too few operations: {}", ops.len());
}

fn du_kib(path: &std::path::Path) -> u64 {
    let o = Command::new("du").arg("-sk").arg(path).output().unwrap();
    stdout(&o)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Data written through the group, then a fourth member added under load: the copies
/// spread evenly (every member within 10 % of the mean, by `du` of its data directory),
/// the writer sees no error and every byte reads back through the new member.
#[test]
fn a_new_member_takes_its_share() {
    let bytes: usize = std::env::var("HAVEN_GROW_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512 << 20);
    let mut lab = Lab::up_group_sized(3, "8GiB");
    let size = format!("{}", bytes.next_multiple_of(1 << 20));
    lab.ok(&[
        "volume",
        "create",
        "big",
        "--size",
        &size,
        "--replicas",
        "2",
    ]);
    lab.ok(&[
        "volume",
        "create",
        "g",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ]);
    let src = lab.tmp.path().join("src");
    support::write_random(&src, bytes, 7);
    support::qemu_img_put(src.to_str().unwrap(), &lab.iscsi_url("big"));

    // Load during the rebalance: a writer that verifies what it wrote.
    let writer = {
        let mut args = vec!["-f".to_string(), "raw".into()];
        for i in 0..48u64 {
            let p = pattern(3, i);
            let off = (i % 32) * MIB;
            args.extend([
                "-c".into(),
                format!("write -P {p} {off} 1M"),
                "-c".into(),
                format!("read -P {p} {off} 1M"),
                "-c".into(),
                "sleep 150".into(),
            ]);
        }
        args.push(lab.iscsi_url("g"));
        Command::new("qemu-io")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let grow = {
        lab.members = 4;
        let t = Instant::now();
        lab.up_again();
        let moved = wait_settled(&lab, Duration::from_secs(300));
        (t.elapsed(), moved)
    };
    eprintln!(
        "4th member: settled in {:?}, {} bytes copied",
        grow.0, grow.1
    );
    let o = writer.wait_with_output().unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success() && !out.contains("failed") && !out.contains("error"),
        "the writer saw an error during the rebalance: {out}{}",
        stderr(&o)
    );
    assert_eq!(out.matches("wrote ").count(), 48, "{out}");
    // Released copies are discarded in the background after the layout settles.
    thread::sleep(Duration::from_secs(3));
    let dirs: Vec<u64> = (1..=4)
        .map(|i| du_kib(&lab.dir.join(format!("member-{i}/data"))))
        .collect();
    let mean = dirs.iter().sum::<u64>() as f64 / dirs.len() as f64;
    eprintln!("du of the data dirs (KiB): {dirs:?}, mean {mean:.0}");
    for d in &dirs {
        assert!(
            (*d as f64 - mean).abs() <= mean * 0.10,
            "a member is more than 10% off the mean fill: {dirs:?}"
        );
    }
    let new_portal = members(&lab)[3].1.clone();
    let back = lab.tmp.path().join("back");
    support::qemu_img_get(
        &format!("iscsi://{new_portal}/iqn.2026-11.org.haven:big/0"),
        back.to_str().unwrap(),
    );
    let a = std::fs::read(&src).unwrap();
    let b = std::fs::read(&back).unwrap();
    assert!(a == b[..a.len()], "the volume differs after the rebalance");
}

/// A writer that writes and verifies 1 MiB patterns on volume `g` in a loop through the
/// group portal until `stop` is set; the qemu-io outputs of its passes.
fn loaded_writer(lab: &Lab, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<String>> {
    let url = lab.iscsi_url("g");
    thread::spawn(move || {
        let mut outputs = Vec::new();
        let mut pass = 0u64;
        while !stop.load(Ordering::Relaxed) {
            pass += 1;
            let mut args = vec!["-f".to_string(), "raw".into()];
            for i in 0..16u64 {
                let p = pattern(10 + pass % 50, i);
                let off = (i % 32) * MIB;
                args.extend([
                    "-c".into(),
                    format!("write -P {p} {off} 1M"),
                    "-c".into(),
                    format!("read -P {p} {off} 1M"),
                    "-c".into(),
                    "sleep 100".into(),
                ]);
            }
            args.push(url.clone());
            let t = Instant::now();
            let o = Command::new("qemu-io").args(&args).output().unwrap();
            eprintln!("writer pass {pass}: {:?}", t.elapsed());
            let out = format!("{}{}", stdout(&o), stderr(&o));
            let clean = o.status.success()
                && !out.contains("failed")
                && !out.contains("error")
                && out.matches("wrote ").count() == 16;
            outputs.push(if clean { String::new() } else { out });
        }
        outputs
    })
}

/// A member removed under load: its data moves to the others first (no I/O error, nothing
/// lost), it leaves the group and stops; then every remaining member is restarted in turn
/// under load with no I/O error.
#[test]
fn removal_and_rolling_restart_under_load() {
    let lab = Lab::up_group(4);
    lab.ok(&[
        "volume",
        "create",
        "g",
        "--size",
        "256MiB",
        "--replicas",
        "2",
    ]);
    write_old(&lab);

    // Refused: a member that does not exist; accepted: one that holds data.
    let o = lab.cli(&["member", "remove", "member-9"]);
    assert!(!o.status.success(), "removing an unknown member succeeded");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = loaded_writer(&lab, stop.clone());
    thread::sleep(Duration::from_secs(2));
    let victim = another_running(&lab, &lab.leader());
    let t = Instant::now();
    let out = lab.ok(&["member", "remove", &victim]);
    eprintln!("{}: {out} ({:?})", victim, t.elapsed());
    let list = lab.ok(&["member", "list", "--json"]);
    assert!(
        !list.contains(&format!("\"{victim}\"")),
        "{victim} is still listed: {list}"
    );
    // The removed member stops by itself.
    let t = Instant::now();
    while lab.status_json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == victim.as_str() && m["state"] == "running")
    {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{victim} did not stop"
        );
        thread::sleep(Duration::from_millis(200));
    }
    wait_settled(&lab, Duration::from_secs(60));
    for (name, portal) in members(&lab) {
        assert_ne!(name, victim);
        verify_range(&portal, 0, OLD_FIRST, OLD_COUNT);
    }

    // A rolling restart of the three that remain, each killed and started again once the
    // group settled from the last.
    for (name, _) in members(&lab) {
        lab.ok(&["lab", "kill", &name, "--data", lab.dir_str()]);
        thread::sleep(Duration::from_secs(1));
        lab.ok(&["lab", "start", &name, "--data", lab.dir_str()]);
        wait_online(&lab, &name);
        let moved = wait_settled(&lab, Duration::from_secs(60));
        eprintln!("{name} restarted; {moved} bytes resynced so far");
    }
    stop.store(true, Ordering::Relaxed);
    let outputs = writer.join().unwrap();
    let failed: Vec<&String> = outputs.iter().filter(|o| !o.is_empty()).collect();
    eprintln!(
        "writer: {} passes, {} with an error",
        outputs.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "the writer saw an error: {}", failed[0]);
    for (_, portal) in members(&lab) {
        verify_range(&portal, 0, OLD_FIRST, OLD_COUNT);
    }
    // A member cannot be removed when the rest could not hold two copies.
    lab.ok(&["member", "remove", &members(&lab)[0].0]);
    let o = lab.cli(&["member", "remove", &members(&lab)[1].0]);
    assert!(
        !o.status.success(),
        "a removal leaving one member for 2 replicas succeeded"
    );
    eprintln!("refused: {}", stderr(&o).trim());
}

/// Killing the Raft leader: the group takes changes again within 5 s.
#[test]
fn leader_loss_keeps_the_group_manageable() {
    let lab = Lab::up_group(3);
    let victim = lab.leader();
    let t = Instant::now();
    lab.ok(&["lab", "kill", &victim, "--data", lab.dir_str()]);
    loop {
        let o = lab.cli(&["volume", "create", "after", "--size", "16MiB"]);
        if o.status.success() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no volume could be created after the leader died: {}",
            stderr(&o)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let took = t.elapsed();
    eprintln!("{victim} (leader) killed: a volume was created {took:?} later");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_ne!(lab.leader(), victim);
}
