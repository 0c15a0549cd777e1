//! haven's control plane: one Raft-replicated state machine (openraft) holding members,
//! volumes and everything else the group agrees on.
//!
//! A member opens a [`ControlPlane`] on its data dir, serves [`ControlPlane::router`] on its
//! API port (peers reach its Raft RPCs there), and either bootstraps a new group
//! ([`ControlPlane::bootstrap_single`]) or is added to an existing one by its leader
//! ([`ControlPlane::add_voter`]). Every change goes through [`ControlPlane::write`]; the applied
//! state is read with [`ControlPlane::state`] or followed with [`ControlPlane::subscribe`].

pub mod compute;
pub mod error;
pub mod group;
pub mod log_store;
pub mod network;
pub mod reservations;
pub mod server;
pub mod state;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

pub use compute::{
    ComputeCommand, Host, Migration, MigrationResult, MigrationState, Vm, VmBoot,
    DEFAULT_MIGRATION_LIMIT,
};
pub use error::{ControlError, ErrorKind};
pub use group::{Layout, PgTable, CHUNK_BYTES, PG_COUNT};
pub use state::{
    Chap, ClusterState, Command, Member, Outcome, ParentRef, RefusalKind, Reservations,
    ReservePolicy, Snapshot, Volume,
};

use log_store::LogStore;
use network::{http_client, post_json, HttpClient, NetworkFactory, PostError};
use server::{AddLearnerRequest, ChangeMembershipRequest, ReadIndexResult, WriteResult};
use state_machine::StateMachineStore;
use types::{Node, NodeId, Raft, TypeConfig};

/// Interval between the leader's heartbeats.
pub const HEARTBEAT_MS: u64 = 250;
/// Election timeout range (random in it). Openraft makes a follower that knew a leader wait
/// its lease (the maximum) plus an election timeout before campaigning, so a dead leader is
/// replaced after about 1.6–2.8 s (+ one tick of 375 ms), well within 5 s.
pub const ELECTION_TIMEOUT_MS: (u64, u64) = (800, 1400);
/// How long [`ControlPlane::write`] and the other leader-routed calls wait for a leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time one attempt of a leader-routed call gets, even past its deadline.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);
/// A snapshot is built every this many applied log entries; older logs are then purged.
pub const SNAPSHOT_EVERY_LOGS: u64 = 1000;

/// How a control plane is opened.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This member's Raft node id; unique in the group and stable across restarts.
    pub node_id: u64,
    /// Directory of `raft.redb` and `snapshot.json`; created if missing.
    pub data_dir: PathBuf,
    /// The `host:port` peers reach this member's API (and the raft routes) at.
    pub api_addr: String,
}

/// A node of the Raft group, as its membership knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: u64,
    /// The node's API `host:port`.
    pub addr: String,
    /// Whether it votes (otherwise it is a learner).
    pub voter: bool,
}

/// The handle of a running control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    api_addr: String,
    raft: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    /// Unpooled: for forwarding to the leader (see [`network::http_client`]).
    client: HttpClient,
    shut_down: AtomicBool,
}

/// An operation only the leader may execute; followers forward it.
enum LeaderOp {
    Write(Command),
    AddLearner(AddLearnerRequest),
    ChangeMembership(ChangeMembershipRequest),
}

impl LeaderOp {
    fn path(&self) -> &'static str {
        match self {
            LeaderOp::Write(_) => server::PATH_WRITE,
            LeaderOp::AddLearner(_) => server::PATH_ADD_LEARNER,
            LeaderOp::ChangeMembership(_) => server::PATH_CHANGE_MEMBERSHIP,
        }
    }

    async fn local(&self, raft: &Raft) -> WriteResult {
        match self {
            LeaderOp::Write(cmd) => raft.client_write(cmd.clone()).await,
            LeaderOp::AddLearner(r) => {
                raft.add_learner(r.node_id, Node::new(r.addr.clone()), true)
                    .await
            }
            LeaderOp::ChangeMembership(r) => {
                raft.change_membership(r.changes.clone(), r.retain).await
            }
        }
    }

    async fn remote(
        &self,
        client: &HttpClient,
        addr: &str,
        timeout: Duration,
    ) -> Result<WriteResult, PostError> {
        match self {
            LeaderOp::Write(cmd) => post_json(client, addr, self.path(), cmd, timeout).await,
            LeaderOp::AddLearner(r) => post_json(client, addr, self.path(), r, timeout).await,
            LeaderOp::ChangeMembership(r) => post_json(client, addr, self.path(), r, timeout).await,
        }
    }
}

