//! The lifecycle of one VM on this host: start, status, pause and resume, shutdown, kill,
//! and adopting a QEMU that outlived the agent that started it.
//!
//! Dropping a [`Vm`] never stops the guest: QEMU runs in its own process group and keeps
//! running; [`Vm::adopt`] takes it over again by pid and QMP socket.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::error::{Error, ErrorKind, Result};
use crate::qemu::{self, LaunchOptions, QemuProcess};
use crate::qmp::{Event, QmpClient};
use crate::spec::VmSpec;

/// How long QEMU gets to open its QMP socket.
const QMP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Cleans up after a failed start: when QEMU exits by itself (it opens QMP before it
/// loads the kernel, so a bad kernel shows as a lost connection) the error says why, from
/// QEMU's log; otherwise QEMU is killed.
async fn start_failed(name: &str, mut process: QemuProcess, e: Error) -> Error {
    if e.kind == ErrorKind::Exited {
        return e;
    }
    if process.wait_exit(Duration::from_secs(2)).await {
        return Error::with(
            ErrorKind::Exited,
            format!(
                "QEMU for {name} exited while starting: {}",
                process.log_tail(2000)
            ),
            e,
        );
    }
    let _ = process.kill().await;
    e
}

/// QEMU's run state (`query-status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// The guest runs.
    Running,
    /// Stopped by `stop` (or `-S`, after a reset).
    Paused,
    /// Not started yet (`-S`).
    Prelaunch,
    /// Waiting for an incoming migration.
    InMigrate,
    /// Migrated away; this copy must not run.
    PostMigrate,
    /// Finishing an outgoing migration.
    FinishMigrate,
    /// The guest shut down (QEMU stays only with `-no-shutdown`).
    Shutdown,
    /// Stopped on a disk error.
    IoError,
    /// The guest panicked.
    GuestPanicked,
    /// Suspended to RAM.
    Suspended,
    /// Another state, by QEMU's name.
    Other(String),
}

impl RunState {
    fn from_qemu(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "prelaunch" => RunState::Prelaunch,
            "inmigrate" => RunState::InMigrate,
            "postmigrate" => RunState::PostMigrate,
            "finish-migrate" => RunState::FinishMigrate,
            "shutdown" => RunState::Shutdown,
            "io-error" => RunState::IoError,
            "guest-panicked" => RunState::GuestPanicked,
            "suspended" => RunState::Suspended,
            other => RunState::Other(other.to_string()),
        }
    }
}

/// How a [`Vm::shutdown`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// The guest powered off in time.
    Clean,
    /// The guest did not react in time and was killed.
    Forced,
}

/// A QEMU running a VM, with its QMP connection.
#[derive(Debug)]
pub struct Vm {
    name: String,
    process: QemuProcess,
    qmp: QmpClient,
}

