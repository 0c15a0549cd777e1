//! Framing: [`Frame`]s to bytes and back.
//!
//! ```text
//!  0       4    5    6       8              16             24        28          32         36
//!  | magic | ver| kind| flags | request id   | epoch        | pay len | pay CRC32C| hdr CRC32C| payload …
//!  "HVPR"   u8   u8    u16=0   u64            u64            u32       u32         u32
//! ```
//!
//! All integers big-endian. The header CRC32C covers bytes 0..32; the payload CRC32C covers
//! the payload. The header is checked as soon as its 36 bytes are in, so an oversized length
//! is refused before anything is allocated for the payload. Hello and HelloAck always travel
//! in version 1 framing, which every later version must keep; every other frame travels in the
//! version the handshake chose.

use crate::error::WireError;
use crate::message::{kind, Message, PayloadSink, MAX_DATA};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::ops::Range;

/// The first four bytes of every frame: "HVPR".
pub const MAGIC: u32 = u32::from_be_bytes(*b"HVPR");
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 36;
/// Protocol versions this build speaks.
pub const MIN_VERSION: u8 = 1;
pub const MAX_VERSION: u8 = 2;
/// The largest payload accepted by default: the data limit plus room for the fixed fields
/// (of a whole batch of writes).
pub const MAX_PAYLOAD: usize = MAX_DATA + 64 * 1024;

/// One message with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The protocol version the frame is encoded in.
    pub version: u8,
    /// Matches a response to its request; 0 is the handshake's.
    pub request_id: u64,
    /// The placement map epoch the sender acted under.
    pub epoch: u64,
    pub message: Message,
}

impl Frame {
    pub fn new(version: u8, request_id: u64, epoch: u64, message: Message) -> Self {
        Frame {
            version,
            request_id,
            epoch,
            message,
        }
    }

    /// Bytes the frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.message.payload_len()
    }

    /// Append the frame to `dst`; refuses a payload above [`MAX_PAYLOAD`] (the peer would).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), WireError> {
        let payload_len = self.checked_payload_len()?;
        dst.reserve(HEADER_LEN + payload_len);
        let start = dst.len();
        dst.put_bytes(0, HEADER_LEN);
        self.message.encode_payload(dst);
        debug_assert_eq!(dst.len() - start - HEADER_LEN, payload_len);
        let payload_crc = crc32c::crc32c(&dst[start + HEADER_LEN..]);
        self.put_header(
            &mut dst[start..start + HEADER_LEN],
            payload_len,
            payload_crc,
        );
        Ok(())
    }

    /// The frame as pieces for a vectored write, the same bytes as [`encode`](Self::encode)
    /// gives: the header and the fixed fields copied, the data of writes and reads (1 KiB or
    /// more) by reference, so nothing copies a write between the buffer it arrived in and the
    /// socket it leaves by.
    pub fn encode_parts(&self) -> Result<Encoded, WireError> {
        let payload_len = self.checked_payload_len()?;
        let mut sink = Parts {
            fields: BytesMut::with_capacity(HEADER_LEN + payload_len.min(FIELDS_HINT)),
            pieces: Vec::new(),
            open: 0,
        };
        sink.fields.put_bytes(0, HEADER_LEN);
        self.message.encode_payload(&mut sink);
        sink.close_fields();
        let Parts {
            mut fields, pieces, ..
        } = sink;
        // The first piece holds the header's placeholder; the payload starts after it.
        let payload_of = |range: &Range<usize>| range.start.max(HEADER_LEN)..range.end;
        let payload_crc = pieces.iter().fold(0, |crc, piece| match piece {
            Piece::Fields(range) => crc32c::crc32c_append(crc, &fields[payload_of(range)]),
            Piece::Data(data) => crc32c::crc32c_append(crc, data),
        });
        self.put_header(&mut fields[..HEADER_LEN], payload_len, payload_crc);
        let fields = fields.freeze();
        let parts = pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Fields(range) => fields.slice(range),
                Piece::Data(data) => data,
            })
            .collect();
        Ok(Encoded { parts })
    }

    fn checked_payload_len(&self) -> Result<usize, WireError> {
        let payload_len = self.message.payload_len();
        if payload_len > MAX_PAYLOAD {
            return Err(WireError::TooLarge {
                len: payload_len,
                max: MAX_PAYLOAD,
            });
        }
        Ok(payload_len)
    }

    /// Fill the [`HEADER_LEN`] bytes of `header`.
    fn put_header(&self, header: &mut [u8], payload_len: usize, payload_crc: u32) {
        let mut fields = &mut header[..HEADER_LEN - 4];
        fields.put_u32(MAGIC);
        fields.put_u8(self.version);
        fields.put_u8(self.message.kind());
        fields.put_u16(0);
        fields.put_u64(self.request_id);
        fields.put_u64(self.epoch);
        fields.put_u32(payload_len as u32);
        fields.put_u32(payload_crc);
        let header_crc = crc32c::crc32c(&header[..HEADER_LEN - 4]);
        header[HEADER_LEN - 4..].copy_from_slice(&header_crc.to_be_bytes());
    }

    /// The frame in a buffer of its own.
    pub fn to_bytes(&self) -> Result<Bytes, WireError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// Room first set aside for a frame's fixed fields (a batch of 64 writes has about 1.6 KiB).
