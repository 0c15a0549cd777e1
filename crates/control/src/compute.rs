//! Hypervisor hosts, VM definitions and migrations: the compute half of the cluster state.
//!
//! The control plane records what should be (a VM's definition, whether it should run, the
//! host that owns it, the migrations queued) and host agents make it so. The owner of a VM
//! is also the only writer of its volumes: [`ClusterState::volume_writer`] names the
//! initiator the members fence each volume to, so moving `Vm::host` is the storage handover.
//!
//! A migration's life, every step a command through Raft:
//!
//! ```text
//!  RequestMigration ─► Queued ─BeginMigration (admitted within the per-host limits,
//!                        │       in request order per source host)─► Running
//!                        │                                              │
//!                  CancelMigration                         MigrationSwitchover (vm.host = to)
//!                        ▼                                              ▼
//!                    Cancelled        FinishMigration{Failed|Cancelled} ◄─ Switchover
//!                                     (vm.host back to `from`)          │
//!                                                         FinishMigration{Completed}
//!                                                                       ▼
//!                                                                   Completed
//! ```

use serde::{Deserialize, Serialize};

use crate::state::{refuse, valid_name, ClusterState, Outcome, RefusalKind, IQN_PREFIX};

/// Outbound and inbound live migrations a host runs at once unless configured otherwise.
pub const DEFAULT_MIGRATION_LIMIT: u32 = 2;

/// A hypervisor host as the group knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// host:port of the host agent's API.
    pub api_addr: String,
    /// The iSCSI initiator name its QEMUs log in with.
    pub initiator: String,
    /// The accelerator it runs guests with (`kvm` or `tcg`).
    pub accel: String,
    /// New VMs and incoming migrations may be placed here (false while drained).
    #[serde(default = "yes")]
    pub schedulable: bool,
}

fn yes() -> bool {
    true
}

impl Host {
    /// The initiator name haven gives host `name`.
    pub fn initiator_for(name: &str) -> String {
        format!("{IQN_PREFIX}:host:{name}")
    }
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmBoot {
    /// Direct kernel boot: paths on every host.
    Kernel {
        kernel: String,
        #[serde(default)]
        initrd: Option<String>,
        #[serde(default)]
        append: String,
    },
    /// Firmware boot from the first disk.
    Disk,
}

/// A VM: its definition, whether it should run, and the host that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Volume names, in the order the guest sees them.
    pub disks: Vec<String>,
    pub boot: VmBoot,
    /// The VM should be running.
    pub running: bool,
    /// The host that runs it (or last ran it and has not confirmed it stopped). Only this
    /// host's initiator may write the VM's volumes.
    pub host: Option<String>,
    pub created: u64,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationState {
    /// Waiting for a slot on its hosts.
    Queued,
    /// Memory is being copied; the source owns the VM.
    Running,
    /// The destination owns the VM's storage; the source is finishing.
    Switchover,
    Completed,
    Failed,
    Cancelled,
}

impl MigrationState {
    /// The migration is over, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationState::Completed | MigrationState::Failed | MigrationState::Cancelled
        )
    }

    /// The migration holds a slot on its hosts.
    pub fn is_active(self) -> bool {
        matches!(self, MigrationState::Running | MigrationState::Switchover)
    }
}

/// One migration of one VM from one host to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: u64,
    pub vm: String,
    pub from: String,
    pub to: String,
    /// Quick migration: pause, save state to a volume, restore on the destination.
    pub quick: bool,
    /// QEMU's downtime limit for live migration.
    pub downtime_limit_ms: u64,
    /// Switch to post-copy when pre-copy does not converge.
    pub postcopy: bool,
    /// Bytes per second the memory copy may use (`None`: as fast as the link goes).
    #[serde(default)]
    pub max_bandwidth: Option<u64>,
    pub state: MigrationState,
    /// An operator asked to cancel a running migration.
    #[serde(default)]
    pub cancel_requested: bool,
    pub requested: u64,
    /// How it ended, once final: downtime, or why it failed. (Not `result`: that is the
    /// tag of [`Outcome`], which carries a migration.)
    #[serde(default)]
    pub end: Option<MigrationResult>,
}

