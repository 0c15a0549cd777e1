//! A logical unit: the SCSI command engine for one volume.

use crate::cdb::Cdb;
use crate::device::{BlockDevice, DeviceError, MappedRead};
use crate::pr::{PrPersistence, PrRestoreError, ResState, SharedReservations};
use crate::rsoc::{self, Access, Lookup};
use crate::sense::{codes, Check, Sense};
use crate::status;
use crate::ua::UaTable;
use crate::xcopy::CopyState;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// An I_T nexus: one initiator port talking to the LU through one target port.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NexusId {
    /// iSCSI initiator name, e.g. `iqn.1994-05.com.example:host1`.
    pub initiator_name: String,
    /// The session's ISID (6 bytes, big-endian in the low 48 bits).
    pub isid: u64,
    /// Relative target port identifier of the portal the session came through (1-based).
    pub relative_target_port: u16,
}

/// Stable identity of a logical unit, reported in INQUIRY and its VPD pages.
#[derive(Debug, Clone)]
pub struct LuIdentity {
    /// NAA IEEE registered extended identifier (type 6, 16 bytes) — stable for the volume's life.
    pub naa: [u8; 16],
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// The iSCSI target name, reported as the SCSI target device name designator.
    pub target_name: String,
    /// Target port group of the port (ALUA), 1-based.
    pub target_port_group: u16,
}

/// The outcome of one SCSI command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// SCSI status (see [`crate::status`]).
    pub status: u8,
    /// Sense data (fixed format) when status is CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Data-In bytes, already cut to the CDB's allocation length.
    pub data: Vec<u8>,
}

/// Task management functions that reach the logical unit (ABORT TASK is handled by the
/// transport, which owns the task list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskManagement {
    AbortTaskSet,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
}

/// Result of a task management function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResult {
    Complete,
    NotSupported,
    Rejected,
}

/// The logical unit's target ports in other processes (a group's other members serving
/// the same volume). What changes the whole unit is carried out there too, so the unit is
/// one unit whichever portal an initiator uses.
pub trait OtherPorts: Send + Sync {
    /// A LUN or target reset happened here: apply it at every other port (see
    /// [`LogicalUnit::reset_from_elsewhere`]); return once every reachable one has.
    fn reset(&self, tmf: TaskManagement);
}

/// Looks up the device behind a third-party copy target descriptor (an NAA designator).
pub type CopyResolver = Arc<dyn Fn(&[u8; 16]) -> Option<Arc<dyn BlockDevice>> + Send + Sync>;

/// One ALUA target port group and the relative target ports in it (REPORT TARGET PORT GROUPS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPortGroup {
    pub id: u16,
    pub ports: Vec<u16>,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fail {
    Check(Check),
    Conflict,
}

impl From<Check> for Fail {
    fn from(c: Check) -> Self {
        Fail::Check(c)
    }
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s.into())
    }
}

/// A successful command: status (GOOD or CONDITION MET) and Data-In.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: u8,
    pub data: Vec<u8>,
}

impl Reply {
    pub fn good() -> Self {
        Reply {
            status: status::GOOD,
            data: Vec::new(),
        }
    }
    pub fn data(data: Vec<u8>) -> Self {
        Reply {
            status: status::GOOD,
            data,
        }
    }
}

pub(crate) type CmdResult = Result<Reply, Fail>;

/// Everything a command handler needs.
pub(crate) struct Ctx<'a> {
    pub lu: &'a LogicalUnit,
    pub nexus: &'a NexusId,
    pub cdb: Cdb,
    pub data: &'a [u8],
    /// A buffer the transport lends for Data-In (see [`LogicalUnit::execute_with`]).
    pub spare: Cell<Vec<u8>>,
    /// Whether a READ may answer with the device's own buffers, and where they go
    /// ([`LogicalUnit::execute_read_mapped`]).
    pub mapped_ok: bool,
    pub mapped: Cell<Option<MappedRead>>,
}

