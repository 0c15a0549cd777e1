//! The SCSI command engine: CDBs in, status + sense + data out.
//!
//! It does no socket I/O. It executes commands against a [`BlockDevice`], which the store
//! (or a plain file, or an in-memory test device) implements. The iSCSI layer above collects
//! the Data-Out bytes a command carries, calls [`LogicalUnit::execute`], and turns the
//! [`Response`] into Data-In and SCSI Response PDUs.

// The workspace's MSRV (1.80) predates `is_multiple_of` and `Option::is_none_or`.
#![allow(clippy::manual_is_multiple_of, clippy::unnecessary_map_or)]

mod admin;
mod cdb;
mod deferred;
pub mod device;
mod dispatch;
mod inquiry;
pub mod lu;
mod mode;
pub mod pr;
mod reserve;
mod rsoc;
mod rw;
mod sanitize;
pub mod sense;
mod thin;
mod ua;
mod xcopy;

pub use deferred::{Admit, DeferredWrite};
pub use device::{BlockDevice, DeviceError, LbaStatus, MappedRead, MemDevice};
pub use lu::{
    CopyResolver, LogicalUnit, LuIdentity, NexusId, OtherPorts, Response, TargetPortGroup,
    TaskManagement, TmfResult,
};
pub use pr::{PrPersistence, PrRestoreError, ReservationConflict, SharedReservations};
pub use sense::{Sense, SenseKey};

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Fuzz entry point: runs `cdb` with `data_out` against a fresh small in-memory LU
/// (a few commands first, so reservations and unit attentions are in play).
/// Must never panic.
pub fn fuzz_execute(cdb: &[u8], data_out: &[u8]) -> Response {
    use std::sync::Arc;
    let dev = Arc::new(MemDevice::new(512, 2048));
    let lu = LogicalUnit::new(
        dev,
        LuIdentity {
            naa: [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            serial: "fuzz".into(),
            target_name: "iqn.2024-01.dev.haven:fuzz".into(),
            target_port_group: 1,
        },
    );
    lu.set_sanitize_min_duration(std::time::Duration::ZERO);
    let nexus = NexusId {
        initiator_name: "iqn.fuzz".into(),
        isid: 1,
        relative_target_port: 1,
    };
    let _ = lu.execute(&nexus, &[0, 0, 0, 0, 0, 0], &[]);
    lu.execute(&nexus, cdb, data_out)
}
