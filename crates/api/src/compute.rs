//! API types of hosts, VMs and migrations, shared by the members, the host agents and the
//! CLI.

use control::{Host, Migration, Vm};
use serde::{Deserialize, Serialize};

/// A host and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub host: Host,
    /// The VMs the control plane places on it.
    pub vms: Vec<String>,
    /// Its agent answered just now.
    pub reachable: bool,
}

/// What host agents follow: the compute part of the cluster state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ComputeState {
    pub hosts: Vec<Host>,
    pub vms: Vec<Vm>,
    pub migrations: Vec<Migration>,
    /// The API address of every member, so an agent can reach the group if one member goes.
    pub member_apis: Vec<String>,
    /// The group portal the VMs' disks log in at.
    pub group_portal: String,
}

/// Define a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefineVm {
    pub name: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub disks: Vec<String>,
    pub boot: control::VmBoot,
}

/// Start a VM, on a host or wherever fits best.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartVm {
    #[serde(default)]
    pub host: Option<String>,
}

/// Stop a VM: an ACPI shutdown, forced after the timeout (or at once with `force`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopVm {
    pub timeout_secs: u64,
    #[serde(default)]
    pub force: bool,
}

/// Hot-add a volume to a VM (or add it to a stopped VM's definition).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachDisk {
    pub volume: String,
}

/// Migrate a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateVm {
    /// The destination; the least busy other host when absent.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub quick: bool,
    #[serde(default = "default_downtime_ms")]
    pub downtime_limit_ms: u64,
    #[serde(default)]
    pub postcopy: bool,
    /// Bytes per second the memory copy may use.
    #[serde(default)]
    pub max_bandwidth: Option<u64>,
}

/// QEMU's default downtime limit.
pub fn default_downtime_ms() -> u64 {
    300
}

/// A VM: its definition and, when a host runs it, what that host sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    #[serde(flatten)]
    pub vm: Vm,
    /// The host agent's view; `None` when no host runs it or its agent did not answer.
    pub status: Option<VmStatus>,
}

/// A VM as its host agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmStatus {
    pub name: String,
    /// QEMU's run state (`running`, `paused`, `inmigrate`, …), `starting`, `stopped` or
    /// `failed`.
    pub state: String,
    pub pid: Option<u32>,
    /// The last thing that went wrong with this VM on this host.
    pub error: Option<String>,
    /// The disks QEMU has attached, with how long since each saw I/O.
    pub disks: Vec<DiskStatus>,
    /// The serial console's log file on the host.
    pub console: Option<String>,
}

/// One attached disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskStatus {
    pub volume: String,
    /// Milliseconds since the guest last read or wrote it (`None`: never).
    pub idle_ms: Option<u64>,
}

/// A migration and, while it runs, its progress as the source host sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationView {
    #[serde(flatten)]
    pub migration: Migration,
    pub progress: Option<MigrationProgress>,
}

/// Live progress of a migration (from QEMU's `query-migrate` on the source).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MigrationProgress {
    /// QEMU's status (`active`, `pre-switchover`, `completed`, …) or the agent's phase.
    pub status: String,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    pub dirty_pages_rate: u64,
    pub elapsed_ms: u64,
}

/// The source asks the destination to get ready for a VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingRequest {
    pub migration: u64,
    pub vm: Vm,
    /// Quick migration: start paused, load the state from this volume.
    #[serde(default)]
    pub state_volume: Option<String>,
    #[serde(default)]
    pub postcopy: bool,
}

/// The destination listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingReady {
    /// QEMU's migration URI on the destination (`tcp:HOST:PORT`); empty for quick.
    pub uri: String,
}

/// The destination's side of a migration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct IncomingStatus {
    /// `waiting`, `running`, `failed`.
    pub state: String,
    /// When the guest resumed on the destination (QEMU's RESUME event), µs since the epoch.
    pub resumed_at_us: Option<u64>,
    pub error: Option<String>,
}
