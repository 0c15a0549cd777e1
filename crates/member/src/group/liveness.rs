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
    let mut judge = Judge::new(Instant::now(), group.timing.down_out);
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let proposing: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last_load_poll = Instant::now();
    let mut last_scan = Instant::now();
    let mut nonce = 0u64;
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

        // Every member judges, so that one that becomes leader knows since when each
        // member was down; only the leader acts on its verdicts.
        let leader = group.control.is_leader();
        let last: HashMap<u64, Instant> = group.last_ok.lock().unwrap().clone();
        let now = Instant::now();
        for m in state.members.values() {
            let heard = last.get(&m.node_id).copied();
            let verdict = judge.verdict(m, group.node, &state, heard, now);
            if let (true, Some(cmd)) = (leader, verdict) {
                propose(&group, &proposing, m, cmd);
            }
        }

        if last_scan.elapsed() > SCAN_EVERY {
            last_scan = Instant::now();
            super::backfill::scan(&group);
        }
    }
}

/// Record `cmd` about `m` in the control plane, unless a command about it is still on
/// its way.
fn propose(
    group: &Arc<Group>,
    proposing: &Arc<Mutex<HashSet<String>>>,
    m: &control::Member,
    cmd: Command,
) {
    if !proposing.lock().unwrap().insert(m.name.clone()) {
        return;
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

/// Each member's judgement of the others' liveness from the pings' history: no I/O, so
/// the rules are tested on their own. Every member keeps one; the leader's verdicts are
/// proposed.
struct Judge {
    /// When this member started: it judges nobody silent before watching for DOWN_AFTER.
    /// Every member pings every other, so a new leader has the history already.
    started: Instant,
    down_out: Duration,
    /// When this member first saw each member down.
    down_since: HashMap<String, Instant>,
    /// When this member last saw each member down: one that came back (its own `MemberUp`
    /// after a restart) is judged silent only by the pings sent since, not by the silence
    /// of the process that died.
    last_seen_down: HashMap<String, Instant>,
}

impl Judge {
    fn new(started: Instant, down_out: Duration) -> Self {
        Judge {
            started,
            down_out,
            down_since: HashMap::new(),
            last_seen_down: HashMap::new(),
        }
    }

    /// The command `m`'s state calls for, if any, at `now`; `heard`: its last answered ping.
    fn verdict(
        &mut self,
        m: &control::Member,
        me: u64,
        state: &control::ClusterState,
        heard: Option<Instant>,
        now: Instant,
    ) -> Option<Command> {
        // The leader judges others' liveness, and finishes its own removal too.
        if m.node_id == me && !m.removing {
            return None;
        }
        // Only members seen down have entries: one that is up has been down since now.
        let since = if m.down {
            self.last_seen_down.insert(m.name.clone(), now);
            *self.down_since.entry(m.name.clone()).or_insert(now)
        } else {
            self.down_since.remove(&m.name);
            now
        };
        let watching = self
            .last_seen_down
            .get(&m.name)
            .map_or(self.started, |t| (*t).max(self.started));
        let silent = now.saturating_duration_since(heard.map_or(watching, |t| t.max(watching)));
        let back = heard.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1));
        let name = m.name.clone();
        if m.removing && !state.holds_copies(m.node_id) {
            Some(Command::ForgetMember { name })
        } else if m.node_id == me {
            None
        } else if !m.down && silent > DOWN_AFTER {
            Some(Command::MemberDown { name })
        } else if m.down && back {
            Some(Command::MemberUp {
                name,
                restarted: false,
            })
        } else if m.down && !m.out && now.saturating_duration_since(since) > self.down_out {
            Some(Command::MemberOut { name })
        } else {
            None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(down: bool) -> control::Member {
        control::Member {
            name: "m2".into(),
            node_id: 2,
            api_addr: String::new(),
            portal: String::new(),
            capacity: 1 << 30,
            peer: "127.0.0.1:1".into(),
            down,
            out: false,
            removing: false,
            copy_id: "store-2".into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_silent_member_goes_down_and_comes_back_up_when_it_answers() {
        let t0 = Instant::now();
        let state = control::ClusterState::default();
        let mut judge = Judge::new(t0, Duration::from_secs(300));
        let heard = Some(t0 + ms(1000));
        assert!(judge
            .verdict(&member(false), 1, &state, heard, t0 + ms(2000))
            .is_none());
        assert!(matches!(
            judge.verdict(&member(false), 1, &state, heard, t0 + ms(3600)),
            Some(Command::MemberDown { .. })
        ));
        let answered = Some(t0 + ms(9000));
        assert!(matches!(
            judge.verdict(&member(true), 1, &state, answered, t0 + ms(9200)),
            Some(Command::MemberUp {
                restarted: false,
                ..
            })
        ));
    }

    #[test]
    fn a_member_that_restarted_is_judged_by_the_pings_since_it_came_back() {
        let t0 = Instant::now();
        let state = control::ClusterState::default();
        let mut judge = Judge::new(t0, Duration::from_secs(300));
        // Last answer 10 s ago, from the process that died.
        let old = Some(t0 + ms(1000));
        let down_at = t0 + ms(11_000);
        assert!(judge
            .verdict(&member(true), 1, &state, old, down_at)
            .is_none());
        // It restarted and recorded its own `MemberUp`; its peer listener is not up yet.
        assert!(
            judge
                .verdict(&member(false), 1, &state, old, down_at + ms(250))
                .is_none(),
            "marked down again by the silence of the process that died"
        );
        // Still silent after DOWN_AFTER since it came back: down.
        assert!(matches!(
            judge.verdict(&member(false), 1, &state, old, down_at + ms(2800)),
            Some(Command::MemberDown { .. })
        ));
    }

    #[test]
    fn a_member_down_past_the_wait_goes_out() {
        let t0 = Instant::now();
        let state = control::ClusterState::default();
        let mut judge = Judge::new(t0, Duration::from_secs(5));
        assert!(judge.verdict(&member(true), 1, &state, None, t0).is_none());
        assert!(judge
            .verdict(&member(true), 1, &state, None, t0 + ms(4000))
            .is_none());
        assert!(matches!(
            judge.verdict(&member(true), 1, &state, None, t0 + ms(5100)),
            Some(Command::MemberOut { .. })
        ));
    }

    #[test]
    fn the_leader_judges_only_its_own_removal() {
        let t0 = Instant::now();
        let state = control::ClusterState::default();
        let mut judge = Judge::new(t0, Duration::from_secs(5));
        let mut me = member(false);
        me.node_id = 1;
        assert!(judge.verdict(&me, 1, &state, None, t0 + ms(9000)).is_none());
        me.removing = true;
        assert!(matches!(
            judge.verdict(&me, 1, &state, None, t0 + ms(9000)),
            Some(Command::ForgetMember { .. })
        ));
    }
}
