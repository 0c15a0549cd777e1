//! The messages members exchange, and their payload encodings.
//!
//! Every integer is big-endian. Payloads are canonical: a decoder accepts exactly the bytes
//! the encoder produces (no trailing bytes, no unknown flag bits, no non-UTF-8 text), so a
//! frame that decodes re-encodes to the same bytes. Kinds with the top bit set are
//! responses; the others are requests.

use crate::error::PayloadError;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest data carried by one Write, ReplicaWrite, Read or Data message (16 MiB).
pub const MAX_DATA: usize = 16 << 20;

/// Longest error text carried by an Error message; longer text is cut at a char boundary.
pub const MAX_ERROR_TEXT: usize = 4096;

/// Most writes one WriteBatch or ReplicaWriteBatch carries; their data together is at
/// most [`MAX_DATA`].
pub const MAX_BATCH: usize = 256;

/// Members, volumes and groups are named by the numbers the control plane gave them.
pub type MemberId = u64;
pub type VolumeId = u64;
pub type PgId = u32;

/// The first message on a connection, from the side that connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u8,
    /// Highest protocol version the sender speaks.
    pub max_version: u8,
    pub member: MemberId,
    /// The group the sender belongs to; a member of another group is refused.
    pub group: u128,
    /// How many requests the sender may keep in flight on this connection.
    pub max_in_flight: u32,
}

/// The accepting side's answer to [`Hello`]: the version both sides now use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck {
    pub version: u8,
    pub member: MemberId,
    /// The in-flight limit the acceptor grants (never above what the Hello asked for).
    pub max_in_flight: u32,
}

/// Data written at a byte offset of a volume, inside one placement group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    pub volume: VolumeId,
    pub pg: PgId,
    pub offset: u64,
    /// Force unit access: durable on every copy before the acknowledgement.
    pub fua: bool,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOp {
    pub volume: VolumeId,
    pub pg: PgId,
    pub offset: u64,
    pub len: u32,
}

/// Make every acknowledged write of a volume durable (on every copy, for the primary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushOp {
    pub volume: VolumeId,
}

/// A byte range of a volume inside one placement group: unmapped, or dirty while a replica
/// was away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region {
    pub volume: VolumeId,
    pub pg: PgId,
    pub offset: u64,
    pub len: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request was made under another map epoch than the receiver's `current`.
    StaleEpoch { current: u64 },
    /// The receiver is not the placement group's primary; `primary` is who it believes is.
    NotPrimary { primary: Option<MemberId> },
    /// The receiver is not an in-sync replica of the placement group.
    NotInSync,
    /// The receiver's storage failed.
    Io,
    /// The request was malformed or not allowed in this state.
    Invalid,
    /// No protocol version in common; the receiver speaks `min..=max`.
    VersionMismatch { min: u8, max: u8 },
    /// The sender belongs to another group.
    WrongGroup,
}

/// An Error message: a code the sender can act on, and text for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub text: String,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        let mut text: String = text.into();
        if text.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        ErrorReply { code, text }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.text)
    }
}

/// One message of the member-to-member protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// A write forwarded to the placement group's primary (from any member).
    Write(WriteOp),
    /// A read forwarded to the placement group's primary.
    Read(ReadOp),
    /// A flush forwarded to a primary of some of the volume's placement groups.
    Flush(FlushOp),
    /// An unmap forwarded to the placement group's primary.
    Unmap(Region),
    /// The primary's copy of a write to one of its replicas.
    ReplicaWrite(WriteOp),
    /// Writes forwarded to the primary of their placement groups together: each is
    /// carried out as its own [`Message::Write`] would be, and answered on its own in
    /// [`Message::Answers`] (protocol version 2).
    WriteBatch(Vec<WriteOp>),
    /// The primary's copies of several writes to one replica, answered one by one in
    /// [`Message::Answers`] (protocol version 2).
    ReplicaWriteBatch(Vec<WriteOp>),
    /// The primary's flush of a replica.
    ReplicaFlush(FlushOp),
    /// The primary's copy of an unmap to one of its replicas.
    ReplicaUnmap(Region),
    /// Which regions of these placement groups (all, if empty) changed while the asking
    /// member was away?
    DirtyQuery {
        pgs: Vec<PgId>,
    },
    Ping {
        nonce: u64,
    },
    /// Provisioning of a placement group's bytes from `offset` (at most `len`), asked of
    /// its primary (GET LBA STATUS through another member).
    Status(Region),
    /// COMPARE AND WRITE at the placement group's primary: `data` is the bytes to compare
    /// followed by as many bytes to write, so the check and the write are one step there
    /// whichever member the initiator used.
    CompareAndWrite(WriteOp),
    /// Something happened to a volume's logical unit at another member's port that every
    /// port must see (a LUN reset; new reservations at revision `arg`).
    LuEvent(LuEvent),
    /// Stop changing the volume (refuse its writes), let those under way finish, take the
    /// store snapshot `snapshot` of it, answer; stay frozen until [`Message::Thaw`] (or a
    /// time limit).
    Freeze(SnapshotOp),
    /// The group took the snapshot (or gave up): accept the volume's writes again.
    Thaw(SnapshotOp),
    /// Bytes of a snapshot's copy held by the receiver.
    SnapshotRead(SnapshotRead),

    HelloAck(HelloAck),
    Ok,
    Data(Bytes),
    Error(ErrorReply),
    DirtyRegions(Vec<Region>),
    Pong {
        nonce: u64,
    },
    /// The answer to [`Message::Status`]: the first `len` bytes asked about are all mapped,
    /// or all deallocated.
    Provisioning {
        mapped: bool,
        len: u64,
    },
    /// The answer to [`Message::CompareAndWrite`] when the compare failed: nothing was
    /// written, and the first differing byte is at `offset` of the compared bytes.
    Miscompare {
        offset: u64,
    },
    /// The answers to a batch, in its order: done, or why not.
    Answers(Vec<Result<(), ErrorReply>>),
}

