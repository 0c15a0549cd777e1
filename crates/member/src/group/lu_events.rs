//! One logical unit across members: what one member's port does to the whole unit (a LUN
//! reset, new reservations) reaches the ports of every other member serving the volume.
//!
//! ```text
//!  initiator ─LUN RESET─► member A: its nexuses get the unit attention, then
//!                         A ──LuEvent{volume, LunReset}──► B, C (in parallel)
//!                                 each: unit attention on its nexuses ──► Ok
//!                         A answers the TMF once every reachable member answered
//! ```
//!
//! A member that does not answer within [`EVENT_DEADLINE`] is down or cut off: the group
//! fails its placement groups over, and its sessions end with it.

use super::Group;
use peer::{LuEvent, LuEventKind, Message};
use scsi::{OtherPorts, TaskManagement};
use std::sync::Arc;
use std::time::Duration;

/// How long a member waits for another to apply a unit-wide event.
pub(super) const EVENT_DEADLINE: Duration = Duration::from_secs(3);

/// Carries out unit-wide events that peers send for the volumes this member serves, with
/// the state they were made under (reservation changes come from it).
pub type LuEventSink =
    Arc<dyn Fn(LuEvent, &control::ClusterState) -> Result<(), String> + Send + Sync>;

/// The other members' ports of one volume's logical unit.
pub struct GroupPorts {
    group: Arc<Group>,
    volume: u64,
}

impl GroupPorts {
    pub fn new(group: Arc<Group>, volume: u64) -> Self {
        GroupPorts { group, volume }
    }
}

impl OtherPorts for GroupPorts {
    fn reset(&self, tmf: TaskManagement) {
        let kind = match tmf {
            TaskManagement::LogicalUnitReset => LuEventKind::LunReset,
            TaskManagement::TargetWarmReset => LuEventKind::WarmReset,
            TaskManagement::TargetColdReset => LuEventKind::ColdReset,
            TaskManagement::AbortTaskSet | TaskManagement::ClearTaskSet => return,
        };
        let event = LuEvent {
            volume: self.volume,
            kind,
            arg: 0,
        };
        self.group.block_on(self.group.broadcast_lu_event(event));
    }
}

/// The task management function a peer's event stands for.
pub fn reset_of(kind: LuEventKind) -> Option<TaskManagement> {
    match kind {
        LuEventKind::LunReset => Some(TaskManagement::LogicalUnitReset),
        LuEventKind::WarmReset => Some(TaskManagement::TargetWarmReset),
        LuEventKind::ColdReset => Some(TaskManagement::TargetColdReset),
        LuEventKind::Reservations => None,
    }
}

impl Group {
    /// Where peers' unit-wide events go (the registry, which holds the logical units).
    pub fn set_lu_events(&self, sink: LuEventSink) {
        let _ = self.lu_events.set(sink);
    }

    /// A peer's unit-wide event for a volume served here. New reservations are applied
    /// once this member's state has them.
    pub(crate) async fn lu_event(&self, event: LuEvent) -> Result<(), String> {
        let state = match event.kind {
            LuEventKind::Reservations => self.reservations_reach(event.volume, event.arg).await,
            _ => self.control.state(),
        };
        match self.lu_events.get() {
            Some(sink) => sink(event, &state),
            None => Err("this member serves no volumes yet".into()),
        }
    }

    /// Send `event` to every other up member and wait (at most [`EVENT_DEADLINE`]) until
    /// each applied it. Members that fail are logged: they are down or cut off, and the
    /// group is taking their sessions' volumes away from them.
    pub async fn broadcast_lu_event(self: &Arc<Self>, event: LuEvent) {
        let state = self.state();
        let epoch = self.epoch();
        let mut calls = tokio::task::JoinSet::new();
        for m in state.up_members().filter(|m| m.node_id != self.node) {
            let (g, node) = (self.clone(), m.node_id);
            calls.spawn(async move {
                let answer = tokio::time::timeout(
                    EVENT_DEADLINE,
                    g.call(node, epoch, Message::LuEvent(event)),
                )
                .await;
                (node, answer)
            });
        }
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((_, Ok(Ok(_)))) => {}
                Ok((node, Ok(Err(f)))) => {
                    tracing::warn!(node, ?event, error = ?f, "a member did not apply a unit-wide event")
                }
                Ok((node, Err(_))) => {
                    tracing::warn!(
                        node,
                        ?event,
                        "a member did not answer a unit-wide event in time"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "a unit-wide event's call failed"),
            }
        }
    }
}
