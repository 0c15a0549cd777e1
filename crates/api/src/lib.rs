//! haven's REST API (JSON over HTTP/1.1): the types both sides share, size parsing for
//! the CLI, and a client that tries each API URL of the group in turn.
//!
//! Routes (all under `/v1`):
//!
//! | method | path | body → answer |
//! | --- | --- | --- |
//! | GET | `/v1/status` | → [`GroupStatus`] |
//! | GET | `/v1/members` | → `[MemberView]` |
//! | POST | `/v1/members/{name}/remove` | → `[MemberView]` (its data starts moving away) |
//! | GET | `/v1/group` | → [`GroupView`] (layout, resync state) |
//! | GET | `/v1/volumes` | → `[VolumeView]` |
//! | POST | `/v1/volumes` | [`CreateVolume`] → [`VolumeView`] |
//! | GET | `/v1/volumes/{name}` | → [`VolumeView`] |
//! | DELETE | `/v1/volumes/{name}?force=true` | → `{}` |
//! | POST | `/v1/volumes/{name}/resize` | [`Resize`] → [`VolumeView`] |
//! | PUT | `/v1/volumes/{name}/acl` | [`SetAcl`] → [`VolumeView`] |
//! | PUT | `/v1/volumes/{name}/chap` | [`SetChap`] → [`VolumeView`] |
//! | GET | `/v1/volumes/{name}/snapshots` | → `[SnapshotView]` |
//! | POST | `/v1/volumes/{name}/snapshots` | [`CreateSnapshot`] → [`SnapshotView`] |
//! | GET, DELETE | `/v1/volumes/{name}/snapshots/{snap}` | → [`SnapshotView`] / `{}` |
//! | POST | `/v1/volumes/{name}/restore` | [`Restore`] → [`VolumeView`] |
//! | POST | `/v1/volumes/{name}/clone` | [`CloneVolume`] → [`VolumeView`] |
//! | POST | `/v1/volumes/{name}/scrub` | → [`ScrubView`] |
//! | GET | `/v1/volumes/{name}/copies` | → [`CopyDigests`] (this member's complete copies) |
//! | PUT | `/v1/volumes/{name}/snapshot-reserve` | [`SetSnapshotReserve`] → [`VolumeView`] |
//! | POST, GET | `/v1/volumes/{name}/flatten` | → [`FlattenView`] (starts / reports a background flatten) |
//! | GET, POST | `/v1/hosts` | → `[HostView]` / [`control::Host`] (a host agent registers) |
//! | POST | `/v1/hosts/{name}/drain`, `/undrain` | → `[control::Migration]` / [`HostView`] |
//! | GET | `/v1/compute` | → [`ComputeState`] (what host agents follow) |
//! | GET, POST | `/v1/vms` | → `[VmView]` / [`DefineVm`] → [`VmView`] |
//! | GET, DELETE | `/v1/vms/{name}` | → [`VmView`] / `{}` |
//! | POST | `/v1/vms/{name}/start` | [`StartVm`] → [`VmView`] (once it runs) |
//! | POST | `/v1/vms/{name}/stop` | [`StopVm`] → [`VmView`] (once it stopped) |
//! | POST | `/v1/vms/{name}/disks` | [`AttachDisk`] → [`VmView`] |
//! | DELETE | `/v1/vms/{name}/disks/{volume}?force=true` | → [`VmView`] |
//! | GET | `/v1/vms/{name}/console?bytes=N` | → text |
//! | POST | `/v1/vms/{name}/migrate` | [`MigrateVm`] → [`MigrationView`] |
//! | GET | `/v1/migrations`, `/v1/migrations/{id}` | → `[MigrationView]` / [`MigrationView`] |
//! | POST | `/v1/migrations/{id}/cancel` | → [`MigrationView`] |
//!
//! A host agent serves its own API (the member asks it about live VMs): `GET /v1/vms`,
//! `GET /v1/vms/{name}` ([`VmStatus`]), `GET /v1/vms/{name}/console`, `POST /v1/incoming`
//! ([`IncomingRequest`] → [`IncomingReady`]), `GET`/`DELETE /v1/incoming/{vm}`
//! ([`IncomingStatus`]), `GET /v1/migrations/{id}` ([`MigrationProgress`]).
//!
//! Errors answer with a non-2xx status and an [`ErrorBody`].

pub mod client;
pub mod compute;
pub mod size;
pub mod types;

pub use client::{Client, ClientError};
pub use compute::*;
pub use control::ReservePolicy;
pub use size::{format_size, parse_size, SizeError};
pub use types::*;