/// How a migration ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum MigrationResult {
    Completed {
        /// From the guest's last instruction on the source to its first on the destination,
        /// storage handover included.
        downtime_ms: u64,
        /// QEMU's own downtime figure (live) or 0.
        qemu_downtime_ms: u64,
        total_ms: u64,
    },
    Failed {
        error: String,
    },
    Cancelled {
        reason: String,
    },
}

/// Compute commands (a part of [`crate::Command`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ComputeCommand {
    /// Add or update a host (its address may change on restart; schedulability is kept).
    RegisterHost(Host),
    SetHostSchedulable {
        name: String,
        schedulable: bool,
    },
    DefineVm {
        name: String,
        cpus: u32,
        memory_bytes: u64,
        disks: Vec<String>,
        boot: VmBoot,
        created: u64,
    },
    DeleteVm {
        name: String,
    },
    /// Run the VM on `host`.
    StartVm {
        name: String,
        host: String,
    },
    /// The VM should stop; its host still owns it until it confirms.
    StopVm {
        name: String,
    },
    /// `host` stopped the VM: it owns it no more.
    VmStopped {
        name: String,
        host: String,
    },
    AttachDisk {
        vm: String,
        volume: String,
    },
    DetachDisk {
        vm: String,
        volume: String,
    },
    RequestMigration {
        vm: String,
        to: String,
        quick: bool,
        downtime_limit_ms: u64,
        postcopy: bool,
        #[serde(default)]
        max_bandwidth: Option<u64>,
        requested: u64,
    },
    BeginMigration {
        id: u64,
    },
    /// The destination takes the VM's storage over (at QEMU's pre-switchover pause).
    MigrationSwitchover {
        id: u64,
    },
    FinishMigration {
        id: u64,
        result: MigrationResult,
    },
    CancelMigration {
        id: u64,
    },
    SetMigrationLimits {
        outbound: u32,
        inbound: u32,
    },
}

fn no_vm(name: &str) -> Outcome {
    refuse(RefusalKind::NotFound, format!("no VM named {name}"))
}

fn no_migration(id: u64) -> Outcome {
    refuse(RefusalKind::NotFound, format!("no migration {id}"))
}

impl ClusterState {
    /// The initiator allowed to write `volume`: the owner of the VM that uses it, if any.
    pub fn volume_writer(&self, volume: &str) -> Option<String> {
        let vm = self
            .vms
            .values()
            .find(|vm| vm.disks.iter().any(|d| d == volume))?;
        let host = self.hosts.get(vm.host.as_ref()?)?;
        Some(host.initiator.clone())
    }

    /// The VM that uses `volume`, if any.
    pub fn vm_of_volume(&self, volume: &str) -> Option<&Vm> {
        self.vms
            .values()
            .find(|vm| vm.disks.iter().any(|d| d == volume))
    }

    /// The migration of `vm` still in progress, if any.
    pub fn active_migration(&self, vm: &str) -> Option<&Migration> {
        self.migrations
            .values()
            .find(|m| m.vm == vm && !m.state.is_final())
    }

    /// The refusal for a change that must wait for `vm`'s open migration, if it has one.
    fn refuse_while_migrating(&self, vm: &str, kind: RefusalKind) -> Option<Outcome> {
        self.active_migration(vm).map(|m| {
            refuse(
                kind,
                format!(
                    "VM {vm} is migrating (migration {}); cancel it or wait for it",
                    m.id
                ),
            )
        })
    }

