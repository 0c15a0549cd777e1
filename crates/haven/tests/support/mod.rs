//! Test support: a lab of real `haven` processes in a temp dir, reaped on drop.

#![allow(dead_code)]

pub mod guests;
pub mod initiator;
pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub fn haven_bin() -> &'static str {
    env!("CARGO_BIN_EXE_haven")
}

/// A free port on 127.0.0.1 that outgoing connections never take ([`member::ports`]).
pub fn free_port() -> u16 {
    member::ports::free_local_port().unwrap()
}

/// Run `haven ARGS` and return its output.
pub fn haven(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(haven_bin());
    c.args(args);
    c.env_remove("HAVEN_API");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run haven")
}

/// `haven member layout --json` as the member at `api` answers it (Null when it does not).
pub fn layout_at(api: &str) -> serde_json::Value {
    let o = haven(&["member", "layout", "--json"], &[("HAVEN_API", api)]);
    if o.status.success() {
        serde_json::from_slice(&o.stdout).unwrap()
    } else {
        serde_json::Value::Null
    }
}

/// A layout view with nothing degraded, being filled or unavailable.
pub fn is_settled(layout: &serde_json::Value) -> bool {
    layout["degraded"] == 0 && layout["filling"] == 0 && layout["unavailable"] == 0
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A lab in a temp dir. Dropping it stops every process it started, even when the test
/// failed: each member runs in its own process group, which is killed outright.
pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub portal: String,
    pub hosts: usize,
    pub members: usize,
    /// `--member-capacity` for members the lab adds.
    pub member_capacity: Option<String>,
}

impl Lab {
    pub fn up() -> Lab {
        Lab::up_with_hosts(0)
    }

    /// A lab with `hosts` hypervisor hosts besides its member.
    pub fn up_with_hosts(hosts: usize) -> Lab {
        Lab::up_sized(1, hosts)
    }

    /// A lab of `members` storage members (and no hosts).
    pub fn up_group(members: usize) -> Lab {
        Lab::up_sized(members, 0)
    }

    /// A lab of `members` members offering `capacity` each.
    pub fn up_group_sized(members: usize, capacity: &str) -> Lab {
        Lab::up_with(members, 0, Some(capacity.to_string()))
    }

    fn up_sized(members: usize, hosts: usize) -> Lab {
        Lab::up_with(members, hosts, None)
    }

