//! The QEMU command line for a [`VmSpec`], and the QEMU process.
//!
//! The VM runs headless: no display, no default devices, the serial console appended to a
//! file (so a console survives restarts and migrations), QMP on a unix socket. Every disk
//! is a `-blockdev` node plus a `virtio-blk-pci` device named after its volume, the same
//! way [`crate::hotplug`] adds disks later, so any disk can be removed again. On `q35`
//! each disk sits behind its own `pcie-root-port`, and a few spare ports take hot-added
//! disks; on `pc` disks go on the root bus, which hotplugs through ACPI.

use std::ffi::OsString;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use crate::accel::Accel;
use crate::error::{Error, ErrorKind, Result};
use crate::spec::{Boot, DiskLocation, DiskSpec, VmSpec};

/// The machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// `q35`: PCIe; disks behind `pcie-root-port`s.
    #[default]
    Q35,
    /// `pc` (i440FX): PCI, ACPI hotplug on the root bus.
    Pc,
}

impl Machine {
    /// QEMU's name for it.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        }
    }
}

/// Wait for an incoming migration instead of booting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `-incoming tcp:HOST:PORT`.
    Tcp {
        /// The address to listen on.
        host: String,
        /// The port to listen on.
        port: u16,
    },
    /// `-incoming defer`: the address is given later with `migrate-incoming`.
    Defer,
}

/// How to launch QEMU for a spec.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Where the QMP socket, console log, pid file and QEMU's own log go.
    pub run_dir: PathBuf,
    /// The accelerator.
    pub accel: Accel,
    /// The machine type.
    pub machine: Machine,
    /// Wait for an incoming migration.
    pub incoming: Option<Incoming>,
    /// Start with the CPUs stopped (`-S`).
    pub paused: bool,
    /// Spare hotplug ports for disks added later (q35 only).
    pub spare_disk_slots: u32,
}

impl LaunchOptions {
    /// TCG on q35 with the system's `qemu-system-x86_64`, files in `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        LaunchOptions {
            qemu: PathBuf::from("qemu-system-x86_64"),
            run_dir: run_dir.into(),
            accel: Accel::Tcg,
            machine: Machine::Q35,
            incoming: None,
            paused: false,
            spare_disk_slots: 4,
        }
    }
}

/// The files of one VM in a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// The serial console log (appended to).
    pub console: PathBuf,
    /// QEMU's pid file.
    pub pidfile: PathBuf,
    /// QEMU's own stdout/stderr (appended to).
    pub log: PathBuf,
}

impl VmPaths {
    /// The paths of VM `name` in `run_dir`.
    pub fn new(run_dir: &Path, name: &str) -> Self {
        VmPaths {
            qmp_socket: run_dir.join(format!("{name}.qmp")),
            console: run_dir.join(format!("{name}.console")),
            pidfile: run_dir.join(format!("{name}.pid")),
            log: run_dir.join(format!("{name}.qemu.log")),
        }
    }
}

/// The QEMU block node name of a volume's disk (at most 31 characters, as QEMU requires).
pub fn node_name(volume: &str) -> String {
    format!("d-{}", short_id(volume))
}

/// The QEMU device id of a volume's disk.
pub fn device_id(volume: &str) -> String {
    format!("v-{}", short_id(volume))
}

fn short_id(volume: &str) -> String {
    // FNV-1a: stable across builds and Rust versions, unlike DefaultHasher.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(volume.as_bytes());
    let prefix: String = volume
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(12)
        .collect();
    format!("{prefix}-{:08x}", h.finish() as u32)
}

/// The id of hotplug port `i` (q35).
pub(crate) fn port_id(i: usize) -> String {
    format!("hp{i}")
}

