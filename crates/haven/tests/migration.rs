//! Live and quick migration of the test guest between two lab hosts, with the storage
//! fence checked after each, and migrations that fail or are cancelled.
//!
//! Long form: `HAVEN_MIGRATIONS=10 cargo nextest run -E 'test(live_migration)' --no-capture`.

mod support;

use std::time::Duration;
use support::guests::*;
use support::Lab;

const BOOT: Duration = Duration::from_secs(60);

fn migrations() -> usize {
    std::env::var("HAVEN_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[test]
fn live_migration_keeps_the_guest_counting_and_moves_the_storage_fence() {
    let lab = Lab::up_with_hosts(2);
    counter_vm(&lab, "g", "512MiB", "host-1");
    let mut last = wait_count_above(&lab, "g", 5, BOOT);
    let mut downtimes = Vec::new();
    for i in 0..migrations() {
        let (from, to) = if i % 2 == 0 {
            ("host-1", "host-2")
        } else {
            ("host-2", "host-1")
        };
        let m = migrate(&lab, "g", &["--to", to]);
        assert_eq!(m["state"], "completed", "{m}");
        let end = &m["end"];
        assert_eq!(end["outcome"], "completed", "{m}");
        let downtime = end["downtime_ms"].as_u64().unwrap();
        println!(
            "migration {} {from} → {to}: downtime {downtime} ms (QEMU's own figure {} ms), total {} ms",
            i + 1,
            end["qemu_downtime_ms"],
            end["total_ms"]
        );
        downtimes.push(downtime);
        assert_eq!(vm_host(&lab, "g"), to);
        // The guest keeps counting on the destination.
        last = wait_count_above(&lab, "g", last.1 + 3, BOOT);
        // The old host may no longer write the VM's volume; the new owner may.
        assert!(
            !write_as(&lab, "g-disk", &host_iqn(from)),
            "{from} could still write after the VM left it"
        );
        assert!(
            write_as(&lab, "g-disk", &host_iqn(to)),
            "the owner {to} could not write"
        );
        // Anyone else neither.
        assert!(!write_as(&lab, "g-disk", "iqn.2026-11.test:intruder"));
    }
    let counts = console_counts(&lab, "g");
    assert_continuous(&counts);
    let (boot, n) = disk_count(&lab, "g-disk");
    assert_eq!(boot, counts[0].0, "the disk holds another boot's counter");
    let console_last = counts.last().unwrap().1;
    assert!(
        n + 2 >= console_last && n <= console_last + 1,
        "disk counter {n}, console counter {console_last}"
    );
    downtimes.sort();
    println!(
        "{} migrations, {} counts in a row, downtime median {} ms, max {} ms",
        downtimes.len(),
        counts.len(),
        downtimes[downtimes.len() / 2],
        downtimes.last().unwrap()
    );
    // Generous: the figure that matters is printed above; this catches a stall.
    assert!(*downtimes.last().unwrap() < 2000);
}

#[test]
fn a_cancelled_or_broken_migration_leaves_the_guest_on_its_source() {
    let lab = Lab::up_with_hosts(2);
    counter_vm(&lab, "g", "512MiB", "host-1");
    let mut last = wait_count_above(&lab, "g", 5, BOOT);

    // Cancel while memory is being copied (a low bandwidth cap keeps it copying).
    let m = migrate(
        &lab,
        "g",
        &["--to", "host-2", "--no-wait", "--max-bandwidth", "2MiB"],
    );
    let id = m["id"].as_u64().unwrap();
    wait_state(&lab, id, "running");
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&["migration", "cancel", &id.to_string()]);
    let m = wait_migration(&lab, id, Duration::from_secs(60));
    assert_eq!(m["state"], "cancelled", "{m}");
    assert_eq!(vm_host(&lab, "g"), "host-1");
    last = wait_count_above(&lab, "g", last.1 + 3, BOOT);
    assert!(write_as(&lab, "g-disk", &host_iqn("host-1")));
    assert!(!write_as(&lab, "g-disk", &host_iqn("host-2")));

    // Kill the destination QEMU mid-copy.
    let m = migrate(
        &lab,
        "g",
        &["--to", "host-2", "--no-wait", "--max-bandwidth", "2MiB"],
    );
    let id = m["id"].as_u64().unwrap();
    wait_state(&lab, id, "running");
    let pidfile = lab.dir.join("host-2/data/run/g.pid");
    let t = std::time::Instant::now();
    while !pidfile.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "no destination QEMU");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let m = wait_migration(&lab, id, Duration::from_secs(60));
    assert_eq!(m["state"], "failed", "{m}");
    println!("the failed migration says: {}", m["end"]["error"]);
    assert_eq!(vm_host(&lab, "g"), "host-1");
    wait_count_above(&lab, "g", last.1 + 3, BOOT);
    assert!(write_as(&lab, "g-disk", &host_iqn("host-1")));
    assert_continuous(&console_counts(&lab, "g"));
}

