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
    let marker = dir.join("member.toml");
    cmdline.contains(&*marker.to_string_lossy()).then_some(pid)
}

/// Start `haven member run --config DIR/member.toml`, logging to `DIR/member.log`.
pub fn spawn_member(dir: &Path) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding the haven binary")?;
    let log_path = dir.join("member.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("member")
        .arg("run")
        .arg("--config")
        .arg(dir.join("member.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // Own process group: a Ctrl-C meant for `lab up` does not reach the members; the
        // lab stops them itself, in order.
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().context("starting a member")?;
    let pid = child.id() as i32;
    std::fs::write(pid_file(dir), pid.to_string()).context("writing the member's pid file")?;
    // Reap it when it exits so it never lingers as a zombie while this process lives.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
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