/// The `blockdev-add` arguments (also the `-blockdev` JSON) for a disk.
pub fn blockdev_options(disk: &DiskSpec, initiator_name: &str) -> Result<Value> {
    let node = node_name(&disk.volume);
    Ok(match disk.location()? {
        DiskLocation::Iscsi {
            portal,
            target,
            lun,
        } => json!({
            "driver": "iscsi",
            "node-name": node,
            "transport": "tcp",
            "portal": portal,
            "target": target,
            "lun": lun,
            "initiator-name": initiator_name,
            "cache": {"direct": true, "no-flush": false},
        }),
        DiskLocation::File(path) => json!({
            "driver": "file",
            "node-name": node,
            "filename": path,
            "cache": {"direct": false, "no-flush": false},
        }),
    })
}

/// The `device_add` arguments for a disk, on `bus` when given.
pub fn device_options(disk: &DiskSpec, bus: Option<&str>, bootindex: Option<u32>) -> Value {
    let mut v = json!({
        "driver": "virtio-blk-pci",
        "drive": node_name(&disk.volume),
        "id": device_id(&disk.volume),
        "serial": serial(&disk.volume),
    });
    if let Some(bus) = bus {
        v["bus"] = json!(bus);
    }
    if let Some(i) = bootindex {
        v["bootindex"] = json!(i);
    }
    v
}

/// The disk's serial number as the guest sees it (`/sys/block/vdX/serial`): the volume
/// name, cut to virtio's 20 bytes.
fn serial(volume: &str) -> String {
    volume.chars().take(20).collect()
}

/// Doubles commas, QEMU's escape inside an option value.
fn escape(v: impl AsRef<std::ffi::OsStr>) -> String {
    v.as_ref().to_string_lossy().replace(',', ",,")
}

/// The arguments (without the binary) to run `spec`.
pub fn command_line(spec: &VmSpec, opts: &LaunchOptions) -> Result<Vec<OsString>> {
    spec.validate()?;
    let paths = VmPaths::new(&opts.run_dir, &spec.name);
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(OsString::from));
    push(&["-name", &format!("guest={},debug-threads=on", spec.name)]);
    push(&["-no-user-config", "-nodefaults"]);
    push(&["-machine", opts.machine.qemu_name()]);
    push(&["-accel", opts.accel.qemu_name()]);
    push(&["-m", &format!("{}M", spec.memory_bytes >> 20)]);
    push(&["-smp", &spec.cpus.to_string()]);
    push(&["-display", "none"]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", escape(&paths.console)),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=qmp,path={},server=on,wait=off",
            escape(&paths.qmp_socket)
        ),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    push(&["-no-reboot"]);
    push(&["-iscsi", &format!("initiator-name={}", spec.initiator_name)]);
    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            append,
        } => {
            a.push("-kernel".into());
            a.push(kernel.clone().into_os_string());
            if let Some(initrd) = initrd {
                a.push("-initrd".into());
                a.push(initrd.clone().into_os_string());
            }
            let append = if append.split_whitespace().any(|w| w.starts_with("console=")) {
                append.clone()
            } else {
                format!("console=ttyS0 {append}").trim().to_string()
            };
            a.push("-append".into());
            a.push(append.into());
        }
        Boot::Disk => {}
    }
    let ports = match opts.machine {
        Machine::Q35 => spec.disks.len() + opts.spare_disk_slots as usize,
        Machine::Pc => 0,
    };
    for i in 0..ports {
        a.push("-device".into());
        a.push(
            format!(
                "pcie-root-port,id={},chassis={},bus=pcie.0",
                port_id(i),
                i + 1
            )
            .into(),
        );
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        a.push("-blockdev".into());
        a.push(
            blockdev_options(disk, &spec.initiator_name)?
                .to_string()
                .into(),
        );
        let bus = (opts.machine == Machine::Q35).then(|| port_id(i));
        let bootindex = (i == 0 && matches!(spec.boot, Boot::Disk)).then_some(1);
        a.push("-device".into());
        a.push(
            device_options(disk, bus.as_deref(), bootindex)
                .to_string()
                .into(),
        );
    }
    if let Some(incoming) = &opts.incoming {
        a.push("-incoming".into());
        a.push(match incoming {
            Incoming::Tcp { host, port } if host.contains(':') => {
                format!("tcp:[{host}]:{port}").into()
            }
            Incoming::Tcp { host, port } => format!("tcp:{host}:{port}").into(),
            Incoming::Defer => "defer".into(),
        });
    }
    if opts.paused {
        a.push("-S".into());
    }
    a.push("-pidfile".into());
    a.push(paths.pidfile.into_os_string());
    Ok(a)
}

