//! Real QEMU (TCG) running haven's test guest. The tests share the machine's two cores, so
//! they take turns through one lock.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use host::accel::{self, Probe};
use host::qemu::{device_id, node_name};
use host::{
    Accel, Boot, DiskSpec, ErrorKind, LaunchOptions, RunState, ShutdownOutcome, Vm, VmSpec,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test guest (vmlinuz, initrd.img), built once per test binary.
fn guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-test-guest");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/build-test-guest"
        );
        let o = std::process::Command::new(script)
            .arg(&out)
            .output()
            .expect("run build-test-guest");
        assert!(
            o.status.success(),
            "build-test-guest: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

fn spec(name: &str, append: &str) -> VmSpec {
    let g = guest();
    VmSpec {
        name: name.into(),
        cpus: 1,
        memory_bytes: 256 << 20,
        disks: vec![],
        boot: Boot::Kernel {
            kernel: g.join("vmlinuz"),
            initrd: Some(g.join("initrd.img")),
            append: append.into(),
        },
        initiator_name: "iqn.2024-01.io.haven:test-host".into(),
    }
}

fn console(vm: &Vm) -> String {
    String::from_utf8_lossy(&std::fs::read(vm.console()).unwrap_or_default()).into_owned()
}

/// Waits until the console satisfies `f`, returning its value.
async fn wait_console<T>(vm: &Vm, timeout: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let text = console(vm);
        if let Some(v) = f(&text) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "console did not show what we waited for within {timeout:?}:\n{}",
            tail(&text)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The boot id and the last count on the console.
fn last_count(text: &str) -> Option<(String, u64)> {
    text.lines().rev().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == "HAVEN-COUNT").then_some(())?;
        let id = w.next()?.to_string();
        let n = w.next()?.parse().ok()?;
        Some((id, n))
    })
}

fn boot_id(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("HAVEN-BOOT ")
            .map(|s| s.trim().to_string())
    })
}

/// Kills a QEMU when a test panics, so that a failed test leaves no guest behind.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_vm_boots_pauses_and_resumes_with_the_same_boot_id() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut vm = Vm::start(
        &spec("counter", "quiet haven.mode=counter"),
        &LaunchOptions::new(dir.path()),
    )
    .await
    .unwrap();
    let _reap = Reap(vm.pid());
    let qmp_up = started.elapsed();
    assert_eq!(vm.status().await.unwrap(), RunState::Running);
    let id = wait_console(&vm, Duration::from_secs(40), boot_id).await;
    let booted = started.elapsed();
    wait_console(&vm, Duration::from_secs(10), |t| {
        last_count(t).filter(|(_, n)| *n >= 3)
    })
    .await;
    eprintln!("QMP up after {qmp_up:?}, HAVEN-BOOT after {booted:?}");

    let mut events = vm.events();
    vm.pause().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), RunState::Paused);
    let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.name, "STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, frozen) = last_count(&console(&vm)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, still) = last_count(&console(&vm)).unwrap();
    assert_eq!(frozen, still, "the guest counted while paused");

    vm.resume().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), RunState::Running);
    let (id2, n) = wait_console(&vm, Duration::from_secs(10), |t| {
        last_count(t).filter(|(_, n)| *n > frozen + 3)
    })
    .await;
    assert_eq!(id2, id, "the guest rebooted");
    assert!(n > frozen);
    vm.kill().await.unwrap();
    assert!(!pid_alive(vm.pid()));
}

#[tokio::test]
async fn a_disk_is_hot_added_and_hot_removed() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let img = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        DiskSpec {
            volume: name.trim_end_matches(".img").into(),
            url: format!("file://{}", p.display()),
        }
    };
    let root = img("root.img");
    let data = img("data.img");
    let mut s = spec("hotplug", "loglevel=6");
    s.disks.push(root);
    let mut vm = Vm::start(&s, &LaunchOptions::new(dir.path()))
        .await
        .unwrap();
    let _reap = Reap(vm.pid());
    wait_console(&vm, Duration::from_secs(40), boot_id).await;
    assert!(console(&vm).contains("[vda]"), "{}", tail(&console(&vm)));

    let t = Instant::now();
    vm.add_disk(&data, &s.initiator_name).await.unwrap();
    let line = wait_console(&vm, Duration::from_secs(20), |t| {
        t.lines()
            .find(|l| l.contains("virtio_blk") && l.contains("[vdb]"))
            .map(str::to_string)
    })
    .await;
    eprintln!("hot-add seen by the guest after {:?}: {line}", t.elapsed());
    assert!(vm
        .disk_devices()
        .await
        .unwrap()
        .contains(&device_id("data")));

    // Adding it again is refused, and leaves the first attachment intact.
    let e = vm.add_disk(&data, &s.initiator_name).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Command, "{e}");

    let t = Instant::now();
    vm.remove_disk("data", Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!("hot-remove done after {:?}", t.elapsed());
    assert!(!vm
        .disk_devices()
        .await
        .unwrap()
        .contains(&device_id("data")));
    let nodes = vm
        .qmp()
        .execute("query-named-block-nodes", serde_json::Value::Null)
        .await
        .unwrap();
    assert!(
        !nodes.to_string().contains(&node_name("data")),
        "the block node is still there"
    );
    // Its port is free again: attach once more.
    vm.add_disk(&data, &s.initiator_name).await.unwrap();
    // A disk that is not there.
    let e = vm
        .remove_disk("nothing", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    vm.kill().await.unwrap();
}

#[tokio::test]
async fn acpi_shutdown_of_a_guest_without_acpid_is_forced_after_the_timeout() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::start(&spec("shell", "quiet"), &LaunchOptions::new(dir.path()))
        .await
        .unwrap();
    let _reap = Reap(vm.pid());
    wait_console(&vm, Duration::from_secs(40), |t| {
        t.contains("HAVEN-READY").then_some(())
    })
    .await;
    let pid = vm.pid();
    let t = Instant::now();
    let outcome = vm.shutdown(Duration::from_secs(3)).await.unwrap();
    let took = t.elapsed();
    assert_eq!(outcome, ShutdownOutcome::Forced);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
    assert!(vm.has_exited());
    assert!(!pid_alive(pid));
}

