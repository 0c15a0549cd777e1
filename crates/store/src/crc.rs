//! CRC32C of every block of a buffer, as the store checks them on each read and write.
//!
//! A 512-byte block is too short for the crc32c crate's three-way interleaving, so each
//! was one chain of dependent `crc32` instructions (latency 3, throughput 1): a sixth of
//! the member's CPU on 1 MiB reads. Here four blocks are summed side by side, four
//! independent chains that keep the unit busy every cycle.

/// The CRC32C of each `bs`-byte block of `data` into `out` (which has room for them).
pub(crate) fn blocks(data: &[u8], bs: usize, out: &mut [u32]) {
    let n = data.len() / bs;
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    if bs % 8 == 0 && std::arch::is_x86_feature_detected!("sse4.2") {
        while i + 4 <= n {
            // Not for a buffer shorter than the distance: a 4 KiB read would fetch the
            // 4 KiB after it for nothing. A long one asks past its end too, where a large
            // read's next extent usually is.
            let prefetch = n > PREFETCH_GROUPS * 4 * 2;
            // SAFETY: the CPU has SSE 4.2 (checked above).
            let c = unsafe { four(&data[i * bs..(i + 4) * bs], bs, prefetch) };
            out[i..i + 4].copy_from_slice(&c);
            i += 4;
        }
    }
    for j in i..n {
        out[j] = crc32c::crc32c(&data[j * bs..(j + 1) * bs]);
    }
}

/// The crcs as a vector.
pub(crate) fn blocks_vec(data: &[u8], bs: usize) -> Vec<u32> {
    let mut v = vec![0u32; data.len() / bs];
    blocks(data, bs, &mut v);
    v
}

/// How many four-block groups ahead [`four`] asks for the lines it will sum.
const PREFETCH_GROUPS: usize = 2;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn four(data: &[u8], bs: usize, prefetch: bool) -> [u32; 4] {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_prefetch, _MM_HINT_T0};
    let (a, rest) = data.split_at(bs);
    let (b, rest) = rest.split_at(bs);
    let (c, d) = rest.split_at(bs);
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap());
    let mut s = [u64::from(u32::MAX); 4];
    let words = a
        .chunks_exact(8)
        .zip(b.chunks_exact(8))
        .zip(c.chunks_exact(8))
        .zip(d.chunks_exact(8));
    // Blocks read through the store's mapping come straight from memory, not from a cache
    // a copy has just filled, and waiting for each line made this loop most of a 1 MiB
    // read. So the group two groups ahead is asked for while this one is summed, as one
    // linear stream of lines (one every other step: 64 of the group's bytes are summed per
    // two steps). The same prefetches spread over the four blocks' own streams left the
    // loop at about the cost of the memory reads plus that of the sums (about 150 µs per
    // cold MiB here); a linear stream, which the hardware prefetcher joins, overlaps the
    // two (about 95 µs; the cold-read floor, a plain sum, is about 85).
    let ahead = PREFETCH_GROUPS * 4 * bs;
    let start = a.as_ptr();
    for (i, (((wa, wb), wc), wd)) in words.enumerate() {
        if prefetch && i % 2 == 0 {
            // A hint only: it never faults, even past the buffer's end.
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(ahead + i * 32).cast());
        }
        s[0] = _mm_crc32_u64(s[0], word(wa));
        s[1] = _mm_crc32_u64(s[1], word(wb));
        s[2] = _mm_crc32_u64(s[2], word(wc));
        s[3] = _mm_crc32_u64(s[3], word(wd));
    }
    s.map(|x| !(x as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_one_block_at_a_time() {
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for bs in [512usize, 4096, 520, 100] {
            let n = data.len() / bs;
            for take in [0, 1, 3, 4, 5, 9, n] {
                let d = &data[..take * bs];
                let want: Vec<u32> = d.chunks(bs).map(crc32c::crc32c).collect();
                assert_eq!(blocks_vec(d, bs), want, "bs {bs} blocks {take}");
            }
        }
    }
}
