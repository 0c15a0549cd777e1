//! haven's REST API (JSON over HTTP/1.1): the types both sides share, size parsing for
//! the CLI, and a client that tries each API URL of the group in turn.
//!
//! Routes (all under `/v1`):
//!
//! | method | path | body → answer |
//! | --- | --- | --- |
//! | GET | `/v1/status` | → [`GroupStatus`] |
//! | GET | `/v1/members` | → `[MemberView]` |
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
//! | PUT | `/v1/volumes/{name}/snapshot-reserve` | [`SetSnapshotReserve`] → [`VolumeView`] |
//! | POST, GET | `/v1/volumes/{name}/flatten` | → [`FlattenView`] (starts / reports a background flatten) |
//!
//! Errors answer with a non-2xx status and an [`ErrorBody`].

pub mod client;
pub mod size;
pub mod types;

pub use client::{Client, ClientError};
pub use control::ReservePolicy;
pub use size::{format_size, parse_size, SizeError};
pub use types::*;
