//! The replicated cluster state and the commands that change it.
//!
//! `apply` is deterministic: every node applies the same committed commands in the same
//! order and reaches the same state. Validation that depends on state (a name already
//! taken) happens here, so a rejected command is rejected identically everywhere.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The IQN prefix of every haven target.
pub const IQN_PREFIX: &str = "iqn.2026-11.org.haven";

/// A storage member as the group knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub node_id: u64,
    /// host:port of the member's REST API (also carries Raft RPCs).
    pub api_addr: String,
    /// host:port of the member's iSCSI portal.
    pub portal: String,
    /// Bytes this member offers to the pool.
    pub capacity: u64,
    /// host:port of the member's peer listener (member-to-member data path).
    #[serde(default)]
    pub peer: String,
    /// Marked unreachable by the group: its copies are out of the in-sync sets, but it keeps
    /// its place in the map, so a return resyncs only what changed meanwhile.
    #[serde(default)]
    pub down: bool,
    /// Down for longer than the group waits: its placement groups move to other members.
    #[serde(default)]
    pub out: bool,
    /// Being removed by the operator: its data moves away, then it leaves the group.
    #[serde(default)]
    pub removing: bool,
    /// Names the lineage of the member's copies (its store's identity and the machine boot
    /// it last ran under). A member whose copy id changed lost its data or may have lost
    /// unsynced writes: its copies are filled completely, never from dirty-region records.
    #[serde(default)]
    pub copy_id: String,
}

/// CHAP credentials of a target. Never logged: `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    /// Mutual CHAP: the target's own name and secret, answered to the initiator.
    #[serde(default)]
    pub mutual_user: Option<String>,
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chap")
            .field("user", &self.user)
            .field("secret", &"<hidden>")
            .field("mutual_user", &self.mutual_user)
            .finish()
    }
}

/// A volume: one SCSI logical unit behind one iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// Stable identifier; the NAA designator and the data files derive from it.
    pub id: u64,
    pub size: u64,
    pub block_size: u32,
    pub replicas: u8,
    pub thick: bool,
    /// Initiator names allowed to discover and log in; empty means everyone.
    pub allow: Vec<String>,
    pub chap: Option<Chap>,
    /// Unix seconds at creation.
    pub created: u64,
    /// A clone's origin: the snapshot its unchanged extents are shared with.
    #[serde(default)]
    pub parent: Option<ParentRef>,
    /// Bumped by every restore; members roll the volume back once per generation.
    #[serde(default)]
    pub restore_generation: u64,
    /// The snapshot the latest restore rolled back to.
    #[serde(default)]
    pub restored_from: Option<u64>,
    /// Snapshot reserve in percent of the size (10–1000; EqualLogic's default is 100).
    #[serde(default = "default_reserve_pct")]
    pub snapshot_reserve_pct: u32,
    /// What happens when snapshots outgrow the reserve.
    #[serde(default)]
    pub reserve_policy: ReservePolicy,
    /// What the volume's chunks are hashed by to placement groups: its own id, or its
    /// origin's for a clone, so a clone's chunks sit on the members holding the extents
    /// it shares. 0 means the volume's id.
    #[serde(default)]
    pub stripe_key: u64,
    /// The logical unit's persistent reservations, one state for every member's ports.
    #[serde(default)]
    pub reservations: Reservations,
    /// A clone in a group of several members is a copy of its snapshot, made by the
    /// leader; until it is whole the volume is not served.
    #[serde(default)]
    pub copy_from: Option<CopySource>,
}

/// The snapshot a clone is being copied from, and how far the copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySource {
    pub volume_id: u64,
    pub snapshot_id: u64,
    /// Bytes from the start copied and flushed on every copy: a new leader goes on from here.
    pub done: u64,
}

/// How many of a volume's latest reservation changes the state keeps, so a member that
/// skipped some (states arrive coalesced) still raises their unit attentions.
pub const RESERVATION_CHANGES_KEPT: usize = 8;

