//! Processes: daemons in their own process group, killed on drop (also when unwinding from a
//! panic); tools run to completion with a deadline; CPU time of a process group.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The packages that provide the tools the harness drives.
pub const SETUP_HINT: &str =
    "run scripts/setup (Debian packages: tgt, libiscsi-bin, qemu-utils, fio)";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Spawn `cmd` as the leader of a new process group, stdout and stderr into files in `dir`.
fn spawn_logged(dir: &Path, tag: &str, cmd: &mut Command) -> Result<(Child, PathBuf, PathBuf)> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out = dir.join(format!("{n:03}-{tag}.out"));
    let err = dir.join(format!("{n:03}-{tag}.err"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .process_group(0);
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("`{prog}` not found: {SETUP_HINT}")
        } else {
            anyhow::anyhow!("cannot start `{prog}`: {e}")
        }
    })?;
    Ok((child, out, err))
}

fn tail(path: &Path, max: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let s = s.replace('\r', "\n");
    let start = s.len().saturating_sub(max);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].trim().to_string()
}

fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group we created.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

/// A long-running process (a target server or qemu-nbd). Dropping it kills its whole group.
pub struct Daemon {
    pub name: String,
    child: Child,
    err: PathBuf,
    out: PathBuf,
    /// Files the daemon leaves behind when killed (tgtd's control socket), removed on drop.
    pub leaves: Vec<PathBuf>,
}

impl Daemon {
    pub fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Result<Daemon> {
        let (child, out, err) = spawn_logged(dir, name, cmd)?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            err,
            out,
            leaves: Vec::new(),
        })
    }

    /// The pid, which is also the process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of the daemon's log if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "{} exited ({st}): {} {}",
                self.name,
                tail(&self.out, 2000),
                tail(&self.err, 2000)
            );
        }
        Ok(())
    }

    /// CPU time (user + system) used so far by every process in the daemon's group, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        group_cpu_seconds(self.pid())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_group(self.pid());
        let _ = self.child.wait();
        for p in &self.leaves {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What a tool printed.
pub struct ToolOutput {
    pub stdout: String,
}

/// Run a tool to completion in its own process group, killed if it outlives `timeout`.
/// Fails, with its output, unless it exits with status 0.
pub fn run_tool(dir: &Path, tag: &str, cmd: &mut Command, timeout: Duration) -> Result<ToolOutput> {
    let line = format!("{cmd:?}");
    let (mut child, out, err) = spawn_logged(dir, tag, cmd)?;
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            kill_group(child.id());
            let _ = child.wait();
            bail!(
                "{line} did not finish in {timeout:?}: {} {}",
                tail(&out, 2000),
                tail(&err, 2000)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let o = ToolOutput {
        stdout: std::fs::read_to_string(&out)
            .with_context(|| format!("reading {}", out.display()))?,
    };
    if !status.success() {
        bail!(
            "{line} failed ({status}): {} {}",
            tail(&out, 3000),
            tail(&err, 3000)
        );
    }
    Ok(o)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime, in seconds, of every live process whose process group is `pgid`.
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    let mut ticks = 0u64;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((pgrp, t)) = parse_stat(&stat) {
            if pgrp == pgid {
                ticks += t;
            }
        }
    }
    ticks as f64 / clock_ticks()
}

/// (pgrp, utime + stime) from a /proc/<pid>/stat line.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name, 0-based: 0 state, 1 ppid, 2 pgrp, … 11 utime, 12 stime.
    let pgrp = f.get(2)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        let s = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(s), Some((4242, 22)));
    }

    #[test]
    fn our_own_group_has_used_some_cpu() {
        let me = std::process::id();
        // SAFETY: getpgid(0) has no preconditions.
        let pgid = unsafe { libc::getpgid(0) } as u32;
        // Work until the kernel has counted at least one tick (10 ms) for the group.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while group_cpu_seconds(pgid) <= 0.0 && start.elapsed() < std::time::Duration::from_secs(5)
        {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(x != 1 || me == 0);
        assert!(
            group_cpu_seconds(pgid) > 0.0,
            "no CPU counted for our own group after 5 s of work"
        );
    }
}