impl Ctx<'_> {
    pub fn dev(&self) -> &dyn BlockDevice {
        self.lu.dev.as_ref()
    }

    /// Maps a device error to sense data (and queues the thin-provisioning UA on NoSpace).
    pub fn dev_fail(&self, e: DeviceError) -> Fail {
        self.lu.map_dev_err(self.nexus, e)
    }

    /// Writes are refused when the device is read-only or SWP is set.
    pub fn check_writable(&self) -> Result<(), Fail> {
        if self.lu.write_protected() {
            return Err(codes::WRITE_PROTECTED.into());
        }
        Ok(())
    }
}

/// The engine for one volume. Shared by every session that reaches the volume.
pub struct LogicalUnit {
    pub(crate) dev: Arc<dyn BlockDevice>,
    pub(crate) identity: LuIdentity,
    pub(crate) ua: UaTable,
    pub(crate) res: RwLock<ResState>,
    pub(crate) swp: AtomicBool,
    pub(crate) stripes: crate::rw::Stripes,
    pub(crate) copy: Mutex<CopyState>,
    pub(crate) sanitizing: AtomicBool,
    pub(crate) sanitize_min: Mutex<Duration>,
    pub(crate) persistence: RwLock<Option<Arc<dyn PrPersistence>>>,
    pub(crate) resolver: RwLock<Option<CopyResolver>>,
    pub(crate) port_groups: RwLock<Option<Vec<TargetPortGroup>>>,
    pub(crate) other_ports: RwLock<Option<Arc<dyn OtherPorts>>>,
    pub(crate) shared: RwLock<Option<Arc<dyn SharedReservations>>>,
}

/// The reservation state, locked for a change.
pub(crate) type ResGuard<'a> = RwLockWriteGuard<'a, ResState>;

/// How long a SANITIZE keeps the LU in "sanitize in progress" at least. Erasing a
/// volume is a metadata operation here and would otherwise finish before an initiator
/// could observe it; libiscsi's Sanitize.Reset checks the state about 4 s after the
/// command (3 s wait, resets, 1 s wait, a new login), so 6 s leaves a margin while
/// keeping each SANITIZE short.
pub const DEFAULT_SANITIZE_MIN: Duration = Duration::from_secs(6);

/// Task management that concerns the tasks of the asking nexus's session only.
fn tmf_is_per_nexus(tmf: TaskManagement) -> bool {
    matches!(
        tmf,
        TaskManagement::AbortTaskSet | TaskManagement::ClearTaskSet
    )
}

/// Commands that neither report nor clear a unit attention (SAM-5 5.14).
fn ua_exempt(op: u8) -> bool {
    matches!(op, 0x12 | 0xA0 | 0x03)
}

impl LogicalUnit {
    pub fn new(dev: Arc<dyn BlockDevice>, identity: LuIdentity) -> Self {
        Self {
            dev,
            identity,
            ua: UaTable::default(),
            res: RwLock::new(ResState::default()),
            swp: AtomicBool::new(false),
            stripes: crate::rw::Stripes::new(),
            copy: Mutex::new(CopyState::default()),
            sanitizing: AtomicBool::new(false),
            sanitize_min: Mutex::new(DEFAULT_SANITIZE_MIN),
            persistence: RwLock::new(None),
            resolver: RwLock::new(None),
            port_groups: RwLock::new(None),
            other_ports: RwLock::new(None),
            shared: RwLock::new(None),
        }
    }

    /// Execute one command. `data_out` holds every byte the initiator sent for it.
    ///
    /// Write-type commands use the whole blocks present in `data_out` up to the CDB's
    /// transfer length (a shorter Data-Out writes fewer blocks, as iSCSI residual tests
    /// expect); COMPARE AND WRITE and WRITE SAME require the exact size.
    pub fn execute(&self, nexus: &NexusId, cdb: &[u8], data_out: &[u8]) -> Response {
        self.execute_with(nexus, cdb, data_out, Vec::new())
    }

    /// As [`LogicalUnit::execute`], reading Data-In into `spare` when the command reads
    /// blocks. A transport recycles its buffers this way: allocating (and zeroing, and
    /// for large reads faulting in) a fresh buffer per READ cost more than the read.
    /// Its old contents never leak: they are overwritten or the command fails.
    pub fn execute_with(
        &self,
        nexus: &NexusId,
        cdb: &[u8],
        data_out: &[u8],
        spare: Vec<u8>,
    ) -> Response {
        self.respond(self.run(nexus, cdb, data_out, spare, false).0)
    }

