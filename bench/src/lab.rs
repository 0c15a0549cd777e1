//! Replicated writes: a 1-member and a 3-member `haven lab` on the tmpfs, one volume each
//! (1 replica, 2 replicas), written through each lab's group portal.

use crate::proc::{group_cpu_seconds, run_tool};
use crate::servers::free_port;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A lab brought up with `haven lab up --detach`; stopped (`haven lab down`, then SIGKILL to
/// every member's process group) on drop.
pub struct Lab {
    pub name: String,
    /// The volume's LUN through the group portal.
    pub url: String,
    haven: PathBuf,
    data: PathBuf,
    work: PathBuf,
    members: Vec<u32>,
}

impl Lab {
    /// `members` members in `work/<name>`, one volume of `size` bytes with `replicas` copies.
    pub fn up(
        work: &Path,
        haven: &Path,
        name: &str,
        members: usize,
        replicas: u8,
        size: u64,
    ) -> Result<Lab> {
        let data = work.join(name);
        let portal = format!("127.0.0.1:{}", free_port()?);
        let mut lab = Lab {
            name: name.to_string(),
            url: String::new(),
            haven: haven.to_path_buf(),
            data: data.clone(),
            work: work.to_path_buf(),
            members: Vec::new(),
        };
        let up = run_tool(
            work,
            &format!("{name}-up"),
            Command::new(haven)
                .args(["lab", "up", "--members", &members.to_string(), "--data"])
                .arg(&data)
                .args(["--portal", &portal, "--detach"])
                .env_remove("HAVEN_API"),
            Duration::from_secs(180),
        );
        // The members that started are stopped on drop even if the lab did not come up.
        lab.members = member_pids(&data);
        up?;
        let env = std::fs::read_to_string(data.join("env")).context("reading the lab's env")?;
        let api = env
            .lines()
            .find_map(|l| l.strip_prefix("HAVEN_API="))
            .context("no HAVEN_API in the lab's env")?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let out = loop {
            let r = run_tool(
                work,
                &format!("{name}-volume-create"),
                Command::new(haven)
                    .args(["--api", &api, "volume", "create", "bench", "--size"])
                    .arg(size.to_string())
                    .args(["--replicas", &replicas.to_string(), "--json"])
                    .env_remove("HAVEN_API"),
                Duration::from_secs(60),
            );
            match r {
                Ok(o) => break o,
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("{name}: haven volume create")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("haven volume create --json printed {:?}", out.stdout))?;
        let iqn = v["iqn"]
            .as_str()
            .context("no iqn in haven volume create --json")?;
        lab.url = format!("iscsi://{portal}/{iqn}/0");
        if lab.members.len() != members {
            bail!("{name}: {} of {members} members running", lab.members.len());
        }
        Ok(lab)
    }

    /// CPU seconds used so far by every member.
    pub fn cpu_seconds(&self) -> f64 {
        self.members.iter().map(|&p| group_cpu_seconds(p)).sum()
    }
}

/// The pids of the lab's members (each leads its own process group).
fn member_pids(data: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(data) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("member-"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

impl Drop for Lab {
    fn drop(&mut self) {
        let down = run_tool(
            &self.work,
            &format!("{}-down", self.name),
            Command::new(&self.haven)
                .args(["lab", "down", "--data"])
                .arg(&self.data),
            Duration::from_secs(60),
        );
        if down.is_ok() {
            return;
        }
        for &pid in &self.members {
            // SAFETY: kill(2) on a process group the lab started for this run.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}
