//! Writes bound for the same member travel together (`member::group::outbox`): under a
//! standard initiator's queue depth of 32 they take far fewer frames than writes, and each
//! still lands on every copy.

mod support;

use std::process::Command;
use support::{stderr, stdout, Lab};

const VOLUME_MIB: u64 = 64;
const PATTERN: u8 = 0x5a;

/// Writes every member sent to other members, and the frames that carried them.
fn peer_writes(lab: &Lab) -> (u64, u64) {
    let (mut writes, mut frames) = (0, 0);
    for m in lab.status_json()["members"].as_array().unwrap() {
        let api = m["api"].as_str().unwrap();
        let o = support::haven(&["member", "layout", "--json"], &[("HAVEN_API", api)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        writes += v["peer_writes"].as_u64().unwrap();
        frames += v["peer_write_frames"].as_u64().unwrap();
    }
    (writes, frames)
}

#[test]
fn queued_writes_travel_together_and_land_on_every_copy() {
    let lab = Lab::up_group(3);
    let size = format!("{VOLUME_MIB}MiB");
    lab.ok(&["volume", "create", "g", "--size", &size, "--replicas", "2"]);
    let url = lab.iscsi_url("g");
    let (writes_before, frames_before) = peer_writes(&lab);

    // The whole volume in 4 KiB writes, 32 in flight, through the group portal.
    let count = VOLUME_MIB * 256;
    let o = Command::new("qemu-img")
        .args([
            "bench", "-w", "-d", "32", "-s", "4k", "-t", "none", "-f", "raw",
        ])
        .arg(format!("--pattern={PATTERN}"))
        .args(["-c", &count.to_string()])
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));

    // Every write has a second copy on another member, so each was sent at least once.
    let (writes, frames) = peer_writes(&lab);
    let (writes, frames) = (writes - writes_before, frames - frames_before);
    eprintln!("{count} writes: {writes} sent to peers in {frames} frames");
    assert!(writes >= count, "{writes} peer writes for {count} writes");
    assert!(
        frames * 2 <= writes,
        "writes did not travel together: {writes} in {frames} frames"
    );

    // A member dies: the groups it was primary of are read from the copies that got their
    // writes from it, batched.
    lab.ok(&["lab", "kill", "member-2", "--data", lab.dir_str()]);
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("read -P {PATTERN} 0 {VOLUME_MIB}M"))
        .arg(&url)
        .output()
        .unwrap();
    let out = stdout(&o);
    assert!(
        o.status.success() && !out.contains("failed") && out.contains("read "),
        "reading back without member-2: {out}{}",
        stderr(&o)
    );
}
