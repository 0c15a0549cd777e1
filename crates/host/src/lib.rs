//! haven's hypervisor host: everything needed to run VMs on one machine.
//!
//! - [`qmp`]: an async QMP client (commands matched to replies by id, events on a channel).
//! - [`spec`]: the VM definition ([`VmSpec`]).
//! - [`qemu`]: the QEMU command line for a spec, and spawning it.
//! - [`accel`]: whether KVM really boots a guest here, or TCG it is.
//! - [`vm`]: the lifecycle of one VM: start, status, pause/resume, shutdown, kill, adopt.
//! - [`hotplug`]: adding and removing disks of a running VM.

pub mod accel;
pub mod error;
pub mod hotplug;
pub mod qemu;
pub mod qmp;
pub mod spec;
pub mod vm;

pub use accel::Accel;
pub use error::{Error, ErrorKind, Result};
pub use qemu::{Incoming, LaunchOptions, Machine, QemuProcess};
pub use qmp::{Event, QmpClient};
pub use spec::{Boot, DiskSpec, VmSpec};
pub use vm::{RunState, ShutdownOutcome, Vm};
