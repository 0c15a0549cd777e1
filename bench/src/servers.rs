//! The two targets under test, each serving one LUN backed by the tmpfs work dir.

use crate::proc::{run_tool, Daemon};
use anyhow::{bail, Context, Result};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
/// A free port on 127.0.0.1 that outgoing connections never take ([`member::ports`]).
pub fn free_port() -> Result<u16> {
    Ok(member::ports::free_local_port()?)
}

fn wait_for_port(d: &mut Daemon, port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        d.check_alive()?;
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} does not listen on 127.0.0.1:{port} after {within:?}",
                d.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running target with one LUN.
pub struct Server {
    /// "tgtd" or "haven".
    pub name: &'static str,
    /// The LUN as QEMU and libiscsi spell it.
    pub url: String,
    /// Logical block size of the LUN.
    pub block_size: u64,
    pub daemon: Daemon,
}

impl Server {
    /// CPU seconds used so far by the server's processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.daemon.cpu_seconds()
    }
}

/// tgtd's control socket for instance `n`.
fn tgtd_socket(n: u32) -> PathBuf {
    PathBuf::from(format!("/var/run/tgtd/socket.{n}"))
}

fn lock_of(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Start a private tgtd instance serving a `size`-byte file on `dir` as LUN 1.
pub fn start_tgtd(dir: &Path, size: u64) -> Result<Server> {
    let backing = dir.join("tgtd.img");
    std::fs::File::create(&backing)?.set_len(size)?;
    // A control port no other tgtd instance (such as the system's, on 0) uses; tgtd takes
    // 0..=32767.
    let mut ctl = 1_000 + std::process::id() % 30_000;
    while tgtd_socket(ctl).exists() || lock_of(&tgtd_socket(ctl)).exists() {
        ctl = if ctl >= 32_767 { 1_000 } else { ctl + 1 };
    }
    let port = free_port()?;
    let mut d = Daemon::spawn(
        dir,
        "tgtd",
        Command::new("tgtd")
            .args(["-f", "-C", &ctl.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}")),
    )?;
    d.leaves = vec![tgtd_socket(ctl), lock_of(&tgtd_socket(ctl))];
    let ctl_s = ctl.to_string();
    let tgtadm = |args: &[&str]| -> Result<()> {
        run_tool(
            dir,
            "tgtadm",
            Command::new("tgtadm")
                .args(["-C", &ctl_s, "--lld", "iscsi"])
                .args(args),
            Duration::from_secs(30),
        )
        .map(|_| ())
    };
    // tgtd is ready once its control socket answers.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        d.check_alive()?;
        match tgtadm(&["--op", "show", "--mode", "sys"]) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("tgtd never answered tgtadm"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let iqn = "iqn.2026-11.org.haven.bench:tgtd";
    tgtadm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", iqn])?;
    let b = backing.to_str().context("work dir path is not UTF-8")?;
    tgtadm(&[
        "--op",
        "new",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
        "-b",
        b,
    ])?;
    tgtadm(&[
        "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ])?;
    wait_for_port(&mut d, port, Duration::from_secs(15))?;
    let url = format!("iscsi://127.0.0.1:{port}/{iqn}/1");
    let block_size = read_block_size(dir, &url)?;
    Ok(Server {
        name: "tgtd",
        url,
        block_size,
        daemon: d,
    })
}

/// Start a standalone haven member on `dir/haven` and create one `size`-byte volume.
pub fn start_haven(dir: &Path, haven: &Path, size: u64) -> Result<Server> {
    if !haven.is_file() {
        bail!(
            "no haven binary at {} (build it: cargo build --release -p haven)",
            haven.display()
        );
    }
    let data = dir.join("haven");
    let port = free_port()?;
    let api_port = free_port()?;
    let mut d = Daemon::spawn(
        dir,
        "haven",
        Command::new(haven)
            .args(["member", "run", "--data"])
            .arg(&data)
            .args(["--portal", &format!("127.0.0.1:{port}")])
            .args(["--listen-api", &format!("127.0.0.1:{api_port}")])
            .env_remove("HAVEN_API"),
    )?;
    wait_for_port(&mut d, api_port, Duration::from_secs(30))?;
    let api = format!("http://127.0.0.1:{api_port}");
    let size_arg = size.to_string();
    // The standalone group may still be electing its leader: retry for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        d.check_alive()?;
        let r = run_tool(
            dir,
            "haven-volume-create",
            Command::new(haven)
                .args([
                    "--api", &api, "volume", "create", "bench", "--size", &size_arg, "--json",
                ])
                .env_remove("HAVEN_API"),
            Duration::from_secs(30),
        );
        match r {
            Ok(o) => break o,
            Err(e) if Instant::now() > deadline => return Err(e.context("haven volume create")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("haven volume create --json printed {:?}", out.stdout))?;
    let iqn = v["iqn"]
        .as_str()
        .context("no iqn in haven volume create --json")?;
    wait_for_port(&mut d, port, Duration::from_secs(15))?;
    let url = format!("iscsi://127.0.0.1:{port}/{iqn}/0");
    let block_size = read_block_size(dir, &url)?;
    Ok(Server {
        name: "haven",
        url,
        block_size,
        daemon: d,
    })
}

/// The LUN's logical block size, as READ CAPACITY (16) reports it.
fn read_block_size(dir: &Path, url: &str) -> Result<u64> {
    let o = run_tool(
        dir,
        "iscsi-readcapacity16",
        Command::new("iscsi-readcapacity16").arg(url),
        Duration::from_secs(30),
    )?;
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOGICAL BLOCK LENGTH IN BYTES:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| {
            format!(
                "no block length in iscsi-readcapacity16 output: {}",
                o.stdout
            )
        })
}
