//! Failure detection: every member pings every other; the Raft leader marks a member down
//! when it has not answered for [`DOWN_AFTER`], and up again once it answers.
//!
//! Marking down is a committed command (`MemberDown`): it takes the member's copies out of
//! the in-sync sets in a new epoch, so its placement groups fail over to their other copies.
//! A member down for longer than the group's `down_out` is marked out (`MemberOut`) and its
//! groups get new copies elsewhere. The leader also finishes removals: a member being
//! removed that holds no copy any more is forgotten and leaves the control plane.

use super::Group;
use control::Command;
use peer::Message;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Between pings of one peer.
const PING_EVERY: Duration = Duration::from_millis(250);
/// A ping not answered by then failed.
const PING_TIMEOUT: Duration = Duration::from_millis(750);
/// Silence after which the leader marks a member down (detection within 5 s with the
/// commit).
pub const DOWN_AFTER: Duration = Duration::from_millis(2500);
/// Between polls of other members' session counts.
const LOAD_EVERY: Duration = Duration::from_secs(1);
/// Between backfill scans when nothing changed (a failed fill is retried then).
const SCAN_EVERY: Duration = Duration::from_secs(2);

pub async fn run(group: Arc<Group>) {
    let started = Instant::now();
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let proposing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last_load_poll = Instant::now();
    let mut last_scan = Instant::now();
    let mut nonce = 0u64;
    // When this member (as leader) first saw each member down.
    let mut down_since: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(PING_EVERY).await;
        let state = group.state();
        for m in state.members.values() {
            if m.node_id == group.node || m.peer.is_empty() {
                continue;
            }
            if !in_flight.lock().unwrap().insert(m.node_id) {
                continue;
            }
            nonce += 1;
            let (g, node, flight) = (group.clone(), m.node_id, in_flight.clone());
            tokio::spawn(async move {
                let ping =
                    tokio::time::timeout(PING_TIMEOUT, g.call(node, 0, Message::Ping { nonce }))
                        .await;
                if let Ok(Ok(Message::Pong { .. })) = ping {
                    g.last_ok.lock().unwrap().insert(node, Instant::now());
                }
                flight.lock().unwrap().remove(&node);
            });
        }

        if last_load_poll.elapsed() > LOAD_EVERY {
            last_load_poll = Instant::now();
            poll_loads(&group, &state);
        }

        if group.control.is_leader() {
            // Every member pings every other, so a new leader has the history already;
            // only a member that just started judges nobody before watching DOWN_AFTER.
            let watching = started;
            let last: HashMap<u64, Instant> = group.last_ok.lock().unwrap().clone();
            for m in state.members.values() {
                // The leader judges others' liveness, and finishes its own removal too.
                if m.node_id == group.node && !m.removing {
                    continue;
                }
                let heard = last.get(&m.node_id).copied();
                let silent = heard.map_or(watching, |t| t.max(watching)).elapsed();
                if !m.down {
                    down_since.remove(&m.name);
                }
                let since = *down_since
                    .entry(m.name.clone())
                    .or_insert_with(Instant::now);
                let back = heard.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                let name = m.name.clone();
                let cmd = if m.removing && !state.holds_copies(m.node_id) {
                    Command::ForgetMember { name }
                } else if m.node_id == group.node {
                    continue;
                } else if !m.down && silent > DOWN_AFTER {
                    Command::MemberDown { name }
                } else if m.down && back {
                    Command::MemberUp {
                        name,
                        restarted: false,
                    }
                } else if m.down && !m.out && since.elapsed() > group.timing.down_out {
                    Command::MemberOut { name }
                } else {
                    continue;
                };
                if !proposing.lock().unwrap().insert(m.name.clone()) {
                    continue;
                }
                let (ctl, name, busy) = (group.control.clone(), m.name.clone(), proposing.clone());
                let node = m.node_id;
                tokio::spawn(async move {
                    tracing::warn!(member = %name, ?cmd, "member state changed");
                    let forget = matches!(cmd, Command::ForgetMember { .. });
                    match ctl.write(cmd).await {
                        Ok(control::Outcome::Ok) if forget => {
                            if let Err(e) = leave_control_plane(&ctl, node).await {
                                tracing::warn!(member = %name, error = %e, "cannot take the removed member out of the control plane");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(member = %name, error = %e, "cannot record the member's state")
                        }
                    }
                    busy.lock().unwrap().remove(&name);
                });
            }
        }

        if last_scan.elapsed() > SCAN_EVERY {
            last_scan = Instant::now();
            super::backfill::scan(&group);
        }
    }
}

/// Take a forgotten member out of Raft; a voter's seat goes to a learner when there is one,
/// so the control plane keeps its number of voters.
async fn leave_control_plane(
    ctl: &control::ControlPlane,
    node: u64,
) -> Result<(), control::ControlError> {
    let before = ctl.membership();
    let was_voter = before.iter().any(|n| n.node_id == node && n.voter);
    ctl.remove_node(node).await?;
    if was_voter {
        if let Some(learner) = before.iter().find(|n| !n.voter && n.node_id != node) {
            ctl.add_voter(learner.node_id, learner.addr.clone()).await?;
        }
    }
    Ok(())
}

/// Ask every other up member for its session count (for login redirection).
fn poll_loads(group: &Arc<Group>, state: &control::ClusterState) {
    for m in state.up_members() {
        if m.node_id == group.node {
            continue;
        }
        let (g, node, url) = (group.clone(), m.node_id, format!("http://{}", m.api_addr));
        tokio::spawn(async move {
            let client = api::Client::new(vec![url]);
            let load = tokio::time::timeout(
                Duration::from_millis(900),
                client.get::<api::LoadView>("/v1/load"),
            )
            .await;
            if let Ok(Ok(l)) = load {
                g.loads.lock().unwrap().insert(node, l.sessions);
                g.fills.lock().unwrap().insert(node, l.in_use);
            }
        });
    }
}
