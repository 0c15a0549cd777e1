//! The HTTP endpoints of the control plane, to be served on the member's API port.
//!
//! Peer RPCs: `POST /raft/append`, `/raft/vote`, `/raft/snapshot`.
//! Leader-only operations, forwarded here by followers: `POST /raft/write` (a [`Command`]),
//! `/raft/add-learner`, `/raft/change-membership`, `/raft/read-index`. They are executed
//! locally only; a non-leader answers with openraft's `ForwardToLeader` error so the caller can
//! retry at the leader it names. Every answer is the JSON of openraft's `Result`.

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{CheckIsLeaderError, ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, ClientWriteResponse, InstallSnapshotRequest,
    InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::network::{PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use crate::state::Command;
use crate::types::{LogId, Node, NodeId, TypeConfig};
use crate::ControlPlane;

/// Path of a forwarded client write.
pub const PATH_WRITE: &str = "/raft/write";
/// Path of a forwarded add-learner.
pub const PATH_ADD_LEARNER: &str = "/raft/add-learner";
/// Path of a forwarded membership change.
pub const PATH_CHANGE_MEMBERSHIP: &str = "/raft/change-membership";
/// Path of a read-index request (the leader's commit point for a linearizable follower read).
pub const PATH_READ_INDEX: &str = "/raft/read-index";

/// Largest accepted request body: AppendEntries batches and snapshot chunks are JSON.
const BODY_LIMIT: usize = 64 << 20;

/// The answer to a leader-only write-like operation.
pub(crate) type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, Node>>>;
/// The answer to a read-index request.
pub(crate) type ReadIndexResult =
    Result<Option<LogId>, RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>>;

/// Body of `POST /raft/add-learner`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    pub node_id: NodeId,
    /// The new node's API `host:port`.
    pub addr: String,
}

/// Body of `POST /raft/change-membership`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeMembershipRequest {
    pub changes: ChangeMembers<NodeId, Node>,
    /// Keep removed voters as learners.
    pub retain: bool,
}

/// The raft routes of `cp`, as a stateless router to merge into the member's API router.
pub fn router(cp: ControlPlane) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .route(PATH_WRITE, post(write))
        .route(PATH_ADD_LEARNER, post(add_learner))
        .route(PATH_CHANGE_MEMBERSHIP, post(change_membership))
        .route(PATH_READ_INDEX, post(read_index))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(cp)
}

async fn append(
    State(cp): State<ControlPlane>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(cp.raft().append_entries(req).await)
}

async fn vote(
    State(cp): State<ControlPlane>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(cp.raft().vote(req).await)
}

async fn snapshot(
    State(cp): State<ControlPlane>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(cp.raft().install_snapshot(req).await)
}

async fn write(State(cp): State<ControlPlane>, Json(cmd): Json<Command>) -> Json<WriteResult> {
    Json(cp.raft().client_write(cmd).await)
}

async fn add_learner(
    State(cp): State<ControlPlane>,
    Json(req): Json<AddLearnerRequest>,
) -> Json<WriteResult> {
    Json(
        cp.raft()
            .add_learner(req.node_id, Node::new(req.addr), true)
            .await,
    )
}

async fn change_membership(
    State(cp): State<ControlPlane>,
    Json(req): Json<ChangeMembershipRequest>,
) -> Json<WriteResult> {
    Json(cp.raft().change_membership(req.changes, req.retain).await)
}

async fn read_index(State(cp): State<ControlPlane>) -> Json<ReadIndexResult> {
    Json(
        cp.raft()
            .get_read_log_id()
            .await
            .map(|(read, _applied)| read),
    )
}
