//! The VMs this host runs: one [`Slot`] per QEMU, and what each looks like now.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{ComputeState, DiskStatus, MigrationProgress, VmStatus};
use control::{Host, Vm, VmBoot};
use host::{Accel, LaunchOptions};
use serde_json::Value;

use crate::AgentConfig;

/// What a QEMU on this host is doing, beyond QEMU's own run state.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// An ordinary VM of this host.
    Running,
    /// Waiting for (or receiving) migration `id`; becomes `Running` when the guest resumes.
    Incoming { migration: u64 },
    /// Leaving this host with migration `id`.
    Outgoing { migration: u64 },
    /// Being stopped.
    Stopping,
}

/// One QEMU on this host.
pub struct Slot {
    pub def: Mutex<Vm>,
    /// QMP calls take it shared; kill, shutdown and exit checks take it exclusive.
    pub vm: tokio::sync::RwLock<host::Vm>,
    pub pid: u32,
    pub console: PathBuf,
    pub phase: Mutex<Phase>,
    /// When this slot was made: compute state fetched before it does not know about it.
    pub created: std::time::Instant,
}

impl Slot {
    pub fn phase(&self) -> Phase {
        self.phase.lock().unwrap().clone()
    }

    pub fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap() = p;
    }

    pub fn name(&self) -> String {
        self.def.lock().unwrap().name.clone()
    }
}

/// The agent's state.
pub struct Agent {
    pub config: AgentConfig,
    pub run_dir: PathBuf,
    pub accel: Accel,
    /// The initiator name this host's QEMUs log in with.
    pub initiator: String,
    /// QEMUs by VM name.
    pub slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// VMs being started (no slot yet).
    pub starting: Mutex<HashSet<String>>,
    /// The last error per VM, kept after its QEMU is gone.
    pub errors: Mutex<HashMap<String, String>>,
    /// Migrations this agent drives, with their latest progress.
    pub outgoing: Mutex<HashMap<u64, MigrationProgress>>,
    /// The latest compute state from the group.
    pub compute: Mutex<Arc<ComputeState>>,
    /// The destination side of migrations arriving here, by VM name.
    pub incoming: Mutex<HashMap<String, api::IncomingStatus>>,
}

impl Agent {
    pub fn new(config: AgentConfig, run_dir: PathBuf, accel: Accel) -> Agent {
        Agent {
            initiator: Host::initiator_for(&config.name),
            config,
            run_dir,
            accel,
            slots: Mutex::default(),
            starting: Mutex::default(),
            errors: Mutex::default(),
            outgoing: Mutex::default(),
            compute: Mutex::default(),
            incoming: Mutex::default(),
        }
    }

    /// A client for the group's API: every member it knows of.
    pub fn group(&self) -> api::Client {
        let mut urls = self.config.members.clone();
        for m in &self.compute.lock().unwrap().member_apis {
            if !urls.iter().any(|u| u.ends_with(m.as_str())) {
                urls.push(m.clone());
            }
        }
        api::Client::new(urls).with_timeout(Duration::from_secs(150))
    }

    pub fn compute(&self) -> Arc<ComputeState> {
        self.compute.lock().unwrap().clone()
    }

