//! Errors: of a payload, of framing, of the protocol (the peer misbehaved), and the crate's
//! [`Error`] that callers of the transport see, with a small [`ErrorKind`] to act on.

use crate::message::ErrorReply;

/// Why a payload whose frame header was fine could not be parsed. The frame was consumed:
/// the connection can go on and the request be answered with `Invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// "payload CRC mismatch (got …, computed …)"
    #[error("payload CRC mismatch (got {got:#010x}, computed {computed:#010x})")]
    Crc { got: u32, computed: u32 },
    /// "payload truncated"
    #[error("payload truncated")]
    Truncated,
    /// "… bytes after the end of the payload"
    #[error("{extra} bytes after the end of the payload")]
    Trailing { extra: usize },
    /// "unknown message kind …"
    #[error("unknown message kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    /// "unknown write flags …"
    #[error("unknown write flags {flags:#04x}")]
    UnknownFlags { flags: u8 },
    /// "write of … bytes exceeds the data limit"
    #[error("write of {len} bytes exceeds the data limit")]
    DataTooLong { len: usize },
    /// "a batch of … writes or answers exceeds the limit"
    #[error("a batch of {count} writes or answers exceeds the limit")]
    BatchTooLong { count: usize },
    /// "read of … bytes exceeds the data limit"
    #[error("read of {len} bytes exceeds the data limit")]
    ReadTooLong { len: u32 },
    /// "error text of … bytes exceeds the limit"
    #[error("error text of {len} bytes exceeds the limit")]
    TextTooLong { len: usize },
    /// "malformed error code"
    #[error("malformed error code")]
    BadErrorCode,
    /// "error text is not UTF-8"
    #[error("error text is not UTF-8")]
    BadUtf8,
}

/// Why bytes could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// "bad magic …": the stream is not this protocol, or framing was lost.
    #[error("bad magic {got:#010x}")]
    BadMagic { got: u32 },
    /// "header CRC mismatch (got …, computed …)": framing can no longer be trusted.
    #[error("header CRC mismatch (got {got:#010x}, computed {computed:#010x})")]
    HeaderCrc { got: u32, computed: u32 },
    /// "unsupported protocol version …"
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion { version: u8 },
    /// "reserved header flags set: …"
    #[error("reserved header flags set: {flags:#06x}")]
    ReservedFlags { flags: u16 },
    /// "unknown message kind …"
    #[error("unknown message kind {kind:#04x}")]
    UnknownKind { kind: u8 },
    /// "payload of … bytes exceeds the limit of …" (refused before allocating).
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// "request …: …": the frame was consumed; only its payload was bad.
    #[error("request {request_id}: {error}")]
    Payload {
        request_id: u64,
        kind: u8,
        error: PayloadError,
    },
}

impl WireError {
    /// After a fatal error the byte stream cannot be re-synchronised: close the connection.
    /// A payload error leaves the stream intact.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, WireError::Payload { .. })
    }
}

/// The peer broke the protocol; the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// "expected … during the handshake, got kind …"
    #[error("expected {expected} during the handshake, got kind {got:#04x}")]
    Handshake { expected: &'static str, got: u8 },
    /// "handshake refused: …"
    #[error("handshake refused: {0}")]
    Refused(ErrorReply),
    /// "peer belongs to group …, this member to group …"
    #[error("peer belongs to group {theirs:#x}, this member to group {ours:#x}")]
    WrongGroup { ours: u128, theirs: u128 },
    /// "no common version: we speak …..=…, the peer …..=…"
    #[error(
        "no common version: we speak {our_min}..={our_max}, the peer {their_min}..={their_max}"
    )]
    NoCommonVersion {
        our_min: u8,
        our_max: u8,
        their_min: u8,
        their_max: u8,
    },
    /// "peer chose version … outside …..=…"
    #[error("peer chose version {chosen} outside {min}..={max}")]
    BadVersionChoice { chosen: u8, min: u8, max: u8 },
    /// "frame in version … on a connection using version …"
    #[error("frame in version {got} on a connection using version {expected}")]
    WrongVersion { expected: u8, got: u8 },
    /// "response to request … which is not in flight"
    #[error("response to request {request_id} which is not in flight")]
    UnknownResponse { request_id: u64 },
    /// "request … is already in flight"
    #[error("request {request_id} is already in flight")]
    DuplicateRequest { request_id: u64 },
    /// "request id 0 is reserved for the handshake"
    #[error("request id 0 is reserved for the handshake")]
    ReservedRequestId,
    /// "more than … requests in flight"
    #[error("more than {limit} requests in flight")]
    TooManyInFlight { limit: u32 },
    /// "a … may not be sent to this side"
    #[error("a message of kind {kind:#04x} may not be sent to this side")]
    UnexpectedKind { kind: u8 },
}

/// What went wrong, in a form a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connecting or talking to the peer failed at the socket.
    Io,
    /// The peer sent bytes or messages that break the protocol.
    Protocol,
    /// The peer answered the request with an Error message.
    Remote,
    /// No answer within the time allowed; the request may or may not have been applied.
    Timeout,
    /// The connection is gone; requests in flight may or may not have been applied.
    /// Reconnect and retry (writes are idempotent at the same offset).
    Disconnected,
    /// The caller misused the API (wrong message kind, too large, not connected yet).
    Usage,
}

/// The error callers of this crate see.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// "i/o: …"
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// "wire: …"
    #[error("wire: {0}")]
    Wire(#[from] WireError),
    /// "protocol: …"
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// "peer refused: …"
    #[error("peer refused: {0}")]
    Remote(ErrorReply),
    /// "timed out after …"
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// "connection lost: …"
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// "not a request: kind …"
    #[error("not a request: kind {kind:#04x}")]
    NotARequest { kind: u8 },
    /// "not a response: kind …"
    #[error("not a response: kind {kind:#04x}")]
    NotAResponse { kind: u8 },
    /// "request … is not in flight"
    #[error("request {request_id} is not in flight")]
    NotInFlight { request_id: u64 },
    /// "the handshake has not completed"
    #[error("the handshake has not completed")]
    NotEstablished,
    /// "… requests already in flight (the limit)"
    #[error("{limit} requests already in flight (the limit)")]
    InFlightLimit { limit: u32 },
    /// "message of … bytes exceeds the payload limit"
    #[error("message of {len} bytes exceeds the payload limit")]
    TooLarge { len: usize },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io(_) => ErrorKind::Io,
            Error::Wire(_) | Error::Protocol(_) => ErrorKind::Protocol,
            Error::Remote(_) => ErrorKind::Remote,
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Disconnected(_) => ErrorKind::Disconnected,
            Error::NotARequest { .. }
            | Error::NotAResponse { .. }
            | Error::NotInFlight { .. }
            | Error::NotEstablished
            | Error::InFlightLimit { .. }
            | Error::TooLarge { .. } => ErrorKind::Usage,
        }
    }

    /// The peer's Error message, if that is what this is.
    pub fn remote(&self) -> Option<&ErrorReply> {
        match self {
            Error::Remote(reply) => Some(reply),
            _ => None,
        }
    }
}
