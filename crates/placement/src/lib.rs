//! Placement for a haven pool: which members hold each placement group, how a volume's
//! bytes map to placement groups, and what must move when members change. Pure computation,
//! no I/O: the control plane computes a map and commits it through Raft; members read it.
//!
//! | module | holds |
//! | --- | --- |
//! | [`map`] | `MemberId`, `MemberInfo`, `PlacementMap` (serde), `moves(old, new)` |
//! | [`mod@compute`] | `compute(prev, members, replicas, pg_count)`: capacity-weighted, minimal movement |
//! | [`chunk`] | `Striping` / `pg_of`: volume bytes → placement groups (4 MiB chunks) |
//!
//! ```text
//!  control plane: members change ─► compute(Some(&current), members, replicas, pg_count)
//!                 ─► new map (epoch + 1) ─► Raft ─► every member
//!  member:        moves(&old, &new) ─► copy placement groups it gains, drop those it loses
//!                 I/O at (volume, offset) ─► Striping::pg_of ─► map.primary(pg)
//! ```

pub mod chunk;
pub mod compute;
pub mod error;
mod hash;
pub mod map;

pub use chunk::{pg_of, Span, Striping, DEFAULT_CHUNK_BYTES};
pub use compute::{compute, default_replicas, MAX_PG_COUNT, MAX_REPLICAS};
pub use error::PlacementError;
pub use map::{moves, MemberId, MemberInfo, MemberState, Move, PgId, PlacementMap};