    /// As [`LogicalUnit::execute_with`], letting a READ's blocks come back where the device
    /// keeps them ([`BlockDevice::read_mapped`]), not copied into `spare`: then the
    /// response carries no data and the pieces are beside it.
    pub fn execute_read_mapped(
        &self,
        nexus: &NexusId,
        cdb: &[u8],
        data_out: &[u8],
        spare: Vec<u8>,
    ) -> (Response, Option<MappedRead>) {
        let (r, mapped) = self.run(nexus, cdb, data_out, spare, true);
        let r = self.respond(r);
        let mapped = mapped.filter(|_| r.status == status::GOOD);
        (r, mapped)
    }

    fn respond(&self, r: CmdResult) -> Response {
        match r {
            Ok(r) => Response {
                status: r.status,
                sense: None,
                data: r.data,
            },
            Err(Fail::Conflict) => Response {
                status: status::RESERVATION_CONFLICT,
                sense: None,
                data: Vec::new(),
            },
            Err(Fail::Check(c)) => Response {
                status: status::CHECK_CONDITION,
                sense: Some(c.bytes()),
                data: Vec::new(),
            },
        }
    }

    fn run(
        &self,
        nexus: &NexusId,
        raw: &[u8],
        data_out: &[u8],
        spare: Vec<u8>,
        mapped_ok: bool,
    ) -> (CmdResult, Option<MappedRead>) {
        let cdb = match self.admit(nexus, raw) {
            Ok(c) => c,
            Err(f) => return (Err(f), None),
        };
        let ctx = Ctx {
            lu: self,
            nexus,
            cdb,
            data: data_out,
            spare: Cell::new(spare),
            mapped_ok,
            mapped: Cell::new(None),
        };
        let r = crate::dispatch::dispatch(&ctx);
        (r, ctx.mapped.take())
    }

    /// What every command passes before its handler: unit attentions, a CDB the engine
    /// knows, no sanitize running, reservations.
    pub(crate) fn admit(&self, nexus: &NexusId, raw: &[u8]) -> Result<Cdb, Fail> {
        // One lookup registers the nexus and checks its unit attentions.
        let op = raw.first().copied().unwrap_or(0);
        if let Some(ua) = self.ua.touch_take(nexus, !raw.is_empty() && !ua_exempt(op)) {
            return Err(ua.into());
        }
        let cdb = Cdb::parse(raw)?;
        let info = match rsoc::lookup(cdb.op(), cdb.sa()) {
            Lookup::Found(i) => i,
            Lookup::BadServiceAction => {
                return Err(crate::sense::invalid_cdb_field(1, Some(4)).into())
            }
            Lookup::Unknown => return Err(codes::INVALID_OPCODE.into()),
        };
        if self.sanitizing.load(Ordering::SeqCst) && !ua_exempt(op) {
            return Err(codes::SANITIZE_IN_PROGRESS.into());
        }
        self.check_access(nexus, info.access, &cdb)?;
        Ok(cdb)
    }

    fn check_access(&self, nexus: &NexusId, access: Access, cdb: &Cdb) -> Result<(), Fail> {
        let res = self.res_read();
        res.check(nexus, access, cdb)
    }