/// A volume and one of its snapshots (by the ids the control plane gave them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotOp {
    pub volume: VolumeId,
    pub snapshot: u64,
}

/// `len` bytes at byte `offset` of a snapshot of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRead {
    pub volume: VolumeId,
    pub snapshot: u64,
    pub offset: u64,
    pub len: u32,
}

/// A logical-unit event that one member's port raises for every member's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LuEvent {
    pub volume: VolumeId,
    pub kind: LuEventKind,
    /// For [`LuEventKind::Reservations`]: the revision the receiver must have applied
    /// before it answers.
    pub arg: u64,
}

/// What happened to the logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LuEventKind {
    /// LOGICAL UNIT RESET: a unit attention on every I_T nexus, SPC-2 reservations gone.
    LunReset,
    /// TARGET WARM RESET.
    WarmReset,
    /// TARGET COLD RESET.
    ColdReset,
    /// The reservations changed in the control plane: apply revision `arg` before
    /// answering, so no port enforces the old ones afterwards.
    Reservations,
}

impl LuEventKind {
    fn code(self) -> u8 {
        match self {
            LuEventKind::LunReset => 1,
            LuEventKind::WarmReset => 2,
            LuEventKind::ColdReset => 3,
            LuEventKind::Reservations => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => LuEventKind::LunReset,
            2 => LuEventKind::WarmReset,
            3 => LuEventKind::ColdReset,
            4 => LuEventKind::Reservations,
            _ => return None,
        })
    }
}

/// The kind byte of each message in a frame header.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WRITE: u8 = 0x10;
    pub const READ: u8 = 0x11;
    pub const FLUSH: u8 = 0x12;
    pub const UNMAP: u8 = 0x13;
    pub const REPLICA_WRITE: u8 = 0x20;
    pub const REPLICA_FLUSH: u8 = 0x21;
    pub const REPLICA_UNMAP: u8 = 0x22;
    pub const DIRTY_QUERY: u8 = 0x30;
    pub const PING: u8 = 0x40;
    pub const STATUS: u8 = 0x14;
    pub const COMPARE_AND_WRITE: u8 = 0x15;
    pub const LU_EVENT: u8 = 0x50;
    pub const FREEZE: u8 = 0x51;
    pub const THAW: u8 = 0x52;
    pub const SNAPSHOT_READ: u8 = 0x16;
    pub const WRITE_BATCH: u8 = 0x17;
    pub const REPLICA_WRITE_BATCH: u8 = 0x23;

    pub const HELLO_ACK: u8 = 0x81;
    pub const OK: u8 = 0x82;
    pub const DATA: u8 = 0x83;
    pub const ERROR: u8 = 0x84;
    pub const DIRTY_REGIONS: u8 = 0x85;
    pub const PONG: u8 = 0x86;
    pub const PROVISIONING: u8 = 0x87;
    pub const MISCOMPARE: u8 = 0x88;
    pub const ANSWERS: u8 = 0x89;

    /// Responses have the top bit set.
    pub const RESPONSE_BIT: u8 = 0x80;

    pub fn is_known(kind: u8) -> bool {
        matches!(
            kind,
            HELLO
                | WRITE
                | READ
                | FLUSH
                | UNMAP
                | REPLICA_WRITE
                | REPLICA_FLUSH
                | REPLICA_UNMAP
                | DIRTY_QUERY
                | PING
                | STATUS
                | COMPARE_AND_WRITE
                | LU_EVENT
                | FREEZE
                | THAW
                | SNAPSHOT_READ
                | WRITE_BATCH
                | REPLICA_WRITE_BATCH
                | HELLO_ACK
                | OK
                | DATA
                | ERROR
                | DIRTY_REGIONS
                | PONG
                | PROVISIONING
                | MISCOMPARE
                | ANSWERS
        )
    }
}