/// A volume's persistent reservations as its logical unit's engine encoded them (opaque
/// here), changed only through [`Command::SetReservations`] so every port agrees.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservations {
    /// Raised by one with every change; 0: never changed.
    pub revision: u64,
    /// The latest changes, oldest first: (revision, the engine's encoding of the change,
    /// which holds the whole state after it).
    pub changes: Vec<(u64, String)>,
}

impl Reservations {
    /// The latest change, if any.
    pub fn latest(&self) -> Option<&(u64, String)> {
        self.changes.last()
    }
}

impl Volume {
    /// The key its chunks are placed by.
    pub fn placement_key(&self) -> u64 {
        if self.stripe_key == 0 {
            self.id
        } else {
            self.stripe_key
        }
    }
}

/// The snapshot reserve a volume starts with: as large as the volume (EqualLogic's default).
pub const DEFAULT_RESERVE_PCT: u32 = 100;

fn default_reserve_pct() -> u32 {
    DEFAULT_RESERVE_PCT
}

/// EqualLogic's choices when a volume's snapshots outgrow its reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReservePolicy {
    /// Delete the oldest snapshots until the rest fit.
    #[default]
    DeleteOldest,
    /// Keep the snapshots and take the volume offline.
    Offline,
}

/// Where a clone came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub volume_id: u64,
    pub snapshot_id: u64,
}

/// A point-in-time, read-only image of a volume, served as its own iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub volume: String,
    pub volume_id: u64,
    pub id: u64,
    /// The volume's size when the snapshot was taken.
    pub size: u64,
    pub block_size: u32,
    pub created: u64,
    /// A snapshot the group took in one cut: for each placement group of the volume's
    /// replica class, the members that hold its copy of the snapshot. `None`: a single
    /// member's snapshot, which every member serving the volume takes as it applies it.
    #[serde(default)]
    pub holders: Option<Vec<Vec<u64>>>,
    /// Reserved for a group snapshot that is being taken (not served yet).
    #[serde(default)]
    pub pending: bool,
}

impl Snapshot {
    /// The IQN of the snapshot's read-only target.
    pub fn iqn(&self) -> String {
        format!("{IQN_PREFIX}:{}:snap:{}", self.volume, self.name)
    }
}

/// Snapshots a volume may keep.
pub const MAX_SNAPSHOTS_PER_VOLUME: usize = 512;

impl Volume {
    /// The iSCSI qualified name of the volume's target.
    pub fn iqn(&self) -> String {
        format!("{IQN_PREFIX}:{}", self.name)
    }
}

/// Everything the control plane knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub members: BTreeMap<String, Member>,
    pub volumes: BTreeMap<String, Volume>,
    /// Next volume id to hand out.
    pub next_volume_id: u64,
    /// Snapshots by volume name, then snapshot name.
    #[serde(default)]
    pub snapshots: BTreeMap<String, BTreeMap<String, Snapshot>>,
    /// Last snapshot id handed out.
    #[serde(default)]
    pub next_snapshot_id: u64,
    /// Hypervisor hosts by name.
    #[serde(default)]
    pub hosts: BTreeMap<String, crate::compute::Host>,
    /// VMs by name.
    #[serde(default)]
    pub vms: BTreeMap<String, crate::compute::Vm>,
    /// Migrations by id: every unfinished one and the most recent finished ones.
    #[serde(default)]
    pub migrations: BTreeMap<u64, crate::compute::Migration>,
    /// Last migration id handed out.
    #[serde(default)]
    pub next_migration_id: u64,
    /// Live migrations per host at once (outbound, inbound); `None` means the default.
    #[serde(default)]
    pub migration_limits: Option<(u32, u32)>,
    /// Placement groups, their copies and in-sync sets, and the data-path epoch.
    #[serde(default)]
    pub layout: crate::group::Layout,
}

