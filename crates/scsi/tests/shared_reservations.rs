//! Two logical-unit engines of one volume (as on two members) sharing their reservations
//! through a record: a reservation taken at one is enforced at the other, a change made on
//! a stale copy is run again on the newer one, and unit attentions reach the other's nexuses.

use scsi::{LogicalUnit, LuIdentity, MemDevice, NexusId, ReservationConflict, SharedReservations};
use std::sync::{Arc, Mutex, Weak};

/// The shared record: every change in order; `publish` brings the other units up to date.
#[derive(Default)]
struct Record {
    changes: Mutex<Vec<Vec<u8>>>,
    units: Mutex<Vec<Weak<LogicalUnit>>>,
    /// Hold publication back, so a unit keeps a stale copy (a race).
    hold: Mutex<bool>,
}

struct Port(Arc<Record>);

impl SharedReservations for Port {
    fn commit(&self, base: u64, change: &[u8]) -> Result<u64, ReservationConflict> {
        let mut changes = self.0.changes.lock().unwrap();
        if changes.len() as u64 != base {
            let newer = changes
                .iter()
                .enumerate()
                .skip(base as usize)
                .map(|(i, c)| (i as u64 + 1, c.clone()))
                .collect();
            return Err(ReservationConflict::Newer(newer));
        }
        changes.push(change.to_vec());
        Ok(changes.len() as u64)
    }

    fn publish(&self, _revision: u64) {
        if *self.0.hold.lock().unwrap() {
            return;
        }
        let all: Vec<(u64, Vec<u8>)> = self
            .0
            .changes
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64 + 1, c.clone()))
            .collect();
        for unit in self
            .0
            .units
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
        {
            unit.apply_reservation_changes(&all);
        }
    }
}

fn unit(record: &Arc<Record>) -> Arc<LogicalUnit> {
    let lu = Arc::new(LogicalUnit::new(
        Arc::new(MemDevice::new(512, 2048)),
        LuIdentity {
            naa: [0x60; 16],
            serial: "shared".into(),
            target_name: "iqn.2026-11.org.haven:shared".into(),
            target_port_group: 1,
        },
    ));
    lu.set_shared_reservations(Arc::new(Port(record.clone())));
    record.units.lock().unwrap().push(Arc::downgrade(&lu));
    lu
}

fn nexus(name: &str, port: u16) -> NexusId {
    NexusId {
        initiator_name: name.into(),
        isid: 1,
        relative_target_port: port,
    }
}

fn prout(lu: &LogicalUnit, n: &NexusId, action: u8, rtype: u8, key: u64, sa_key: u64) -> u8 {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = action;
    cdb[2] = rtype;
    cdb[8] = 24;
    let mut params = [0u8; 24];
    params[..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&sa_key.to_be_bytes());
    lu.execute(n, &cdb, &params).status
}

fn write(lu: &LogicalUnit, n: &NexusId) -> (u8, Option<Vec<u8>>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[8] = 1;
    let r = lu.execute(n, &cdb, &[7u8; 512]);
    (r.status, r.sense)
}

/// Clear the power-on unit attention a new nexus gets.
fn settle(lu: &LogicalUnit, n: &NexusId) {
    for _ in 0..4 {
        if lu.execute(n, &[0u8; 6], &[]).status == 0 {
            return;
        }
    }
}

/// Two units sharing one record, each with a host whose first unit attention is taken.
fn two_units() -> (
    Arc<Record>,
    Arc<LogicalUnit>,
    Arc<LogicalUnit>,
    NexusId,
    NexusId,
) {
    let record = Arc::new(Record::default());
    let (a, b) = (unit(&record), unit(&record));
    let (host_a, host_b) = (nexus("iqn.host-a", 1), nexus("iqn.host-b", 2));
    settle(&a, &host_a);
    settle(&b, &host_b);
    (record, a, b, host_a, host_b)
}

const GOOD: u8 = 0;
const CHECK: u8 = 2;
const CONFLICT: u8 = 0x18;
const WRITE_EXCLUSIVE: u8 = 1;

#[test]
fn a_reservation_taken_at_one_unit_holds_at_the_other() {
    let (_record, a, b, host_a, host_b) = two_units();
    assert_eq!(prout(&a, &host_a, 0, 0, 0, 0xA), GOOD);
    assert_eq!(prout(&a, &host_a, 1, WRITE_EXCLUSIVE, 0xA, 0), GOOD);
    assert_eq!(write(&b, &host_b).0, CONFLICT);
    assert_eq!(write(&a, &host_a).0, GOOD);

    // B preempts A through the other unit: A's nexus there gets the unit attention.
    assert_eq!(prout(&b, &host_b, 0, 0, 0, 0xB), GOOD);
    assert_eq!(prout(&b, &host_b, 4, WRITE_EXCLUSIVE, 0xB, 0xA), GOOD);
    let (status, sense) = write(&a, &host_a);
    assert_eq!(status, CHECK);
    let sense = sense.unwrap();
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x06, 0x2a, 0x05));
    assert_eq!(write(&a, &host_a).0, CONFLICT);
    assert_eq!(write(&b, &host_b).0, GOOD);
}

#[test]
fn a_change_made_on_a_stale_copy_runs_again_on_the_newer_one() {
    let (record, a, b, host_a, host_b) = two_units();
    // B never hears of A's reservation (publication held back) ...
    *record.hold.lock().unwrap() = true;
    assert_eq!(prout(&a, &host_a, 0, 0, 0, 0xA), GOOD);
    assert_eq!(prout(&a, &host_a, 1, WRITE_EXCLUSIVE, 0xA, 0), GOOD);
    assert_eq!(b.reservation_revision(), 0);
    // ... so its own RESERVE runs on a stale copy: the record refuses it, B catches up and
    // runs it again, and now it conflicts with A's reservation.
    assert_eq!(prout(&b, &host_b, 0, 0, 0, 0xB), GOOD);
    assert_eq!(b.reservation_revision(), 3);
    assert_eq!(prout(&b, &host_b, 1, WRITE_EXCLUSIVE, 0xB, 0), CONFLICT);
    assert_eq!(write(&b, &host_b).0, CONFLICT);
}