fn raft_config() -> Result<Config, ControlError> {
    Config {
        cluster_name: "haven".into(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MS.0,
        election_timeout_max: ELECTION_TIMEOUT_MS.1,
        install_snapshot_timeout: 5000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_LOGS),
        max_in_snapshot_log_to_keep: 100,
        snapshot_max_chunk_size: 1 << 20,
        ..Default::default()
    }
    .validate()
    .map_err(|e| ControlError::with_source(ErrorKind::Config, "validating the raft config", e))
}

fn fatal(context: &str, e: Fatal<NodeId>) -> ControlError {
    let kind = match e {
        Fatal::StorageError(_) => ErrorKind::Storage,
        _ => ErrorKind::Shutdown,
    };
    ControlError::with_source(kind, context, e)
}

impl ControlPlane {
    /// Open the control plane of `cfg.data_dir` and start its Raft node. A fresh dir gives an
    /// uninitialized node: bootstrap it, or have a leader add it.
    pub async fn open(cfg: ControlConfig) -> Result<Self, ControlError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            ControlError::with_source(
                ErrorKind::Storage,
                format!("creating the data dir {}", cfg.data_dir.display()),
                e,
            )
        })?;
        let log = LogStore::open(&cfg.data_dir).await?;
        let (sm, state) = StateMachineStore::open(&cfg.data_dir)?;
        let network = NetworkFactory::new(cfg.node_id, http_client(true));
        let raft = Raft::new(cfg.node_id, Arc::new(raft_config()?), network, log, sm)
            .await
            .map_err(|e| fatal("starting raft", e))?;
        tracing::info!(node_id = cfg.node_id, api_addr = %cfg.api_addr, "control plane opened");
        Ok(Self {
            inner: Arc::new(Inner {
                id: cfg.node_id,
                api_addr: cfg.api_addr,
                raft,
                state,
                client: http_client(false),
                shut_down: AtomicBool::new(false),
            }),
        })
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.inner.id
    }

    /// Initialize a fresh single-voter group of this node if it has never been initialized
    /// (then wait until it leads); a no-op on restart or once it belongs to a group.
    pub async fn bootstrap_single(&self) -> Result<(), ControlError> {
        self.check_running()?;
        let raft = self.raft();
        if raft
            .is_initialized()
            .await
            .map_err(|e| fatal("bootstrapping", e))?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(self.inner.id, Node::new(self.inner.api_addr.clone()))]);
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(RaftError::APIError(e)) => {
                return Err(ControlError::with_source(
                    ErrorKind::Refused,
                    "bootstrapping",
                    e,
                ))
            }
            Err(RaftError::Fatal(e)) => return Err(fatal("bootstrapping", e)),
        }
        let id = self.inner.id;
        raft.wait(Some(LEADER_TIMEOUT))
            .metrics(|m| m.current_leader.is_some(), "a leader after bootstrap")
            .await
            .map_err(|e| {
                ControlError::with_source(
                    ErrorKind::NoLeader,
                    format!("bootstrapping node {id}"),
                    e,
                )
            })?;
        Ok(())
    }

    /// Propose a command and return its outcome once applied. On a follower the command is
    /// forwarded to the leader (`POST /raft/write`). Waits up to [`LEADER_TIMEOUT`] for a
    /// leader, retrying across leader changes while the command certainly was not delivered.
    pub async fn write(&self, cmd: Command) -> Result<Outcome, ControlError> {
        Ok(self
            .on_leader(LeaderOp::Write(cmd), "writing a command")
            .await?
            .data)
    }

    /// Add `node_id` (reachable at `addr`) as a learner and wait until it caught up.
    pub async fn add_learner(
        &self,
        node_id: u64,
        addr: impl Into<String>,
    ) -> Result<(), ControlError> {
        let req = AddLearnerRequest {
            node_id,
            addr: addr.into(),
        };
        self.on_leader(
            LeaderOp::AddLearner(req),
            &format!("adding learner {node_id}"),
        )
        .await?;
        Ok(())
    }

    /// Add `node_id` (reachable at `addr`) as a voter: first as a learner that catches up, then
    /// promoted. Idempotent.
    pub async fn add_voter(
        &self,
        node_id: u64,
        addr: impl Into<String>,
    ) -> Result<(), ControlError> {
        self.add_learner(node_id, addr).await?;
        self.change_membership(
            ChangeMembers::AddVoterIds(BTreeSet::from([node_id])),
            false,
            node_id,
        )
        .await
    }

    /// Remove `node_id` from the group (as voter and learner).
    pub async fn remove_node(&self, node_id: u64) -> Result<(), ControlError> {
        let is_voter = self
            .membership()
            .iter()
            .any(|n| n.node_id == node_id && n.voter);
        if is_voter {
            self.change_membership(
                ChangeMembers::RemoveVoters(BTreeSet::from([node_id])),
                false,
                node_id,
            )
            .await
        } else {
            self.change_membership(
                ChangeMembers::RemoveNodes(BTreeSet::from([node_id])),
                false,
                node_id,
            )
            .await
        }
    }

    /// Change the address the group reaches `node_id` at (its API moved).
    pub async fn set_node_addr(
        &self,
        node_id: u64,
        addr: impl Into<String>,
    ) -> Result<(), ControlError> {
        let nodes = BTreeMap::from([(node_id, Node::new(addr.into()))]);
        self.change_membership(ChangeMembers::SetNodes(nodes), true, node_id)
            .await
    }

    async fn change_membership(
        &self,
        changes: ChangeMembers<NodeId, Node>,
        retain: bool,
        node_id: u64,
    ) -> Result<(), ControlError> {
        let req = ChangeMembershipRequest { changes, retain };
        self.on_leader(
            LeaderOp::ChangeMembership(req),
            &format!("changing the membership of node {node_id}"),
        )
        .await?;
        Ok(())
    }

    /// Run `op` on the leader: locally if this node leads, else forwarded over HTTP.
    async fn on_leader(
        &self,
        op: LeaderOp,
        what: &str,
    ) -> Result<ClientWriteResponse<TypeConfig>, ControlError> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let mut last: Option<ControlError> = None;
        loop {
            self.check_running()?;
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_ATTEMPT);
            let local = match tokio::time::timeout(remaining, op.local(self.raft())).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(ControlError::new(
                        ErrorKind::Indeterminate,
                        format!("{what}: no result before the deadline"),
                    ))
                }
            };
            let leader = match local {
                Ok(resp) => return Ok(resp),
                Err(RaftError::Fatal(e)) => return Err(fatal(what, e)),
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(ControlError::with_source(ErrorKind::Refused, what, e))
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    f.leader_id.zip(f.leader_node)
                }
            };
            if let Some((leader_id, node)) = leader.filter(|(id, _)| *id != self.inner.id) {
                match op.remote(&self.inner.client, &node.addr, remaining).await {
                    Ok(Ok(resp)) => return Ok(resp),
                    Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                        return Err(ControlError::with_source(ErrorKind::Refused, what, e))
                    }
                    // The peer is not (or no longer) the leader, or is stopping: it did not
                    // execute the operation.
                    Ok(Err(e)) => {
                        last = Some(ControlError::with_source(
                            ErrorKind::NoLeader,
                            format!("forwarding to node {leader_id} at {}", node.addr),
                            e,
                        ))
                    }
                    Err(e @ PostError::Status { .. }) if e.rejected() => {
                        return Err(ControlError::with_source(
                            ErrorKind::Network,
                            format!("{what}: forwarding to node {leader_id} at {}", node.addr),
                            e,
                        ))
                    }
                    Err(e) if e.not_delivered() => {
                        last = Some(ControlError::with_source(
                            ErrorKind::Network,
                            format!("forwarding to node {leader_id}"),
                            e,
                        ))
                    }
                    Err(e) => {
                        return Err(ControlError::with_source(
                            ErrorKind::Indeterminate,
                            format!(
                                "{what}: forwarded to the leader {leader_id} at {}",
                                node.addr
                            ),
                            e,
                        ))
                    }
                }
            }
            if Instant::now() >= deadline {
                let context = format!("{what}: no leader within {LEADER_TIMEOUT:?}");
                return Err(match last {
                    Some(e) => ControlError::with_source(ErrorKind::NoLeader, context, e),
                    None => ControlError::new(ErrorKind::NoLeader, context),
                });
            }
            self.pause(deadline).await;
        }
    }

    /// Wait a little (or until the Raft metrics change) before retrying.
    async fn pause(&self, deadline: Instant) {
        let mut metrics = self.raft().metrics();
        metrics.borrow_and_update();
        let now = Instant::now();
        tokio::time::sleep_until(std::cmp::min(deadline, now + Duration::from_millis(50))).await;
        if metrics.borrow().current_leader.is_none() {
            // Electing: wait for news (or a little longer).
            let until = std::cmp::min(deadline, now + Duration::from_millis(250));
            let _ = tokio::time::timeout_at(until, metrics.changed()).await;
        }
    }

    fn check_running(&self) -> Result<(), ControlError> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Err(ControlError::new(
                ErrorKind::Shutdown,
                "the control plane is shut down",
            ));
        }
        Ok(())
    }

    /// The latest applied state (cheap, shared).
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.state.borrow().clone()
    }

    /// A receiver of every newly applied state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.state.clone()
    }

    /// Whether this node currently leads the group.
    pub fn is_leader(&self) -> bool {
        let m = self.raft().metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// The current leader as this node knows it: its id and API `host:port`.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft().metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The nodes of the current membership.
    pub fn membership(&self) -> Vec<NodeInfo> {
        let m = self.raft().metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| NodeInfo {
                node_id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// Openraft's metrics of this node (state, term, leader, log indexes, replication).
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, Node>> {
        self.raft().metrics()
    }

    /// Linearizable read barrier: once it returns, [`Self::state`] reflects every write
    /// committed before the call. On a follower, asks the leader for its commit point
    /// (`POST /raft/read-index`) and waits to apply up to it.
    pub async fn read_barrier(&self) -> Result<(), ControlError> {
        let what = "read barrier";
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let mut last: Option<ControlError> = None;
        loop {
            self.check_running()?;
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_ATTEMPT);
            let local = tokio::time::timeout(remaining, self.raft().ensure_linearizable()).await;
            let leader = match local {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(RaftError::Fatal(e))) => return Err(fatal(what, e)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    f.leader_id.zip(f.leader_node)
                }
                Ok(Err(RaftError::APIError(e @ CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    last = Some(ControlError::with_source(ErrorKind::NoLeader, what, e));
                    None
                }
                Err(_) => None,
            };
            if let Some((leader_id, node)) = leader.filter(|(id, _)| *id != self.inner.id) {
                let res: Result<ReadIndexResult, PostError> = post_json(
                    &self.inner.client,
                    &node.addr,
                    server::PATH_READ_INDEX,
                    &(),
                    remaining,
                )
                .await;
                match res {
                    Ok(Ok(read_log_id)) => {
                        let index = read_log_id.map(|l| l.index);
                        return self
                            .raft()
                            .wait(Some(deadline.saturating_duration_since(Instant::now())))
                            .applied_index_at_least(index, what)
                            .await
                            .map(|_| ())
                            .map_err(|e| ControlError::with_source(ErrorKind::NoLeader, what, e));
                    }
                    Ok(Err(e)) => {
                        last = Some(ControlError::with_source(
                            ErrorKind::NoLeader,
                            format!("read index from node {leader_id}"),
                            e,
                        ))
                    }
                    Err(e) => {
                        last = Some(ControlError::with_source(
                            ErrorKind::Network,
                            format!("read index from node {leader_id}"),
                            e,
                        ))
                    }
                }
            }
            if Instant::now() >= deadline {
                let context = format!("{what}: no leader within {LEADER_TIMEOUT:?}");
                return Err(match last {
                    Some(e) => ControlError::with_source(ErrorKind::NoLeader, context, e),
                    None => ControlError::new(ErrorKind::NoLeader, context),
                });
            }
            self.pause(deadline).await;
        }
    }

    /// Build a snapshot of the applied state now (persisted to `snapshot.json`) and wait for
    /// it. Snapshots are otherwise built every [`SNAPSHOT_EVERY_LOGS`] entries.
    pub async fn snapshot_now(&self) -> Result<(), ControlError> {
        self.check_running()?;
        let applied = self.raft().metrics().borrow().last_applied;
        self.raft()
            .trigger()
            .snapshot()
            .await
            .map_err(|e| fatal("triggering a snapshot", e))?;
        self.raft()
            .wait(Some(LEADER_TIMEOUT))
            .metrics(|m| m.snapshot >= applied, "a snapshot")
            .await
            .map_err(|e| {
                ControlError::with_source(ErrorKind::Storage, "waiting for a snapshot", e)
            })?;
        Ok(())
    }

    /// The raft routes (`/raft/...`) of this node, to merge into the member's API router,
    /// served on the port of `api_addr`:
    ///
    /// ```ignore
    /// let app = api_routes.with_state(api_state).merge(control.router());
    /// axum::serve(listener, app).await?;
    /// ```
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    /// Stop the Raft node; later calls fail with [`ErrorKind::Shutdown`]. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::Release);
        if let Err(e) = self.raft().shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}
