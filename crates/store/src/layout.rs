//! Extents, slots and the in-memory index.
//!
//! # Extents
//!
//! A volume's address space is cut into **extents** of [`DEFAULT_EXTENT`] = 256 KiB (a
//! store-wide option fixed at creation, recorded in the index). The extent is the unit of
//! allocation (thin provisioning takes space an extent at a time), of copy-on-write (the
//! first write into an extent shared with a snapshot or clone copies the whole extent) and
//! of the index (one index entry per written extent and version).
//!
//! Why 256 KiB: a 4 KiB random write after a snapshot copies one extent, so small extents
//! keep CoW amplification low (64× for 4 KiB at 256 KiB, 256× at 1 MiB, 16× at 64 KiB),
//! while the index is one ~24-byte entry per extent and version: 4 M entries (~100 MiB in
//! memory) per TiB written at 256 KiB, 4× that at 64 KiB. The copy is done by the
//! checkpointer in the background, never on the write path, and is paid once per extent
//! per snapshot. 256 KiB also keeps the per-extent checksum header to one 4 KiB page for
//! 512-byte blocks (512 blocks × 8 bytes). Extents are unrelated to the placement groups
//! of replication (a later layer groups many volumes' extents).
//!
//! # Slots
//!
//! The data file `extents.dat` is an array of **slots**, one per allocated physical
//! extent; slot `p` (1-based) starts at `(p-1) × (4096 + extent)`. A slot is a 4 KiB header
//! (per block: crc32c `u32`, flags `u32` with bit 0 = mapped) followed by the extent's data.
//! Unmapped blocks read as zeroes whatever the data area holds, so a reused slot can never
//! leak a former owner's data: its header is rewritten (and synced) before any index entry
//! points at it.

use std::collections::BTreeMap;

/// Default extent size in bytes.
pub const DEFAULT_EXTENT: u32 = 256 * 1024;
/// Size of a slot's checksum header.
pub const HEADER: u64 = 4096;
/// Header flag: the block is mapped (written, not unmapped).
pub const MAPPED: u32 = 1;

pub(crate) const ABSENT: u8 = 0;
pub(crate) const DATA: u8 = 1;
pub(crate) const HOLE: u8 = 2;

/// One version of one extent of a volume.
///
/// `kind` DATA: in slot `phys`. HOLE: unmapped (reads zeroes, hides a clone's parent).
/// ABSENT: never written here (reads the clone parent's data, or zeroes). `birth` is the
/// volume epoch the version was created in (0 with ABSENT: never set). `excl`: the slot is
/// referenced by this version only (in memory only; conservative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    pub phys: u64,
    pub birth: u64,
    pub kind: u8,
    pub excl: bool,
}

impl Entry {
    pub fn is_set(&self) -> bool {
        self.kind != ABSENT || self.birth != 0
    }
}

const CHUNK: usize = 1024;

/// The live (writable) version of every extent: a two-level table, memory only where
/// something was written.
#[derive(Debug, Default)]
pub(crate) struct Live {
    chunks: Vec<Option<Box<[Entry]>>>,
}

impl Live {
    pub fn get(&self, x: u64) -> Entry {
        let (c, i) = (x as usize / CHUNK, x as usize % CHUNK);
        match self.chunks.get(c) {
            Some(Some(ch)) => ch[i],
            _ => Entry::default(),
        }
    }
    pub fn set(&mut self, x: u64, e: Entry) {
        let (c, i) = (x as usize / CHUNK, x as usize % CHUNK);
        if self.chunks.len() <= c {
            if !e.is_set() {
                return;
            }
            self.chunks.resize_with(c + 1, || None);
        }
        let ch =
            self.chunks[c].get_or_insert_with(|| vec![Entry::default(); CHUNK].into_boxed_slice());
        ch[i] = e;
    }
    /// Every set entry, in extent order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.chunks.iter().enumerate().flat_map(|(c, ch)| {
            ch.iter().flat_map(move |ch| {
                ch.iter()
                    .enumerate()
                    .filter(|(_, e)| e.is_set())
                    .map(move |(i, e)| ((c * CHUNK + i) as u64, *e))
            })
        })
    }
}

/// Older versions kept for snapshots: (extent, birth) → version.
pub(crate) type Old = BTreeMap<(u64, u64), Entry>;

/// The version of extent `x` that a reader at epoch `at` sees (u64::MAX: the live one).
pub(crate) fn view(live: &Live, old: &Old, x: u64, at: u64) -> Entry {
    let e = live.get(x);
    if e.birth <= at {
        return e;
    }
    old.range((x, 0)..=(x, at))
        .next_back()
        .map(|(_, e)| *e)
        .unwrap_or_default()
}

/// Read a header entry.
pub(crate) fn hdr(h: &[u8], i: usize) -> (u32, u32) {
    (
        u32::from_le_bytes(h[8 * i..8 * i + 4].try_into().unwrap()),
        u32::from_le_bytes(h[8 * i + 4..8 * i + 8].try_into().unwrap()),
    )
}

/// Write a header entry.
pub(crate) fn set_hdr(h: &mut [u8], i: usize, crc: u32, flags: u32) {
    h[8 * i..8 * i + 4].copy_from_slice(&crc.to_le_bytes());
    h[8 * i + 4..8 * i + 8].copy_from_slice(&flags.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_table_and_views() {
        let mut l = Live::default();
        assert_eq!(l.get(5000), Entry::default());
        let d = |p, b| Entry {
            phys: p,
            birth: b,
            kind: DATA,
            excl: true,
        };
        l.set(5000, d(7, 3));
        l.set(3, d(1, 1));
        assert_eq!(l.iter().map(|(x, _)| x).collect::<Vec<_>>(), vec![3, 5000]);
        let mut old = Old::new();
        old.insert((5000, 1), d(4, 1));
        assert_eq!(view(&l, &old, 5000, u64::MAX).phys, 7);
        assert_eq!(view(&l, &old, 5000, 2).phys, 4);
        assert_eq!(view(&l, &old, 5000, 0), Entry::default());
        let mut h = vec![0u8; 64];
        set_hdr(&mut h, 3, 0xdead, MAPPED);
        assert_eq!(hdr(&h, 3), (0xdead, MAPPED));
    }
}
