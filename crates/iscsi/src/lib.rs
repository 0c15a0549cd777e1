//! iSCSI (RFC 7143) for haven: the PDU codec, text keys and their negotiation, CHAP, and
//! the target-side login and full-feature engines.
//!
//! Every engine here is a state machine that does no I/O: PDUs and events go in, PDUs
//! and actions come out. The member service drives them over tokio sockets; tests and
//! fuzz targets drive them directly.

pub mod chap;
pub mod codec;
pub mod digest;
pub mod directory;
pub mod keys;
pub mod login;
pub mod outq;
pub mod pdu;
pub mod session;
pub mod text;

pub use codec::{Codec, CodecError, Encoded};
pub use directory::{ChapSecrets, Directory, Lookup, TargetRecord};
pub use login::{Login, LoginOutcome, LoginStep};
pub use outq::Outgoing;
pub use pdu::{Opcode, Pdu};
pub use session::{Action, Command, Outcome, Session, Tmf};

/// SCSI GOOD status.
pub const STATUS_GOOD: u8 = 0;

/// Fixed-format sense data for a key / ASC / ASCQ (used for transport-level failures).
pub fn sense_bytes(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}
