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
            // SAFETY: the CPU has SSE 4.2 (checked above).
            let c = unsafe { four(&data[i * bs..(i + 4) * bs], bs) };
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn four(data: &[u8], bs: usize) -> [u32; 4] {
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
    // a copy has just filled; four 512-byte streams are too short for the hardware
    // prefetcher, and waiting for each line made this loop most of a 1 MiB read. So each
    // line two groups ahead is asked for while this group is summed.
    let ahead = 8 * bs;
    let base = [a.as_ptr(), b.as_ptr(), c.as_ptr(), d.as_ptr()];
    for (i, (((wa, wb), wc), wd)) in words.enumerate() {
        if i % 8 == 0 {
            for p in base {
                // A hint only: it never faults, even past the buffer's end.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(i * 8 + ahead).cast());
            }
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