/// A change to the cluster state. Every change goes through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Add or update a member's record (its addresses may change on restart).
    RegisterMember(Member),
    CreateVolume {
        name: String,
        size: u64,
        block_size: u32,
        replicas: u8,
        thick: bool,
        allow: Vec<String>,
        chap: Option<Chap>,
        created: u64,
    },
    DeleteVolume {
        name: String,
    },
    ResizeVolume {
        name: String,
        size: u64,
    },
    SetAcl {
        name: String,
        allow: Vec<String>,
    },
    SetChap {
        name: String,
        chap: Option<Chap>,
    },
    CreateSnapshot {
        volume: String,
        name: String,
        created: u64,
        /// A group snapshot: reserve it (id and name); its members take it in one cut and
        /// then [`Command::CompleteSnapshot`] records who holds it.
        #[serde(default)]
        in_group: bool,
    },
    /// The members of a group took a snapshot reserved with `in_group`: `holders[pg]` hold
    /// its copy of placement group `pg`.
    CompleteSnapshot {
        volume: String,
        name: String,
        holders: Vec<Vec<u64>>,
    },
    DeleteSnapshot {
        volume: String,
        name: String,
    },
    /// Roll a volume back to one of its snapshots.
    RestoreVolume {
        volume: String,
        snapshot: String,
    },
    SetSnapshotReserve {
        name: String,
        pct: u32,
        policy: ReservePolicy,
    },
    /// A clone no longer depends on its origin.
    Flattened {
        name: String,
    },
    /// A new writable volume sharing a snapshot's extents.
    CloneVolume {
        volume: String,
        snapshot: String,
        name: String,
        created: u64,
    },
    /// The copy of a clone in a group reached `done` bytes (flushed); at the volume's size
    /// the clone is whole and served.
    CloneCopied {
        name: String,
        done: u64,
    },
    /// The group lost contact with a member.
    MemberDown {
        name: String,
    },
    /// A member is reachable again (the leader heard it), or restarted (it says so itself:
    /// its copies may lack writes it had not synced, so they are filled again even if the
    /// group never noticed it was gone).
    MemberUp {
        name: String,
        #[serde(default)]
        restarted: bool,
    },
    /// A member stayed down past the group's wait: its placement groups move elsewhere.
    MemberOut {
        name: String,
    },
    /// The operator removes a member: its data moves to the others first.
    RemoveMember {
        name: String,
    },
    /// A member being removed holds no copy any more: it leaves the group's records.
    ForgetMember {
        name: String,
    },
    /// A port of volume `volume` (id) changed its persistent reservations: `change`
    /// replaces revision `base`, refused if another port changed them first.
    SetReservations {
        volume: u64,
        base: u64,
        change: String,
    },
    /// The primary of a placement group copied it to `node` under `pg_epoch`.
    PgInSync {
        replicas: u8,
        pg: u32,
        node: u64,
        pg_epoch: u64,
    },
    /// Hosts, VMs and migrations.
    Compute {
        cmd: crate::compute::ComputeCommand,
    },
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Volume(Volume),
    Snapshot(Snapshot),
    Host(crate::compute::Host),
    Vm(crate::compute::Vm),
    Migration(crate::compute::Migration),
    /// The command was valid Raft input but the state refused it.
    Refused {
        kind: RefusalKind,
        message: String,
    },
}

/// Why the state refused a command; the API maps each to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    NotFound,
    AlreadyExists,
    Invalid,
    /// Valid, but not now: try again later (a migration waiting for a slot).
    Busy,
}

pub(crate) fn refuse(kind: RefusalKind, message: impl Into<String>) -> Outcome {
    Outcome::Refused {
        kind,
        message: message.into(),
    }
}

/// Why a clone whose copy is not whole refuses a change.
fn copying(name: &str) -> String {
    format!(
        "volume {name} is a clone still being copied from its snapshot; try again once it is whole"
    )
}

