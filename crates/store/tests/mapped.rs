//! Large reads served from the mapped data file (`BlockDevice::read_mapped`): the pieces
//! hold the blocks, every block is checked, and a freed slot is not reused while a read
//! still points at it.

use scsi::{BlockDevice, DeviceError, MappedRead};
use std::os::unix::fs::FileExt;
use store::{Store, StoreOptions};

const BS: usize = 4096;
/// 1 MiB: four 256 KiB extents.
const BLOCKS: u64 = 256;

fn opts() -> StoreOptions {
    StoreOptions {
        checkpoint_interval: None,
        index_cache: 4 << 20,
        ..StoreOptions::default()
    }
}

fn pattern(tag: u8, blocks: u64) -> Vec<u8> {
    (0..blocks as usize * BS)
        .map(|i| (i as u8).wrapping_mul(31) ^ tag)
        .collect()
}

/// What the pieces of `m` hold now (they point into the store's mapped data file).
fn contents(m: &MappedRead) -> Vec<u8> {
    m.pieces.concat()
}

/// The whole written range of volume `id`, which must come back mapped.
fn whole(s: &Store, id: u64) -> MappedRead {
    s.volume(id)
        .unwrap()
        .read_mapped(0, BLOCKS)
        .unwrap()
        .unwrap()
}

fn written(s: &Store, id: u64, tag: u8) {
    s.create_volume(id, 4 << 20, BS as u32, false).unwrap();
    let v = s.volume(id).unwrap();
    v.write(0, &pattern(tag, BLOCKS), false).unwrap();
}

#[test]
fn a_large_read_is_the_file_ranges_that_hold_its_blocks() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    written(&s, 1, 1);
    let v = s.volume(1).unwrap();
    assert!(
        v.read_mapped(0, BLOCKS).is_none(),
        "blocks still in the journal are read the copying way"
    );
    s.checkpoint().unwrap();
    let m = v.read_mapped(0, BLOCKS).unwrap().unwrap();
    assert_eq!(m.len(), BLOCKS as usize * BS);
    assert_eq!(m.pieces.len(), 4, "one piece per extent");
    assert!(contents(&m) == pattern(1, BLOCKS));
    // Not at an extent's start: the first and last ranges are partial.
    let m = v.read_mapped(3, 100).unwrap().unwrap();
    assert!(contents(&m) == pattern(1, BLOCKS)[3 * BS..103 * BS]);
    assert!(v.read_mapped(0, 8).is_none(), "a small read is copied");
    assert!(
        v.read_mapped(BLOCKS, BLOCKS).is_none(),
        "a hole reads as zeroes"
    );
    assert!(matches!(
        v.read_mapped(1000, BLOCKS),
        Some(Err(DeviceError::OutOfRange { .. }))
    ));
}

#[test]
fn a_flipped_byte_fails_the_mapped_read_with_a_medium_error() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    written(&s, 1, 2);
    s.checkpoint().unwrap();
    let v = s.volume(1).unwrap();
    // Block 5 of extent 0 (slot 1: a 4 KiB header, then the blocks).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(t.path().join("extents.dat"))
        .unwrap();
    f.write_all_at(&[0xEE], 4096 + 5 * BS as u64 + 100).unwrap();
    assert!(matches!(
        v.read_mapped(0, BLOCKS),
        Some(Err(DeviceError::Medium { lba: 5 }))
    ));
    assert!(s.medium_errors() >= 1);
}

#[test]
fn a_freed_slot_is_not_reused_while_a_mapped_read_points_at_it() {
    let t = tempfile::tempdir().unwrap();
    let s = Store::open(t.path(), opts()).unwrap();
    written(&s, 1, 3);
    s.checkpoint().unwrap();
    let held = whole(&s, 1);
    // Volume 1 goes; volume 2 is written and checkpointed while the read is held.
    s.delete_volume(1).unwrap();
    s.checkpoint().unwrap();
    written(&s, 2, 4);
    s.checkpoint().unwrap();
    assert!(
        contents(&held) == pattern(3, BLOCKS),
        "the slots the read points at were reused under it"
    );
    let grown = s.data_allocated().unwrap();
    drop(held);
    // Now they are reused (at the next checkpoint) instead of the file growing.
    s.checkpoint().unwrap();
    written(&s, 3, 5);
    s.checkpoint().unwrap();
    let v3 = whole(&s, 3);
    assert!(contents(&v3) == pattern(5, BLOCKS));
    assert_eq!(
        s.data_allocated().unwrap(),
        grown,
        "volume 3 should take volume 1's old slots"
    );
}
