//! VMs on lab hosts: disks hot-added and hot-removed from a running guest, a host crash
//! taking its QEMUs, and a restarted agent adopting the QEMUs that outlived it.

mod support;

use std::time::Duration;
use support::guests::*;
use support::Lab;

const BOOT: Duration = Duration::from_secs(60);

#[test]
fn a_disk_is_hot_added_used_and_hot_removed_only_with_force_while_in_use() {
    let lab = Lab::up_with_hosts(1);
    counter_vm(&lab, "g", "256MiB", "host-1");
    wait_console_line(&lab, "g", "HAVEN-DISKS vda", BOOT);
    lab.ok(&["volume", "create", "extra", "--size", "4MiB"]);
    lab.ok(&["vm", "disk", "add", "g", "extra"]);
    wait_console_line(&lab, "g", "HAVEN-DISKS vda vdb", BOOT);
    let before = wait_count_above(&lab, "g", 0, BOOT).1;
    wait_count_above(&lab, "g", before + 3, BOOT);
    // The guest writes its counter to the new disk: it is in use.
    let o = lab.cli(&["vm", "disk", "remove", "g", "extra"]);
    assert!(
        !o.status.success(),
        "a disk in use was removed without --force"
    );
    assert!(
        support::stderr(&o).contains("--force"),
        "{}",
        support::stderr(&o)
    );
    lab.ok(&["vm", "disk", "remove", "g", "extra", "--force"]);
    wait_console_line(&lab, "g", "HAVEN-DISKS vda", BOOT);
    let shown: serde_json::Value =
        serde_json::from_str(&lab.ok(&["vm", "show", "g", "--json"])).unwrap();
    assert_eq!(shown["disks"], serde_json::json!(["g-disk"]));
    // The volume keeps what the guest wrote, and the guest still runs.
    let (boot, n) = disk_count(&lab, "extra");
    let counts = console_counts(&lab, "g");
    assert_eq!(boot, counts[0].0);
    assert!(
        n > before,
        "the guest's writes to the hot-added disk are not on the volume"
    );
    wait_count_above(&lab, "g", counts.last().unwrap().1 + 2, BOOT);
    assert_continuous(&console_counts(&lab, "g"));
}

fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

fn qemu_pid(lab: &Lab, host: &str, vm: &str) -> i32 {
    let path = lab.dir.join(format!("{host}/data/run/{vm}.pid"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_host_crash_takes_its_qemus_and_a_restarted_agent_adopts_survivors() {
    let lab = Lab::up_with_hosts(1);
    counter_vm(&lab, "g", "256MiB", "host-1");
    let first = wait_count_above(&lab, "g", 3, BOOT);
    let pid = qemu_pid(&lab, "host-1", "g");

    // Only the agent dies (SIGKILL to its pid): the guest keeps running and the new agent
    // adopts it: same QEMU, same boot, the counter goes on.
    let agent_pid: i32 = std::fs::read_to_string(lab.dir.join("host-1/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe {
        libc::kill(agent_pid, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(pid_alive(pid), "the QEMU died with its agent");
    lab.ok(&["lab", "start", "host-1", "--data", lab.dir_str()]);
    let shown: serde_json::Value =
        serde_json::from_str(&lab.ok(&["vm", "show", "g", "--json"])).unwrap();
    assert_eq!(shown["status"]["state"], "running", "{shown}");
    assert_eq!(shown["status"]["pid"], pid, "{shown}");
    let later = wait_count_above(&lab, "g", first.1 + 3, BOOT);
    assert_eq!(later.0, first.0, "the guest rebooted");
    assert_continuous(&console_counts(&lab, "g"));

    // The host crashes: `lab kill` takes its QEMUs too.
    let out = lab.ok(&["lab", "kill", "host-1", "--data", lab.dir_str()]);
    assert!(out.contains("1 QEMUs"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!pid_alive(pid), "the QEMU outlived its host");
    // Back up: the agent starts the VM the group still places there (a new boot).
    lab.ok(&["lab", "start", "host-1", "--data", lab.dir_str()]);
    let t = std::time::Instant::now();
    loop {
        let counts = console_counts(&lab, "g");
        if counts.iter().any(|(b, n)| *b != first.0 && *n > 2) {
            break;
        }
        assert!(
            t.elapsed() < BOOT,
            "the VM did not start again after its host came back:\n{}",
            tail(&console_text(&lab, "g"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(qemu_pid(&lab, "host-1", "g"), pid);
}

#[test]
fn bad_vm_requests_get_one_clear_error_and_change_nothing() {
    let lab = Lab::up_with_hosts(1);
    lab.ok(&["volume", "create", "v", "--size", "4MiB"]);
    let g = support::test_guest();
    let kernel = g.join("vmlinuz");
    let kernel = kernel.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["vm", "create", "Bad_Name", "--disk", "v"],
            "invalid VM name",
        ),
        (
            &["vm", "create", "a", "--disk", "nosuch"],
            "no volume named nosuch",
        ),
        (
            &["vm", "create", "a", "--memory", "12XB", "--disk", "v"],
            "12XB",
        ),
        (
            &["vm", "create", "a", "--memory", "1MiB", "--disk", "v"],
            "at least 32 MiB",
        ),
        (&["vm", "create", "a"], "needs a disk"),
        (&["vm", "start", "nosuch"], "no VM named nosuch"),
        (
            &["vm", "migrate", "nosuch", "--to", "host-1"],
            "no VM named nosuch",
        ),
        (&["host", "drain", "nosuch"], "no host named nosuch"),
        (&["migration", "cancel", "99"], "no migration 99"),
    ];
    for (args, want) in cases {
        let o = lab.cli(args);
        let err = support::stderr(&o);
        assert!(!o.status.success(), "haven {args:?} succeeded");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "haven {args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "haven {args:?}: {err}");
    }
    // A kernel that is not there: start fails with QEMU's reason, the VM stays stopped.
    lab.ok(&[
        "vm",
        "create",
        "k",
        "--disk",
        "v",
        "--kernel",
        "/nonexistent/vmlinuz",
    ]);
    let o = lab.cli(&["vm", "start", "k"]);
    assert!(!o.status.success());
    assert!(
        support::stderr(&o).contains("could not start"),
        "{}",
        support::stderr(&o)
    );
    let shown: serde_json::Value =
        serde_json::from_str(&lab.ok(&["vm", "show", "k", "--json"])).unwrap();
    assert_eq!(shown["running"], false, "{shown}");
    assert!(shown["host"].is_null(), "{shown}");
    // A disk of a VM cannot be deleted, nor given to a second VM.
    let o = lab.cli(&["volume", "delete", "v"]);
    assert!(
        support::stderr(&o).contains("disk of VM k"),
        "{}",
        support::stderr(&o)
    );
    let o = lab.cli(&["vm", "create", "k2", "--disk", "v", "--kernel", kernel]);
    assert!(
        support::stderr(&o).contains("disk of VM k"),
        "{}",
        support::stderr(&o)
    );
    let list: serde_json::Value = serde_json::from_str(&lab.ok(&["vm", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}