/// A running (or exited) QEMU process: spawned by us, or adopted by pid.
#[derive(Debug)]
pub struct QemuProcess {
    /// Its pid.
    pub pid: u32,
    /// Its QMP socket.
    pub qmp_socket: PathBuf,
    /// Its serial console log.
    pub console: PathBuf,
    /// Its QEMU log (stdout/stderr), when we spawned it.
    pub log: Option<PathBuf>,
    /// The child handle when we spawned it (`None` when adopted).
    child: Option<Child>,
    exited: Option<Option<ExitStatus>>,
}

/// Spawns QEMU for `spec` in its own process group; returns once the process exists (not
/// once QMP is up).
pub async fn spawn(spec: &VmSpec, opts: &LaunchOptions) -> Result<QemuProcess> {
    let args = command_line(spec, opts)?;
    let paths = VmPaths::new(&opts.run_dir, &spec.name);
    std::fs::create_dir_all(&opts.run_dir).map_err(|e| {
        Error::with(
            ErrorKind::Io,
            format!("creating run directory {}", opts.run_dir.display()),
            e,
        )
    })?;
    if paths.qmp_socket.as_os_str().len() >= 100 {
        return Err(Error::new(
            ErrorKind::Invalid,
            format!(
                "QMP socket path too long for a unix socket: {}",
                paths.qmp_socket.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(&paths.qmp_socket);
    let _ = std::fs::remove_file(&paths.pidfile);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|e| Error::with(ErrorKind::Io, format!("opening {}", paths.log.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| Error::with(ErrorKind::Io, "duplicating the log file", e))?;
    tracing::info!(vm = %spec.name, qemu = %opts.qemu.display(), args = ?args, "starting QEMU");
    let child = Command::new(&opts.qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            Error::with(
                ErrorKind::Io,
                format!("starting {}", opts.qemu.display()),
                e,
            )
        })?;
    let pid = child
        .id()
        .ok_or_else(|| Error::new(ErrorKind::Exited, "QEMU exited at once"))?;
    Ok(QemuProcess {
        pid,
        qmp_socket: paths.qmp_socket,
        console: paths.console,
        log: Some(paths.log),
        child: Some(child),
        exited: None,
    })
}

/// Reads a QEMU pid file.
pub fn read_pidfile(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::with(
            ErrorKind::NotFound,
            format!("reading {}", path.display()),
            e,
        )
    })?;
    text.trim().parse().map_err(|_| {
        Error::new(
            ErrorKind::Invalid,
            format!("{}: not a pid: {:?}", path.display(), text.trim()),
        )
    })
}

impl QemuProcess {
    /// Takes over a QEMU that is not (or no longer) our child: checks that `pid` is alive
    /// and is a QEMU serving `qmp_socket`.
    pub fn adopt(pid: u32, qmp_socket: PathBuf, console: PathBuf) -> Result<QemuProcess> {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| Error::with(ErrorKind::NotFound, format!("no process {pid}"), e))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let sock = escape(&qmp_socket);
        if !args.first().is_some_and(|a| a.contains("qemu"))
            || !args.iter().any(|a| a.contains(&sock))
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "process {pid} is not a QEMU serving {}",
                    qmp_socket.display()
                ),
            ));
        }
        let mut p = QemuProcess {
            pid,
            qmp_socket,
            console,
            log: None,
            child: None,
            exited: None,
        };
        if p.has_exited() {
            return Err(Error::new(
                ErrorKind::Exited,
                format!("process {pid} is gone"),
            ));
        }
        Ok(p)
    }

    /// Whether it was spawned by this process (as opposed to adopted).
    pub fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process has exited (never blocks).
    pub fn has_exited(&mut self) -> bool {
        self.poll_exit().is_some()
    }

    /// Its exit status once it exited; the inner `None` when it was not our child (or was
    /// reaped elsewhere) so that its status is unknown.
    pub fn poll_exit(&mut self) -> Option<Option<ExitStatus>> {
        if self.exited.is_some() {
            return self.exited;
        }
        let now = match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(Some(status)),
                Ok(None) => None,
                Err(_) => (!pid_alive(self.pid)).then_some(None),
            },
            None => (!pid_alive(self.pid)).then_some(None),
        };
        self.exited = now;
        now
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        if let Some(child) = &mut self.child {
            if let Ok(Ok(status)) = tokio::time::timeout(timeout, child.wait()).await {
                self.exited = Some(Some(status));
                return true;
            }
            return self.has_exited();
        }
        loop {
            if self.has_exited() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `signal` to the process (not its group).
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        if self.has_exited() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid)
            .map_err(|_| Error::new(ErrorKind::Invalid, format!("pid {}", self.pid)))?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        let r = unsafe { libc::kill(pid, signal) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(Error::with(
                ErrorKind::Io,
                format!("signal {signal} to QEMU {}", self.pid),
                e,
            ));
        }
        Ok(())
    }

    /// SIGKILLs the process and waits (up to 10 s) until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)?;
        if self.wait_exit(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Timeout,
                format!("QEMU {} survived SIGKILL for 10 s", self.pid),
            ))
        }
    }

    /// The tail (up to `max` bytes) of QEMU's own log, for error messages.
    pub fn log_tail(&self, max: usize) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read(log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).trim().to_string()
    }
}