    /// A task management function from `nexus`.
    pub fn task_management(&self, nexus: &NexusId, tmf: TaskManagement) -> TmfResult {
        self.ua.touch(nexus);
        self.reset_from_elsewhere(tmf);
        let others = self
            .other_ports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Some(others), false) = (others, tmf_is_per_nexus(tmf)) {
            others.reset(tmf);
        }
        TmfResult::Complete
    }

    /// Carry out the unit-wide part of `tmf`, raised at this port or at another port of
    /// the unit ([`OtherPorts::reset`]).
    pub fn reset_from_elsewhere(&self, tmf: TaskManagement) {
        match tmf {
            TaskManagement::AbortTaskSet | TaskManagement::ClearTaskSet => {}
            TaskManagement::LogicalUnitReset => {
                self.res_write().spc2 = None;
                // Every nexus is told, the one that asked included (libiscsi's
                // MultipathIO.Reset checks every path for the unit attention).
                self.ua.push_all(codes::UA_LUN_RESET);
            }
            TaskManagement::TargetWarmReset => {
                self.res_write().spc2 = None;
                self.ua.push_all(codes::UA_POWER_ON);
            }
            TaskManagement::TargetColdReset => {
                self.res_write().spc2 = None;
                self.swp.store(false, Ordering::SeqCst);
                self.ua.push_all(codes::UA_POWER_ON_OCCURRED);
            }
        }
    }

    /// Keep the persistent reservations in `shared`, the record every port of the unit
    /// follows, instead of this process alone.
    pub fn set_shared_reservations(&self, shared: Arc<dyn SharedReservations>) {
        *self.shared.write().unwrap_or_else(|e| e.into_inner()) = Some(shared);
    }

    pub(crate) fn shared_reservations(&self) -> Option<Arc<dyn SharedReservations>> {
        self.shared
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The revision of the shared reservations this unit follows (0: none applied).
    pub fn reservation_revision(&self) -> u64 {
        self.res_read().revision
    }

    /// Follow changes of the shared reservations made at any port, oldest first, as
    /// (revision, change): each newer than the one applied becomes the state, and raises
    /// its unit attentions here. A change that cannot be read is skipped with an error
    /// logged (the next one carries the whole state again).
    pub fn apply_reservation_changes(&self, changes: &[(u64, Vec<u8>)]) {
        let mut raised = Vec::new();
        {
            let mut r = self.res_write();
            for (revision, bytes) in changes {
                if *revision <= r.revision {
                    continue;
                }
                match crate::pr::decode_change(bytes) {
                    Ok(c) => {
                        r.pr = c.state;
                        r.revision = *revision;
                        raised.push((c.notices, c.origin));
                    }
                    Err(e) => {
                        tracing::error!(revision, error = %e, "unreadable reservation change");
                    }
                }
            }
        }
        for (notices, origin) in raised {
            crate::pr::raise(self, &notices, &origin);
        }
    }

    /// Where unit-wide events go besides this process's ports.
    pub fn set_other_ports(&self, ports: Arc<dyn OtherPorts>) {
        *self.other_ports.write().unwrap_or_else(|e| e.into_inner()) = Some(ports);
    }

    /// Fences the medium to one initiator: from now on a command that changes the medium
    /// from any other initiator ends in RESERVATION CONFLICT, whatever its persistent
    /// reservations say. `None` lifts the fence. The group sets it to the initiator of the
    /// host that owns the VM using this volume, so a host that lost the VM cannot write.
    pub fn set_writer(&self, initiator: Option<String>) {
        let mut r = self.res_write();
        if r.writer != initiator {
            r.writer = initiator;
        }
    }

    /// The initiator the medium is fenced to, if any.
    pub fn writer(&self) -> Option<String> {
        self.res_read().writer.clone()
    }

    /// The I_T nexus is gone (session closed or dropped): its SPC-2 reservation is
    /// released and, if it comes back, it is treated as new (POWER ON unit attention).
    /// Persistent reservations and registrations survive, as SPC-4 requires.
    pub fn nexus_lost(&self, nexus: &NexusId) {
        {
            let mut r = self.res_write();
            if r.spc2.as_ref() == Some(nexus) {
                r.spc2 = None;
            }
        }
        self.ua.forget(nexus);
    }

    /// How many Data-Out bytes `cdb` describes (transfer length × block size for the
    /// write family, the parameter list length for commands that carry one, 0 for
    /// commands without Data-Out), or None for a CDB the engine does not know. The
    /// transport compares it with the expected data transfer length to report residuals.
    pub fn data_out_len(&self, cdb: &[u8]) -> Option<u64> {
        let c = Cdb::parse(cdb).ok()?;
        if !matches!(rsoc::lookup(c.op(), c.sa()), Lookup::Found(_)) {
            return None;
        }
        let bs = u64::from(self.dev.block_size());
        let blocks = |n: u64| n.saturating_mul(bs);
        Some(match c.op() {
            0x0A | 0x2A | 0xAA | 0x8A | 0x2E | 0xAE | 0x8E | 0x8B => {
                blocks(crate::rw::decode_cdb(&c).len)
            }
            0x2F | 0xAF | 0x8F => match (c.u8(1) >> 1) & 0x03 {
                1 => blocks(crate::rw::decode_cdb(&c).len),
                3 => bs,
                _ => 0,
            },
            0x9C => blocks(u64::from(c.u16(12))),
            0x89 => blocks(u64::from(c.u8(13))) * 2,
            0x41 => bs,
            0x93 if c.bit(1, 0) => 0,
            0x93 => bs,
            0x15 => u64::from(c.u8(4)),
            0x55 | 0x42 | 0x48 => u64::from(c.u16(7)),
            0x5F => u64::from(c.u32(5)),
            0x83 => u64::from(c.u32(10)),
            _ => 0,
        })
    }

    /// The device's capacity changed (online resize): every nexus gets a unit attention.
    pub fn capacity_changed(&self) {
        self.ua.push_all(codes::UA_CAPACITY_CHANGED);
    }

    /// The device behind the LU.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// The identity reported in INQUIRY.
    pub fn identity(&self) -> &LuIdentity {
        &self.identity
    }

    /// Sets the designator → device lookup EXTENDED COPY uses for other volumes.
    /// Without one only this LU's own NAA designator resolves.
    pub fn set_copy_resolver(&self, resolver: CopyResolver) {
        *self.resolver.write().unwrap_or_else(|e| e.into_inner()) = Some(resolver);
    }

    /// Where persistent reservation state goes when an initiator sets APTPL.
    pub fn set_pr_persistence(&self, p: Arc<dyn PrPersistence>) {
        *self.persistence.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// Restores persistent reservation state saved through [`PrPersistence::save`].
    pub fn restore_pr(&self, bytes: &[u8]) -> Result<(), PrRestoreError> {
        let st = crate::pr::decode(bytes)?;
        self.res_write().pr = st;
        Ok(())
    }

    /// The least time a SANITIZE keeps the LU in "sanitize in progress"
    /// (default [`DEFAULT_SANITIZE_MIN`]).
    pub fn set_sanitize_min_duration(&self, d: Duration) {
        *self.sanitize_min.lock().unwrap_or_else(|e| e.into_inner()) = d;
    }

    /// The ALUA target port groups REPORT TARGET PORT GROUPS returns. Without this call
    /// the LU reports one group (`identity.target_port_group`) with every port it has seen.
    pub fn set_target_port_groups(&self, groups: Vec<TargetPortGroup>) {
        *self.port_groups.write().unwrap_or_else(|e| e.into_inner()) = Some(groups);
    }

    /// True while a SANITIZE runs.
    pub fn sanitize_in_progress(&self) -> bool {
        self.sanitizing.load(Ordering::SeqCst)
    }

    pub(crate) fn write_protected(&self) -> bool {
        self.dev.read_only() || self.swp.load(Ordering::SeqCst)
    }

    pub(crate) fn res_read(&self) -> RwLockReadGuard<'_, ResState> {
        self.res.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn res_write(&self) -> RwLockWriteGuard<'_, ResState> {
        self.res.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn copy_state(&self) -> MutexGuard<'_, CopyState> {
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn map_dev_err(&self, nexus: &NexusId, e: DeviceError) -> Fail {
        match e {
            DeviceError::OutOfRange { .. } => codes::LBA_OUT_OF_RANGE.into(),
            DeviceError::Medium { lba } => codes::UNRECOVERED_READ_ERROR.with_info(lba).into(),
            DeviceError::NoSpace => {
                self.ua.push(nexus, codes::UA_THIN_THRESHOLD);
                codes::SPACE_ALLOCATION_FAILED.into()
            }
            DeviceError::ReadOnly => codes::WRITE_PROTECTED.into(),
            DeviceError::Io(err) => {
                tracing::warn!(error = %err, "device i/o error");
                codes::INTERNAL_TARGET_FAILURE.into()
            }
        }
    }
}
