//! Codec::decode on arbitrary bytes, with and without digests; whatever decodes must
//! re-encode to something that decodes to the same PDU.
#![no_main]

use bytes::BytesMut;
use iscsi::{Codec, CodecError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let codec = Codec {
        header_digest: mode & 1 != 0,
        data_digest: mode & 2 != 0,
        max_recv_data: if mode & 4 != 0 { 512 } else { 1 << 24 },
    };
    let mut buf = BytesMut::from(rest);
    loop {
        let before = buf.len();
        match codec.decode(&mut buf) {
            Ok(Some(pdu)) => {
                assert!(buf.len() < before, "a decoded PDU consumes bytes");
                assert!(pdu.data.len() <= codec.max_recv_data);
                assert_eq!(pdu.ahs.len(), pdu.declared_ahs_len());
                assert_eq!(pdu.data.len(), pdu.declared_data_len());
                let enc = codec.encode(pdu.clone());
                assert_eq!(enc.len(), before - buf.len(), "re-encoding has the decoded size");
                let mut again = BytesMut::from(&enc.to_vec()[..]);
                let back = codec.decode(&mut again).expect("re-encoded PDU decodes").expect("complete");
                assert!(again.is_empty());
                assert_eq!(back, pdu);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete PDU consumes nothing");
                break;
            }
            Err(CodecError::DataDigest { pdu }) => {
                assert!(buf.len() < before);
                assert!(codec.data_digest && !pdu.data.is_empty());
            }
            Err(CodecError::Oversize { len, max, .. }) => {
                assert!(len > max);
                assert_eq!(buf.len(), before);
                break;
            }
            Err(CodecError::HeaderDigest { .. }) => {
                assert!(codec.header_digest);
                break;
            }
        }
    }
});
