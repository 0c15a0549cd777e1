//! The member-to-member protocol of a haven group.
//!
//! Members talk to each other to forward I/O to a placement group's primary, to copy writes
//! from a primary to its replicas, and to find out what a returning replica missed. One TCP
//! connection carries many requests at once (each has a request id; answers come back in
//! any order), every frame carries the placement map epoch it was made under, and a
//! data-path request under another epoch than the receiver's is refused (`StaleEpoch`).
//!
//! | module | holds | I/O? |
//! | --- | --- | --- |
//! | [`message`] | the messages and their payload encodings | no |
//! | [`wire`] | frames: header with CRC32C, payload CRC32C, the incremental [`Decoder`] | no |
//! | [`engine`] | handshake, request ids, in-flight limits, epoch refusals | no |
//! | [`transport`] | [`PeerClient`] and [`serve`] over tokio TCP | sockets |
//!
//! # Handshake
//!
//! ```text
//!  connecting member (ClientEngine)              accepting member (ServerEngine)
//!   │ Hello{min..max version, member, group,        │
//!   │       max_in_flight}  id 0, v1 framing ──────►│ group differs?   → Error{WrongGroup}, close
//!   │                                               │ no common version→ Error{VersionMismatch}, close
//!   │◄────── HelloAck{version = highest common,     │
//!   │                 member, granted in-flight}    │
//!   │ requests (ids 1, 2, 3 …) in that version ────►│
//! ```
//!
//! # A replicated write
//!
//! ```text
//!  initiator     member A (any)          member B (primary of pg)       replicas C, D
//!     │ SCSI WRITE │                            │                             │
//!     │───────────►│ pg_of(volume, offset) = pg │                             │
//!     │            │ Write{vol,pg,off,data,fua} │                             │
//!     │            │ epoch e ──────────────────►│ epoch == e? else StaleEpoch │
//!     │            │                            │ write locally               │
//!     │            │                            │ ReplicaWrite{…} epoch e ───►│ (each in-sync replica)
//!     │            │                            │◄─────────────────────── Ok  │ (from every one)
//!     │            │◄──────────────────────  Ok │                             │
//!     │◄───────────│ SCSI GOOD                  │                             │
//! ```
//!
//! Writes bound for the same member may travel together (version 2): a `WriteBatch` to a
//! primary, a `ReplicaWriteBatch` to a replica, answered by `Answers` in the batch's order,
//! one `Ok` or `Error` per write. Each write of a batch is carried out exactly as it would be
//! alone, and one that fails is retried on its own; a batch is one epoch's. A member sends
//! batches only to a peer whose handshake settled on version 2 or later.
//!
//! ```text
//!  member A                           member B (primary of pg 3 and pg 9)      replica C
//!     │ WriteBatch[w1 (pg 3), w2 (pg 9)] ──►│ each: range lock, local journal      │
//!     │                                     │ ReplicaWriteBatch[w1, w2] ──────────►│
//!     │                                     │◄──────────────────── Answers[Ok, Ok] │
//!     │◄──────────────── Answers[Ok, Ok]    │                                      │
//! ```
//!
//! A Flush forwarded to a primary becomes a ReplicaFlush to each of its replicas, answered
//! once all are durable; a FUA write is durable on every copy before its Ok. A replica that
//! was away is filled by the primary, which asks it `DirtyQuery{pgs}` first: the answer
//! (`DirtyRegions`) names the chunks it changed on its own and never got confirmed by its
//! replicas (as a cut-off primary), so the fill overwrites them too.

pub mod engine;
pub mod error;
pub mod message;
pub mod transport;
pub mod wire;

pub use engine::{
    ClientEngine, ClientEvent, Config, Established, Request, ServerAction, ServerEngine,
};
pub use error::{Error, ErrorKind, PayloadError, ProtocolError, WireError};
pub use message::{
    ErrorCode, ErrorReply, FlushOp, Hello, HelloAck, LuEvent, LuEventKind, MemberId, Message, PgId,
    ReadOp, Region, SnapshotOp, SnapshotRead, VolumeId, WriteOp, MAX_DATA,
};
pub use transport::{serve, serve_connection, ClientConfig, PeerClient, ServerConfig};
pub use wire::{Decoder, Encoded, Frame, HEADER_LEN, MAX_PAYLOAD, MAX_VERSION, MIN_VERSION};
