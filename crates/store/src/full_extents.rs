//! Which extents of a live volume are known to be mapped in every block.
//!
//! GET LBA STATUS on a thin volume reads extent headers to tell mapped blocks from holes,
//! so one answer can afford only a few of them. QEMU's iSCSI driver asks before every
//! read it serves sparsely (qemu-nbd does, for each NBD read) and keeps the first
//! descriptor's run as "known data" (its block-status cache): an answer that covers the
//! whole mapped run, however many extents it spans, lets it stop asking. This set lets the
//! store give that answer without a header read per extent.
//!
//! The set only ever errs towards "unknown": an extent is added once a status query saw
//! every one of its blocks mapped, and writes never unmap a block. The operations that do
//! (UNMAP releasing whole extents, restoring a snapshot) remove extents while they hold
//! the volume's `io` lock for writing; status queries hold it for reading, so a query
//! can never add an extent that such an operation has just emptied.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

#[derive(Default)]
pub(crate) struct FullExtents {
    /// One bit per extent; extents past the end are unknown.
    words: RwLock<Vec<AtomicU64>>,
}

impl FullExtents {
    #[cfg(test)]
    pub(crate) fn contains(&self, x: u64) -> bool {
        let words = self.words.read().unwrap_or_else(|e| e.into_inner());
        words
            .get((x / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (x % 64)) != 0)
    }

    /// How many extents from `x` on are known full, counting at most `max`: one lock and
    /// a word at a time, so a status answer can follow a large volume's run cheaply.
    pub(crate) fn run_from(&self, x: u64, max: u64) -> u64 {
        let words = self.words.read().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        while n < max {
            let at = x + n;
            let Some(w) = words.get((at / 64) as usize) else {
                break;
            };
            let bits = w.load(Ordering::Relaxed) >> (at % 64);
            let ones = u64::from(bits.trailing_ones()).min(64 - at % 64);
            n += ones;
            if at % 64 + ones < 64 {
                break;
            }
        }
        n.min(max)
    }

    pub(crate) fn insert(&self, x: u64) {
        let i = (x / 64) as usize;
        {
            let words = self.words.read().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = words.get(i) {
                w.fetch_or(1 << (x % 64), Ordering::Relaxed);
                return;
            }
        }
        let mut words = self.words.write().unwrap_or_else(|e| e.into_inner());
        while words.len() <= i {
            words.push(AtomicU64::new(0));
        }
        words[i].fetch_or(1 << (x % 64), Ordering::Relaxed);
    }

    /// Forget extents `from..to`.
    pub(crate) fn remove_range(&self, from: u64, to: u64) {
        let words = self.words.read().unwrap_or_else(|e| e.into_inner());
        for x in from..to {
            match words.get((x / 64) as usize) {
                Some(w) => {
                    w.fetch_and(!(1 << (x % 64)), Ordering::Relaxed);
                }
                None => break,
            }
        }
    }

    pub(crate) fn clear(&self) {
        self.words
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_unknown_until_inserted_and_after_removal() {
        let f = FullExtents::default();
        assert!(!f.contains(0));
        assert!(!f.contains(1000));
        f.insert(3);
        f.insert(130);
        assert!(f.contains(3) && f.contains(130));
        assert!(!f.contains(2) && !f.contains(129) && !f.contains(131));
        f.remove_range(0, 100);
        assert!(!f.contains(3));
        assert!(f.contains(130));
        f.remove_range(100, 10_000);
        assert!(!f.contains(130));
        f.insert(7);
        f.clear();
        assert!(!f.contains(7));
    }

    #[test]
    fn a_run_counts_consecutive_known_extents_across_words() {
        let f = FullExtents::default();
        assert_eq!(f.run_from(0, 1000), 0);
        for x in 3..200 {
            f.insert(x);
        }
        assert_eq!(f.run_from(3, 1000), 197);
        assert_eq!(f.run_from(60, 1000), 140);
        assert_eq!(f.run_from(64, 1000), 136);
        assert_eq!(f.run_from(10, 50), 50);
        assert_eq!(f.run_from(2, 1000), 0);
        assert_eq!(f.run_from(200, 1000), 0);
        f.remove_range(130, 131);
        assert_eq!(f.run_from(3, 1000), 127);
        assert_eq!(f.run_from(131, 1000), 69);
    }
}