fn wait_state(lab: &Lab, id: u64, state: &str) {
    let t = std::time::Instant::now();
    loop {
        let m = migration(lab, id);
        if m["state"] == state {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "migration {id}: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn quick_migration_pauses_saves_and_restores_on_the_destination() {
    let lab = Lab::up_with_hosts(2);
    counter_vm(&lab, "g", "512MiB", "host-1");
    let last = wait_count_above(&lab, "g", 5, BOOT);
    let m = migrate(&lab, "g", &["--to", "host-2", "--quick"]);
    assert_eq!(m["state"], "completed", "{m}");
    let paused = m["end"]["downtime_ms"].as_u64().unwrap();
    println!(
        "quick migration: paused {paused} ms, total {} ms",
        m["end"]["total_ms"]
    );
    assert!(paused < 5000, "the guest was paused {paused} ms");
    assert_eq!(vm_host(&lab, "g"), "host-2");
    wait_count_above(&lab, "g", last.1 + 3, BOOT);
    assert_continuous(&console_counts(&lab, "g"));
    assert!(!write_as(&lab, "g-disk", &host_iqn("host-1")));
}

#[test]
fn migrations_queue_within_the_per_host_limits_and_a_drain_empties_a_host() {
    let lab = Lab::up_with_hosts(2);
    let vms = ["a", "b", "c", "d"];
    for vm in vms {
        counter_vm(&lab, vm, "128MiB", "host-1");
    }
    for vm in vms {
        wait_count_above(&lab, vm, 2, BOOT);
    }
    let ids: Vec<u64> = vms
        .iter()
        .map(|vm| {
            migrate(&lab, vm, &["--to", "host-2", "--no-wait"])["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut most_running = 0;
    let t = std::time::Instant::now();
    loop {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&lab.ok(&["migration", "list", "--json"])).unwrap();
        let of_ours: Vec<&serde_json::Value> = list
            .iter()
            .filter(|m| ids.contains(&m["id"].as_u64().unwrap()))
            .collect();
        let running = of_ours
            .iter()
            .filter(|m| matches!(m["state"].as_str(), Some("running" | "switchover")))
            .count();
        most_running = most_running.max(running);
        if of_ours.iter().all(|m| m["state"] == "completed") {
            break;
        }
        assert!(
            !of_ours
                .iter()
                .any(|m| matches!(m["state"].as_str(), Some("failed" | "cancelled"))),
            "{of_ours:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(240), "{of_ours:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("4 migrations requested at once; at most {most_running} ran together");
    assert!(most_running <= 2);
    for vm in vms {
        assert_eq!(vm_host(&lab, vm), "host-2");
    }
    // Drain host-2: everything comes back to host-1, and host-2 takes nothing new.
    lab.ok(&["host", "drain", "host-2"]);
    let t = std::time::Instant::now();
    while vms.iter().any(|vm| vm_host(&lab, vm) != "host-1")
        || !lab
            .ok(&["migration", "list", "--json"])
            .contains("\"completed\"")
    {
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "drain did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = lab.cli(&["vm", "migrate", "a", "--to", "host-2"]);
    assert!(!o.status.success(), "a drained host took a VM");
    assert!(
        support::stderr(&o).contains("drained"),
        "{}",
        support::stderr(&o)
    );
    lab.ok(&["host", "undrain", "host-2"]);
    for vm in vms {
        wait_count_above(&lab, vm, 10, BOOT);
        assert_continuous(&console_counts(&lab, vm));
    }
}

/// Migrates two plain QEMUs (no haven agent, no storage handover) of `guest` on the same
/// kind of iSCSI disk, with QEMU's defaults and the agent's bandwidth; returns the
/// downtime from the source's STOP event to the destination's RESUME event.
async fn plain_qemu_downtime(lab: &Lab, volume: &str, append: &str) -> u64 {
    use host::{Incoming, LaunchOptions, VmSpec};
    use serde_json::{json, Value};
    let g = support::test_guest();
    let spec = |name: &str| VmSpec {
        name: name.into(),
        cpus: 1,
        memory_bytes: 512 << 20,
        disks: vec![host::DiskSpec {
            volume: volume.into(),
            url: lab.iscsi_url(volume),
        }],
        boot: host::Boot::Kernel {
            kernel: g.join("vmlinuz"),
            initrd: Some(g.join("initrd.img")),
            append: append.into(),
        },
        initiator_name: "iqn.2026-11.test:plain".into(),
    };
    let src_opts = LaunchOptions::new(lab.tmp.path().join("plain-src"));
    let mut src = host::Vm::start(&spec("plain"), &src_opts).await.unwrap();
    let port = support::free_port();
    let mut dst_opts = LaunchOptions::new(lab.tmp.path().join("plain-dst"));
    dst_opts.incoming = Some(Incoming::Tcp {
        host: "127.0.0.1".into(),
        port,
    });
    let mut dst = host::Vm::start(&spec("plain"), &dst_opts).await.unwrap();
    // Wait until the guest dirties memory.
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(src.console())
        .unwrap_or_default()
        .contains("HAVEN-DIRTY-PASS 1")
    {
        assert!(t.elapsed() < BOOT, "the plain guest did not start dirtying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut src_events = src.events();
    let mut dst_events = dst.events();
    src.qmp()
        .execute(
            "migrate-set-parameters",
            json!({"max-bandwidth": 8u64 << 30}),
        )
        .await
        .unwrap();
    src.qmp()
        .execute("migrate", json!({"uri": format!("tcp:127.0.0.1:{port}")}))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        let info: Value = src
            .qmp()
            .execute("query-migrate", Value::Null)
            .await
            .unwrap();
        match info["status"].as_str() {
            Some("completed") => break,
            Some("failed" | "cancelled") => panic!("plain migration failed: {info}"),
            _ => {}
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "plain migration: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stop = 0;
    while let Ok(ev) = src_events.try_recv() {
        if ev.name == "STOP" {
            stop = ev.timestamp_us;
        }
    }
    let mut resume = 0;
    let t = std::time::Instant::now();
    while resume == 0 {
        match dst_events.try_recv() {
            Ok(ev) if ev.name == "RESUME" => resume = ev.timestamp_us,
            Ok(_) => {}
            Err(_) => {
                assert!(t.elapsed() < Duration::from_secs(10), "no RESUME");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let _ = src.kill().await;
    let _ = dst.kill().await;
    assert!(stop > 0 && resume >= stop);
    (resume - stop) / 1000
}

#[test]
fn a_guest_dirtying_memory_migrates_with_downtime_near_plain_qemu() {
    let lab = Lab::up_with_hosts(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    lab.ok(&["volume", "create", "plain-disk", "--size", "4MiB"]);
    lab.ok(&["volume", "create", "d-disk", "--size", "4MiB"]);
    let g = support::test_guest();
    lab.ok(&[
        "vm",
        "create",
        "d",
        "--memory",
        "512MiB",
        "--disk",
        "d-disk",
        "--kernel",
        g.join("vmlinuz").to_str().unwrap(),
        "--initrd",
        g.join("initrd.img").to_str().unwrap(),
        "--append",
        "haven.mode=dirty quiet",
    ]);
    lab.ok(&["vm", "start", "d", "--on", "host-1"]);
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    for round in 0..2 {
        plain.push(rt.block_on(plain_qemu_downtime(
            &lab,
            "plain-disk",
            "haven.mode=dirty quiet",
        )));
        let text = console_text(&lab, "d");
        let passes = text.matches("HAVEN-DIRTY-PASS").count();
        let t = std::time::Instant::now();
        while console_text(&lab, "d").matches("HAVEN-DIRTY-PASS").count() <= passes {
            assert!(t.elapsed() < BOOT, "the haven guest is not dirtying memory");
            std::thread::sleep(Duration::from_millis(100));
        }
        let to = if round % 2 == 0 { "host-2" } else { "host-1" };
        let m = migrate(&lab, "d", &["--to", to]);
        assert_eq!(m["state"], "completed", "{m}");
        ours.push(m["end"]["downtime_ms"].as_u64().unwrap());
        println!(
            "round {round}: plain QEMU downtime {} ms, haven {} ms (total {} ms)",
            plain[round], ours[round], m["end"]["total_ms"]
        );
    }
    // Opt-in post-copy: a capped copy of a guest that keeps dirtying switches to post-copy
    // and completes on the destination, storage handover included.
    let from = vm_host(&lab, "d");
    let to = if from == "host-1" { "host-2" } else { "host-1" };
    let m = migrate(
        &lab,
        "d",
        &["--to", to, "--postcopy", "--max-bandwidth", "64MiB"],
    );
    assert_eq!(m["state"], "completed", "{m}");
    println!(
        "post-copy migration: downtime {} ms, total {} ms",
        m["end"]["downtime_ms"], m["end"]["total_ms"]
    );
    assert_eq!(vm_host(&lab, "d"), to);
    assert!(!write_as(&lab, "d-disk", &host_iqn(&from)));
    let passes = console_text(&lab, "d").matches("HAVEN-DIRTY-PASS").count();
    let t = std::time::Instant::now();
    while console_text(&lab, "d").matches("HAVEN-DIRTY-PASS").count() <= passes {
        assert!(t.elapsed() < BOOT, "the guest stopped after post-copy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (p, o) = (*plain.iter().max().unwrap(), *ours.iter().max().unwrap());
    println!("memory-dirtying guest: worst downtime plain QEMU {p} ms, haven {o} ms");
    // Twice plain QEMU's, with 100 ms for the noise of two busy cores under TCG (a CI run
    // saw plain QEMU at 30 ms and haven at 104 ms once; reruns gave 49 / 74 ms). What this
    // guards against is a storage handover inside the switchover, which costs seconds.
    assert!(o <= 2 * p + 100, "haven {o} ms vs plain QEMU {p} ms");
}
