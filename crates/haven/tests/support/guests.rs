//! VMs of the test guest on a lab with hosts: define, start, read their counters from the
//! consoles (every host's) and from their disks.

use super::{run_tool, stderr, stdout, test_guest, Lab};
use std::time::{Duration, Instant};

/// A volume of `size` and a counter-mode VM of `memory` on it; started on `host`.
pub fn counter_vm(lab: &Lab, name: &str, memory: &str, host: &str) {
    let disk = format!("{name}-disk");
    lab.ok(&["volume", "create", &disk, "--size", "4MiB"]);
    let g = test_guest();
    lab.ok(&[
        "vm",
        "create",
        name,
        "--memory",
        memory,
        "--disk",
        &disk,
        "--kernel",
        g.join("vmlinuz").to_str().unwrap(),
        "--initrd",
        g.join("initrd.img").to_str().unwrap(),
        "--append",
        "haven.mode=counter quiet",
    ]);
    lab.ok(&["vm", "start", name, "--on", host]);
}

/// Every `HAVEN-COUNT boot n` line of `vm`'s consoles on every host, in count order.
pub fn console_counts(lab: &Lab, vm: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in 1..=lab.hosts {
        let path = lab.dir.join(format!("host-{i}/data/run/{vm}.console"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("HAVEN-COUNT") {
                continue;
            }
            if let (Some(boot), Some(Ok(n))) = (w.next(), w.next().map(str::parse)) {
                out.push((boot.to_string(), n));
            }
        }
    }
    out.sort_by_key(|(_, n)| *n);
    out
}

/// All the console text of `vm` on every host.
pub fn console_text(lab: &Lab, vm: &str) -> String {
    (1..=lab.hosts)
        .map(|i| {
            std::fs::read_to_string(lab.dir.join(format!("host-{i}/data/run/{vm}.console")))
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The highest count so far (waits up to `limit` for one above `above`).
pub fn wait_count_above(lab: &Lab, vm: &str, above: u64, limit: Duration) -> (String, u64) {
    let t = Instant::now();
    loop {
        if let Some(last) = console_counts(lab, vm).last() {
            if last.1 > above {
                return last.clone();
            }
        }
        assert!(
            t.elapsed() < limit,
            "VM {vm}'s counter did not pass {above} within {limit:?}; console:\n{}",
            tail(&console_text(lab, vm))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `vm`'s console shows `line`.
pub fn wait_console_line(lab: &Lab, vm: &str, line: &str, limit: Duration) {
    let t = Instant::now();
    while !console_text(lab, vm).lines().any(|l| l.trim() == line) {
        assert!(
            t.elapsed() < limit,
            "VM {vm} did not print {line:?} within {limit:?}; console:\n{}",
            tail(&console_text(lab, vm))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The counts rise by exactly one, with one boot id: no step lost, none repeated, no
/// reboot.
pub fn assert_continuous(counts: &[(String, u64)]) {
    assert!(!counts.is_empty(), "no counter lines");
    let boot = &counts[0].0;
    for w in counts.windows(2) {
        assert_eq!(&w[1].0, boot, "the boot id changed: the guest rebooted");
        assert_eq!(
            w[1].1,
            w[0].1 + 1,
            "the counter went from {} to {}",
            w[0].1,
            w[1].1
        );
    }
}

/// The counter line in sector 0 of `volume`: (boot id, count).
pub fn disk_count(lab: &Lab, volume: &str) -> (String, u64) {
    let out = lab.tmp.path().join(format!("{volume}.sector0"));
    run_tool(
        "qemu-img",
        &[
            "dd",
            "-f",
            "raw",
            "-O",
            "raw",
            "bs=512",
            "count=1",
            &format!("if={}", lab.iscsi_url(volume)),
            &format!("of={}", out.display()),
        ],
    );
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let mut w = text.split_whitespace();
    assert_eq!(
        w.next(),
        Some("HAVEN-COUNT"),
        "sector 0 of {volume}: {text:?}"
    );
    (
        w.next().unwrap().to_string(),
        w.next().unwrap().parse().unwrap(),
    )
}

/// Writes one block at 1 MiB into `volume` as initiator `iqn`; true if it was accepted.
pub fn write_as(lab: &Lab, volume: &str, iqn: &str) -> bool {
    let (portal, target) = {
        let url = lab.iscsi_url(volume);
        let rest = url.strip_prefix("iscsi://").unwrap().to_string();
        let (portal, rest) = rest.split_once('/').unwrap();
        let (target, _) = rest.rsplit_once('/').unwrap();
        (portal.to_string(), target.to_string())
    };
    let o = std::process::Command::new("qemu-io")
        .args([
            "--image-opts",
            "-c",
            "write -P 0x11 1048576 512",
            &format!(
                "driver=iscsi,transport=tcp,portal={portal},target={target},lun=0,initiator-name={iqn}"
            ),
        ])
        .output()
        .expect("qemu-io (run scripts/setup)");
    let text = format!("{}{}", stdout(&o), stderr(&o));
    text.contains("wrote 512/512")
}

/// The initiator name of lab host `host`.
pub fn host_iqn(host: &str) -> String {
    format!("iqn.2026-11.org.haven:host:{host}")
}

/// `haven vm migrate … --json` and the migration it reports.
pub fn migrate(lab: &Lab, vm: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["vm", "migrate", vm, "--json"];
    a.extend_from_slice(args);
    let o = lab.cli(&a);
    let text = stdout(&o);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    assert!(
        o.status.success(),
        "haven {a:?} failed: {}{}",
        text,
        stderr(&o)
    );
    v
}

/// Where `vm` runs, per the group.
pub fn vm_host(lab: &Lab, vm: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&lab.ok(&["vm", "show", vm, "--json"])).unwrap();
    v["host"].as_str().unwrap_or("").to_string()
}

/// A migration as the group reports it.
pub fn migration(lab: &Lab, id: u64) -> serde_json::Value {
    serde_json::from_str(&lab.ok(&["migration", "show", &id.to_string(), "--json"])).unwrap()
}

/// Waits until migration `id` is final; returns it.
pub fn wait_migration(lab: &Lab, id: u64, limit: Duration) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let m = migration(lab, id);
        if matches!(
            m["state"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return m;
        }
        assert!(t.elapsed() < limit, "migration {id} still {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