/// Whether `pid` is alive: reaps it when it is our zombie child; a zombie that is not
/// ours counts as dead.
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG and a valid pointer to a local.
    let r = unsafe { libc::waitpid(p, &mut status, libc::WNOHANG) };
    if r == p {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence.
    if unsafe { libc::kill(p, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next()),
            Some(Some('Z' | 'X'))
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            name: "web".into(),
            cpus: 2,
            memory_bytes: 256 << 20,
            disks: vec![
                DiskSpec {
                    volume: "root".into(),
                    url: "iscsi://127.0.0.1:3260/iqn.2024-01.io.haven:root/0".into(),
                },
                DiskSpec {
                    volume: "scratch".into(),
                    url: "file:///var/tmp/s,1.img".into(),
                },
            ],
            boot: Boot::Kernel {
                kernel: "/boot/k".into(),
                initrd: Some("/boot/i".into()),
                append: "haven.mode=counter".into(),
            },
            initiator_name: "iqn.2024-01.io.haven:host-a".into(),
        }
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn the_command_line_is_headless_with_qmp_console_and_disks() {
        let mut opts = LaunchOptions::new("/run/haven,x");
        opts.incoming = Some(Incoming::Tcp {
            host: "127.0.0.1".into(),
            port: 4444,
        });
        let args = strings(&command_line(&spec(), &opts).unwrap());
        assert_eq!(value_of(&args, "-accel"), ["tcg"]);
        assert_eq!(value_of(&args, "-machine"), ["q35"]);
        assert_eq!(value_of(&args, "-m"), ["256M"]);
        assert_eq!(value_of(&args, "-smp"), ["2"]);
        assert_eq!(value_of(&args, "-display"), ["none"]);
        assert_eq!(value_of(&args, "-serial"), ["chardev:console"]);
        assert_eq!(
            value_of(&args, "-iscsi"),
            ["initiator-name=iqn.2024-01.io.haven:host-a"]
        );
        let chardevs = value_of(&args, "-chardev");
        assert_eq!(
            chardevs[0],
            "file,id=console,path=/run/haven,,x/web.console,append=on"
        );
        assert_eq!(
            chardevs[1],
            "socket,id=qmp,path=/run/haven,,x/web.qmp,server=on,wait=off"
        );
        assert_eq!(
            value_of(&args, "-append"),
            ["console=ttyS0 haven.mode=counter"]
        );
        assert_eq!(value_of(&args, "-incoming"), ["tcp:127.0.0.1:4444"]);
        assert_eq!(value_of(&args, "-pidfile"), ["/run/haven,x/web.pid"]);
        assert!(args.contains(&"-no-reboot".to_string()));
        assert!(args.contains(&"-nodefaults".to_string()));
        assert!(!args.contains(&"-S".to_string()));

        let blockdevs: Vec<Value> = value_of(&args, "-blockdev")
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect();
        assert_eq!(blockdevs[0]["driver"], "iscsi");
        assert_eq!(blockdevs[0]["transport"], "tcp");
        assert_eq!(blockdevs[0]["portal"], "127.0.0.1:3260");
        assert_eq!(blockdevs[0]["target"], "iqn.2024-01.io.haven:root");
        assert_eq!(blockdevs[0]["lun"], 0);
        assert_eq!(blockdevs[0]["cache"]["direct"], true);
        assert_eq!(blockdevs[0]["node-name"], node_name("root"));
        assert_eq!(blockdevs[1]["driver"], "file");
        assert_eq!(blockdevs[1]["filename"], "/var/tmp/s,1.img");

        let devices = value_of(&args, "-device");
        // Two disks + four spare ports.
        let ports: Vec<_> = devices
            .iter()
            .filter(|d| d.starts_with("pcie-root-port"))
            .collect();
        assert_eq!(ports.len(), 6);
        let disks: Vec<Value> = devices
            .iter()
            .filter(|d| d.starts_with('{'))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(disks[0]["driver"], "virtio-blk-pci");
        assert_eq!(disks[0]["drive"], node_name("root"));
        assert_eq!(disks[0]["id"], device_id("root"));
        assert_eq!(disks[0]["bus"], "hp0");
        assert_eq!(disks[1]["bus"], "hp1");
        assert!(disks[0].get("bootindex").is_none());
    }

    #[test]
    fn pc_kvm_paused_disk_boot() {
        let mut s = spec();
        s.boot = Boot::Disk;
        let mut opts = LaunchOptions::new("/run");
        opts.machine = Machine::Pc;
        opts.accel = Accel::Kvm;
        opts.paused = true;
        opts.incoming = Some(Incoming::Defer);
        let args = strings(&command_line(&s, &opts).unwrap());
        assert_eq!(value_of(&args, "-accel"), ["kvm"]);
        assert_eq!(value_of(&args, "-machine"), ["pc"]);
        assert_eq!(value_of(&args, "-incoming"), ["defer"]);
        assert!(args.contains(&"-S".to_string()));
        assert!(value_of(&args, "-kernel").is_empty());
        let devices = value_of(&args, "-device");
        assert!(devices.iter().all(|d| !d.starts_with("pcie-root-port")));
        let first: Value = serde_json::from_str(devices[0]).unwrap();
        assert_eq!(first["bootindex"], 1);
        assert!(first.get("bus").is_none());
    }

    #[test]
    fn node_names_fit_qemus_limit_and_differ() {
        let long = "a-very-long-volume-name-that-goes-on-and-on-and-on";
        assert!(node_name(long).len() <= 31);
        assert_ne!(node_name("data1"), node_name("data2"));
        assert_ne!(
            node_name(&format!("{long}x")),
            node_name(&format!("{long}y"))
        );
        assert!(node_name(".x").starts_with("d-"));
    }
}
