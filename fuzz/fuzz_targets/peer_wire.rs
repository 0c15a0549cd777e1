//! `peer::Decoder::decode` on arbitrary bytes, then the connection engines on whatever
//! decodes. Every decoded frame must re-encode to exactly the bytes it was decoded from.
//!
//! The first byte picks a mode: bit 0 a small payload limit, bit 1 "repair CRCs" (each
//! header's payload and header CRC32C are recomputed so the fuzzer reaches the payload
//! parsers and the engines instead of bouncing off the checksums), bit 2 a completed
//! handshake on both engines with requests 1..=8 in flight on the client.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peer::{
    ClientEngine, ClientEvent, Config, Decoder, Message, ServerAction, ServerEngine, HEADER_LEN,
    MAX_PAYLOAD,
};

const GROUP: u128 = 7;

/// Recompute the CRCs of every frame-shaped chunk so that they match.
fn repair_crcs(bytes: &mut [u8]) {
    let mut at = 0;
    while bytes.len() - at >= HEADER_LEN {
        let len_field = u32::from_be_bytes(bytes[at + 24..at + 28].try_into().unwrap()) as usize;
        let payload_len = len_field.min(bytes.len() - at - HEADER_LEN);
        let payload = at + HEADER_LEN..at + HEADER_LEN + payload_len;
        let payload_crc = crc32c::crc32c(&bytes[payload.clone()]);
        bytes[at + 28..at + 32].copy_from_slice(&payload_crc.to_be_bytes());
        let header_crc = crc32c::crc32c(&bytes[at..at + 32]);
        bytes[at + 32..at + 36].copy_from_slice(&header_crc.to_be_bytes());
        at = payload.end;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let decoder = Decoder {
        max_payload: if mode & 1 != 0 { 1024 } else { MAX_PAYLOAD },
    };
    let mut input = rest.to_vec();
    if mode & 2 != 0 {
        repair_crcs(&mut input);
    }

    let mut client = ClientEngine::new(Config::new(1, GROUP));
    let mut server = ServerEngine::new(Config::new(2, GROUP));
    if mode & 4 != 0 {
        let actions = server.on_frame(client.hello(), 0).unwrap();
        let ServerAction::Send(ack) = actions[0].clone() else {
            panic!("no HelloAck: {actions:?}")
        };
        assert!(matches!(client.on_frame(ack), Ok(ClientEvent::Established(_))));
        for _ in 0..8 {
            client.request(0, Message::Ping { nonce: 0 }).unwrap();
        }
    }

    let mut buf = BytesMut::from(&input[..]);
    let mut offset = 0;
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                let original = &input[offset..offset + consumed];
                offset += consumed;
                assert!(consumed >= HEADER_LEN);
                assert!(consumed - HEADER_LEN <= decoder.max_payload);
                let again = frame.to_bytes().expect("a decoded frame re-encodes");
                assert_eq!(&again[..], original, "decoding is canonical");
                let pieces = frame.encode_parts().expect("a decoded frame re-encodes");
                assert_eq!(&pieces.to_bytes()[..], original, "the vectored encoding agrees");

                let epoch = frame.epoch;
                if let Ok(actions) = server.on_frame(frame.clone(), epoch % 3) {
                    for action in actions {
                        if let ServerAction::Handle(request) = action {
                            server
                                .respond(request.request_id, 0, Message::Ok)
                                .expect("a handled request can be answered");
                        }
                    }
                }
                if let Ok(ClientEvent::Response { message, .. }) = client.on_frame(frame) {
                    assert!(message.is_response());
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "asking for more consumes nothing");
                break;
            }
            Err(e) if e.is_fatal() => {
                assert_eq!(buf.len(), before, "a fatal error consumes nothing");
                break;
            }
            Err(_) => {
                assert!(buf.len() < before, "a payload error consumes its frame");
                offset += before - buf.len();
            }
        }
    }
});
