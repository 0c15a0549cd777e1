//! WRITEs a transport carries out itself, asynchronously.
//!
//! The engine is synchronous: [`LogicalUnit::execute`] calls the device and returns when it
//! answered. A device whose writes wait on the network (a group of members replicating
//! them) would hold a thread per write for a round trip. [`LogicalUnit::admit_write`]
//! instead runs every check of a WRITE and takes its range locks, and hands the transport
//! what to write; the locks stay held until the transport drops the [`DeferredWrite`], so
//! COMPARE AND WRITE and the other atomic commands still exclude it.

use crate::cdb::Cdb;
use crate::device::DeviceError;
use crate::lu::{Ctx, Fail, LogicalUnit, NexusId, Response};
use crate::rw::{self, Stripes};
use crate::status;
use std::cell::Cell;
use std::sync::Arc;

/// What became of a WRITE offered to [`LogicalUnit::admit_write`].
pub enum Admit {
    /// Checked, range locked: the transport writes it to the device and answers GOOD, or
    /// [`DeferredWrite::failed`] when the device fails.
    Write(DeferredWrite),
    /// Answered without writing (a check failed, or nothing to write).
    Done(Response),
    /// Not taken (not a WRITE (10/12/16), or another writer holds its range): run it
    /// through [`LogicalUnit::execute`], which waits for the range.
    Execute,
}

/// A WRITE that passed its checks: write `len` bytes of its Data-Out at `lba`.
pub struct DeferredWrite {
    lu: Arc<LogicalUnit>,
    stripes: Vec<usize>,
    pub lba: u64,
    /// The whole blocks of Data-Out to write, from its start.
    pub len: usize,
    pub fua: bool,
}

impl DeferredWrite {
    /// The answer to the write when the device failed it (releases the range).
    pub fn failed(self, nexus: &NexusId, e: DeviceError) -> Response {
        response(Err(self.lu.map_dev_err(nexus, e)))
    }
}

impl Drop for DeferredWrite {
    fn drop(&mut self) {
        self.lu.stripes.release(&self.stripes);
    }
}

fn response(r: Result<(), Fail>) -> Response {
    let (status, sense) = match r {
        Ok(()) => (status::GOOD, None),
        Err(Fail::Conflict) => (status::RESERVATION_CONFLICT, None),
        Err(Fail::Check(c)) => (status::CHECK_CONDITION, Some(c.bytes())),
    };
    Response {
        status,
        sense,
        data: Vec::new(),
    }
}

impl LogicalUnit {
    /// Check a WRITE (10/12/16) as [`LogicalUnit::execute`] would and take its range, so
    /// the transport can write it asynchronously (see the module docs).
    pub fn admit_write(self: &Arc<Self>, nexus: &NexusId, raw: &[u8], data_out: &[u8]) -> Admit {
        if !matches!(raw.first(), Some(0x2A | 0xAA | 0x8A)) {
            return Admit::Execute;
        }
        // The range first, with no side effect yet: a busy range goes the waiting way.
        let Ok(parsed) = Cdb::parse(raw) else {
            return Admit::Execute;
        };
        let rw = rw::decode_cdb(&parsed);
        let stripes = Stripes::indices(rw.lba, rw.len);
        if !self.stripes.try_lock(&stripes) {
            return Admit::Execute;
        }
        let mut write = DeferredWrite {
            lu: self.clone(),
            stripes,
            lba: rw.lba,
            len: 0,
            fua: false,
        };
        let cdb = match self.admit(nexus, raw) {
            Ok(cdb) => cdb,
            Err(f) => return Admit::Done(response(Err(f))),
        };
        let ctx = Ctx {
            lu: self,
            nexus,
            cdb,
            data: data_out,
            spare: Cell::new(Vec::new()),
            mapped_ok: false,
            mapped: Cell::new(None),
        };
        match rw::write_checked(&ctx) {
            Err(f) => Admit::Done(response(Err(f))),
            Ok((_, [], _)) => Admit::Done(response(Ok(()))),
            Ok((lba, data, fua)) => {
                (write.lba, write.len, write.fua) = (lba, data.len(), fua);
                Admit::Write(write)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlockDevice, LuIdentity, MemDevice};

    fn lu() -> (Arc<MemDevice>, Arc<LogicalUnit>, NexusId) {
        let dev = Arc::new(MemDevice::new(512, 64));
        let identity = LuIdentity {
            naa: [0x60; 16],
            serial: "S".into(),
            target_name: "iqn.2026-11.dev.haven:t".into(),
            target_port_group: 1,
        };
        let lu = Arc::new(LogicalUnit::new(dev.clone(), identity));
        let nexus = NexusId {
            initiator_name: "iqn.i".into(),
            isid: 1,
            relative_target_port: 1,
        };
        // The first command of a nexus reports POWER ON.
        lu.execute(&nexus, &[0; 6], &[]);
        (dev, lu, nexus)
    }

    fn write10(lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = 0x2A;
        c[1] = if fua { 0x08 } else { 0 };
        c[2..6].copy_from_slice(&lba.to_be_bytes());
        c[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn an_admitted_write_holds_its_range_until_dropped() {
        let (dev, lu, n) = lu();
        let data = vec![7u8; 1024];
        let Admit::Write(w) = lu.admit_write(&n, &write10(8, 2, true), &data) else {
            panic!("not admitted");
        };
        assert_eq!((w.lba, w.len, w.fua), (8, 1024, true));
        // Nothing was written: the transport does that.
        let mut back = vec![1u8; 1024];
        dev.read(8, &mut back).unwrap();
        assert_eq!(back, vec![0u8; 1024]);
        // An overlapping write is not admitted while the range is held.
        assert!(matches!(
            lu.admit_write(&n, &write10(9, 1, false), &data[..512]),
            Admit::Execute
        ));
        drop(w);
        assert!(matches!(
            lu.admit_write(&n, &write10(9, 1, false), &data[..512]),
            Admit::Write(_)
        ));
    }

    #[test]
    fn checks_answer_at_once() {
        let (_, lu, n) = lu();
        let data = vec![7u8; 512];
        let Admit::Done(r) = lu.admit_write(&n, &write10(64, 1, false), &data) else {
            panic!("an out-of-range write was admitted");
        };
        assert_eq!(r.status, status::CHECK_CONDITION);
        // Nothing to write: GOOD.
        let Admit::Done(r) = lu.admit_write(&n, &write10(0, 0, false), &[]) else {
            panic!("an empty write was admitted");
        };
        assert_eq!(r.status, status::GOOD);
        // Other commands are not taken.
        assert!(matches!(lu.admit_write(&n, &[0; 6], &[]), Admit::Execute));
        // A device failure maps to sense as `execute` would.
        let Admit::Write(w) = lu.admit_write(&n, &write10(0, 1, false), &data) else {
            panic!("not admitted");
        };
        let r = w.failed(&n, DeviceError::NoSpace);
        assert_eq!(r.status, status::CHECK_CONDITION);
    }
}