impl Vm {
    /// Starts `spec`: spawns QEMU with its CPUs stopped, connects QMP, and lets the CPUs
    /// run (`cont`) unless `opts.paused` or an incoming migration is awaited.
    pub async fn start(spec: &VmSpec, opts: &LaunchOptions) -> Result<Vm> {
        let mut launch = opts.clone();
        if launch.incoming.is_none() {
            launch.paused = true;
        }
        let mut process = qemu::spawn(spec, &launch).await?;
        let connected = {
            let socket = process.qmp_socket.clone();
            let connect = QmpClient::connect(&socket, QMP_CONNECT_TIMEOUT);
            tokio::pin!(connect);
            loop {
                tokio::select! {
                    r = &mut connect => break r,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if process.has_exited() {
                            break Err(Error::new(
                                ErrorKind::Exited,
                                format!("QEMU for {} exited while starting: {}", spec.name, process.log_tail(2000)),
                            ));
                        }
                    }
                }
            }
        };
        let qmp = match connected {
            Ok(q) => q,
            Err(e) => return Err(start_failed(&spec.name, process, e).await),
        };
        let vm = Vm {
            name: spec.name.clone(),
            process,
            qmp,
        };
        if opts.incoming.is_none() && !opts.paused {
            if let Err(e) = vm.resume().await {
                let Vm { name, process, qmp } = vm;
                drop(qmp);
                return Err(start_failed(&name, process, e).await);
            }
        }
        tracing::info!(vm = %vm.name, pid = vm.pid(), "VM started");
        Ok(vm)
    }

    /// Takes over a QEMU still running (after the agent restarted, say): checks that `pid`
    /// is a QEMU serving `qmp_socket` and connects to it. Nothing about the guest changes.
    pub async fn adopt(
        name: &str,
        pid: u32,
        qmp_socket: impl Into<PathBuf>,
        console: impl Into<PathBuf>,
    ) -> Result<Vm> {
        let process = QemuProcess::adopt(pid, qmp_socket.into(), console.into())?;
        let qmp = QmpClient::connect(&process.qmp_socket, Duration::from_secs(10)).await?;
        tracing::info!(vm = %name, pid, "VM adopted");
        Ok(Vm {
            name: name.to_string(),
            process,
            qmp,
        })
    }

    /// [`adopt`](Self::adopt) with the pid, socket and console found in `opts.run_dir`.
    pub async fn adopt_in(name: &str, opts: &LaunchOptions) -> Result<Vm> {
        let paths = qemu::VmPaths::new(&opts.run_dir, name);
        let pid = qemu::read_pidfile(&paths.pidfile)?;
        Vm::adopt(name, pid, paths.qmp_socket, paths.console).await
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.process.qmp_socket
    }

    /// The serial console log.
    pub fn console(&self) -> &Path {
        &self.process.console
    }

    /// The QMP connection, for commands this type has no method for.
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    /// QEMU's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.qmp.subscribe()
    }

    /// Whether QEMU has exited.
    pub fn has_exited(&mut self) -> bool {
        self.process.has_exited()
    }

    /// The run state.
    pub async fn status(&self) -> Result<RunState> {
        let r = self.qmp.execute("query-status", Value::Null).await?;
        let s = r
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("query-status answered {r}")))?;
        Ok(RunState::from_qemu(s))
    }

    /// Stops the CPUs.
    pub async fn pause(&self) -> Result<()> {
        self.qmp.execute("stop", Value::Null).await.map(drop)
    }

    /// Lets the CPUs run.
    pub async fn resume(&self) -> Result<()> {
        self.qmp.execute("cont", Value::Null).await.map(drop)
    }

    /// Asks the guest to power off (ACPI power button) and waits up to `timeout` for QEMU
    /// to exit; kills it when it does not.
    pub async fn shutdown(&mut self, timeout: Duration) -> Result<ShutdownOutcome> {
        let started = Instant::now();
        match self.qmp.execute("system_powerdown", Value::Null).await {
            Ok(_) => {}
            // Already exiting: the connection went away under the command.
            Err(e) if e.kind == ErrorKind::Disconnected => {}
            Err(e) => return Err(e),
        }
        if self.process.wait_exit(timeout).await {
            tracing::info!(vm = %self.name, after = ?started.elapsed(), "VM powered off");
            return Ok(ShutdownOutcome::Clean);
        }
        tracing::warn!(vm = %self.name, ?timeout, "the guest ignored the power button: killing");
        self.process.kill().await?;
        Ok(ShutdownOutcome::Forced)
    }

    /// Kills QEMU (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.process.kill().await
    }

    /// Waits up to `timeout` for QEMU to exit by itself; true if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        self.process.wait_exit(timeout).await
    }

    /// Closes the QMP connection and forgets the process, leaving QEMU running (as dropping
    /// does); returns its pid for a later [`adopt`](Self::adopt).
    pub fn detach(self) -> u32 {
        self.process.pid
    }
}
