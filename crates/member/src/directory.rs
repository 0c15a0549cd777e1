//! The targets a portal fronts, as the iSCSI login and discovery engines ask for them.
//!
//! A member portal serves every volume itself. The group portal serves discovery and
//! redirects each login ("target moved temporarily") to the member portal that should
//! carry the session.

use crate::registry::Registry;
use control::{ClusterState, Volume};
use iscsi::{ChapSecrets, Directory, Lookup, TargetRecord};
use std::sync::Arc;
use tokio::sync::watch;

/// Which kind of portal this is.
#[derive(Debug, Clone)]
pub enum PortalKind {
    /// This member's own portal at `address` (host:port).
    Member { address: String },
    /// The group portal at `address`; logins are redirected to a member portal.
    Group { address: String },
}

pub struct PortalDirectory {
    pub kind: PortalKind,
    pub registry: Arc<Registry>,
    pub state: watch::Receiver<Arc<ClusterState>>,
    pub tpgt: u16,
    /// Group portal: the member each volume's logins were last sent to. A volume's sessions
    /// stay on one member while it is up, so its reservations and unit attentions (kept
    /// per member portal for now) are one logical unit's for initiators of the group
    /// portal; volumes, not sessions, are what is balanced.
    pub affinity: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// How long a connection looks for the initiator's next PDU before it sleeps
    /// (`portal::poll`); zero: never.
    pub busy_poll: std::time::Duration,
}

fn allowed(v: &Volume, initiator: &str) -> bool {
    v.allow.is_empty() || v.allow.iter().any(|a| a == initiator)
}

fn secrets(v: &Volume) -> Option<ChapSecrets> {
    v.chap.as_ref().map(|c| ChapSecrets {
        user: c.user.clone(),
        secret: c.secret.clone().into_bytes(),
        target: match (&c.mutual_user, &c.mutual_secret) {
            (Some(u), Some(s)) => Some((u.clone(), s.clone().into_bytes())),
            _ => None,
        },
    })
}

impl PortalDirectory {
    /// The member portal a new session to `target` should use: the member its earlier
    /// sessions went to while that member is up, else the one with the fewest sessions.
    fn member_for(&self, state: &ClusterState, target: &str) -> Option<String> {
        let mut affinity = self.affinity.lock().unwrap();
        if let Some(m) = affinity.get(target).and_then(|id| {
            state
                .members
                .values()
                .find(|m| m.node_id == *id && !m.down && self.answering(m))
        }) {
            return Some(format!("{},{}", m.portal, m.node_id));
        }
        let (address, node) = self.least_loaded_member(state)?;
        affinity.insert(target.to_string(), node);
        Some(address)
    }

    /// The member portal with the fewest sessions, and its node id.
    fn least_loaded_member(&self, state: &ClusterState) -> Option<(String, u64)> {
        // Other members' loads are polled by the group's liveness loop (about every second);
        // a member marked down is never chosen.
        let loads = self.registry.peer_loads();
        // A member that stopped answering pings is not sent logins even before the group
        // marks it down (that takes seconds); if none answers yet (just started), any up
        // member will do.
        let up: Vec<&control::Member> = state.members.values().filter(|m| !m.down).collect();
        let answering: Vec<&control::Member> =
            up.iter().copied().filter(|m| self.answering(m)).collect();
        let candidates = if answering.is_empty() { up } else { answering };
        candidates
            .into_iter()
            .min_by_key(|m| {
                let load = if m.name == self.registry.member {
                    self.registry.session_count()
                } else {
                    loads.get(&m.node_id).copied().unwrap_or(0)
                };
                (load, m.node_id)
            })
            .map(|m| (format!("{},{}", m.portal, m.node_id), m.node_id))
    }
}

impl PortalDirectory {
    /// This member, or another that answered the group's pings within the last second.
    fn answering(&self, m: &control::Member) -> bool {
        m.name == self.registry.member
            || self
                .registry
                .group()
                .is_none_or(|g| g.reachable(m.node_id, std::time::Duration::from_secs(1)))
    }
}

impl Directory for PortalDirectory {
    fn lookup(&self, target: &str, initiator: &str) -> Lookup {
        let state = self.state.borrow().clone();
        // A volume's target, or a snapshot's read-only target (with its volume's access rules).
        let Some(v) = state
            .volumes
            .values()
            .find(|v| v.iqn() == target)
            .or_else(|| {
                let snap = state
                    .snapshots
                    .values()
                    .flat_map(|s| s.values())
                    .find(|s| s.iqn() == target)?;
                state.volumes.get(&snap.volume)
            })
        else {
            return Lookup::NotFound;
        };
        if !allowed(v, initiator) {
            return Lookup::Denied;
        }
        match &self.kind {
            PortalKind::Member { .. } => {
                if self.registry.get(target).is_none() {
                    return Lookup::NotFound;
                }
                Lookup::Serve { auth: secrets(v) }
            }
            PortalKind::Group { .. } => match self.member_for(&state, target) {
                Some(address) => Lookup::Redirect { address },
                None => Lookup::NotFound,
            },
        }
    }

    fn send_targets(&self, initiator: &str, only: Option<&str>) -> Vec<TargetRecord> {
        let state = self.state.borrow().clone();
        let address = match &self.kind {
            PortalKind::Member { address } | PortalKind::Group { address } => {
                format!("{address},{}", self.tpgt)
            }
        };
        let mut names = Vec::new();
        for v in state.volumes.values().filter(|v| allowed(v, initiator)) {
            names.push(v.iqn());
            if let Some(snaps) = state.snapshots.get(&v.name) {
                names.extend(snaps.values().map(|s| s.iqn()));
            }
        }
        names
            .into_iter()
            .filter(|n| only.is_none_or(|o| o == n))
            .map(|name| TargetRecord {
                name,
                addresses: vec![address.clone()],
            })
            .collect()
    }

    fn portal_group_tag(&self) -> u16 {
        self.tpgt
    }
}