    pub fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap().get(name).cloned()
    }

    pub fn set_error(&self, name: &str, e: impl Into<String>) {
        let e = e.into();
        tracing::warn!(vm = %name, error = %e, "VM error");
        self.errors.lock().unwrap().insert(name.to_string(), e);
    }

    pub fn launch_options(&self) -> LaunchOptions {
        let mut opts = LaunchOptions::new(&self.run_dir);
        opts.qemu = self.config.qemu.clone();
        opts.accel = self.accel;
        opts
    }

    /// The QEMU spec of `vm` on this host: its disks at the group portal, logged in as
    /// this host.
    pub fn spec(&self, vm: &Vm) -> host::VmSpec {
        let portal = self.compute().group_portal.clone();
        host::VmSpec {
            name: vm.name.clone(),
            cpus: vm.cpus,
            memory_bytes: vm.memory_bytes,
            disks: vm.disks.iter().map(|d| disk_spec(&portal, d)).collect(),
            boot: match &vm.boot {
                VmBoot::Kernel {
                    kernel,
                    initrd,
                    append,
                } => host::Boot::Kernel {
                    kernel: kernel.into(),
                    initrd: initrd.as_ref().map(PathBuf::from),
                    append: append.clone(),
                },
                VmBoot::Disk => host::Boot::Disk,
            },
            initiator_name: self.initiator.clone(),
        }
    }

    /// Puts a started or adopted QEMU in the table.
    pub fn insert(&self, def: Vm, vm: host::Vm, phase: Phase) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            pid: vm.pid(),
            console: vm.console().to_path_buf(),
            def: Mutex::new(def.clone()),
            vm: tokio::sync::RwLock::new(vm),
            phase: Mutex::new(phase),
            created: std::time::Instant::now(),
        });
        self.errors.lock().unwrap().remove(&def.name);
        self.slots
            .lock()
            .unwrap()
            .insert(def.name.clone(), slot.clone());
        slot
    }

    /// Takes the slot out of the table and kills its QEMU.
    pub async fn discard(&self, name: &str) {
        let slot = self.slots.lock().unwrap().remove(name);
        if let Some(slot) = slot {
            let mut vm = slot.vm.write().await;
            if let Err(e) = vm.kill().await {
                tracing::warn!(vm = %name, error = %e, "killing QEMU");
            }
            remove_files(&self.run_dir, name);
        }
    }

    /// Adopts every QEMU still running from an earlier life of this agent.
    pub async fn adopt_running(&self) {
        let Ok(dir) = std::fs::read_dir(&self.run_dir) else {
            return;
        };
        let opts = self.launch_options();
        for entry in dir.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pid"))
            else {
                continue;
            };
            match host::Vm::adopt_in(name, &opts).await {
                Ok(vm) => {
                    let def = Vm {
                        name: name.to_string(),
                        cpus: 1,
                        memory_bytes: 0,
                        disks: vec![],
                        boot: VmBoot::Disk,
                        running: true,
                        host: Some(self.config.name.clone()),
                        created: 0,
                    };
                    // The definition is refreshed from the group on the first reconcile.
                    tracing::info!(vm = %name, pid = vm.pid(), "adopted a running QEMU");
                    self.insert(def, vm, Phase::Running);
                }
                Err(e) => {
                    tracing::info!(vm = %name, error = %e, "a stale QEMU record: removed");
                    remove_files(&self.run_dir, name);
                }
            }
        }
    }

    /// What `name` looks like on this host now.
    pub async fn status(&self, name: &str) -> Option<VmStatus> {
        let Some(slot) = self.slot(name) else {
            let error = self.errors.lock().unwrap().get(name).cloned();
            let starting = self.starting.lock().unwrap().contains(name);
            if !starting && error.is_none() {
                return None;
            }
            return Some(VmStatus {
                name: name.to_string(),
                state: if starting { "starting" } else { "stopped" }.into(),
                pid: None,
                error,
                disks: vec![],
                console: None,
            });
        };
        let state = match slot
            .vm
            .read()
            .await
            .qmp()
            .execute_timeout("query-status", Value::Null, Duration::from_secs(2))
            .await
        {
            Ok(v) => v["status"].as_str().unwrap_or("unknown").to_string(),
            Err(_) => "unresponsive".into(),
        };
        let disks = disk_status(&slot).await;
        Some(VmStatus {
            name: name.to_string(),
            state,
            pid: Some(slot.pid),
            error: self.errors.lock().unwrap().get(name).cloned(),
            disks,
            console: Some(slot.console.display().to_string()),
        })
    }

    /// Every VM this host runs or knows an error of.
    pub async fn statuses(&self) -> Vec<VmStatus> {
        let mut names: Vec<String> = self.slots.lock().unwrap().keys().cloned().collect();
        names.extend(self.errors.lock().unwrap().keys().cloned());
        names.extend(self.starting.lock().unwrap().iter().cloned());
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for n in names {
            if let Some(s) = self.status(&n).await {
                out.push(s);
            }
        }
        out
    }
}

/// The disk of volume `volume` at the group portal.
pub fn disk_spec(portal: &str, volume: &str) -> host::DiskSpec {
    host::DiskSpec {
        volume: volume.to_string(),
        url: format!("iscsi://{portal}/{}:{volume}/0", control::state::IQN_PREFIX),
    }
}

/// The attached disks and how long each has been idle (QEMU's `query-blockstats`).
async fn disk_status(slot: &Slot) -> Vec<DiskStatus> {
    let disks = slot.def.lock().unwrap().disks.clone();
    let stats = slot
        .vm
        .read()
        .await
        .qmp()
        .execute_timeout(
            "query-blockstats",
            serde_json::json!({}),
            Duration::from_secs(2),
        )
        .await
        .unwrap_or(Value::Null);
    disks
        .into_iter()
        .filter_map(|volume| {
            let id = host::qemu::device_id(&volume);
            let entry = stats.as_array().into_iter().flatten().find(|e| {
                e["qdev"]
                    .as_str()
                    .is_some_and(|q| q.split('/').any(|part| part == id))
            })?;
            let idle_ms = entry["stats"]["idle_time_ns"]
                .as_u64()
                .map(|ns| ns / 1_000_000);
            Some(DiskStatus { volume, idle_ms })
        })
        .collect()
}

/// Removes the files QEMU left for `name` in the run directory.
pub fn remove_files(run_dir: &std::path::Path, name: &str) {
    let paths = host::qemu::VmPaths::new(run_dir, name);
    let _ = std::fs::remove_file(paths.pidfile);
    let _ = std::fs::remove_file(paths.qmp_socket);
}
