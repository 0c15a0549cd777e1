//! `haven lab …`: a complete group on this machine, on loopback.
//!
//! Layout of the lab directory (default `./haven-lab`):
//! ```text
//! lab.toml            addresses chosen at the first `up` and kept
//! env                 HAVEN_API=… for `source`
//! member-N/member.toml, member.log, pid, data/
//! host-N/host.log, pid, data/run/ (QEMU sockets, consoles, pid files)
//! ```

mod process;
mod state;

pub use state::LabState;

use crate::output;
use anyhow::{bail, Context};
use api::GroupStatus;
use clap::{Args, Subcommand};
use serde::Serialize;
use state::{free_port, LabHost, LabMember};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const DEFAULT_DIR: &str = "haven-lab";
/// The group portal's default: its own loopback address and the iSCSI port.
pub const DEFAULT_GROUP_PORTAL: &str = "127.0.0.2:3260";

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Start (or resume) the lab; stays in the foreground unless --detach.
    Up(UpArgs),
    /// Show the lab's portals, API URLs and processes.
    Status {
        #[arg(long, default_value = DEFAULT_DIR)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Stop every process of the lab (data is kept).
    Down {
        #[arg(long, default_value = DEFAULT_DIR)]
        data: PathBuf,
    },
    /// SIGKILL one process of the lab (a crash).
    Kill {
        name: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        data: PathBuf,
    },
    /// Start one stopped process of the lab again.
    Start {
        name: String,
        #[arg(long, default_value = DEFAULT_DIR)]
        data: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Storage members.
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// What each new member offers the pool (e.g. 4GiB); default: its free space.
    #[arg(long)]
    member_capacity: Option<String>,
    /// Hypervisor hosts.
    #[arg(long, default_value_t = 0)]
    hosts: usize,
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Group portal address (only when the lab is first created).
    #[arg(long)]
    portal: Option<String>,
    /// Return once the lab is up instead of staying in the foreground.
    #[arg(long)]
    detach: bool,
    /// How long a down member keeps its placement groups before they are copied elsewhere
    /// (a member back sooner resyncs only what changed). Default: the member's, 300 s.
    #[arg(long)]
    down_out_secs: Option<u64>,
}

pub async fn run(cmd: LabCommand) -> anyhow::Result<()> {
    match cmd {
        LabCommand::Up(a) => up(a).await,
        LabCommand::Status { data, json } => status(&data, json).await,
        LabCommand::Down { data } => down(&data),
        LabCommand::Kill { name, data } => {
            let lab = existing(&data)?;
            if lab.member(&name).is_none() && lab.host(&name).is_none() {
                bail!("no process named {name} in the lab at {}", data.display());
            }
            let dir = lab.member_dir(&name);
            let killed = process::kill(&dir);
            // A host's crash takes its guests with it.
            let guests = process::kill_guests(&dir);
            match (killed, guests) {
                (false, 0) => println!("{name} was not running"),
                (_, 0) => println!("killed {name}"),
                (_, n) => println!("killed {name} and its {n} QEMUs"),
            }
            Ok(())
        }
        LabCommand::Start { name, data } => {
            let lab = existing(&data)?;
            if let Some(h) = lab.host(&name).cloned() {
                start_host(&lab, &h)?;
                wait_host_ready(&lab, &h, HOST_READY).await?;
                println!("{name} is running (agent at http://{})", h.api);
                return Ok(());
            }
            let m = lab
                .member(&name)
                .with_context(|| {
                    format!("no process named {name} in the lab at {}", data.display())
                })?
                .clone();
            start_member(&lab, &m)?;
            wait_ready(&lab, &m, Duration::from_secs(60)).await?;
            println!("{name} is serving at {}", m.portal);
            Ok(())
        }
    }
}

fn existing(dir: &Path) -> anyhow::Result<LabState> {
    LabState::load(dir)?.with_context(|| {
        format!(
            "no lab in {}: start one with `haven lab up --data {}`",
            dir.display(),
            dir.display()
        )
    })
}

fn member_config(lab: &LabState, m: &LabMember) -> String {
    let dir = lab.member_dir(&m.name);
    let mut text = format!(
        "name = {:?}\nnode_id = {}\ndata_dir = {:?}\nportal = {:?}\napi = {:?}\ngroup_portal = {:?}\nbootstrap = {}\n",
        m.name,
        m.node_id,
        dir.join("data"),
        m.portal,
        m.api,
        lab.group_portal,
        m.node_id == 1
    );
    if !m.peer.is_empty() {
        text.push_str(&format!("peer = {:?}\n", m.peer));
    }
    if let Some(c) = &m.capacity {
        text.push_str(&format!("capacity = {c:?}\n"));
    }
    if let Some(secs) = lab.down_out_secs {
        text.push_str(&format!("down_out_secs = {secs}\n"));
    }
    // Later members join through the first one.
    if let Some(first) = lab.active_members().next().filter(|f| f.name != m.name) {
        text.push_str(&format!("join = {:?}\n", first.api));
    }
    text
}

fn new_member(i: usize, capacity: Option<&str>) -> anyhow::Result<LabMember> {
    Ok(LabMember {
        name: format!("member-{i}"),
        node_id: i as u64,
        api: format!("127.0.0.1:{}", free_port()?),
        portal: format!("127.0.0.1:{}", free_port()?),
        peer: format!("127.0.0.1:{}", free_port()?),
        capacity: capacity.map(str::to_string),
    })
}

fn start_member(lab: &LabState, m: &LabMember) -> anyhow::Result<()> {
    let dir = lab.member_dir(&m.name);
    if process::running(&dir).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (what, addr) in [("portal", &m.portal), ("API", &m.api), ("peer", &m.peer)] {
        if !addr.is_empty() && std::net::TcpListener::bind(addr).is_err() {
            bail!(
                "{}'s {what} address {addr} is in use by another process",
                m.name
            );
        }
    }
    std::fs::write(dir.join("member.toml"), member_config(lab, m))
        .context("writing the member's config")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    process::spawn_member(&dir, workers_each(cores, lab.active_members().count()))?;
    Ok(())
}

/// The scheduler threads each member of a lab gets: its share of the machine's cores.
/// Members that each ran a thread per core would outnumber the cores, and every hand-off
/// between a member's threads (a write that arrives on one and wakes another) would
/// become a context switch the other members pay for. `None`: the runtime's default, a
/// thread per core (a lab of one member).
fn workers_each(cores: usize, members: usize) -> Option<usize> {
    (members > 1).then(|| (cores / members).max(1))
}

async fn wait_ready(lab: &LabState, m: &LabMember, limit: Duration) -> anyhow::Result<()> {
    let client = api::Client::new(vec![format!("http://{}", m.api)]);
    let dir = lab.member_dir(&m.name);
    let t = Instant::now();
    loop {
        if let Ok(s) = client.get::<GroupStatus>("/v1/status").await {
            if s.leader.is_some()
                && s.members
                    .iter()
                    .any(|x| x.name == m.name && x.portal == m.portal)
            {
                return Ok(());
            }
        }
        if process::running(&dir).is_none() {
            return Err(exited_while_starting(&m.name, &dir, "member.log"));
        }
        if t.elapsed() > limit {
            bail!(
                "{} did not become ready within {}s (see {})",
                m.name,
                limit.as_secs(),
                dir.join("member.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How a lab process that died while starting ended, and the end of its log.
fn exited_while_starting(name: &str, dir: &Path, log_name: &str) -> anyhow::Error {
    let log = dir.join(log_name);
    let how = process::exit_status(dir).unwrap_or_else(|| "ended".into());
    anyhow::anyhow!(
        "{name} exited while starting ({how}; see {}); its log ends:\n{}",
        log.display(),
        process::log_tail(&log, 8)
    )
}

/// A host agent's first start probes KVM (up to 20 s) before it registers.
const HOST_READY: Duration = Duration::from_secs(60);

fn start_host(lab: &LabState, h: &LabHost) -> anyhow::Result<()> {
    let dir = lab.member_dir(&h.name);
    if process::running(&dir).is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::net::TcpListener::bind(&h.api).is_err() {
        bail!(
            "{}'s agent address {} is in use by another process",
            h.name,
            h.api
        );
    }
    process::spawn_host(&dir, &h.name, &h.api, &lab.api_urls())?;
    Ok(())
}

/// Waits until the group lists the host and its agent answers.
async fn wait_host_ready(lab: &LabState, h: &LabHost, limit: Duration) -> anyhow::Result<()> {
    let group = api::Client::new(lab.api_urls()).with_timeout(Duration::from_secs(3));
    let dir = lab.member_dir(&h.name);
    let t = Instant::now();
    loop {
        if let Ok(hosts) = group.get::<Vec<api::HostView>>("/v1/hosts").await {
            if hosts
                .iter()
                .any(|x| x.host.name == h.name && x.host.api_addr == h.api && x.reachable)
            {
                return Ok(());
            }
        }
        if process::running(&dir).is_none() {
            return Err(exited_while_starting(&h.name, &dir, "host.log"));
        }
        if t.elapsed() > limit {
            bail!(
                "{} did not register within {}s (see {})",
                h.name,
                limit.as_secs(),
                dir.join("host.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn group_portal_in_use(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_err()
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    if !(1..=9).contains(&a.members) {
        bail!("--members {}: the lab runs 1 to 9 members", a.members);
    }
    if let Some(c) = &a.member_capacity {
        api::parse_size(c).map_err(|e| anyhow::anyhow!("--member-capacity {c}: {e}"))?;
    }
    if a.hosts > 16 {
        bail!("--hosts {}: the lab runs at most 16 hosts", a.hosts);
    }
    let dir = a.data.clone();
    if dir.exists() && !dir.is_dir() {
        bail!(
            "lab data dir {} exists and is not a directory",
            dir.display()
        );
    }
    let lab = match LabState::load(&dir)? {
        Some(lab) => {
            if a.portal.as_ref().is_some_and(|p| p != &lab.group_portal) {
                bail!(
                    "this lab's group portal is {}; --portal only applies to a new lab",
                    lab.group_portal
                );
            }
            lab
        }
        None => {
            let group_portal = a
                .portal
                .clone()
                .unwrap_or_else(|| DEFAULT_GROUP_PORTAL.to_string());
            if group_portal.parse::<std::net::SocketAddr>().is_err() {
                bail!("group portal {group_portal:?} is not an ip:port address");
            }
            if group_portal_in_use(&group_portal) {
                bail!("group portal address {group_portal} is in use by another process; choose another with --portal");
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir = dir.canonicalize()?;
            let members = (1..=a.members)
                .map(|i| new_member(i, a.member_capacity.as_deref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let lab = LabState {
                group_portal,
                members,
                hosts: vec![],
                down_out_secs: None,
                dir,
            };
            lab.save()?;
            lab
        }
    };
    let any_running = lab
        .members
        .iter()
        .any(|m| process::running(&lab.member_dir(&m.name)).is_some());
    if !any_running && group_portal_in_use(&lab.group_portal) {
        bail!(
            "group portal address {} is in use by another process (another lab?)",
            lab.group_portal
        );
    }
    let mut lab = lab;
    if a.down_out_secs.is_some() && a.down_out_secs != lab.down_out_secs {
        lab.down_out_secs = a.down_out_secs;
        lab.save()?;
    }
    // A larger --members adds members (they join and the group rebalances); a smaller one
    // leaves the existing ones (`haven member remove` evacuates one).
    for i in lab.members.len() + 1..=a.members {
        lab.members
            .push(new_member(i, a.member_capacity.as_deref())?);
        lab.save()?;
    }
    // A larger --hosts adds hosts; a smaller one leaves the existing ones.
    for i in lab.hosts.len() + 1..=a.hosts {
        lab.hosts.push(LabHost {
            name: format!("host-{i}"),
            api: format!("127.0.0.1:{}", free_port()?),
        });
        lab.save()?;
    }
    for m in lab.active_members() {
        start_member(&lab, m)?;
    }
    for m in lab.active_members() {
        eprintln!("waiting for {} …", m.name);
        wait_ready(&lab, m, Duration::from_secs(60)).await?;
    }
    for h in &lab.hosts {
        start_host(&lab, h)?;
    }
    for h in &lab.hosts {
        eprintln!("waiting for {} …", h.name);
        wait_host_ready(&lab, h, HOST_READY).await?;
    }
    lab.write_env()?;
    println!("haven lab is up in {}", lab.dir.display());
    println!("  group portal: {}", lab.group_portal);
    for m in lab.active_members() {
        println!(
            "  {}: portal {}  api http://{}  log {}",
            m.name,
            m.portal,
            m.api,
            lab.member_dir(&m.name).join("member.log").display()
        );
    }
    for h in &lab.hosts {
        println!(
            "  {}: agent http://{}  log {}",
            h.name,
            h.api,
            lab.member_dir(&h.name).join("host.log").display()
        );
    }
    println!(
        "  source {} to point the CLI at it",
        lab.dir.join("env").display()
    );
    if a.detach {
        return Ok(());
    }
    println!("running in the foreground; Ctrl-C stops the lab (its data is kept)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    down(&lab.dir)
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let lab = existing(dir)?;
    for h in lab.hosts.iter().rev() {
        let d = lab.member_dir(&h.name);
        let stopped = process::stop(&d, Duration::from_secs(10));
        let guests = process::kill_guests(&d);
        if stopped || guests > 0 {
            println!("stopped {} ({guests} QEMUs)", h.name);
        }
    }
    for m in lab.members.iter().rev() {
        if process::stop(&lab.member_dir(&m.name), Duration::from_secs(10)) {
            println!("stopped {}", m.name);
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct MemberStatus {
    name: String,
    portal: String,
    api: String,
    state: String,
    pid: Option<i32>,
}

#[derive(Serialize)]
struct HostStatus {
    name: String,
    api: String,
    state: String,
    pid: Option<i32>,
}

#[derive(Serialize)]
struct Status {
    dir: String,
    group_portal: String,
    api: Vec<String>,
    members: Vec<MemberStatus>,
    hosts: Vec<HostStatus>,
}

async fn status(dir: &Path, json: bool) -> anyhow::Result<()> {
    let lab = existing(dir)?;
    let mut members = Vec::new();
    let active: Vec<&str> = lab.active_members().map(|m| m.name.as_str()).collect();
    for m in &lab.members {
        let pid = process::running(&lab.member_dir(&m.name));
        let state = match pid {
            None if !active.contains(&m.name.as_str()) => "removed",
            None => "stopped",
            Some(_) => {
                let c = api::Client::new(vec![format!("http://{}", m.api)]);
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    c.get::<GroupStatus>("/v1/status"),
                )
                .await
                {
                    Ok(Ok(_)) => "running",
                    _ => "starting",
                }
            }
        };
        members.push(MemberStatus {
            name: m.name.clone(),
            portal: m.portal.clone(),
            api: format!("http://{}", m.api),
            state: state.into(),
            pid,
        });
    }
    let s = Status {
        dir: lab.dir.display().to_string(),
        group_portal: lab.group_portal.clone(),
        api: lab.api_urls(),
        members,
        hosts: lab
            .hosts
            .iter()
            .map(|h| {
                let pid = process::running(&lab.member_dir(&h.name));
                HostStatus {
                    name: h.name.clone(),
                    api: format!("http://{}", h.api),
                    state: if pid.is_some() { "running" } else { "stopped" }.into(),
                    pid,
                }
            })
            .collect(),
    };
    if json {
        return output::json(&s);
    }
    println!("lab {}  group portal {}", s.dir, s.group_portal);
    output::table(
        &["NAME", "STATE", "PORTAL", "API"],
        s.members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.state.clone(),
                    m.portal.clone(),
                    m.api.clone(),
                ]
            })
            .chain(
                s.hosts
                    .iter()
                    .map(|h| vec![h.name.clone(), h.state.clone(), "-".into(), h.api.clone()]),
            )
            .collect(),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::workers_each;

    #[test]
    fn members_share_the_cores() {
        // One member keeps the runtime's default, a thread per core.
        assert_eq!(workers_each(2, 1), None);
        assert_eq!(workers_each(2, 2), Some(1));
        // More members than cores: each still gets one.
        assert_eq!(workers_each(2, 3), Some(1));
        assert_eq!(workers_each(16, 3), Some(5));
    }
}
