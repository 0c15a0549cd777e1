//! Which accelerator to run guests with.
//!
//! `/dev/kvm` existing does not mean KVM works: nested or restricted hosts expose it while
//! guests hang at once. So we boot the test kernel under KVM for a few seconds and look for
//! its boot line on the serial console; only then is it KVM. The answer is cached in a
//! file, keyed by the QEMU binary and the host kernel, because the probe takes seconds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// An accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator: slow, works everywhere.
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What to probe with.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// A kernel that prints `boot_line` on ttyS0 early.
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
    /// What on the console proves the guest booted.
    pub boot_line: String,
    /// How long to wait for it.
    pub timeout: Duration,
    /// Where to cache the answer.
    pub cache: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cached {
    accel: Accel,
    qemu: PathBuf,
    host_kernel: String,
    kernel: PathBuf,
}

/// The accelerator to use: the cached answer when the cache matches this QEMU and host
/// kernel, otherwise the result of a probe (then cached).
pub async fn detect(probe: &Probe) -> Result<Accel> {
    let key = Cached {
        accel: Accel::Tcg,
        qemu: probe.qemu.clone(),
        host_kernel: host_kernel(),
        kernel: probe.kernel.clone(),
    };
    if let Ok(text) = std::fs::read_to_string(&probe.cache) {
        if let Ok(c) = serde_json::from_str::<Cached>(&text) {
            if c.qemu == key.qemu && c.host_kernel == key.host_kernel && c.kernel == key.kernel {
                tracing::debug!(accel = ?c.accel, cache = %probe.cache.display(), "accelerator from cache");
                return Ok(c.accel);
            }
        }
    }
    let accel = if kvm_boots(probe).await? {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    tracing::info!(accel = ?accel, "accelerator probed");
    let cached = Cached { accel, ..key };
    if let Some(dir) = probe.cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = probe.cache.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&cached).unwrap_or_default())
        .and_then(|()| std::fs::rename(&tmp, &probe.cache))
        .map_err(|e| {
            Error::with(
                ErrorKind::Io,
                format!("writing {}", probe.cache.display()),
                e,
            )
        })?;
    Ok(accel)
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Boots the probe kernel under KVM and watches the console for the boot line.
pub async fn kvm_boots(probe: &Probe) -> Result<bool> {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        tracing::info!("/dev/kvm is not usable: TCG");
        return Ok(false);
    }
    let dir = std::env::temp_dir().join(format!("haven-kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::with(ErrorKind::Io, format!("creating {}", dir.display()), e))?;
    let console = dir.join("console");
    let result = run_probe(probe, &console).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_probe(probe: &Probe, console: &Path) -> Result<bool> {
    let mut cmd = tokio::process::Command::new(&probe.qemu);
    cmd.args([
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-m",
        "256M",
        "-nodefaults",
    ])
    .args(["-no-user-config", "-display", "none", "-no-reboot"])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(&probe.kernel)
    .arg("-append")
    .arg(&probe.append);
    if let Some(initrd) = &probe.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::with(
                ErrorKind::Io,
                format!("starting {}", probe.qemu.display()),
                e,
            )
        })?;
    let deadline = Instant::now() + probe.timeout;
    let booted = loop {
        let text = std::fs::read(console).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(&probe.boot_line) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        if let Ok(Some(_)) = child.try_wait() {
            // QEMU refused KVM (or the guest died): one last look.
            let text = std::fs::read(console).unwrap_or_default();
            break String::from_utf8_lossy(&text).contains(&probe.boot_line);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    Ok(booted)
}