const WRITE_FUA: u8 = 0x01;
const WRITE_FIXED: usize = 8 + 4 + 8 + 1;
const REGION_LEN: usize = 8 + 4 + 8 + 8;

const ERR_STALE_EPOCH: u8 = 1;
const ERR_NOT_PRIMARY: u8 = 2;
const ERR_NOT_IN_SYNC: u8 = 3;
const ERR_IO: u8 = 4;
const ERR_INVALID: u8 = 5;
const ERR_VERSION_MISMATCH: u8 = 6;
const ERR_WRONG_GROUP: u8 = 7;

impl Message {
    /// The kind byte this message travels under.
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello(_) => kind::HELLO,
            Message::Write(_) => kind::WRITE,
            Message::Read(_) => kind::READ,
            Message::Flush(_) => kind::FLUSH,
            Message::Unmap(_) => kind::UNMAP,
            Message::ReplicaWrite(_) => kind::REPLICA_WRITE,
            Message::ReplicaFlush(_) => kind::REPLICA_FLUSH,
            Message::ReplicaUnmap(_) => kind::REPLICA_UNMAP,
            Message::DirtyQuery { .. } => kind::DIRTY_QUERY,
            Message::Ping { .. } => kind::PING,
            Message::Status(_) => kind::STATUS,
            Message::Provisioning { .. } => kind::PROVISIONING,
            Message::CompareAndWrite(_) => kind::COMPARE_AND_WRITE,
            Message::LuEvent(_) => kind::LU_EVENT,
            Message::Freeze(_) => kind::FREEZE,
            Message::Thaw(_) => kind::THAW,
            Message::SnapshotRead(_) => kind::SNAPSHOT_READ,
            Message::Miscompare { .. } => kind::MISCOMPARE,
            Message::WriteBatch(_) => kind::WRITE_BATCH,
            Message::ReplicaWriteBatch(_) => kind::REPLICA_WRITE_BATCH,
            Message::Answers(_) => kind::ANSWERS,
            Message::HelloAck(_) => kind::HELLO_ACK,
            Message::Ok => kind::OK,
            Message::Data(_) => kind::DATA,
            Message::Error(_) => kind::ERROR,
            Message::DirtyRegions(_) => kind::DIRTY_REGIONS,
            Message::Pong { .. } => kind::PONG,
        }
    }

    pub fn is_response(&self) -> bool {
        self.kind() & kind::RESPONSE_BIT != 0
    }

    /// Data-path messages are only valid under the receiver's map epoch.
    pub fn is_data_path(&self) -> bool {
        matches!(
            self,
            Message::Write(_)
                | Message::Read(_)
                | Message::Flush(_)
                | Message::Unmap(_)
                | Message::ReplicaWrite(_)
                | Message::WriteBatch(_)
                | Message::ReplicaWriteBatch(_)
                | Message::ReplicaFlush(_)
                | Message::ReplicaUnmap(_)
                | Message::DirtyQuery { .. }
                | Message::Status(_)
                | Message::CompareAndWrite(_)
        )
    }

    /// Bytes the payload takes on the wire.
    pub fn payload_len(&self) -> usize {
        match self {
            Message::Hello(_) => 1 + 1 + 8 + 16 + 4,
            Message::HelloAck(_) => 1 + 8 + 4,
            Message::Write(w) | Message::ReplicaWrite(w) | Message::CompareAndWrite(w) => {
                WRITE_FIXED + w.data.len()
            }
            Message::LuEvent(_) => 8 + 1 + 8,
            Message::Freeze(_) | Message::Thaw(_) => 8 + 8,
            Message::SnapshotRead(_) => 8 + 8 + 8 + 4,
            Message::Miscompare { .. } => 8,
            Message::Read(_) => 8 + 4 + 8 + 4,
            Message::Flush(_) | Message::ReplicaFlush(_) => 8,
            Message::Unmap(_) | Message::ReplicaUnmap(_) | Message::Status(_) => REGION_LEN,
            Message::Provisioning { .. } => 1 + 8,
            Message::DirtyQuery { pgs } => 4 + 4 * pgs.len(),
            Message::Ping { .. } | Message::Pong { .. } => 8,
            Message::Ok => 0,
            Message::Data(d) => d.len(),
            Message::Error(e) => error_len(e),
            Message::WriteBatch(ops) | Message::ReplicaWriteBatch(ops) => {
                4 + ops
                    .iter()
                    .map(|w| WRITE_FIXED + 4 + w.data.len())
                    .sum::<usize>()
            }
            Message::Answers(answers) => {
                4 + answers
                    .iter()
                    .map(|a| 1 + a.as_ref().err().map_or(0, error_len))
                    .sum::<usize>()
            }
            Message::DirtyRegions(r) => 4 + REGION_LEN * r.len(),
        }
    }

    /// Append the payload to `dst`: every field copied, the data of writes and reads as
    /// the sink takes it ([`PayloadSink::put_data`]).
    pub fn encode_payload(&self, dst: &mut impl PayloadSink) {
        match self {
            Message::Hello(h) => {
                dst.put_u8(h.min_version);
                dst.put_u8(h.max_version);
                dst.put_u64(h.member);
                dst.put_u128(h.group);
                dst.put_u32(h.max_in_flight);
            }
            Message::HelloAck(a) => {
                dst.put_u8(a.version);
                dst.put_u64(a.member);
                dst.put_u32(a.max_in_flight);
            }
            Message::Write(w) | Message::ReplicaWrite(w) | Message::CompareAndWrite(w) => {
                put_write_head(dst, w);
                dst.put_data(&w.data);
            }
            Message::WriteBatch(ops) | Message::ReplicaWriteBatch(ops) => {
                dst.put_u32(ops.len() as u32);
                for w in ops {
                    put_write_head(dst, w);
                    dst.put_u32(w.data.len() as u32);
                    dst.put_data(&w.data);
                }
            }
            Message::Answers(answers) => {
                dst.put_u32(answers.len() as u32);
                for a in answers {
                    match a {
                        Ok(()) => dst.put_u8(0),
                        Err(e) => {
                            dst.put_u8(1);
                            put_error(dst, e);
                        }
                    }
                }
            }
            Message::Read(r) => {
                dst.put_u64(r.volume);
                dst.put_u32(r.pg);
                dst.put_u64(r.offset);
                dst.put_u32(r.len);
            }
            Message::Flush(f) | Message::ReplicaFlush(f) => dst.put_u64(f.volume),
            Message::Unmap(r) | Message::ReplicaUnmap(r) | Message::Status(r) => put_region(dst, r),
            Message::Provisioning { mapped, len } => {
                dst.put_u8(u8::from(*mapped));
                dst.put_u64(*len);
            }
            Message::DirtyQuery { pgs } => {
                dst.put_u32(pgs.len() as u32);
                for pg in pgs {
                    dst.put_u32(*pg);
                }
            }
            Message::Ping { nonce } | Message::Pong { nonce } => dst.put_u64(*nonce),
            Message::LuEvent(e) => {
                dst.put_u64(e.volume);
                dst.put_u8(e.kind.code());
                dst.put_u64(e.arg);
            }
            Message::Miscompare { offset } => dst.put_u64(*offset),
            Message::Freeze(f) | Message::Thaw(f) => {
                dst.put_u64(f.volume);
                dst.put_u64(f.snapshot);
            }
            Message::SnapshotRead(r) => {
                dst.put_u64(r.volume);
                dst.put_u64(r.snapshot);
                dst.put_u64(r.offset);
                dst.put_u32(r.len);
            }
            Message::Ok => {}
            Message::Data(d) => dst.put_data(d),
            Message::Error(e) => put_error(dst, e),
            Message::DirtyRegions(regions) => {
                dst.put_u32(regions.len() as u32);
                for r in regions {
                    put_region(dst, r);
                }
            }
        }
    }

    /// Parse a payload of kind `kind` (whose CRC was already checked).
    pub fn decode_payload(kind: u8, payload: Bytes) -> Result<Message, PayloadError> {
        let mut r = Reader(payload);
        let message = match kind {
            kind::HELLO => Message::Hello(Hello {
                min_version: r.u8()?,
                max_version: r.u8()?,
                member: r.u64()?,
                group: r.u128()?,
                max_in_flight: r.u32()?,
            }),
            kind::HELLO_ACK => Message::HelloAck(HelloAck {
                version: r.u8()?,
                member: r.u64()?,
                max_in_flight: r.u32()?,
            }),
            kind::WRITE => Message::Write(r.write_op()?),
            kind::REPLICA_WRITE => Message::ReplicaWrite(r.write_op()?),
            kind::WRITE_BATCH => Message::WriteBatch(r.write_batch()?),
            kind::REPLICA_WRITE_BATCH => Message::ReplicaWriteBatch(r.write_batch()?),
            kind::ANSWERS => {
                let count = r.count(1)?;
                if count > MAX_BATCH {
                    return Err(PayloadError::BatchTooLong { count });
                }
                let mut answers = Vec::with_capacity(count);
                for _ in 0..count {
                    answers.push(match r.u8()? {
                        0 => Ok(()),
                        1 => Err(r.error_reply()?),
                        flags => return Err(PayloadError::UnknownFlags { flags }),
                    });
                }
                Message::Answers(answers)
            }
            kind::COMPARE_AND_WRITE => {
                let op = r.write_op()?;
                if op.data.len() % 2 != 0 {
                    return Err(PayloadError::Truncated);
                }
                Message::CompareAndWrite(op)
            }
            kind::LU_EVENT => {
                let volume = r.u64()?;
                let code = r.u8()?;
                let kind = LuEventKind::from_code(code)
                    .ok_or(PayloadError::UnknownFlags { flags: code })?;
                Message::LuEvent(LuEvent {
                    volume,
                    kind,
                    arg: r.u64()?,
                })
            }
            kind::MISCOMPARE => Message::Miscompare { offset: r.u64()? },
            kind::FREEZE => Message::Freeze(SnapshotOp {
                volume: r.u64()?,
                snapshot: r.u64()?,
            }),
            kind::THAW => Message::Thaw(SnapshotOp {
                volume: r.u64()?,
                snapshot: r.u64()?,
            }),
            kind::SNAPSHOT_READ => {
                let op = SnapshotRead {
                    volume: r.u64()?,
                    snapshot: r.u64()?,
                    offset: r.u64()?,
                    len: r.u32()?,
                };
                if op.len as usize > MAX_DATA {
                    return Err(PayloadError::ReadTooLong { len: op.len });
                }
                Message::SnapshotRead(op)
            }
            kind::READ => {
                let op = ReadOp {
                    volume: r.u64()?,
                    pg: r.u32()?,
                    offset: r.u64()?,
                    len: r.u32()?,
                };
                if op.len as usize > MAX_DATA {
                    return Err(PayloadError::ReadTooLong { len: op.len });
                }
                Message::Read(op)
            }
            kind::FLUSH => Message::Flush(FlushOp { volume: r.u64()? }),
            kind::REPLICA_FLUSH => Message::ReplicaFlush(FlushOp { volume: r.u64()? }),
            kind::UNMAP => Message::Unmap(r.region()?),
            kind::REPLICA_UNMAP => Message::ReplicaUnmap(r.region()?),
            kind::STATUS => Message::Status(r.region()?),
            kind::PROVISIONING => {
                let mapped = match r.u8()? {
                    0 => false,
                    1 => true,
                    flags => return Err(PayloadError::UnknownFlags { flags }),
                };
                Message::Provisioning {
                    mapped,
                    len: r.u64()?,
                }
            }
            kind::DIRTY_QUERY => {
                let count = r.count(4)?;
                let mut pgs = Vec::with_capacity(count);
                for _ in 0..count {
                    pgs.push(r.u32()?);
                }
                Message::DirtyQuery { pgs }
            }
            kind::PING => Message::Ping { nonce: r.u64()? },
            kind::PONG => Message::Pong { nonce: r.u64()? },
            kind::OK => Message::Ok,
            kind::DATA => Message::Data(r.rest()),
            kind::ERROR => Message::Error(r.error_reply()?),
            kind::DIRTY_REGIONS => {
                let count = r.count(REGION_LEN)?;
                let mut regions = Vec::with_capacity(count);
                for _ in 0..count {
                    regions.push(r.region()?);
                }
                Message::DirtyRegions(regions)
            }
            other => return Err(PayloadError::UnknownKind { kind: other }),
        };
        if !r.0.is_empty() {
            return Err(PayloadError::Trailing { extra: r.0.len() });
        }
        Ok(message)
    }
}