#[tokio::test]
async fn a_running_vm_is_adopted_by_pid_and_socket() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let opts = LaunchOptions::new(dir.path());
    let vm = Vm::start(&spec("adoptee", "quiet haven.mode=counter"), &opts)
        .await
        .unwrap();
    let _reap = Reap(vm.pid());
    let id = wait_console(&vm, Duration::from_secs(40), boot_id).await;
    let (pid, socket, console_path) = (
        vm.pid(),
        vm.qmp_socket().to_path_buf(),
        vm.console().to_path_buf(),
    );
    drop(vm); // the agent "restarts": QEMU keeps running
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pid_alive(pid), "dropping the handle stopped QEMU");

    // A wrong socket for this pid is refused.
    let e = Vm::adopt("adoptee", pid, dir.path().join("other.qmp"), &console_path)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    let vm = Vm::adopt("adoptee", pid, &socket, &console_path)
        .await
        .unwrap();
    assert_eq!(vm.status().await.unwrap(), RunState::Running);
    let (_, n0) = wait_console(&vm, Duration::from_secs(10), last_count).await;
    let (id2, _) = wait_console(&vm, Duration::from_secs(10), |t| {
        last_count(t).filter(|(_, n)| *n > n0)
    })
    .await;
    assert_eq!(id2, id);
    drop(vm);
    // By the pid file, too.
    let mut vm = Vm::adopt_in("adoptee", &opts).await.unwrap();
    assert_eq!(vm.pid(), pid);
    vm.pause().await.unwrap();
    assert_eq!(vm.status().await.unwrap(), RunState::Paused);
    vm.kill().await.unwrap();
    assert!(!pid_alive(pid));
    assert!(vm.has_exited());
}

#[tokio::test]
async fn a_qemu_that_fails_to_start_reports_its_error() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec("broken", "");
    s.boot = Boot::Kernel {
        kernel: dir.path().join("no-such-kernel"),
        initrd: None,
        append: String::new(),
    };
    let e = Vm::start(&s, &LaunchOptions::new(dir.path()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Exited, "{e}");
    assert!(e.to_string().contains("no-such-kernel"), "{e}");
}

#[tokio::test]
async fn kvm_detection_probes_once_and_caches() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let g = guest();
    let probe = Probe {
        qemu: "qemu-system-x86_64".into(),
        kernel: g.join("vmlinuz"),
        initrd: Some(g.join("initrd.img")),
        append: "console=ttyS0 quiet".into(),
        boot_line: "HAVEN-BOOT".into(),
        timeout: Duration::from_secs(8),
        cache: dir.path().join("accel.json"),
    };
    let t = Instant::now();
    let accel = accel::detect(&probe).await.unwrap();
    let probed = t.elapsed();
    eprintln!("accelerator {accel:?}, probed in {probed:?}");
    assert!(probe.cache.exists());
    let t = Instant::now();
    assert_eq!(accel::detect(&probe).await.unwrap(), accel);
    assert!(t.elapsed() < Duration::from_millis(500));
    if accel == Accel::Kvm {
        // Then a KVM guest must really boot.
        let mut opts = LaunchOptions::new(dir.path());
        opts.accel = Accel::Kvm;
        let mut vm = Vm::start(&spec("kvm", "quiet"), &opts).await.unwrap();
        let _reap = Reap(vm.pid());
        wait_console(&vm, Duration::from_secs(20), |t| {
            t.contains("HAVEN-READY").then_some(())
        })
        .await;
        vm.kill().await.unwrap();
    }
}
