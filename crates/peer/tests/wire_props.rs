//! Properties of the framing: every frame round-trips, arbitrary bytes never panic the
//! decoder, and a truncated frame asks for more without consuming anything.

use bytes::{Bytes, BytesMut};
use peer::message::{
    ErrorCode, ErrorReply, FlushOp, Hello, HelloAck, LuEvent, LuEventKind, ReadOp, Region,
    SnapshotOp, SnapshotRead, WriteOp,
};
use peer::{Decoder, Frame, Message, HEADER_LEN};
use proptest::prelude::*;

fn data() -> impl Strategy<Value = Bytes> {
    // Short and long: long data travels by reference in a vectored frame.
    prop_oneof![0..600usize, 1024..1200usize]
        .prop_flat_map(|len| proptest::collection::vec(any::<u8>(), len))
        .prop_map(Bytes::from)
}

fn region() -> impl Strategy<Value = Region> {
    (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(volume, pg, offset, len)| Region {
            volume,
            pg,
            offset,
            len,
        },
    )
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        data(),
    )
        .prop_map(|(volume, pg, offset, fua, data)| WriteOp {
            volume,
            pg,
            offset,
            fua,
            data,
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        any::<u64>().prop_map(|current| ErrorCode::StaleEpoch { current }),
        any::<Option<u64>>().prop_map(|primary| ErrorCode::NotPrimary { primary }),
        Just(ErrorCode::NotInSync),
        Just(ErrorCode::Io),
        Just(ErrorCode::Invalid),
        (any::<u8>(), any::<u8>()).prop_map(|(min, max)| ErrorCode::VersionMismatch { min, max }),
        Just(ErrorCode::WrongGroup),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u8>(),
            any::<u64>(),
            any::<u128>(),
            any::<u32>()
        )
            .prop_map(|(min_version, max_version, member, group, max_in_flight)| {
                Message::Hello(Hello {
                    min_version,
                    max_version,
                    member,
                    group,
                    max_in_flight,
                })
            }),
        (any::<u8>(), any::<u64>(), any::<u32>()).prop_map(|(version, member, max_in_flight)| {
            Message::HelloAck(HelloAck {
                version,
                member,
                max_in_flight,
            })
        }),
        write_op().prop_map(Message::Write),
        write_op().prop_map(Message::ReplicaWrite),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            0..=peer::MAX_DATA as u32
        )
            .prop_map(|(volume, pg, offset, len)| Message::Read(ReadOp {
                volume,
                pg,
                offset,
                len,
            })),
        any::<u64>().prop_map(|volume| Message::Flush(FlushOp { volume })),
        any::<u64>().prop_map(|volume| Message::ReplicaFlush(FlushOp { volume })),
        region().prop_map(Message::Unmap),
        region().prop_map(Message::ReplicaUnmap),
        region().prop_map(Message::Status),
        (any::<bool>(), any::<u64>())
            .prop_map(|(mapped, len)| Message::Provisioning { mapped, len }),
        proptest::collection::vec(any::<u32>(), 0..20).prop_map(|pgs| Message::DirtyQuery { pgs }),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        Just(Message::Ok),
        data().prop_map(Message::Data),
        (error_code(), ".{0,40}")
            .prop_map(|(code, text)| Message::Error(ErrorReply::new(code, text))),
        proptest::collection::vec(region(), 0..20).prop_map(Message::DirtyRegions),
        write_op()
            .prop_filter("compare and write halves", |w| w.data.len() % 2 == 0)
            .prop_map(Message::CompareAndWrite),
        (
            any::<u64>(),
            prop_oneof![
                Just(LuEventKind::LunReset),
                Just(LuEventKind::WarmReset),
                Just(LuEventKind::ColdReset),
                Just(LuEventKind::Reservations),
            ],
            any::<u64>()
        )
            .prop_map(|(volume, kind, arg)| Message::LuEvent(LuEvent {
                volume,
                kind,
                arg
            })),
        any::<u64>().prop_map(|offset| Message::Miscompare { offset }),
        proptest::collection::vec(write_op(), 0..4).prop_map(Message::WriteBatch),
        proptest::collection::vec(write_op(), 0..4).prop_map(Message::ReplicaWriteBatch),
        proptest::collection::vec(
            prop_oneof![
                Just(Ok(())),
                (error_code(), ".{0,20}").prop_map(|(code, text)| Err(ErrorReply::new(code, text))),
            ],
            0..6
        )
        .prop_map(Message::Answers),
        (any::<u64>(), any::<u64>())
            .prop_map(|(volume, snapshot)| Message::Freeze(SnapshotOp { volume, snapshot })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(volume, snapshot)| Message::Thaw(SnapshotOp { volume, snapshot })),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            0..=peer::MAX_DATA as u32
        )
            .prop_map(|(volume, snapshot, offset, len)| Message::SnapshotRead(
                SnapshotRead {
                    volume,
                    snapshot,
                    offset,
                    len
                }
            )),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), any::<u64>(), message())
        .prop_map(|(request_id, epoch, message)| Frame::new(1, request_id, epoch, message))
}

