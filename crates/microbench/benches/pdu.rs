//! The per-PDU hot paths: framing a 4 KiB Data-In for the wire, decoding a READ command
//! and a 4 KiB WRITE with immediate data, and the CRC32C digests.
//!
//! `cargo bench -p microbench --bench pdu`

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use iscsi::pdu::{flags, Opcode, Pdu};
use iscsi::{digest, Codec, Outgoing};
use std::hint::black_box;
use std::io::IoSlice;

fn codec(digests: bool) -> Codec {
    Codec {
        header_digest: digests,
        data_digest: digests,
        max_recv_data: 256 * 1024,
    }
}

fn data_in(len: usize) -> Pdu {
    let mut p = Pdu::new(Opcode::DataIn);
    p.set_flags(flags::FINAL | flags::STATUS);
    p.set_itt(7);
    p.data = Bytes::from(vec![0x5a; len]);
    p
}

fn command(write_len: usize) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.set_flags(
        flags::FINAL
            | if write_len > 0 {
                flags::WRITE
            } else {
                flags::READ
            },
    );
    p.set_itt(9);
    p.put32(20, 4096);
    p.bhs[32] = if write_len > 0 { 0x2a } else { 0x28 };
    p.bhs[40] = 8;
    p.data = Bytes::from(vec![0xa5; write_len]);
    p
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for digests in [false, true] {
        let codec = codec(digests);
        let pdu = data_in(4096);
        let mut out = Outgoing::default();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("data_in_4k/digests={digests}"), |b| {
            b.iter(|| {
                codec.encode_to(black_box(pdu.clone()), &mut out);
                // What the connection does after writev: drop what was sent.
                let mut sl = [IoSlice::new(&[]); 8];
                let n = out.io_slices(&mut sl);
                let len: usize = sl[..n].iter().map(|s| s.len()).sum();
                out.advance(len);
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for digests in [false, true] {
        let codec = codec(digests);
        for (name, pdu) in [("read_cmd", command(0)), ("write_4k", command(4096))] {
            let wire = codec.encode(pdu).to_vec();
            g.throughput(Throughput::Elements(1));
            g.bench_function(format!("{name}/digests={digests}"), |b| {
                b.iter_batched_ref(
                    || BytesMut::from(&wire[..]),
                    |buf| black_box(codec.decode(buf).unwrap().unwrap()),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for len in [48usize, 512, 4096, 1 << 20] {
        let buf = vec![0x3cu8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("{len}"), |b| {
            b.iter(|| digest::crc32c(black_box(&buf)))
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode, crc);
criterion_main!(benches);
