//! Lab processes: spawned as daemons in their own process group, found again through
//! pid files, stopped with SIGTERM (then SIGKILL) or killed outright.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("pid")
}

/// The pid of the process recorded in `dir`, if it is still alive and is ours.
pub fn running(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie is dead even though it still has a pid.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    // Every lab process names its own directory on its command line.
    let marker = format!("{}/", dir.display());
    cmdline.contains(&marker).then_some(pid)
}

/// Start `haven member run --config DIR/member.toml`, logging to `DIR/member.log`, with
/// `workers` scheduler threads (tokio's `TOKIO_WORKER_THREADS`) unless the operator set
/// that variable for the lab.
pub fn spawn_member(dir: &Path, workers: Option<usize>) -> anyhow::Result<i32> {
    let config = dir.join("member.toml");
    let workers = workers
        .filter(|_| std::env::var_os(WORKERS_VAR).is_none())
        .map(|n| n.to_string());
    let env: Vec<(&str, &str)> = workers.iter().map(|n| (WORKERS_VAR, n.as_str())).collect();
    spawn(
        dir,
        "member.log",
        &[
            "member".as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        &env,
    )
}

/// tokio's own variable for the scheduler threads of a runtime it builds.
const WORKERS_VAR: &str = "TOKIO_WORKER_THREADS";

/// Start `haven --api URLS host run --name NAME --data DIR/data --listen API`, logging to
/// `DIR/host.log`.
pub fn spawn_host(dir: &Path, name: &str, api: &str, group: &[String]) -> anyhow::Result<i32> {
    let data = dir.join("data");
    let urls = group.join(",");
    spawn(
        dir,
        "host.log",
        &[
            "--api".as_ref(),
            urls.as_ref(),
            "host".as_ref(),
            "run".as_ref(),
            "--name".as_ref(),
            name.as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
            "--listen".as_ref(),
            api.as_ref(),
        ],
        &[],
    )
}

/// SIGKILL every QEMU a host agent recorded in `DIR/data/run/*.pid`: a host crash takes
/// its guests with it.
pub fn kill_guests(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir.join("data").join("run")) else {
        return 0;
    };
    let mut killed = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("pid") {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let is_qemu = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("qemu"))
            .unwrap_or(false);
        if is_qemu {
            signal(pid, libc::SIGKILL);
            killed += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

fn spawn(
    dir: &Path,
    log_name: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding the haven binary")?;
    let log_path = dir.join(log_name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // Own process group: a Ctrl-C meant for `lab up` does not reach the members; the
        // lab stops them itself, in order.
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", dir.display()))?;
    let pid = child.id() as i32;
    std::fs::write(pid_file(dir), pid.to_string()).context("writing the pid file")?;
    // Reap it when it exits so it never lingers as a zombie while this process lives, and
    // say how it ended: a process killed by a signal leaves nothing in its log.
    let exit_file = exit_file(dir);
    let _ = std::fs::remove_file(&exit_file);
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = std::fs::write(&exit_file, format!("{status}\n"));
        }
    });
    Ok(pid)
}

fn exit_file(dir: &Path) -> PathBuf {
    dir.join("exit")
}

/// How the process this lab command started in `dir` ended ("exit status: 1",
/// "signal: 11 (SIGSEGV)"), once its reaper has seen it; waits up to a second for that.
pub fn exit_status(dir: &Path) -> Option<String> {
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(exit_file(dir)) {
            return Some(s.trim().to_string());
        }
        if t.elapsed() > Duration::from_secs(1) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` non-empty lines of a log, oldest first.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<&str> = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect();
    lines.reverse();
    lines.join("\n")
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal to a pid; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// SIGKILL the process recorded in `dir`.
pub fn kill(dir: &Path) -> bool {
    match running(dir) {
        Some(pid) => {
            signal(pid, libc::SIGKILL);
            wait_gone(dir, Duration::from_secs(5));
            true
        }
        None => false,
    }
}

/// SIGTERM, then SIGKILL after `grace`.
pub fn stop(dir: &Path, grace: Duration) -> bool {
    let Some(pid) = running(dir) else {
        return false;
    };
    signal(pid, libc::SIGTERM);
    if !wait_gone(dir, grace) {
        signal(pid, libc::SIGKILL);
        wait_gone(dir, Duration::from_secs(5));
    }
    let _ = std::fs::remove_file(pid_file(dir));
    true
}

fn wait_gone(dir: &Path, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if running(dir).is_none() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    running(dir).is_none()
}