    fn up_with(members: usize, hosts: usize, member_capacity: Option<String>) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        // A loopback address of its own keeps the test clear of a developer's lab.
        let portal = format!(
            "127.0.{}.{}:{}",
            100 + std::process::id() % 100,
            2 + std::process::id() % 200,
            free_port()
        );
        let lab = Lab {
            tmp,
            dir,
            portal,
            hosts,
            members,
            member_capacity,
        };
        lab.up_again();
        lab
    }

    pub fn up_again(&self) {
        let hosts = self.hosts.to_string();
        let members = self.members.to_string();
        let mut args = vec![
            "lab",
            "up",
            "--detach",
            "--data",
            self.dir_str(),
            "--portal",
            &self.portal,
            "--hosts",
            &hosts,
            "--members",
            &members,
        ];
        if let Some(c) = &self.member_capacity {
            args.extend(["--member-capacity", c]);
        }
        let o = haven(&args, &[]);
        assert!(
            o.status.success(),
            "lab up failed: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }

    pub fn dir_str(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// `HAVEN_API` of the lab.
    pub fn api(&self) -> String {
        let env = std::fs::read_to_string(self.dir.join("env")).unwrap();
        env.lines()
            .find_map(|l| l.strip_prefix("HAVEN_API="))
            .unwrap()
            .to_string()
    }

    /// Run a CLI command against this lab.
    pub fn cli(&self, args: &[&str]) -> Output {
        let api = self.api();
        haven(args, &[("HAVEN_API", &api)])
    }

    /// Run a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(o.status.success(), "haven {args:?} failed: {}", stderr(&o));
        stdout(&o)
    }

    /// The name of the member leading the group's control plane.
    pub fn leader(&self) -> String {
        let list: serde_json::Value =
            serde_json::from_str(&self.ok(&["member", "list", "--json"])).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .find(|m| m["leader"].as_bool() == Some(true))
            .map(|m| m["name"].as_str().unwrap().to_string())
            .expect("a leader")
    }

    /// The portal of every member of the lab, in the lab's order.
    pub fn member_portals(&self) -> Vec<String> {
        self.status_json()["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["portal"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let o = haven(&["lab", "status", "--json", "--data", self.dir_str()], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    pub fn iscsi_url(&self, volume: &str) -> String {
        format!("iscsi://{}/iqn.2026-11.org.haven:{volume}/0", self.portal)
    }

    /// Each running member's `TOKIO_WORKER_THREADS` (its runtime's scheduler threads),
    /// by pid; `None` where it runs the default, a thread per core.
    pub fn member_workers(&self) -> Vec<(i32, Option<usize>)> {
        self.pids()
            .into_iter()
            .filter_map(|pid| {
                let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                let workers = env
                    .split(|&b| b == 0)
                    .filter_map(|v| v.strip_prefix(b"TOKIO_WORKER_THREADS="))
                    .find_map(|n| std::str::from_utf8(n).ok()?.parse().ok());
                Some((pid, workers))
            })
            .collect()
    }

    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return pids;
        };
        for e in rd.flatten() {
            if let Ok(p) = std::fs::read_to_string(e.path().join("pid")) {
                if let Ok(pid) = p.trim().parse() {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// The pids of the QEMUs the lab's host agents recorded.
    pub fn qemu_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        // Host agents' run dirs, and any run dir a test made itself in the temp dir (plain
        // QEMUs started beside the lab).
        let mut runs: Vec<PathBuf> = (1..=self.hosts)
            .map(|i| self.dir.join(format!("host-{i}/data/run")))
            .collect();
        runs.extend(
            std::fs::read_dir(self.tmp.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
        for run in runs {
            for e in std::fs::read_dir(run).into_iter().flatten().flatten() {
                if e.path().extension().and_then(|x| x.to_str()) == Some("pid") {
                    if let Ok(pid) = std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .trim()
                        .parse()
                    {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let qemus = self.qemu_pids();
        for pid in self.pids() {
            // Each lab process leads its own process group: kill the whole group.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        for pid in qemus {
            // A pid file may outlive its QEMU: kill only a QEMU.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains("qemu") {
                continue;
            }
            // QEMUs run in process groups of their own (they outlive their agent).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        // HAVEN_KEEP_LAB=1 keeps a failed test's lab (logs, data) for a post-mortem.
        if std::thread::panicking() && std::env::var_os("HAVEN_KEEP_LAB").is_some() {
            let kept = self.tmp.path().to_path_buf();
            std::mem::forget(std::mem::replace(
                &mut self.tmp,
                tempfile::tempdir().unwrap(),
            ));
            eprintln!("lab kept in {}", kept.display());
        }
    }
}

/// The test guest (scripts/build-test-guest), built once per test process.
pub fn test_guest() -> &'static Path {
    static GUEST: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    GUEST.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("haven-test-guest-{}", std::process::id()));
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/build-test-guest"
        );
        run_tool(script, &[dir.to_str().unwrap()]);
        dir
    })
}

/// Run an external tool, panicking with its output if it fails.
pub fn run_tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} not runnable ({e}); run scripts/setup"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Copy the raw image `src` onto the volume at `url` (qemu-img, the volume's size kept).
pub fn qemu_img_put(src: &str, url: &str) {
    run_tool(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, url],
    );
}

/// Copy the whole volume at `url` into the raw image `dst`.
pub fn qemu_img_get(url: &str, dst: &str) {
    run_tool("qemu-img", &["convert", "-f", "raw", "-O", "raw", url, dst]);
}

pub fn write_random(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        // xorshift64*: cheap, deterministic, incompressible enough for a thin volume.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}