const FIELDS_HINT: usize = 512;
/// Data at least this long travels by reference; shorter data is copied with the fields
/// (an `iovec` and a reference count cost more than copying a few hundred bytes).
const BY_REFERENCE: usize = 1024;

/// A frame encoded for a vectored write ([`Frame::encode_parts`]): its bytes in order, in
/// pieces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded {
    parts: Vec<Bytes>,
}

impl Encoded {
    /// The frame's bytes on the wire.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    pub fn into_parts(self) -> Vec<Bytes> {
        self.parts
    }

    /// The pieces joined (for tests and handshakes, where a copy does not matter).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        for part in &self.parts {
            out.put_slice(part);
        }
        out.freeze()
    }
}

/// The sink of [`Frame::encode_parts`]: fixed fields into one buffer, long data kept aside.
struct Parts {
    fields: BytesMut,
    pieces: Vec<Piece>,
    /// Where the fields not yet closed into a piece start.
    open: usize,
}

enum Piece {
    Fields(Range<usize>),
    Data(Bytes),
}

impl Parts {
    fn close_fields(&mut self) {
        if self.fields.len() > self.open {
            self.pieces
                .push(Piece::Fields(self.open..self.fields.len()));
            self.open = self.fields.len();
        }
    }
}

// SAFETY: every method hands on to the `BytesMut` that holds the fields, which upholds the
// trait's contract itself.
unsafe impl BufMut for Parts {
    fn remaining_mut(&self) -> usize {
        self.fields.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's promise about `cnt` is about `chunk_mut`, which is the
        // fields' own.
        unsafe { self.fields.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.fields.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        self.fields.put_slice(src);
    }
}

impl PayloadSink for Parts {
    fn put_data(&mut self, data: &Bytes) {
        if data.len() < BY_REFERENCE {
            self.fields.put_slice(data);
        } else {
            self.close_fields();
            self.pieces.push(Piece::Data(data.clone()));
        }
    }
}

/// Incremental frame decoder: feed it the bytes read so far, get whole frames out.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Largest payload accepted; larger frames are refused from their header alone.
    pub max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            max_payload: MAX_PAYLOAD,
        }
    }
}

/// A frame header that passed its checks.
struct Header {
    version: u8,
    kind: u8,
    request_id: u64,
    epoch: u64,
    payload_len: usize,
    payload_crc: u32,
}

