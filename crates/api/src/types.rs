//! Request and response bodies.

use serde::{Deserialize, Serialize};

/// The error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// `not_found`, `already_exists`, `invalid`, `conflict`, `unavailable`, `internal`.
    pub kind: String,
}

/// CHAP settings as an operator gives them.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ChapSpec {
    pub user: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_secret: Option<String>,
}

impl std::fmt::Debug for ChapSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSpec")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateVolume {
    pub name: String,
    pub size: u64,
    #[serde(default)]
    pub replicas: Option<u8>,
    #[serde(default)]
    pub thick: bool,
    #[serde(default)]
    pub block_size: Option<u32>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub chap: Option<ChapSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resize {
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAcl {
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetChap {
    pub chap: Option<ChapSpec>,
}

/// An iSCSI session as a member sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    pub initiator: String,
    pub isid: String,
    pub member: String,
    pub portal: String,
    /// The target (volume IQN) the session is logged in to; set where sessions of
    /// several targets are listed together.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
}

/// A volume as the API shows it (never with CHAP secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub iqn: String,
    pub size: u64,
    pub block_size: u32,
    pub replicas: u8,
    pub thick: bool,
    pub allow: Vec<String>,
    pub chap_user: Option<String>,
    pub mutual_chap: bool,
    pub created: u64,
    #[serde(default)]
    pub sessions: Vec<SessionView>,
    /// Space on the member that answered (absent when it does not hold the volume).
    #[serde(default)]
    pub space: Option<SpaceView>,
    /// The clone's origin, `VOLUME@SNAPSHOT` ids.
    #[serde(default)]
    pub parent: Option<String>,
    /// Snapshot reserve in percent of the size.
    #[serde(default)]
    pub snapshot_reserve_pct: u32,
    #[serde(default)]
    pub reserve_policy: control::ReservePolicy,
    /// The state of the volume's copies across the group's members.
    #[serde(default)]
    pub replication: Option<ReplicationView>,
    /// A clone in a group while its snapshot is copied into it: the copy so far
    /// (`copied` of `size` bytes). It is served once whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copying: Option<CopyView>,
}

/// How far a clone's copy from its snapshot is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyView {
    /// `VOLUME@SNAPSHOT` ids of the source.
    pub from: String,
    /// Bytes from the start copied (and flushed on every copy).
    pub copied: u64,
}

/// The placement groups a volume's chunks use (those of its replica class), as the
/// answering member sees them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicationView {
    /// Placement groups the volume has chunks in.
    pub placement_groups: usize,
    /// Groups with fewer complete copies on up members than the volume's replicas.
    pub degraded: usize,
    /// Copies being filled or resynced.
    pub filling: usize,
    /// Groups with no complete copy on an up member: their I/O waits.
    pub unavailable: usize,
}

impl VolumeView {
    pub fn from_volume(v: &control::Volume, sessions: Vec<SessionView>) -> Self {
        VolumeView {
            name: v.name.clone(),
            iqn: v.iqn(),
            size: v.size,
            block_size: v.block_size,
            replicas: v.replicas,
            thick: v.thick,
            allow: v.allow.clone(),
            chap_user: v.chap.as_ref().map(|c| c.user.clone()),
            mutual_chap: v.chap.as_ref().is_some_and(|c| c.mutual_user.is_some()),
            created: v.created,
            sessions,
            space: None,
            parent: v
                .parent
                .map(|p| format!("{}@{}", p.volume_id, p.snapshot_id)),
            snapshot_reserve_pct: v.snapshot_reserve_pct,
            reserve_policy: v.reserve_policy,
            replication: None,
            copying: v.copy_from.map(|c| CopyView {
                from: format!("{}@{}", c.volume_id, c.snapshot_id),
                copied: c.done,
            }),
        }
    }
}

