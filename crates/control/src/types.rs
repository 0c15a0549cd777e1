//! The openraft type configuration of haven's control plane.

use std::io::Cursor;

use crate::state::{Command, Outcome};

openraft::declare_raft_types!(
    /// Raft types: log payloads are [`Command`]s, apply results are [`Outcome`]s, nodes are
    /// addressed by the member's HTTP API `host:port`.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Identifier of a Raft node (the member's `node_id`).
pub type NodeId = u64;
/// A Raft node as stored in the membership: `addr` is the member's HTTP API `host:port`.
pub type Node = openraft::BasicNode;
/// The Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// A vote.
pub type Vote = openraft::Vote<NodeId>;
/// Openraft's storage error.
pub type StorageError = openraft::StorageError<NodeId>;
/// The stored membership (with the log id it was introduced at).
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