impl Decoder {
    /// Take one frame off the front of `src`.
    ///
    /// `Ok(None)`: not a whole frame yet; nothing was consumed, read more and call again.
    /// A fatal error ([`WireError::is_fatal`]) consumes nothing and the connection must be
    /// closed; a [`WireError::Payload`] error consumed the bad frame.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = self.check_header(&src[..HEADER_LEN])?;
        let total = HEADER_LEN + header.payload_len;
        if src.len() < total {
            // Room for the rest, now that the length is known to be within bounds.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(header.payload_len).freeze();
        let payload_error = |error| WireError::Payload {
            request_id: header.request_id,
            kind: header.kind,
            error,
        };
        let computed = crc32c::crc32c(&payload);
        if computed != header.payload_crc {
            return Err(payload_error(crate::error::PayloadError::Crc {
                got: header.payload_crc,
                computed,
            }));
        }
        let message = Message::decode_payload(header.kind, payload).map_err(payload_error)?;
        Ok(Some(Frame {
            version: header.version,
            request_id: header.request_id,
            epoch: header.epoch,
            message,
        }))
    }

    fn check_header(&self, mut h: &[u8]) -> Result<Header, WireError> {
        let computed = crc32c::crc32c(&h[..HEADER_LEN - 4]);
        let magic = h.get_u32();
        if magic != MAGIC {
            return Err(WireError::BadMagic { got: magic });
        }
        let version = h.get_u8();
        let kind = h.get_u8();
        let flags = h.get_u16();
        let request_id = h.get_u64();
        let epoch = h.get_u64();
        let payload_len = h.get_u32() as usize;
        let payload_crc = h.get_u32();
        let got = h.get_u32();
        if got != computed {
            return Err(WireError::HeaderCrc { got, computed });
        }
        if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
            return Err(WireError::UnsupportedVersion { version });
        }
        if flags != 0 {
            return Err(WireError::ReservedFlags { flags });
        }
        if !kind::is_known(kind) {
            return Err(WireError::UnknownKind { kind });
        }
        if payload_len > self.max_payload {
            return Err(WireError::TooLarge {
                len: payload_len,
                max: self.max_payload,
            });
        }
        Ok(Header {
            version,
            kind,
            request_id,
            epoch,
            payload_len,
            payload_crc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PayloadError;
    use crate::message::{ReadOp, WriteOp};

    fn write_frame() -> Frame {
        Frame::new(
            1,
            77,
            5,
            Message::Write(WriteOp {
                volume: 3,
                pg: 12,
                offset: 4096,
                fua: false,
                data: Bytes::from(vec![0xab; 1000]),
            }),
        )
    }

    #[test]
    fn a_frame_decodes_to_itself_and_consumes_exactly_its_bytes() {
        let frame = write_frame();
        let mut buf = BytesMut::new();
        frame.encode(&mut buf).unwrap();
        assert_eq!(buf.len(), frame.encoded_len());
        buf.put_slice(b"next");
        let back = Decoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, frame);
        assert_eq!(&buf[..], b"next");
    }

    #[test]
    fn vectored_frames_keep_long_data_by_reference_and_decode_like_the_others() {
        let long = Bytes::from(vec![0x5a; 4096]);
        let short = Bytes::from(vec![0x11; 100]);
        let op = |data: &Bytes| WriteOp {
            volume: 1,
            pg: 2,
            offset: 0,
            fua: false,
            data: data.clone(),
        };
        let frame = Frame::new(
            2,
            9,
            3,
            Message::WriteBatch(vec![op(&long), op(&short), op(&long)]),
        );
        let encoded = frame.encode_parts().unwrap();
        let parts = encoded.clone().into_parts();
        let by_reference = parts
            .iter()
            .filter(|p| p.as_ptr() == long.as_ptr() && p.len() == long.len())
            .count();
        assert_eq!(by_reference, 2, "the long data is not copied");
        assert_eq!(
            parts.len(),
            4,
            "header and fields, data, fields and short data, data"
        );
        let mut buf = BytesMut::from(&encoded.to_bytes()[..]);
        assert_eq!(Decoder::default().decode(&mut buf).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_prefix_asks_for_more_and_consumes_nothing() {
        let bytes = write_frame().to_bytes().unwrap();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(Decoder::default().decode(&mut buf), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn pipelined_frames_come_out_in_order() {
        let mut buf = BytesMut::new();
        for id in 1..=5 {
            Frame::new(1, id, 9, Message::Ping { nonce: id })
                .encode(&mut buf)
                .unwrap();
        }
        let decoder = Decoder::default();
        for id in 1..=5 {
            let f = decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(f.request_id, id);
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_header_alone() {
        let decoder = Decoder { max_payload: 100 };
        let mut buf = BytesMut::new();
        Frame::new(1, 1, 1, Message::Data(Bytes::from(vec![0; 101])))
            .encode(&mut buf)
            .unwrap();
        buf.truncate(HEADER_LEN);
        let capacity = buf.capacity();
        assert_eq!(
            decoder.decode(&mut buf),
            Err(WireError::TooLarge { len: 101, max: 100 })
        );
        assert_eq!(buf.len(), HEADER_LEN);
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn the_encoder_refuses_what_the_decoder_would() {
        let frame = Frame::new(
            1,
            1,
            1,
            Message::Data(Bytes::from(vec![0; MAX_PAYLOAD + 1])),
        );
        assert!(matches!(
            frame.encode(&mut BytesMut::new()),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_flipped_header_bit_is_a_header_crc_error() {
        let mut bytes = BytesMut::from(&write_frame().to_bytes().unwrap()[..]);
        bytes[10] ^= 0x01;
        assert!(matches!(
            Decoder::default().decode(&mut bytes),
            Err(WireError::HeaderCrc { .. })
        ));
    }

    #[test]
    fn a_flipped_payload_bit_consumes_the_frame_and_names_the_request() {
        let mut bytes = BytesMut::from(&write_frame().to_bytes().unwrap()[..]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let err = Decoder::default().decode(&mut bytes).unwrap_err();
        assert!(!err.is_fatal());
        assert!(matches!(
            err,
            WireError::Payload {
                request_id: 77,
                error: PayloadError::Crc { .. },
                ..
            }
        ));
        assert!(bytes.is_empty());
    }

    /// A header with valid CRC but chosen fields, to reach the checks behind the CRC.
    fn header(version: u8, kind: u8, flags: u16, len: u32) -> BytesMut {
        let mut h = BytesMut::new();
        h.put_u32(MAGIC);
        h.put_u8(version);
        h.put_u8(kind);
        h.put_u16(flags);
        h.put_u64(1);
        h.put_u64(1);
        h.put_u32(len);
        h.put_u32(crc32c::crc32c(&[]));
        let crc = crc32c::crc32c(&h);
        h.put_u32(crc);
        h
    }

    #[test]
    fn header_fields_are_checked() {
        let d = Decoder::default();
        assert_eq!(
            d.decode(&mut header(MAX_VERSION + 1, kind::OK, 0, 0)),
            Err(WireError::UnsupportedVersion {
                version: MAX_VERSION + 1
            })
        );
        assert_eq!(
            d.decode(&mut header(1, kind::OK, 4, 0)),
            Err(WireError::ReservedFlags { flags: 4 })
        );
        assert_eq!(
            d.decode(&mut header(1, 0x7f, 0, 0)),
            Err(WireError::UnknownKind { kind: 0x7f })
        );
        assert!(d.decode(&mut header(1, kind::OK, 0, 0)).unwrap().is_some());
        let mut bad = header(1, kind::OK, 0, 0);
        bad[0] = b'X';
        assert!(matches!(
            d.decode(&mut bad),
            Err(WireError::BadMagic { .. })
        ));
    }

    #[test]
    fn a_short_payload_for_its_kind_is_a_payload_error() {
        let mut buf = BytesMut::new();
        Frame::new(
            1,
            3,
            1,
            Message::Read(ReadOp {
                volume: 1,
                pg: 1,
                offset: 1,
                len: 1,
            }),
        )
        .encode(&mut buf)
        .unwrap();
        // Re-label the Read as a Hello (different payload size) and fix both CRCs.
        buf[5] = kind::HELLO;
        let crc = crc32c::crc32c(&buf[..HEADER_LEN - 4]);
        buf[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
        let err = Decoder::default().decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            WireError::Payload {
                request_id: 3,
                error: PayloadError::Truncated | PayloadError::Trailing { .. },
                ..
            }
        ));
    }
}