/// The group's data layout as one member sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    /// The member that answered.
    pub member: String,
    /// The layout epoch this member is at.
    pub epoch: u64,
    /// Placement groups over all replica classes.
    pub placement_groups: usize,
    /// Groups with fewer complete copies than planned.
    pub degraded: usize,
    /// Copies being filled (planned but not in sync yet).
    pub filling: usize,
    /// Groups with no reachable complete copy.
    pub unavailable: usize,
    /// Bytes this member copied to others while filling copies, since it started.
    pub resync_bytes: u64,
    /// Copies away (down, or being filled after a return) whose changes this member
    /// records, and the 4 MiB chunks written meanwhile: what their resync will move.
    #[serde(default)]
    pub tracked_copies: usize,
    #[serde(default)]
    pub tracked_chunks: usize,
    /// Writes this member sent to other members since it started (forwarded to a
    /// placement group's primary, or a primary's copies for its replicas), and the frames
    /// that carried them: writes bound for the same member travel together.
    #[serde(default)]
    pub peer_writes: u64,
    #[serde(default)]
    pub peer_write_frames: u64,
}

/// A member's load, for login redirection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct LoadView {
    /// iSCSI sessions logged in at this member's portal.
    pub sessions: usize,
    /// Bytes of the member's pool in use.
    #[serde(default)]
    pub in_use: u64,
}

/// A new member asks a member of the group to add it to the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub node_id: u64,
    /// Where the group reaches the new member's API (and Raft).
    pub api_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub node_id: u64,
    pub api: String,
    pub portal: String,
    pub capacity: u64,
    /// `online`; `down` once the group marked it unreachable (it keeps its placement groups);
    /// `out` once they moved elsewhere; `removing` while its data moves away.
    pub state: String,
    pub leader: bool,
    /// Bytes of its pool in use, as last reported (none yet for a member not heard from).
    #[serde(default)]
    pub in_use: Option<u64>,
    /// Placement groups it holds or is being given a copy of.
    #[serde(default)]
    pub copies: usize,
    /// The member's pool (only for the member that answered).
    #[serde(default)]
    pub pool: Option<PoolView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The member that answered.
    pub member: String,
    pub leader: Option<String>,
    pub group_portal: Option<String>,
    pub members: Vec<MemberView>,
    pub volumes: usize,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotView {
    pub name: String,
    pub volume: String,
    /// The IQN of the snapshot's read-only target.
    pub iqn: String,
    pub size: u64,
    pub created: u64,
    /// The snapshots of the other volumes taken in the same cut (`CreateSnapshot::with`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<SnapshotView>,
}

impl SnapshotView {
    pub fn from_snapshot(s: &control::Snapshot) -> Self {
        SnapshotView {
            name: s.name.clone(),
            volume: s.volume.clone(),
            iqn: s.iqn(),
            size: s.size,
            created: s.created,
            with: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSnapshot {
    pub name: String,
    /// More volumes to snapshot in the same cut, under the same name (all disks of a VM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restore {
    pub snapshot: String,
    /// Restore even while initiators are logged in (they see the data change under them).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneVolume {
    pub snapshot: String,
    pub name: String,
}

/// A volume's space on the member that answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpaceView {
    pub provisioned: u64,
    pub in_use: u64,
    pub snapshot_reserve: u64,
    pub snapshot_in_use: u64,
    /// Snapshot use reached 60 % of the reserve.
    pub reserve_warning: bool,
    pub offline: bool,
}

/// What a scrub of a volume found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScrubView {
    pub volume: String,
    pub blocks_checked: u64,
    /// LBAs whose checksum failed.
    pub bad: Vec<u64>,
    pub repaired: u64,
}

/// The CRC32C of every chunk of a volume that one member holds a complete copy of, read
/// from its own store (not through the group): comparing members' answers for a quiet
/// volume shows whether any copy diverged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyDigests {
    pub member: String,
    pub volume: String,
    pub chunk_bytes: u64,
    pub chunks: Vec<ChunkDigest>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkDigest {
    /// Chunk index within the volume.
    pub chunk: u64,
    pub pg: u32,
    pub crc32c: u32,
    /// This member is the chunk's primary.
    #[serde(default)]
    pub primary: bool,
}

/// A member's pool as its store sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolView {
    pub capacity: u64,
    pub provisioned: u64,
    pub in_use: u64,
    pub free: u64,
    pub snapshot_in_use: u64,
    /// In use reached 90 % of capacity.
    pub warning: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetSnapshotReserve {
    /// Percent of the volume's size (10 to 1000; the default is 100).
    pub percent: u32,
    /// `delete-oldest` (default) or `offline`.
    #[serde(default)]
    pub policy: control::ReservePolicy,
}

/// A background flatten of a clone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FlattenView {
    pub volume: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub done: u64,
    pub total: u64,
    #[serde(default)]
    pub error: Option<String>,
}
