//! A network partition of one member (network namespaces: the member's cluster link goes
//! down while initiators still reach its portal). The cut-off member acknowledges no
//! write; the others go on; after the partition heals no copy of any chunk differs.

mod support;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use support::netns::{wait_members_online, Net, NetMember};
use support::{haven, stderr, stdout};

const MIB: u64 = 1 << 20;

fn qemu_io(url: &str, cmds: &[String]) -> std::process::Output {
    let mut args = vec!["-f".to_string(), "raw".into()];
    for c in cmds {
        args.extend(["-c".into(), c.clone()]);
    }
    args.push(url.to_string());
    Command::new("qemu-io").args(&args).output().unwrap()
}

/// `write -P p` of every MiB in `range`.
fn writes(p: u64, range: std::ops::Range<u64>) -> Vec<String> {
    range
        .map(|i| format!("write -P {p} {} 1M", i * MIB))
        .collect()
}

fn reads(p: u64, range: std::ops::Range<u64>) -> Vec<String> {
    range
        .map(|i| format!("read -P {p} {} 1M", i * MIB))
        .collect()
}

/// GET `url` (http://host:port/path) with a bare HTTP/1.0 request.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_string()
}

fn clean(o: &std::process::Output) -> bool {
    let out = stdout(o);
    o.status.success() && !out.contains("failed") && !out.contains("error")
}

/// Every running member's view of the layout is settled.
fn wait_settled(apis: &[String], limit: Duration) {
    let t = Instant::now();
    loop {
        let settled = apis
            .iter()
            .all(|api| support::is_settled(&support::layout_at(api)));
        if settled {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "the group did not settle within {limit:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_partitioned_member_acknowledges_nothing_and_no_copy_diverges() {
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::new(3);
    let members: Vec<NetMember> = (1..=3)
        .map(|i| NetMember::start(&net, i, tmp.path()))
        .collect();
    let apis: Vec<String> = members
        .iter()
        .map(|m| format!("http://{}", m.api))
        .collect();
    let all = apis.join(",");
    let env = [("HAVEN_API", all.as_str())];
    wait_members_online(&all, 3, Duration::from_secs(60));
    let o = haven(
        &[
            "volume",
            "create",
            "g",
            "--size",
            "64MiB",
            "--replicas",
            "2",
        ],
        &env,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let url = |m: &NetMember| format!("iscsi://{}/iqn.2026-11.org.haven:g/0", m.portal);
    // Only the first half: the second is never written until the partition.
    let o = qemu_io(&url(&members[0]), &writes(1, 0..32));
    assert!(clean(&o), "{}{}", stdout(&o), stderr(&o));

    // A writer at the cut-off member's portal, on the half the others do not write, in a
    // chunk the cut-off member is the primary of: it writes its own copy, and cannot get
    // its replica's answer.
    let o = haven(&["volume", "verify-copies", "g"], &env);
    assert!(
        o.status.success(),
        "copies differ before the partition: {}",
        stdout(&o)
    );
    let copies: serde_json::Value = {
        let body = http_get(&format!("{}/v1/volumes/g/copies", apis[2]));
        serde_json::from_str(&body).unwrap()
    };
    let chunk = copies["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["primary"] == true && c["chunk"].as_u64().unwrap() >= 8)
        .map(|c| c["chunk"].as_u64().unwrap())
        .expect("member-3 is the primary of a chunk in the second half");

    net.partition(3);
    let cut_off = Instant::now();
    let args = vec![
        "-f".to_string(),
        "raw".into(),
        "-c".into(),
        format!("write -P 9 {} 1M", chunk * 4 * MIB),
        url(&members[2]),
    ];
    let stranded = Command::new("qemu-io")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The others go on.
    let o = qemu_io(&url(&members[0]), &writes(2, 0..32));
    let took = cut_off.elapsed();
    assert!(
        clean(&o),
        "the majority's writer failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    eprintln!("majority: 32 MiB written {took:?} after the partition");
    assert!(
        took < Duration::from_secs(30),
        "the majority stalled {took:?}"
    );
    for m in &members[..2] {
        let o = qemu_io(&url(m), &reads(2, 0..32));
        assert!(clean(&o), "reading through {}: {}", m.name, stdout(&o));
    }
    // The cut-off member never acknowledges: its writes fail once its deadline passes.
    let o = stranded.wait_with_output().unwrap();
    let out = stdout(&o);
    eprintln!(
        "cut-off writer ended after {:?}: {} of 1 write acknowledged",
        cut_off.elapsed(),
        out.matches("wrote ").count()
    );
    assert_eq!(
        out.matches("wrote ").count(),
        0,
        "the cut-off member acknowledged: {out}"
    );

    net.heal(3);
    wait_members_online(&all, 3, Duration::from_secs(60));
    wait_settled(&apis, Duration::from_secs(120));
    let o = haven(&["volume", "verify-copies", "g"], &env);
    eprintln!("{}{}", stdout(&o), stderr(&o));
    assert!(
        o.status.success(),
        "copies diverged after the partition healed"
    );
    assert!(stdout(&o).contains(" 0 diverged"), "{}", stdout(&o));
    for m in &members {
        let o = qemu_io(&url(m), &reads(2, 0..32));
        assert!(clean(&o), "reading through {}: {}", m.name, stdout(&o));
    }
}