fn put_error(dst: &mut impl BufMut, e: &ErrorReply) {
    match e.code {
        ErrorCode::StaleEpoch { current } => {
            dst.put_u8(ERR_STALE_EPOCH);
            dst.put_u64(current);
        }
        ErrorCode::NotPrimary { primary } => {
            dst.put_u8(ERR_NOT_PRIMARY);
            dst.put_u8(primary.is_some() as u8);
            dst.put_u64(primary.unwrap_or(0));
        }
        ErrorCode::NotInSync => dst.put_u8(ERR_NOT_IN_SYNC),
        ErrorCode::Io => dst.put_u8(ERR_IO),
        ErrorCode::Invalid => dst.put_u8(ERR_INVALID),
        ErrorCode::VersionMismatch { min, max } => {
            dst.put_u8(ERR_VERSION_MISMATCH);
            dst.put_u8(min);
            dst.put_u8(max);
        }
        ErrorCode::WrongGroup => dst.put_u8(ERR_WRONG_GROUP),
    }
    let text = ErrorReply::new(e.code.clone(), e.text.clone()).text;
    dst.put_u16(text.len() as u16);
    dst.put_slice(text.as_bytes());
}

fn error_len(e: &ErrorReply) -> usize {
    let arg = match e.code {
        ErrorCode::StaleEpoch { .. } => 8,
        ErrorCode::NotPrimary { .. } => 9,
        ErrorCode::VersionMismatch { .. } => 2,
        _ => 0,
    };
    1 + arg + 2 + e.text.len().min(MAX_ERROR_TEXT)
}

