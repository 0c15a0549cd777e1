//! Which placement group holds a byte of a volume.
//!
//! A volume is cut into fixed-size chunks (4 MiB by default). Chunk `i` of volume `v` lives
//! in placement group `(h(v) + i) mod pg_count`, where `h` is a stable hash. So:
//!
//! - consecutive chunks go to consecutive groups: a volume of `k` chunks puts `⌊k/pg⌋` or
//!   `⌈k/pg⌉` chunks in every group (perfectly even, unlike hashing every chunk), and a
//!   sequential stream fans out over all members;
//! - each volume starts at its own group, so small volumes do not all pile onto group 0;
//! - the mapping needs no table and never changes while the pool's `pg_count` does not,
//!   which is why a pool's placement-group count is fixed when the pool is made.
//!
//! 4 MiB keeps a typical guest I/O (≤ 1 MiB) inside one chunk almost always, while a
//! 1 GiB volume still spans 256 groups.

use crate::error::PlacementError;
use crate::hash::mix64;
use crate::map::PgId;

/// The default chunk: 4 MiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 4 << 20;

/// How a pool's volumes are cut into chunks and spread over its placement groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Striping {
    chunk_bytes: u64,
    pg_count: u32,
}

/// A piece of an I/O that falls in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub pg: PgId,
    /// Byte offset in the volume.
    pub offset: u64,
    pub len: u64,
}

impl Striping {
    pub fn new(chunk_bytes: u64, pg_count: u32) -> Result<Self, PlacementError> {
        if chunk_bytes == 0 {
            return Err(PlacementError::ZeroChunk);
        }
        if pg_count == 0 {
            return Err(PlacementError::NoPlacementGroups);
        }
        Ok(Striping {
            chunk_bytes,
            pg_count,
        })
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    pub fn pg_count(&self) -> u32 {
        self.pg_count
    }

    /// The placement group holding byte `offset` of `volume`.
    pub fn pg_of(&self, volume: u64, offset: u64) -> PgId {
        let pgs = u64::from(self.pg_count);
        let chunk = offset / self.chunk_bytes;
        ((mix64(volume) % pgs + chunk % pgs) % pgs) as PgId
    }

    /// `len` bytes of `volume` from `offset`, cut at chunk boundaries (an I/O crossing one
    /// goes to two groups). Stops at the end of the 64-bit offset space.
    pub fn spans(&self, volume: u64, offset: u64, len: u64) -> impl Iterator<Item = Span> + '_ {
        let end = offset.saturating_add(len);
        let mut at = offset;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let chunk_end = (at / self.chunk_bytes)
                .saturating_add(1)
                .saturating_mul(self.chunk_bytes);
            let stop = chunk_end.min(end);
            let span = Span {
                pg: self.pg_of(volume, at),
                offset: at,
                len: stop - at,
            };
            at = stop;
            Some(span)
        })
    }
}

/// The placement group holding byte `offset` of `volume` with `chunk_bytes` chunks over
/// `pg_count` groups; `None` if either is zero.
pub fn pg_of(volume: u64, offset: u64, chunk_bytes: u64, pg_count: u32) -> Option<PgId> {
    Some(
        Striping::new(chunk_bytes, pg_count)
            .ok()?
            .pg_of(volume, offset),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consecutive_chunks_go_to_consecutive_groups() {
        let s = Striping::new(DEFAULT_CHUNK_BYTES, 16).unwrap();
        let first = s.pg_of(7, 0);
        for chunk in 0..64u64 {
            let pg = s.pg_of(7, chunk * DEFAULT_CHUNK_BYTES + 4095);
            assert_eq!(pg, (first + chunk as u32) % 16);
        }
    }

    #[test]
    fn volumes_start_at_different_groups() {
        let s = Striping::new(DEFAULT_CHUNK_BYTES, 256).unwrap();
        let starts: std::collections::BTreeSet<_> = (0..100).map(|v| s.pg_of(v, 0)).collect();
        assert!(starts.len() > 60, "{}", starts.len());
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert_eq!(Striping::new(0, 1), Err(PlacementError::ZeroChunk));
        assert_eq!(Striping::new(1, 0), Err(PlacementError::NoPlacementGroups));
        assert_eq!(pg_of(1, 2, 0, 4), None);
        assert!(pg_of(1, 2, 4, 4).is_some());
    }

    #[test]
    fn spans_split_at_chunk_boundaries() {
        let s = Striping::new(100, 8).unwrap();
        let spans: Vec<Span> = s.spans(1, 150, 200).collect();
        assert_eq!(
            spans.iter().map(|s| (s.offset, s.len)).collect::<Vec<_>>(),
            vec![(150, 50), (200, 100), (300, 50)]
        );
        assert_eq!(spans[1].pg, (spans[0].pg + 1) % 8);
        assert_eq!(
            s.spans(1, u64::MAX - 10, 100).map(|s| s.len).sum::<u64>(),
            10
        );
        assert_eq!(s.spans(1, 5, 0).count(), 0);
    }

    proptest! {
        #[test]
        fn spans_cover_the_range_exactly_and_agree_with_pg_of(
            volume in any::<u64>(),
            offset in any::<u64>(),
            len in 0u64..1 << 24,
            chunk in 1u64..1 << 22,
            pgs in 1u32..1024,
        ) {
            let s = Striping::new(chunk, pgs).unwrap();
            let mut at = offset;
            for span in s.spans(volume, offset, len) {
                prop_assert_eq!(span.offset, at);
                prop_assert!(span.len > 0 && span.len <= chunk);
                prop_assert!(span.pg < pgs);
                prop_assert_eq!(span.pg, s.pg_of(volume, span.offset + span.len - 1));
                at += span.len;
            }
            prop_assert_eq!(at, offset.saturating_add(len));
        }

        #[test]
        fn a_volume_spreads_evenly(volume in any::<u64>(), chunks in 1u64..5000, pgs in 1u32..300) {
            let s = Striping::new(1, pgs).unwrap();
            let mut per_pg = vec![0u64; pgs as usize];
            for c in 0..chunks {
                per_pg[s.pg_of(volume, c) as usize] += 1;
            }
            let (min, max) = (per_pg.iter().min().unwrap(), per_pg.iter().max().unwrap());
            prop_assert!(max - min <= 1);
        }
    }
}