    pub(crate) fn apply_compute(&mut self, cmd: ComputeCommand) -> Outcome {
        use ComputeCommand::*;
        match cmd {
            RegisterHost(mut h) => {
                if !valid_name(&h.name) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("invalid host name {:?}", h.name),
                    );
                }
                if let Some(old) = self.hosts.get(&h.name) {
                    h.schedulable = old.schedulable;
                }
                self.hosts.insert(h.name.clone(), h.clone());
                Outcome::Host(h)
            }
            SetHostSchedulable { name, schedulable } => match self.hosts.get_mut(&name) {
                Some(h) => {
                    h.schedulable = schedulable;
                    Outcome::Host(h.clone())
                }
                None => refuse(RefusalKind::NotFound, format!("no host named {name}")),
            },
            DefineVm {
                name,
                cpus,
                memory_bytes,
                disks,
                boot,
                created,
            } => self.define_vm(name, cpus, memory_bytes, disks, boot, created),
            DeleteVm { name } => {
                let Some(vm) = self.vms.get(&name) else {
                    return no_vm(&name);
                };
                if vm.running {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("VM {name} is running; stop it first"),
                    );
                }
                if self.active_migration(&name).is_some() {
                    return refuse(RefusalKind::Invalid, format!("VM {name} is migrating"));
                }
                self.vms.remove(&name);
                Outcome::Ok
            }
            StartVm { name, host } => {
                let Some(h) = self.hosts.get(&host) else {
                    return refuse(RefusalKind::NotFound, format!("no host named {host}"));
                };
                let schedulable = h.schedulable;
                let Some(vm) = self.vms.get_mut(&name) else {
                    return no_vm(&name);
                };
                if vm.running {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "VM {name} is already running on {}",
                            vm.host.as_deref().unwrap_or("?")
                        ),
                    );
                }
                if let Some(old) = &vm.host {
                    if *old != host {
                        return refuse(
                            RefusalKind::Invalid,
                            format!("VM {name} is still stopping on {old}"),
                        );
                    }
                }
                if !schedulable {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("host {host} is drained; undrain it or choose another"),
                    );
                }
                vm.running = true;
                vm.host = Some(host);
                Outcome::Vm(vm.clone())
            }
            StopVm { name } => {
                if let Some(o) = self.refuse_while_migrating(&name, RefusalKind::Invalid) {
                    return o;
                }
                let Some(vm) = self.vms.get_mut(&name) else {
                    return no_vm(&name);
                };
                vm.running = false;
                Outcome::Vm(vm.clone())
            }
            VmStopped { name, host } => {
                // A queued migration of a VM that stopped has nothing left to move; an
                // active one is settled by its driver first.
                if let Some(m) = self.active_migration(&name).cloned() {
                    if m.state != MigrationState::Queued {
                        return refuse(
                            RefusalKind::Busy,
                            format!("VM {name} is migrating (migration {})", m.id),
                        );
                    }
                    if m.from == host {
                        let q = self.migrations.get_mut(&m.id).expect("found above");
                        q.state = MigrationState::Cancelled;
                        q.end = Some(MigrationResult::Cancelled {
                            reason: "the VM stopped".into(),
                        });
                    }
                }
                let Some(vm) = self.vms.get_mut(&name) else {
                    return no_vm(&name);
                };
                if vm.host.as_deref() == Some(host.as_str()) {
                    vm.running = false;
                    vm.host = None;
                }
                Outcome::Vm(vm.clone())
            }
            AttachDisk { vm, volume } => {
                if let Some(o) = self.refuse_while_migrating(&vm, RefusalKind::Busy) {
                    return o;
                }
                if !self.volumes.contains_key(&volume) {
                    return refuse(RefusalKind::NotFound, format!("no volume named {volume}"));
                }
                if let Some(other) = self.vm_of_volume(&volume) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("volume {volume} is a disk of VM {}", other.name),
                    );
                }
                let Some(v) = self.vms.get_mut(&vm) else {
                    return no_vm(&vm);
                };
                v.disks.push(volume);
                Outcome::Vm(v.clone())
            }
            DetachDisk { vm, volume } => {
                if let Some(o) = self.refuse_while_migrating(&vm, RefusalKind::Busy) {
                    return o;
                }
                let Some(v) = self.vms.get_mut(&vm) else {
                    return no_vm(&vm);
                };
                let before = v.disks.len();
                v.disks.retain(|d| *d != volume);
                if v.disks.len() == before {
                    return refuse(
                        RefusalKind::NotFound,
                        format!("volume {volume} is not a disk of VM {vm}"),
                    );
                }
                Outcome::Vm(v.clone())
            }
            RequestMigration {
                vm,
                to,
                quick,
                downtime_limit_ms,
                postcopy,
                max_bandwidth,
                requested,
            } => {
                if max_bandwidth.is_some_and(|b| b < (1 << 20)) {
                    return refuse(
                        RefusalKind::Invalid,
                        "the bandwidth limit must be at least 1 MiB/s",
                    );
                }
                let o =
                    self.request_migration(vm, to, quick, downtime_limit_ms, postcopy, requested);
                if let Outcome::Migration(m) = &o {
                    let m = self.migrations.get_mut(&m.id).expect("just inserted");
                    m.max_bandwidth = max_bandwidth;
                    return Outcome::Migration(m.clone());
                }
                o
            }
            BeginMigration { id } => self.begin_migration(id),
            MigrationSwitchover { id } => {
                let Some(m) = self.migrations.get_mut(&id) else {
                    return no_migration(id);
                };
                if m.state != MigrationState::Running {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("migration {id} is {:?}, not running", m.state),
                    );
                }
                m.state = MigrationState::Switchover;
                let m = m.clone();
                if let Some(vm) = self.vms.get_mut(&m.vm) {
                    vm.host = Some(m.to.clone());
                }
                Outcome::Migration(m)
            }
            FinishMigration { id, result } => {
                let Some(m) = self.migrations.get_mut(&id) else {
                    return no_migration(id);
                };
                if m.state.is_final() {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("migration {id} is already {:?}", m.state),
                    );
                }
                let owner = match &result {
                    MigrationResult::Completed { .. } => {
                        m.state = MigrationState::Completed;
                        m.to.clone()
                    }
                    MigrationResult::Failed { .. } => {
                        m.state = MigrationState::Failed;
                        m.from.clone()
                    }
                    MigrationResult::Cancelled { .. } => {
                        m.state = MigrationState::Cancelled;
                        m.from.clone()
                    }
                };
                m.end = Some(result);
                let m = m.clone();
                if let Some(vm) = self.vms.get_mut(&m.vm) {
                    vm.host = Some(owner);
                }
                Outcome::Migration(m)
            }
            CancelMigration { id } => {
                let Some(m) = self.migrations.get_mut(&id) else {
                    return no_migration(id);
                };
                match m.state {
                    MigrationState::Queued => {
                        m.state = MigrationState::Cancelled;
                        m.end = Some(MigrationResult::Cancelled {
                            reason: "cancelled while queued".into(),
                        });
                    }
                    MigrationState::Running => m.cancel_requested = true,
                    s => {
                        return refuse(
                            RefusalKind::Invalid,
                            format!("migration {id} is {s:?} and can no longer be cancelled"),
                        )
                    }
                }
                Outcome::Migration(m.clone())
            }
            SetMigrationLimits { outbound, inbound } => {
                if !(1..=16).contains(&outbound) || !(1..=16).contains(&inbound) {
                    return refuse(RefusalKind::Invalid, "migration limits must be 1 to 16");
                }
                self.migration_limits = Some((outbound, inbound));
                Outcome::Ok
            }
        }
    }

    fn define_vm(
        &mut self,
        name: String,
        cpus: u32,
        memory_bytes: u64,
        disks: Vec<String>,
        boot: VmBoot,
        created: u64,
    ) -> Outcome {
        if !valid_name(&name) {
            return refuse(
                RefusalKind::Invalid,
                format!("invalid VM name {name:?}: use a-z, 0-9, '-', '.' (at most 64)"),
            );
        }
        if self.vms.contains_key(&name) {
            return refuse(
                RefusalKind::AlreadyExists,
                format!("VM {name} already exists"),
            );
        }
        if !(1..=64).contains(&cpus) {
            return refuse(RefusalKind::Invalid, format!("{cpus} vCPUs: use 1 to 64"));
        }
        if memory_bytes < (32 << 20) || !memory_bytes.is_multiple_of(1 << 20) {
            return refuse(
                RefusalKind::Invalid,
                "memory must be a multiple of 1 MiB, at least 32 MiB",
            );
        }
        for (i, d) in disks.iter().enumerate() {
            if !self.volumes.contains_key(d) {
                return refuse(RefusalKind::NotFound, format!("no volume named {d}"));
            }
            if disks[..i].contains(d) {
                return refuse(RefusalKind::Invalid, format!("volume {d} is listed twice"));
            }
            if let Some(other) = self.vm_of_volume(d) {
                return refuse(
                    RefusalKind::Invalid,
                    format!("volume {d} is a disk of VM {}", other.name),
                );
            }
        }
        if matches!(boot, VmBoot::Disk) && disks.is_empty() {
            return refuse(
                RefusalKind::Invalid,
                "a VM that boots from disk needs a disk",
            );
        }
        let vm = Vm {
            name: name.clone(),
            cpus,
            memory_bytes,
            disks,
            boot,
            running: false,
            host: None,
            created,
        };
        self.vms.insert(name, vm.clone());
        Outcome::Vm(vm)
    }

    fn request_migration(
        &mut self,
        vm: String,
        to: String,
        quick: bool,
        downtime_limit_ms: u64,
        postcopy: bool,
        requested: u64,
    ) -> Outcome {
        let Some(v) = self.vms.get(&vm) else {
            return no_vm(&vm);
        };
        let (true, Some(from)) = (v.running, v.host.clone()) else {
            return refuse(RefusalKind::Invalid, format!("VM {vm} is not running"));
        };
        let Some(dest) = self.hosts.get(&to) else {
            return refuse(RefusalKind::NotFound, format!("no host named {to}"));
        };
        if !dest.schedulable {
            return refuse(RefusalKind::Invalid, format!("host {to} is drained"));
        }
        if from == to {
            return refuse(
                RefusalKind::Invalid,
                format!("VM {vm} already runs on {to}"),
            );
        }
        if let Some(m) = self.active_migration(&vm) {
            return refuse(
                RefusalKind::AlreadyExists,
                format!("VM {vm} already has migration {} ({:?})", m.id, m.state),
            );
        }
        if !(1..=60_000).contains(&downtime_limit_ms) {
            return refuse(
                RefusalKind::Invalid,
                "the downtime limit must be 1 ms to 60 s",
            );
        }
        self.next_migration_id += 1;
        let m = Migration {
            id: self.next_migration_id,
            vm,
            from,
            to,
            quick,
            downtime_limit_ms,
            postcopy,
            max_bandwidth: None,
            state: MigrationState::Queued,
            cancel_requested: false,
            requested,
            end: None,
        };
        self.migrations.insert(m.id, m.clone());
        self.forget_old_migrations();
        Outcome::Migration(m)
    }

    fn begin_migration(&mut self, id: u64) -> Outcome {
        let Some(m) = self.migrations.get(&id) else {
            return no_migration(id);
        };
        if m.state != MigrationState::Queued {
            return refuse(
                RefusalKind::Invalid,
                format!("migration {id} is {:?}, not queued", m.state),
            );
        }
        let (outbound, inbound) = self
            .migration_limits
            .unwrap_or((DEFAULT_MIGRATION_LIMIT, DEFAULT_MIGRATION_LIMIT));
        let active = |f: &dyn Fn(&Migration) -> bool| {
            self.migrations
                .values()
                .filter(|x| x.state.is_active() && f(x))
                .count() as u32
        };
        // Quick migrations copy through a volume; they count like live ones so a drain of
        // many VMs does not pause them all at once.
        let out_busy = active(&|x| x.from == m.from);
        let in_busy = active(&|x| x.to == m.to);
        let earlier_waiting = self
            .migrations
            .range(..id)
            .any(|(_, x)| x.state == MigrationState::Queued && x.from == m.from);
        if out_busy >= outbound || in_busy >= inbound || earlier_waiting {
            return refuse(
                RefusalKind::Busy,
                format!(
                    "migration {id} waits: {out_busy}/{outbound} outbound from {}, {in_busy}/{inbound} inbound to {}{}",
                    m.from,
                    m.to,
                    if earlier_waiting { ", an earlier request waits first" } else { "" }
                ),
            );
        }
        let m = self.migrations.get_mut(&id).expect("looked up above");
        m.state = MigrationState::Running;
        Outcome::Migration(m.clone())
    }

    /// Keeps the record bounded: the 256 most recent finished migrations stay listed.
    fn forget_old_migrations(&mut self) {
        const KEEP_FINISHED: usize = 256;
        let finished: Vec<u64> = self
            .migrations
            .values()
            .filter(|m| m.state.is_final())
            .map(|m| m.id)
            .collect();
        if finished.len() > KEEP_FINISHED {
            for id in &finished[..finished.len() - KEEP_FINISHED] {
                self.migrations.remove(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn host(name: &str) -> Host {
        Host {
            name: name.into(),
            api_addr: format!("127.0.0.1:1{}", name.len()),
            initiator: Host::initiator_for(name),
            accel: "tcg".into(),
            schedulable: true,
        }
    }

    fn ok(s: &mut ClusterState, c: ComputeCommand) -> Outcome {
        let o = s.apply(Command::Compute { cmd: c });
        assert!(!matches!(o, Outcome::Refused { .. }), "{o:?}");
        o
    }

    fn refused(s: &mut ClusterState, c: ComputeCommand) -> RefusalKind {
        match s.apply(Command::Compute { cmd: c }) {
            Outcome::Refused { kind, .. } => kind,
            o => panic!("expected a refusal, got {o:?}"),
        }
    }

    /// Two hosts, volumes v1..v4, VMs a..d each on one volume, all running on h1.
    fn lab() -> ClusterState {
        let mut s = ClusterState::default();
        for h in ["h1", "h2"] {
            ok(&mut s, ComputeCommand::RegisterHost(host(h)));
        }
        for (i, vm) in ["a", "b", "c", "d"].iter().enumerate() {
            let vol = format!("v{}", i + 1);
            s.apply(Command::CreateVolume {
                name: vol.clone(),
                size: 1 << 20,
                block_size: 512,
                replicas: 1,
                thick: false,
                allow: vec![],
                chap: None,
                created: 0,
            });
            ok(
                &mut s,
                ComputeCommand::DefineVm {
                    name: vm.to_string(),
                    cpus: 1,
                    memory_bytes: 64 << 20,
                    disks: vec![vol],
                    boot: VmBoot::Disk,
                    created: 0,
                },
            );
            ok(
                &mut s,
                ComputeCommand::StartVm {
                    name: vm.to_string(),
                    host: "h1".into(),
                },
            );
        }
        s
    }

    fn migrate(s: &mut ClusterState, vm: &str, to: &str) -> u64 {
        match ok(
            s,
            ComputeCommand::RequestMigration {
                vm: vm.into(),
                to: to.into(),
                quick: false,
                downtime_limit_ms: 300,
                postcopy: false,
                max_bandwidth: None,
                requested: 0,
            },
        ) {
            Outcome::Migration(m) => m.id,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn the_owner_of_a_vm_is_the_only_writer_of_its_volumes() {
        let mut s = lab();
        assert_eq!(s.volume_writer("v1"), Some(Host::initiator_for("h1")));
        let id = migrate(&mut s, "a", "h2");
        ok(&mut s, ComputeCommand::BeginMigration { id });
        assert_eq!(s.volume_writer("v1"), Some(Host::initiator_for("h1")));
        ok(&mut s, ComputeCommand::MigrationSwitchover { id });
        assert_eq!(s.volume_writer("v1"), Some(Host::initiator_for("h2")));
        ok(
            &mut s,
            ComputeCommand::FinishMigration {
                id,
                result: MigrationResult::Completed {
                    downtime_ms: 10,
                    qemu_downtime_ms: 5,
                    total_ms: 700,
                },
            },
        );
        assert_eq!(s.vms["a"].host.as_deref(), Some("h2"));
        ok(&mut s, ComputeCommand::StopVm { name: "a".into() });
        assert_eq!(s.volume_writer("v1"), Some(Host::initiator_for("h2")));
        ok(
            &mut s,
            ComputeCommand::VmStopped {
                name: "a".into(),
                host: "h2".into(),
            },
        );
        assert_eq!(s.volume_writer("v1"), None);
    }

    #[test]
    fn a_failure_after_switchover_gives_the_storage_back_to_the_source() {
        let mut s = lab();
        let id = migrate(&mut s, "a", "h2");
        ok(&mut s, ComputeCommand::BeginMigration { id });
        ok(&mut s, ComputeCommand::MigrationSwitchover { id });
        ok(
            &mut s,
            ComputeCommand::FinishMigration {
                id,
                result: MigrationResult::Failed {
                    error: "destination died".into(),
                },
            },
        );
        assert_eq!(s.volume_writer("v1"), Some(Host::initiator_for("h1")));
        assert_eq!(s.migrations[&id].state, MigrationState::Failed);
    }

    #[test]
    fn migrations_are_admitted_within_the_limits_in_request_order() {
        let mut s = lab();
        let ids: Vec<u64> = ["a", "b", "c", "d"]
            .iter()
            .map(|vm| migrate(&mut s, vm, "h2"))
            .collect();
        // The third waits for a slot; the fourth may not overtake it.
        ok(&mut s, ComputeCommand::BeginMigration { id: ids[0] });
        assert_eq!(
            refused(&mut s, ComputeCommand::BeginMigration { id: ids[3] }),
            RefusalKind::Busy
        );
        ok(&mut s, ComputeCommand::BeginMigration { id: ids[1] });
        assert_eq!(
            refused(&mut s, ComputeCommand::BeginMigration { id: ids[2] }),
            RefusalKind::Busy
        );
        ok(
            &mut s,
            ComputeCommand::FinishMigration {
                id: ids[0],
                result: MigrationResult::Cancelled {
                    reason: "test".into(),
                },
            },
        );
        ok(&mut s, ComputeCommand::BeginMigration { id: ids[2] });
        assert_eq!(
            refused(&mut s, ComputeCommand::BeginMigration { id: ids[3] }),
            RefusalKind::Busy
        );
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let mut s = lab();
        assert_eq!(
            refused(
                &mut s,
                ComputeCommand::RequestMigration {
                    vm: "a".into(),
                    to: "h1".into(),
                    quick: false,
                    downtime_limit_ms: 300,
                    postcopy: false,
                    max_bandwidth: None,
                    requested: 0
                }
            ),
            RefusalKind::Invalid
        );
        migrate(&mut s, "a", "h2");
        assert_eq!(
            refused(
                &mut s,
                ComputeCommand::RequestMigration {
                    vm: "a".into(),
                    to: "h2".into(),
                    quick: false,
                    downtime_limit_ms: 300,
                    postcopy: false,
                    max_bandwidth: None,
                    requested: 0
                }
            ),
            RefusalKind::AlreadyExists
        );
        assert_eq!(
            refused(
                &mut s,
                ComputeCommand::DefineVm {
                    name: "e".into(),
                    cpus: 1,
                    memory_bytes: 64 << 20,
                    disks: vec!["v1".into()],
                    boot: VmBoot::Disk,
                    created: 0
                }
            ),
            RefusalKind::Invalid
        );
        assert_eq!(
            refused(&mut s, ComputeCommand::DeleteVm { name: "b".into() }),
            RefusalKind::Invalid
        );
        ok(
            &mut s,
            ComputeCommand::SetHostSchedulable {
                name: "h2".into(),
                schedulable: false,
            },
        );
        assert_eq!(
            refused(
                &mut s,
                ComputeCommand::RequestMigration {
                    vm: "b".into(),
                    to: "h2".into(),
                    quick: false,
                    downtime_limit_ms: 300,
                    postcopy: false,
                    max_bandwidth: None,
                    requested: 0
                }
            ),
            RefusalKind::Invalid
        );
    }

    #[test]
    fn every_outcome_survives_json() {
        let mut s = lab();
        let id = migrate(&mut s, "a", "h2");
        for o in [
            ok(&mut s, ComputeCommand::BeginMigration { id }),
            ok(&mut s, ComputeCommand::RegisterHost(host("h3"))),
            ok(&mut s, ComputeCommand::StopVm { name: "b".into() }),
        ] {
            let text = serde_json::to_string(&o).unwrap();
            let back: Outcome = serde_json::from_str(&text).unwrap();
            assert_eq!(back, o);
        }
    }

    #[test]
    fn a_queued_migration_is_cancelled_at_once_a_running_one_on_request() {
        let mut s = lab();
        let a = migrate(&mut s, "a", "h2");
        let b = migrate(&mut s, "b", "h2");
        ok(&mut s, ComputeCommand::BeginMigration { id: a });
        ok(&mut s, ComputeCommand::CancelMigration { id: a });
        assert!(s.migrations[&a].cancel_requested);
        assert_eq!(s.migrations[&a].state, MigrationState::Running);
        ok(&mut s, ComputeCommand::CancelMigration { id: b });
        assert_eq!(s.migrations[&b].state, MigrationState::Cancelled);
    }
}
