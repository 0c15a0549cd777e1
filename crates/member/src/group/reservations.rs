//! Persistent reservations kept in the control plane, so every member's ports enforce
//! the same ones (see `scsi::SharedReservations` for the engine's side).
//!
//! ```text
//!  member A, PERSISTENT RESERVE OUT:
//!    Raft: SetReservations{volume, base r, change} ──Ok──► revision r+1
//!    A ──LuEvent{volume, Reservations, r+1}──► B, C: each waits until its state has r+1,
//!                                               applies it to its logical unit ──► Ok
//!    A answers the command
//! ```

use super::{lu_events::EVENT_DEADLINE, Group};
use control::{ClusterState, Command, Outcome, RefusalKind};
use peer::{LuEvent, LuEventKind};
use scsi::{ReservationConflict, SharedReservations};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One volume's reservations in the control plane.
pub struct GroupReservations {
    group: Arc<Group>,
    volume: u64,
}

impl GroupReservations {
    pub fn new(group: Arc<Group>, volume: u64) -> Self {
        GroupReservations { group, volume }
    }
}

/// The changes of `volume`'s reservations after revision `after`, oldest first.
pub fn changes_after(state: &ClusterState, volume: u64, after: u64) -> Vec<(u64, Vec<u8>)> {
    state.volume_by_id(volume).map_or_else(Vec::new, |v| {
        v.reservations
            .changes
            .iter()
            .filter(|(r, _)| *r > after)
            .map(|(r, c)| (*r, c.clone().into_bytes()))
            .collect()
    })
}

impl SharedReservations for GroupReservations {
    fn commit(&self, base: u64, change: &[u8]) -> Result<u64, ReservationConflict> {
        let change = String::from_utf8(change.to_vec())
            .map_err(|e| ReservationConflict::Failed(e.to_string()))?;
        let g = &self.group;
        let volume = self.volume;
        g.block_on(async move {
            let cmd = Command::SetReservations {
                volume,
                base,
                change,
            };
            match g.control.write(cmd).await {
                Ok(Outcome::Ok) => Ok(base + 1),
                Ok(Outcome::Refused {
                    kind: RefusalKind::Busy,
                    ..
                }) => {
                    // Another port got there first: what it recorded, once applied here.
                    let state = g.reservations_reach(volume, base + 1).await;
                    Err(ReservationConflict::Newer(changes_after(
                        &state, volume, base,
                    )))
                }
                Ok(other) => Err(ReservationConflict::Failed(format!("{other:?}"))),
                Err(e) => Err(ReservationConflict::Failed(e.to_string())),
            }
        })
    }

    fn publish(&self, revision: u64) {
        let event = LuEvent {
            volume: self.volume,
            kind: LuEventKind::Reservations,
            arg: revision,
        };
        self.group.block_on(self.group.broadcast_lu_event(event));
    }
}

impl Group {
    /// This member's applied state once `volume`'s reservations reached `revision` (or
    /// after [`EVENT_DEADLINE`], whatever it is then).
    pub(crate) async fn reservations_reach(&self, volume: u64, revision: u64) -> Arc<ClusterState> {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            let state = self.control.state();
            let at = state
                .volume_by_id(volume)
                .map_or(u64::MAX, |v| v.reservations.revision);
            if at >= revision || Instant::now() >= deadline {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