fn put_write_head(dst: &mut impl BufMut, w: &WriteOp) {
    dst.put_u64(w.volume);
    dst.put_u32(w.pg);
    dst.put_u64(w.offset);
    dst.put_u8(if w.fua { WRITE_FUA } else { 0 });
}

fn put_region(dst: &mut impl BufMut, r: &Region) {
    dst.put_u64(r.volume);
    dst.put_u32(r.pg);
    dst.put_u64(r.offset);
    dst.put_u64(r.len);
}

/// Where a payload is encoded. Its fixed fields go in through [`BufMut`]; the bytes of
/// writes and reads through [`put_data`](Self::put_data), which a sink may keep by
/// reference instead of copying (the wire's vectored frames do).
pub trait PayloadSink: BufMut {
    fn put_data(&mut self, data: &Bytes);
}

impl PayloadSink for BytesMut {
    fn put_data(&mut self, data: &Bytes) {
        self.put_slice(data);
    }
}

/// A cursor over a payload that reports truncation instead of panicking.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), PayloadError> {
        if self.0.len() < n {
            Err(PayloadError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, PayloadError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, PayloadError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, PayloadError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, PayloadError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn u128(&mut self) -> Result<u128, PayloadError> {
        self.need(16)?;
        Ok(self.0.get_u128())
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, PayloadError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }
    /// A u32 element count, checked against the bytes left so that a lying count cannot
    /// make us allocate more than the payload itself.
    fn count(&mut self, element_len: usize) -> Result<usize, PayloadError> {
        let count = self.u32()? as usize;
        let fits = matches!(count.checked_mul(element_len), Some(n) if n <= self.0.len());
        if !fits {
            return Err(PayloadError::Truncated);
        }
        Ok(count)
    }
    fn write_op(&mut self) -> Result<WriteOp, PayloadError> {
        let (volume, pg, offset, fua) = self.write_head()?;
        let data = self.rest();
        if data.len() > MAX_DATA {
            return Err(PayloadError::DataTooLong { len: data.len() });
        }
        Ok(WriteOp {
            volume,
            pg,
            offset,
            fua,
            data,
        })
    }
    fn write_head(&mut self) -> Result<(VolumeId, PgId, u64, bool), PayloadError> {
        let volume = self.u64()?;
        let pg = self.u32()?;
        let offset = self.u64()?;
        let flags = self.u8()?;
        if flags & !WRITE_FUA != 0 {
            return Err(PayloadError::UnknownFlags { flags });
        }
        Ok((volume, pg, offset, flags & WRITE_FUA != 0))
    }
    /// A count, then each write with its data's length: at most [`MAX_BATCH`] writes and
    /// [`MAX_DATA`] bytes of data together.
    fn write_batch(&mut self) -> Result<Vec<WriteOp>, PayloadError> {
        let count = self.count(WRITE_FIXED + 4)?;
        if count > MAX_BATCH {
            return Err(PayloadError::BatchTooLong { count });
        }
        let (mut ops, mut total) = (Vec::with_capacity(count), 0usize);
        for _ in 0..count {
            let (volume, pg, offset, fua) = self.write_head()?;
            let len = self.u32()? as usize;
            total += len;
            if total > MAX_DATA {
                return Err(PayloadError::DataTooLong { len: total });
            }
            ops.push(WriteOp {
                volume,
                pg,
                offset,
                fua,
                data: self.bytes(len)?,
            });
        }
        Ok(ops)
    }
    fn region(&mut self) -> Result<Region, PayloadError> {
        Ok(Region {
            volume: self.u64()?,
            pg: self.u32()?,
            offset: self.u64()?,
            len: self.u64()?,
        })
    }
    fn error_reply(&mut self) -> Result<ErrorReply, PayloadError> {
        let code = match self.u8()? {
            ERR_STALE_EPOCH => ErrorCode::StaleEpoch {
                current: self.u64()?,
            },
            ERR_NOT_PRIMARY => {
                let present = self.u8()?;
                let hint = self.u64()?;
                match (present, hint) {
                    (0, 0) => ErrorCode::NotPrimary { primary: None },
                    (1, hint) => ErrorCode::NotPrimary {
                        primary: Some(hint),
                    },
                    _ => return Err(PayloadError::BadErrorCode),
                }
            }
            ERR_NOT_IN_SYNC => ErrorCode::NotInSync,
            ERR_IO => ErrorCode::Io,
            ERR_INVALID => ErrorCode::Invalid,
            ERR_VERSION_MISMATCH => ErrorCode::VersionMismatch {
                min: self.u8()?,
                max: self.u8()?,
            },
            ERR_WRONG_GROUP => ErrorCode::WrongGroup,
            _ => return Err(PayloadError::BadErrorCode),
        };
        let len = self.u16()? as usize;
        if len > MAX_ERROR_TEXT {
            return Err(PayloadError::TextTooLong { len });
        }
        let text = self.bytes(len)?;
        let text = String::from_utf8(text.to_vec()).map_err(|_| PayloadError::BadUtf8)?;
        Ok(ErrorReply { code, text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(m: Message) {
        let mut buf = BytesMut::new();
        m.encode_payload(&mut buf);
        assert_eq!(buf.len(), m.payload_len(), "{m:?}");
        let back = Message::decode_payload(m.kind(), buf.freeze()).unwrap();
        assert_eq!(back, m);
        // The vectored encoding is the same bytes.
        let frame = crate::Frame::new(2, 5, 6, m);
        let mut whole = BytesMut::new();
        frame.encode(&mut whole).unwrap();
        let parts = frame.encode_parts().unwrap();
        assert_eq!(parts.len(), whole.len());
        assert_eq!(parts.to_bytes(), whole.freeze(), "{:?}", frame.message);
    }

    #[test]
    fn every_kind_roundtrips() {
        let region = Region {
            volume: 7,
            pg: 3,
            offset: 1 << 20,
            len: 4096,
        };
        let write = WriteOp {
            volume: 1,
            pg: 2,
            offset: 512,
            fua: true,
            data: Bytes::from_static(b"hello"),
        };
        for m in [
            Message::Hello(Hello {
                min_version: 1,
                max_version: 3,
                member: 9,
                group: u128::MAX - 5,
                max_in_flight: 64,
            }),
            Message::HelloAck(HelloAck {
                version: 1,
                member: 2,
                max_in_flight: 32,
            }),
            Message::Write(write.clone()),
            Message::ReplicaWrite(WriteOp {
                fua: false,
                ..write.clone()
            }),
            Message::Read(ReadOp {
                volume: 1,
                pg: 0,
                offset: 0,
                len: 4096,
            }),
            Message::Flush(FlushOp { volume: 4 }),
            Message::ReplicaFlush(FlushOp { volume: 4 }),
            Message::Unmap(region),
            Message::ReplicaUnmap(region),
            Message::DirtyQuery { pgs: vec![1, 2, 3] },
            Message::DirtyQuery { pgs: vec![] },
            Message::Ping { nonce: 42 },
            Message::Pong { nonce: 42 },
            Message::Ok,
            Message::Data(Bytes::from_static(&[1, 2, 3])),
            Message::Error(ErrorReply::new(
                ErrorCode::StaleEpoch { current: 12 },
                "epoch 11 < 12",
            )),
            Message::Error(ErrorReply::new(
                ErrorCode::NotPrimary { primary: Some(0) },
                "",
            )),
            Message::Error(ErrorReply::new(
                ErrorCode::NotPrimary { primary: None },
                "ask the map",
            )),
            Message::Error(ErrorReply::new(ErrorCode::NotInSync, "resyncing")),
            Message::Error(ErrorReply::new(ErrorCode::Io, "disk")),
            Message::Error(ErrorReply::new(ErrorCode::Invalid, "what")),
            Message::Error(ErrorReply::new(
                ErrorCode::VersionMismatch { min: 2, max: 4 },
                "",
            )),
            Message::Error(ErrorReply::new(ErrorCode::WrongGroup, "ünïcode")),
            Message::DirtyRegions(vec![region, region]),
            Message::CompareAndWrite(WriteOp {
                volume: 1,
                pg: 2,
                offset: 512,
                fua: false,
                data: Bytes::from(vec![7u8; 1024]),
            }),
            Message::LuEvent(LuEvent {
                volume: 9,
                kind: LuEventKind::LunReset,
                arg: 0,
            }),
            Message::LuEvent(LuEvent {
                volume: 9,
                kind: LuEventKind::Reservations,
                arg: 17,
            }),
            Message::Miscompare { offset: 33 },
            Message::WriteBatch(vec![write.clone(), write.clone()]),
            Message::WriteBatch(vec![]),
            Message::ReplicaWriteBatch(vec![WriteOp {
                data: Bytes::new(),
                ..write.clone()
            }]),
            Message::Answers(vec![
                Ok(()),
                Err(ErrorReply::new(
                    ErrorCode::StaleEpoch { current: 9 },
                    "moved",
                )),
                Err(ErrorReply::new(ErrorCode::Io, "")),
            ]),
            Message::Answers(vec![]),
            Message::Freeze(SnapshotOp {
                volume: 3,
                snapshot: 4,
            }),
            Message::Thaw(SnapshotOp {
                volume: 3,
                snapshot: 4,
            }),
            Message::SnapshotRead(SnapshotRead {
                volume: 3,
                snapshot: 4,
                offset: 4096,
                len: 512,
            }),
        ] {
            roundtrip(m);
        }
    }

    #[test]
    fn long_error_text_is_cut_at_a_char_boundary() {
        let reply = ErrorReply::new(ErrorCode::Io, "é".repeat(MAX_ERROR_TEXT));
        assert!(reply.text.len() <= MAX_ERROR_TEXT);
        assert!(reply.text.len() > MAX_ERROR_TEXT - 2);
        roundtrip(Message::Error(reply));
    }

    #[test]
    fn a_lying_count_is_refused_without_allocating() {
        let payload = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]);
        assert_eq!(
            Message::decode_payload(kind::DIRTY_REGIONS, payload.clone()),
            Err(PayloadError::Truncated)
        );
        assert_eq!(
            Message::decode_payload(kind::DIRTY_QUERY, payload),
            Err(PayloadError::Truncated)
        );
    }

    #[test]
    fn non_canonical_payloads_are_refused() {
        // Trailing bytes after a Flush.
        let flush = Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 1, 9]);
        assert_eq!(
            Message::decode_payload(kind::FLUSH, flush),
            Err(PayloadError::Trailing { extra: 1 })
        );
        // A write flag bit nobody defined.
        let mut w = BytesMut::new();
        w.put_u64(1);
        w.put_u32(1);
        w.put_u64(1);
        w.put_u8(0x02);
        assert_eq!(
            Message::decode_payload(kind::WRITE, w.freeze()),
            Err(PayloadError::UnknownFlags { flags: 2 })
        );
        // "No primary" with a hint.
        let e = Bytes::from_static(&[ERR_NOT_PRIMARY, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0]);
        assert_eq!(
            Message::decode_payload(kind::ERROR, e),
            Err(PayloadError::BadErrorCode)
        );
        // Text that is not UTF-8.
        let e = Bytes::from_static(&[ERR_IO, 0, 1, 0xff]);
        assert_eq!(
            Message::decode_payload(kind::ERROR, e),
            Err(PayloadError::BadUtf8)
        );
    }

    #[test]
    fn oversized_reads_are_refused() {
        let mut r = BytesMut::new();
        r.put_u64(1);
        r.put_u32(1);
        r.put_u64(0);
        r.put_u32(MAX_DATA as u32 + 1);
        assert!(matches!(
            Message::decode_payload(kind::READ, r.freeze()),
            Err(PayloadError::ReadTooLong { .. })
        ));
    }

    /// A batch may not claim more writes, or more data, than the limits, whatever its
    /// length fields say.
    #[test]
    fn a_batch_over_the_limits_is_refused() {
        let write = |len| WriteOp {
            volume: 1,
            pg: 0,
            offset: 0,
            fua: false,
            data: Bytes::from(vec![0u8; len]),
        };
        let too_many = Message::WriteBatch(vec![write(0); MAX_BATCH + 1]);
        let too_much =
            Message::ReplicaWriteBatch(vec![write(MAX_DATA / 2 + 1), write(MAX_DATA / 2)]);
        let many_answers = Message::Answers(vec![Ok(()); MAX_BATCH + 1]);
        for m in [too_many, too_much, many_answers] {
            let mut buf = BytesMut::new();
            m.encode_payload(&mut buf);
            assert!(Message::decode_payload(m.kind(), buf.freeze()).is_err());
        }
        // A length past the payload's end is truncation, not a panic.
        let mut buf = BytesMut::new();
        Message::WriteBatch(vec![write(8)]).encode_payload(&mut buf);
        buf.truncate(buf.len() - 1);
        assert_eq!(
            Message::decode_payload(kind::WRITE_BATCH, buf.freeze()),
            Err(PayloadError::Truncated)
        );
    }
}
