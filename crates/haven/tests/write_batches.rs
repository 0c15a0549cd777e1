//! Writes bound for the same member travel together (`member::group::outbox`): under a
//! standard initiator's queue depth of 32 they take far fewer frames than writes, and each
//! still lands on every copy; with a member that speaks the protocol from before batches
//! (a rolling upgrade), writes travel one by one to and from it, and still land.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{stderr, stdout, Lab};

const VOLUME_MIB: u64 = 64;
const PATTERN: u8 = 0x5a;

/// Each running member's group view, by name.
fn views(lab: &Lab) -> Vec<(String, serde_json::Value)> {
    let mut views = Vec::new();
    for m in lab.status_json()["members"].as_array().unwrap() {
        if m["state"] != "running" {
            continue;
        }
        let api = m["api"].as_str().unwrap();
        let o = support::haven(&["member", "layout", "--json"], &[("HAVEN_API", api)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let name = m["name"].as_str().unwrap().to_string();
        views.push((name, serde_json::from_slice(&o.stdout).unwrap()));
    }
    views
}

/// Writes the running members sent to other members, and the frames that carried them.
fn peer_writes(lab: &Lab) -> (u64, u64) {
    views(lab).iter().fold((0, 0), |(w, f), (_, v)| {
        (
            w + v["peer_writes"].as_u64().unwrap(),
            f + v["peer_write_frames"].as_u64().unwrap(),
        )
    })
}

/// The whole volume in 4 KiB writes of `pattern`, 32 in flight, through the group portal.
fn write_all(url: &str, pattern: u8) {
    let o = Command::new("qemu-img")
        .args([
            "bench", "-w", "-d", "32", "-s", "4k", "-t", "none", "-f", "raw",
        ])
        .arg(format!("--pattern={pattern}"))
        .args(["-c", &(VOLUME_MIB * 256).to_string()])
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// Kill `victim`, then read the whole volume back through the group portal: the groups it
/// was primary of are read from the copies that got their writes from it.
fn kill_and_verify(lab: &Lab, url: &str, victim: &str, pattern: u8) {
    lab.ok(&["lab", "kill", victim, "--data", lab.dir_str()]);
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("read -P {pattern} 0 {VOLUME_MIB}M"))
        .arg(url)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success() && !out.contains("failed") && out.contains("read "),
        "reading back without {victim}: {out}{}",
        stderr(&o)
    );
}

#[test]
fn queued_writes_travel_together_and_land_on_every_copy() {
    let lab = Lab::up_group(3);
    let size = format!("{VOLUME_MIB}MiB");
    lab.ok(&["volume", "create", "g", "--size", &size, "--replicas", "2"]);
    let url = lab.iscsi_url("g");
    let (writes_before, frames_before) = peer_writes(&lab);

    write_all(&url, PATTERN);

    // Every write has a second copy on another member, so each was sent at least once.
    let count = VOLUME_MIB * 256;
    let (writes, frames) = peer_writes(&lab);
    let (writes, frames) = (writes - writes_before, frames - frames_before);
    eprintln!("{count} writes: {writes} sent to peers in {frames} frames");
    assert!(writes >= count, "{writes} peer writes for {count} writes");
    assert!(
        frames * 2 <= writes,
        "writes did not travel together: {writes} in {frames} frames"
    );
    kill_and_verify(&lab, &url, "member-2", PATTERN);

    // member-2 comes back speaking only the protocol from before batches.
    let o = support::haven(
        &["lab", "start", "member-2", "--data", lab.dir_str()],
        &[("HAVEN_PEER_MAX_VERSION", "1")],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let t = Instant::now();
    while !views(&lab).iter().all(|(_, v)| support::is_settled(v)) || views(&lab).len() < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not settled: {:?}",
            views(&lab)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = !PATTERN;
    write_all(&url, again);
    let old = views(&lab)
        .into_iter()
        .find(|(n, _)| n == "member-2")
        .unwrap()
        .1;
    let (writes, frames) = (
        old["peer_writes"].as_u64().unwrap(),
        old["peer_write_frames"].as_u64().unwrap(),
    );
    eprintln!("member-2 (version 1): {writes} writes sent to peers in {frames} frames");
    assert!(
        writes > 0 && frames == writes,
        "member-2 sent {writes} writes in {frames} frames"
    );
    kill_and_verify(&lab, &url, "member-3", again);
}