/// Names of volumes, snapshots and members: what an IQN suffix allows.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl ClusterState {
    /// Apply one committed command.
    pub fn apply(&mut self, cmd: Command) -> Outcome {
        if matches!(
            cmd,
            Command::CreateSnapshot {
                in_group: false,
                ..
            } | Command::RestoreVolume { .. }
        ) && self.members.len() > 1
        {
            // A snapshot in a group is taken by its members in one cut (`in_group`);
            // restores of such snapshots are not built yet.
            return refuse(
                RefusalKind::Invalid,
                "restores are not yet supported in a group of several members",
            );
        }
        match cmd {
            Command::Compute { cmd } => self.apply_compute(cmd),
            Command::RegisterMember(m) => {
                if self
                    .members
                    .values()
                    .any(|o| o.node_id == m.node_id && o.name != m.name)
                {
                    return refuse(
                        RefusalKind::AlreadyExists,
                        format!("node id {} belongs to another member", m.node_id),
                    );
                }
                self.apply_register_member(m)
            }
            Command::MemberDown { name } => self.apply_member_down(&name),
            Command::MemberUp { name, restarted } => self.apply_member_up(&name, restarted),
            Command::MemberOut { name } => self.apply_member_out(&name),
            Command::RemoveMember { name } => self.apply_remove_member(&name),
            Command::ForgetMember { name } => self.apply_forget_member(&name),
            Command::PgInSync {
                replicas,
                pg,
                node,
                pg_epoch,
            } => self.apply_pg_in_sync(replicas, pg, node, pg_epoch),
            Command::SetReservations {
                volume,
                base,
                change,
            } => self.apply_set_reservations(volume, base, change),
            Command::CreateVolume {
                name,
                size,
                block_size,
                replicas,
                thick,
                allow,
                chap,
                created,
            } => {
                if !valid_name(&name) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "invalid volume name {name:?}: use a-z, 0-9, '-', '.' (at most 64)"
                        ),
                    );
                }
                if self.volumes.contains_key(&name) {
                    return refuse(
                        RefusalKind::AlreadyExists,
                        format!("volume {name} already exists"),
                    );
                }
                if block_size != 512 && block_size != 4096 {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("block size {block_size} is not 512 or 4096"),
                    );
                }
                if size == 0 || size % block_size as u64 != 0 {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "size {size} is not a positive multiple of the block size {block_size}"
                        ),
                    );
                }
                if !(1..=3).contains(&replicas) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("replicas {replicas} is not 1, 2 or 3"),
                    );
                }
                let members = self.placeable_members().count();
                if usize::from(replicas) > members.max(1) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "{replicas} replicas need {replicas} members; the group has {members}"
                        ),
                    );
                }
                self.next_volume_id += 1;
                let vol = Volume {
                    reservations: Reservations::default(),
                    name: name.clone(),
                    id: self.next_volume_id,
                    size,
                    block_size,
                    replicas,
                    thick,
                    allow,
                    chap,
                    created,
                    parent: None,
                    restore_generation: 0,
                    restored_from: None,
                    snapshot_reserve_pct: DEFAULT_RESERVE_PCT,
                    reserve_policy: ReservePolicy::default(),
                    stripe_key: 0,
                    copy_from: None,
                };
                self.volumes.insert(name, vol.clone());
                self.relayout();
                Outcome::Volume(vol)
            }
            Command::DeleteVolume { name } if self.vm_of_volume(&name).is_some() => refuse(
                RefusalKind::Invalid,
                format!(
                    "volume {name} is a disk of VM {}; detach it first",
                    self.vm_of_volume(&name)
                        .map(|v| v.name.as_str())
                        .unwrap_or("?")
                ),
            ),
            Command::DeleteVolume { name } => {
                if let Some(clone) = self.copy_reading(&name, None) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("clone {clone} is being copied from a snapshot of {name}; wait for it or delete it first"),
                    );
                }
                match self.volumes.remove(&name) {
                    Some(_) => {
                        self.snapshots.remove(&name);
                        Outcome::Ok
                    }
                    None => refuse(RefusalKind::NotFound, format!("no volume named {name}")),
                }
            }
            Command::ResizeVolume { name, size } => {
                let Some(vol) = self.volumes.get_mut(&name) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {name}"));
                };
                if vol.copy_from.is_some() {
                    return refuse(RefusalKind::Busy, copying(&name));
                }
                if size < vol.size {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "volume {name} is {} bytes; shrinking is not supported",
                            vol.size
                        ),
                    );
                }
                if size % vol.block_size as u64 != 0 {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "size {size} is not a multiple of the block size {}",
                            vol.block_size
                        ),
                    );
                }
                vol.size = size;
                Outcome::Volume(vol.clone())
            }
            Command::SetAcl { name, allow } => {
                let Some(vol) = self.volumes.get_mut(&name) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {name}"));
                };
                vol.allow = allow;
                Outcome::Volume(vol.clone())
            }
            Command::SetChap { name, chap } => {
                let Some(vol) = self.volumes.get_mut(&name) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {name}"));
                };
                vol.chap = chap;
                Outcome::Volume(vol.clone())
            }
            Command::SetSnapshotReserve { name, pct, policy } => {
                let Some(vol) = self.volumes.get_mut(&name) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {name}"));
                };
                if !(10..=1000).contains(&pct) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("snapshot reserve {pct}% must be between 10% and 1000% of the volume's size"),
                    );
                }
                vol.snapshot_reserve_pct = pct;
                vol.reserve_policy = policy;
                Outcome::Volume(vol.clone())
            }
            Command::Flattened { name } => {
                let Some(vol) = self.volumes.get_mut(&name) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {name}"));
                };
                vol.parent = None;
                Outcome::Volume(vol.clone())
            }
            Command::CompleteSnapshot {
                volume,
                name,
                holders,
            } => match self
                .snapshots
                .get_mut(&volume)
                .and_then(|s| s.get_mut(&name))
            {
                Some(s) if s.pending => {
                    s.pending = false;
                    s.holders = Some(holders);
                    Outcome::Snapshot(s.clone())
                }
                Some(_) => refuse(
                    RefusalKind::Invalid,
                    format!("snapshot {volume}@{name} is not being taken"),
                ),
                None => refuse(
                    RefusalKind::NotFound,
                    format!("no snapshot {volume}@{name}"),
                ),
            },
            Command::CreateSnapshot {
                volume,
                name,
                created,
                in_group,
            } => {
                let Some(vol) = self.volumes.get(&volume) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {volume}"));
                };
                if vol.copy_from.is_some() {
                    return refuse(RefusalKind::Busy, copying(&volume));
                }
                if !valid_name(&name) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "invalid snapshot name {name:?}: use a-z, 0-9, '-', '.' (at most 64)"
                        ),
                    );
                }
                let snaps = self.snapshots.entry(volume.clone()).or_default();
                if snaps.contains_key(&name) {
                    return refuse(
                        RefusalKind::AlreadyExists,
                        format!("snapshot {volume}@{name} already exists"),
                    );
                }
                if snaps.len() >= MAX_SNAPSHOTS_PER_VOLUME {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("volume {volume} already has {MAX_SNAPSHOTS_PER_VOLUME} snapshots; delete one first"),
                    );
                }
                self.next_snapshot_id += 1;
                let snap = Snapshot {
                    name: name.clone(),
                    volume: volume.clone(),
                    volume_id: vol.id,
                    id: self.next_snapshot_id,
                    size: vol.size,
                    block_size: vol.block_size,
                    created,
                    holders: in_group.then(Vec::new),
                    pending: in_group,
                };
                snaps.insert(name, snap.clone());
                Outcome::Snapshot(snap)
            }
            Command::DeleteSnapshot { volume, name } => {
                if let Some(clone) = self.copy_reading(&volume, Some(&name)) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!("clone {clone} is being copied from {volume}@{name}; wait for it or delete it first"),
                    );
                }
                match self
                    .snapshots
                    .get_mut(&volume)
                    .and_then(|s| s.remove(&name))
                {
                    Some(_) => Outcome::Ok,
                    None => refuse(
                        RefusalKind::NotFound,
                        format!("no snapshot {volume}@{name}"),
                    ),
                }
            }
            Command::RestoreVolume { volume, snapshot } => {
                let Some(snap) = self
                    .snapshots
                    .get(&volume)
                    .and_then(|s| s.get(&snapshot))
                    .cloned()
                else {
                    return refuse(
                        RefusalKind::NotFound,
                        format!("no snapshot {volume}@{snapshot}"),
                    );
                };
                let Some(vol) = self.volumes.get_mut(&volume) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {volume}"));
                };
                vol.restore_generation += 1;
                vol.restored_from = Some(snap.id);
                // A restore brings back the snapshot's size too.
                vol.size = snap.size;
                Outcome::Volume(vol.clone())
            }
            Command::CloneVolume {
                volume,
                snapshot,
                name,
                created,
            } => {
                let Some(snap) = self
                    .snapshots
                    .get(&volume)
                    .and_then(|s| s.get(&snapshot))
                    .cloned()
                else {
                    return refuse(
                        RefusalKind::NotFound,
                        format!("no snapshot {volume}@{snapshot}"),
                    );
                };
                if !valid_name(&name) {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "invalid volume name {name:?}: use a-z, 0-9, '-', '.' (at most 64)"
                        ),
                    );
                }
                if self.volumes.contains_key(&name) {
                    return refuse(
                        RefusalKind::AlreadyExists,
                        format!("volume {name} already exists"),
                    );
                }
                let in_group = self.members.len() > 1;
                if snap.pending {
                    return refuse(
                        RefusalKind::Busy,
                        format!("snapshot {volume}@{snapshot} is still being taken"),
                    );
                }
                if in_group && snap.holders.is_none() {
                    return refuse(
                        RefusalKind::Invalid,
                        format!(
                            "snapshot {volume}@{snapshot} was taken before the group had several members; \
                             only a snapshot taken by the group can be cloned in it"
                        ),
                    );
                }
                let src = self.volumes.get(&volume).cloned();
                self.next_volume_id += 1;
                let vol = Volume {
                    reservations: Reservations::default(),
                    name: name.clone(),
                    id: self.next_volume_id,
                    size: snap.size,
                    block_size: snap.block_size,
                    replicas: src.as_ref().map(|v| v.replicas).unwrap_or(1),
                    // A copy is a volume of its own, placed by its own id; a clone in one
                    // member shares its origin's extents, and so its placement.
                    stripe_key: if in_group {
                        0
                    } else {
                        src.as_ref()
                            .map(|v| v.placement_key())
                            .unwrap_or(snap.volume_id)
                    },
                    thick: false,
                    allow: src.as_ref().map(|v| v.allow.clone()).unwrap_or_default(),
                    chap: src.and_then(|v| v.chap),
                    created,
                    parent: (!in_group).then_some(ParentRef {
                        volume_id: snap.volume_id,
                        snapshot_id: snap.id,
                    }),
                    copy_from: in_group.then_some(CopySource {
                        volume_id: snap.volume_id,
                        snapshot_id: snap.id,
                        done: 0,
                    }),
                    restore_generation: 0,
                    restored_from: None,
                    snapshot_reserve_pct: DEFAULT_RESERVE_PCT,
                    reserve_policy: ReservePolicy::default(),
                };
                self.volumes.insert(name, vol.clone());
                Outcome::Volume(vol)
            }
            Command::CloneCopied { name, done } => {
                let Some(vol) = self.volumes.get_mut(&name) else {
                    return refuse(RefusalKind::NotFound, format!("no volume named {name}"));
                };
                let Some(copy) = vol.copy_from.as_mut() else {
                    // Whole already: a leader that lost its place reported late.
                    return Outcome::Volume(vol.clone());
                };
                copy.done = copy.done.max(done);
                if copy.done >= vol.size {
                    vol.copy_from = None;
                }
                Outcome::Volume(vol.clone())
            }
        }
    }

    /// The clone being copied from a snapshot of `volume` (from `snapshot` when named).
    fn copy_reading(&self, volume: &str, snapshot: Option<&str>) -> Option<String> {
        let source = self.volumes.get(volume)?;
        let snaps = self.snapshots.get(volume);
        self.volumes.values().find_map(|v| {
            let copy = v.copy_from?;
            let same_snapshot = match snapshot {
                None => true,
                Some(name) => snaps
                    .and_then(|s| s.get(name))
                    .is_some_and(|s| s.id == copy.snapshot_id),
            };
            (copy.volume_id == source.id && same_snapshot).then(|| v.name.clone())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// CREATE VOLUME with the defaults every test here takes (also used by other modules'
    /// tests).
    pub(crate) fn create(name: &str, size: u64) -> Command {
        Command::CreateVolume {
            name: name.into(),
            size,
            block_size: 512,
            replicas: 1,
            thick: false,
            allow: vec![],
            chap: None,
            created: 0,
        }
    }

    #[test]
    fn create_then_duplicate_is_refused() {
        let mut s = ClusterState::default();
        assert!(matches!(s.apply(create("vol1", 1 << 20)), Outcome::Volume(v) if v.id == 1));
        assert!(matches!(
            s.apply(create("vol1", 1 << 20)),
            Outcome::Refused {
                kind: RefusalKind::AlreadyExists,
                ..
            }
        ));
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        let mut s = ClusterState::default();
        for cmd in [
            create("Bad", 512),
            create("", 512),
            create("ok", 0),
            create("ok", 513),
        ] {
            assert!(matches!(
                s.apply(cmd),
                Outcome::Refused {
                    kind: RefusalKind::Invalid,
                    ..
                }
            ));
        }
        assert!(s.volumes.is_empty());
    }

    #[test]
    fn snapshots_clones_and_restores() {
        let mut s = ClusterState::default();
        s.apply(create("vol1", 1 << 20));
        let snap = |v: &str, n: &str| Command::CreateSnapshot {
            volume: v.into(),
            name: n.into(),
            created: 0,
            in_group: false,
        };
        let Outcome::Snapshot(a) = s.apply(snap("vol1", "a")) else {
            panic!()
        };
        assert_eq!(a.iqn(), "iqn.2026-11.org.haven:vol1:snap:a");
        assert!(matches!(
            s.apply(snap("vol1", "a")),
            Outcome::Refused {
                kind: RefusalKind::AlreadyExists,
                ..
            }
        ));
        assert!(matches!(
            s.apply(snap("nope", "a")),
            Outcome::Refused {
                kind: RefusalKind::NotFound,
                ..
            }
        ));
        let clone = Command::CloneVolume {
            volume: "vol1".into(),
            snapshot: "a".into(),
            name: "c1".into(),
            created: 0,
        };
        let Outcome::Volume(c) = s.apply(clone) else {
            panic!()
        };
        assert_eq!(
            c.parent,
            Some(ParentRef {
                volume_id: 1,
                snapshot_id: a.id
            })
        );
        let restore = Command::RestoreVolume {
            volume: "vol1".into(),
            snapshot: "a".into(),
        };
        let Outcome::Volume(v) = s.apply(restore) else {
            panic!()
        };
        assert_eq!((v.restore_generation, v.restored_from), (1, Some(a.id)));
        assert_eq!(
            s.apply(Command::DeleteSnapshot {
                volume: "vol1".into(),
                name: "a".into()
            }),
            Outcome::Ok
        );
        assert!(s.snapshots["vol1"].is_empty());
        s.apply(snap("vol1", "b"));
        s.apply(Command::DeleteVolume {
            name: "vol1".into(),
        });
        assert!(!s.snapshots.contains_key("vol1"));
    }

    #[test]
    fn at_most_512_snapshots_per_volume() {
        let mut s = ClusterState::default();
        s.apply(create("v", 1 << 20));
        for i in 0..MAX_SNAPSHOTS_PER_VOLUME {
            let o = s.apply(Command::CreateSnapshot {
                volume: "v".into(),
                name: format!("s{i}"),
                created: 0,
                in_group: false,
            });
            assert!(matches!(o, Outcome::Snapshot(_)));
        }
        let o = s.apply(Command::CreateSnapshot {
            volume: "v".into(),
            name: "one-more".into(),
            created: 0,
            in_group: false,
        });
        assert!(matches!(
            o,
            Outcome::Refused {
                kind: RefusalKind::Invalid,
                ..
            }
        ));
    }

    #[test]
    fn chap_debug_hides_secret() {
        let c = Chap {
            user: "u".into(),
            secret: "topsecret".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
