//! Framing: bytes from the wire into [`Pdu`]s and back, with digests and size limits.
//!
//! ```text
//!  | BHS 48 | AHS (4n) | HeaderDigest? | Data (padded to 4) | DataDigest? |
//! ```
//! Digests are off during login and switch on (if negotiated) with the first PDU after
//! the final Login Response; the connection engine tells the codec when.

use crate::digest;
use crate::outq::Outgoing;
use crate::pdu::{Pdu, BHS_LEN};
use bytes::{Buf, Bytes, BytesMut};

/// Why bytes could not be framed into a PDU.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The header digest did not match: the stream can no longer be trusted.
    #[error("header digest mismatch (got {got:#010x}, computed {computed:#010x})")]
    HeaderDigest { got: u32, computed: u32 },
    /// The data digest did not match; the header is intact, so the PDU can be rejected.
    #[error("data digest mismatch on a PDU with opcode {:#04x}", .pdu.raw_opcode())]
    DataDigest { pdu: Box<Pdu> },
    /// The data segment is larger than the MaxRecvDataSegmentLength this side declared.
    #[error("data segment of {len} bytes exceeds the negotiated maximum of {max}")]
    Oversize {
        len: usize,
        max: usize,
        pdu: Box<Pdu>,
    },
}

/// Framing parameters of one connection, in the direction of bytes this side receives.
#[derive(Debug, Clone)]
pub struct Codec {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Largest data segment accepted (this side's MaxRecvDataSegmentLength).
    pub max_recv_data: usize,
}

impl Default for Codec {
    fn default() -> Self {
        Codec {
            header_digest: false,
            data_digest: false,
            // Login PDUs may carry up to the default MaxRecvDataSegmentLength.
            max_recv_data: 8192,
        }
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// A PDU ready for the wire: the header part, the data segment (shared, not copied) and
/// the pad + data digest trailer.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub head: Bytes,
    pub data: Bytes,
    pub tail: Bytes,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len() + self.tail.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// All bytes in one buffer (tests, small PDUs).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.head);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.tail);
        v
    }
}

impl Codec {
    /// Take one PDU off the front of `buf`, or `Ok(None)` if more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, CodecError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let ahs_len = buf[4] as usize * 4;
        let data_len = ((buf[5] as usize) << 16) | ((buf[6] as usize) << 8) | buf[7] as usize;
        let hd = if self.header_digest { 4 } else { 0 };
        let dd = if self.data_digest && data_len > 0 {
            4
        } else {
            0
        };
        let head_len = BHS_LEN + ahs_len + hd;
        if buf.len() >= head_len && data_len > self.max_recv_data {
            // Check the header first so a corrupt length is reported as such.
            self.check_header_digest(&buf[..head_len], ahs_len)?;
            let mut pdu = Pdu::new(crate::pdu::Opcode::NopOut);
            pdu.bhs.copy_from_slice(&buf[..BHS_LEN]);
            return Err(CodecError::Oversize {
                len: data_len,
                max: self.max_recv_data,
                pdu: Box::new(pdu),
            });
        }
        let total = head_len + data_len + pad4(data_len) + dd;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        self.check_header_digest(&buf[..head_len], ahs_len)?;
        let mut frame = buf.split_to(total).freeze();
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&frame[..BHS_LEN]);
        frame.advance(BHS_LEN);
        let ahs = frame.split_to(ahs_len);
        frame.advance(hd);
        let padded = frame.split_to(data_len + pad4(data_len));
        let data = padded.slice(..data_len);
        let pdu = Pdu { bhs, ahs, data };
        if dd == 4 {
            let got = digest::from_wire([frame[0], frame[1], frame[2], frame[3]]);
            if got != digest::crc32c(&padded) {
                return Err(CodecError::DataDigest { pdu: Box::new(pdu) });
            }
        }
        Ok(Some(pdu))
    }

    fn check_header_digest(&self, head: &[u8], ahs_len: usize) -> Result<(), CodecError> {
        if !self.header_digest {
            return Ok(());
        }
        let covered = &head[..BHS_LEN + ahs_len];
        let at = BHS_LEN + ahs_len;
        let got = digest::from_wire([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let computed = digest::crc32c(covered);
        if got != computed {
            return Err(CodecError::HeaderDigest { got, computed });
        }
        Ok(())
    }

    /// Frame `pdu` for sending, with this codec's digest settings (the peer's receive
    /// direction uses the same negotiated digests).
    pub fn encode(&self, mut pdu: Pdu) -> Encoded {
        pdu.fix_lengths();
        let mut head = BytesMut::with_capacity(BHS_LEN + pdu.ahs.len() + 4);
        head.extend_from_slice(&pdu.bhs);
        head.extend_from_slice(&pdu.ahs);
        if self.header_digest {
            let crc = digest::crc32c(&head);
            head.extend_from_slice(&digest::to_wire(crc));
        }
        let pad = pad4(pdu.data.len());
        let mut tail = BytesMut::new();
        if pad > 0 || (self.data_digest && !pdu.data.is_empty()) {
            tail.extend_from_slice(&[0u8; 3][..pad]);
            if self.data_digest && !pdu.data.is_empty() {
                let crc = digest::crc32c_append(digest::crc32c(&pdu.data), &tail);
                tail.extend_from_slice(&digest::to_wire(crc));
            }
        }
        Encoded {
            head: head.freeze(),
            data: pdu.data,
            tail: tail.freeze(),
        }
    }
}

impl Codec {
    /// Frame `pdu` onto `out`: as [`Codec::encode`], without allocating per PDU (the
    /// header goes into `out`'s staging buffer, a large data segment by reference).
    pub fn encode_to(&self, mut pdu: Pdu, out: &mut Outgoing) {
        pdu.fix_lengths();
        let mut head = [0u8; BHS_LEN + 4];
        head[..BHS_LEN].copy_from_slice(&pdu.bhs);
        if pdu.ahs.is_empty() {
            let n = if self.header_digest {
                let crc = digest::crc32c(&pdu.bhs);
                head[BHS_LEN..].copy_from_slice(&digest::to_wire(crc));
                BHS_LEN + 4
            } else {
                BHS_LEN
            };
            out.push_copy(&head[..n]);
        } else {
            out.push_copy(&pdu.bhs);
            out.push_copy(&pdu.ahs);
            if self.header_digest {
                let crc = digest::crc32c_append(digest::crc32c(&pdu.bhs), &pdu.ahs);
                out.push_copy(&digest::to_wire(crc));
            }
        }
        if pdu.data.is_empty() {
            return;
        }
        let pad = pad4(pdu.data.len());
        let digest = self
            .data_digest
            .then(|| digest::crc32c_append(digest::crc32c(&pdu.data), &[0u8; 3][..pad]));
        out.push_shared(pdu.data);
        out.push_copy(&[0u8; 3][..pad]);
        if let Some(crc) = digest {
            out.push_copy(&digest::to_wire(crc));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::Opcode;

    fn sample(len: usize) -> Pdu {
        let mut p = Pdu::new(Opcode::DataOut);
        p.set_itt(0x1234);
        p.data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
        p
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = Codec {
                header_digest: hd,
                data_digest: dd,
                max_recv_data: 1 << 20,
            };
            for len in [0, 1, 3, 4, 5, 4096, 4097] {
                let enc = c.encode(sample(len)).to_vec();
                let mut buf = BytesMut::from(&enc[..]);
                // Fed one byte short, nothing comes out.
                let mut short = BytesMut::from(&enc[..enc.len() - 1]);
                assert!(c.decode(&mut short).unwrap().is_none());
                let pdu = c.decode(&mut buf).unwrap().unwrap();
                assert_eq!(pdu.data.len(), len);
                assert_eq!(pdu.itt(), 0x1234);
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn encode_to_matches_encode() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let c = Codec {
                header_digest: hd,
                data_digest: dd,
                max_recv_data: 1 << 20,
            };
            for len in [0, 1, 3, 4, 1023, 1025, 4096, 4097] {
                let mut p = sample(len);
                p.ahs = Bytes::from_static(&[0, 5, 1, 0, 9, 9, 9, 9]);
                let mut q = Outgoing::default();
                c.encode_to(p.clone(), &mut q);
                c.encode_to(p.clone(), &mut q);
                let mut twice = c.encode(p.clone()).to_vec();
                twice.extend_from_slice(&c.encode(p).to_vec());
                assert_eq!(q.to_vec(), twice, "hd {hd} dd {dd} len {len}");
            }
        }
    }

    #[test]
    fn corrupt_digests_are_detected() {
        let c = Codec {
            header_digest: true,
            data_digest: true,
            max_recv_data: 1 << 20,
        };
        let enc = c.encode(sample(100)).to_vec();
        let mut bad_head = enc.clone();
        bad_head[20] ^= 1;
        assert!(matches!(
            c.decode(&mut BytesMut::from(&bad_head[..])),
            Err(CodecError::HeaderDigest { .. })
        ));
        let mut bad_data = enc.clone();
        bad_data[60] ^= 1;
        assert!(matches!(
            c.decode(&mut BytesMut::from(&bad_data[..])),
            Err(CodecError::DataDigest { .. })
        ));
    }

    #[test]
    fn oversize_segment_is_refused_before_buffering_it() {
        let c = Codec::default();
        let mut p = Pdu::new(Opcode::DataOut);
        p.data = Bytes::from(vec![0u8; 9000]);
        let enc = c.encode(p).to_vec();
        let mut buf = BytesMut::from(&enc[..BHS_LEN]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::Oversize { len: 9000, .. })
        ));
    }
}