/// Decode everything in `buf`, never panicking, checking the decoder's promises as it goes.
fn drain(buf: &mut BytesMut) -> Vec<Frame> {
    let decoder = Decoder { max_payload: 4096 };
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        match decoder.decode(buf) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                assert_eq!(consumed, frame.encoded_len());
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "asking for more consumes nothing");
                return frames;
            }
            Err(e) if e.is_fatal() => {
                assert_eq!(buf.len(), before, "a fatal error consumes nothing");
                return frames;
            }
            Err(_) => assert!(buf.len() < before, "a payload error consumes the frame"),
        }
    }
}

proptest! {
    #[test]
    fn frames_roundtrip_byte_for_byte(frames in proptest::collection::vec(frame(), 1..8)) {
        let mut buf = BytesMut::new();
        for f in &frames {
            f.encode(&mut buf).unwrap();
        }
        let wire = buf.clone().freeze();
        let back = drain(&mut buf);
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&back, &frames);
        let mut again = BytesMut::new();
        for f in &back {
            f.encode(&mut again).unwrap();
        }
        prop_assert_eq!(again.freeze(), wire.clone());
        let pieces: Vec<u8> = back
            .iter()
            .flat_map(|f| f.encode_parts().unwrap().to_bytes())
            .collect();
        prop_assert_eq!(&pieces[..], &wire[..], "the vectored encoding is the same bytes");
    }

    #[test]
    fn a_truncated_frame_asks_for_more(f in frame(), cut in any::<proptest::sample::Index>()) {
        let bytes = f.to_bytes().unwrap();
        let cut = cut.index(bytes.len());
        let mut buf = BytesMut::from(&bytes[..cut]);
        prop_assert_eq!(Decoder::default().decode(&mut buf), Ok(None));
        prop_assert_eq!(buf.len(), cut);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        drain(&mut BytesMut::from(&bytes[..]));
    }

    /// Valid frames with a few bytes changed reach past the CRC checks only when the
    /// changes miss the CRC'd areas; either way nothing panics and the promises hold.
    #[test]
    fn corrupted_frames_never_panic(
        f in frame(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..), 1..4),
    ) {
        let mut bytes = BytesMut::from(&f.to_bytes().unwrap()[..]);
        for (at, xor) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= xor;
        }
        drain(&mut bytes);
    }

    /// A header whose CRC is recomputed after corruption reaches the field checks and the
    /// payload parser with a wrong kind or length.
    #[test]
    fn recrc_header_corruption_never_panics(
        f in frame(),
        at in 4usize..32,
        xor in 1u8..,
    ) {
        let mut bytes = BytesMut::from(&f.to_bytes().unwrap()[..]);
        bytes[at] ^= xor;
        let crc = crc32c::crc32c(&bytes[..HEADER_LEN - 4]);
        bytes[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
        drain(&mut bytes);
    }
}
