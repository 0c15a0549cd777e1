//! Persistent reservations of a volume's logical unit, shared by every member's ports.
//!
//! The SCSI engine of the port that ran PERSISTENT RESERVE OUT encodes the new state and
//! proposes it against the revision it started from; a port that raced it and lost is
//! refused and runs the command again on the newer state. Every member applies the
//! change to its own ports (and raises the unit attentions it carries).

use crate::state::{refuse, ClusterState, Outcome, RefusalKind, RESERVATION_CHANGES_KEPT};

impl ClusterState {
    pub(crate) fn apply_set_reservations(&mut self, id: u64, base: u64, change: String) -> Outcome {
        let Some(v) = self.volumes.values_mut().find(|v| v.id == id) else {
            return refuse(RefusalKind::NotFound, format!("no volume with id {id}"));
        };
        let r = &mut v.reservations;
        if r.revision != base {
            return refuse(
                RefusalKind::Busy,
                format!(
                    "the reservations changed (revision {}, not {base}); run the command again",
                    r.revision
                ),
            );
        }
        r.revision += 1;
        r.changes.push((r.revision, change));
        if r.changes.len() > RESERVATION_CHANGES_KEPT {
            let extra = r.changes.len() - RESERVATION_CHANGES_KEPT;
            r.changes.drain(..extra);
        }
        Outcome::Ok
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{ClusterState, Command, Outcome};

    fn with_volume() -> (ClusterState, u64) {
        let mut s = ClusterState::default();
        let Outcome::Volume(v) = s.apply(crate::state::tests::create("v", 1 << 20)) else {
            panic!("volume not created");
        };
        (s, v.id)
    }

    fn set(s: &mut ClusterState, id: u64, base: u64, change: &str) -> Outcome {
        s.apply(Command::SetReservations {
            volume: id,
            base,
            change: change.into(),
        })
    }

    #[test]
    fn a_change_applies_only_to_the_revision_it_was_made_on() {
        let (mut s, id) = with_volume();
        assert_eq!(set(&mut s, id, 0, "a"), Outcome::Ok);
        assert!(matches!(set(&mut s, id, 0, "b"), Outcome::Refused { .. }));
        assert_eq!(set(&mut s, id, 1, "c"), Outcome::Ok);
        let r = &s.volumes["v"].reservations;
        assert_eq!(r.revision, 2);
        assert_eq!(r.latest(), Some(&(2, "c".to_string())));
        assert!(matches!(set(&mut s, 999, 2, "d"), Outcome::Refused { .. }));
    }

    #[test]
    fn only_the_latest_changes_are_kept() {
        let (mut s, id) = with_volume();
        for base in 0..20 {
            assert_eq!(set(&mut s, id, base, &format!("{base}")), Outcome::Ok);
        }
        let r = &s.volumes["v"].reservations;
        assert_eq!(r.changes.len(), crate::state::RESERVATION_CHANGES_KEPT);
        assert_eq!(r.changes.first().unwrap().0, 13);
        assert_eq!(r.latest().unwrap().0, 20);
    }
}
