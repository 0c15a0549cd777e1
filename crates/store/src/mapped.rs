//! Large reads served from the page cache: a read-only mapping of the data file through
//! which the blocks are checked and handed to the transport, and the pins that keep a
//! read's slots from reuse until the transport is done with them.
//!
//! A 1 MiB read used to be copied twice on the member — `pread` into a buffer, then the
//! buffer into the socket — and the first copy cost more CPU than anything else the
//! member did for it. Now the store checks the blocks' checksums through the mapping and
//! hands back `Bytes` that point into it; the socket's copy is the only one.
//! (`sendfile` would save that one too, and was tried: on loopback the initiator then
//! copies cold page-cache pages instead of freshly written socket buffers, and the
//! single-threaded client became the bottleneck at half the throughput.)
//!
//! # Why pins
//!
//! Between the check and the send the pages are still the file's. A slot freed meanwhile
//! (its volume deleted, its extent unmapped or moved) must not be cleared or reused for
//! other data, or the initiator could receive zeroes or another volume's bytes. So every
//! such read takes a [`Pin`] before it looks a slot up, and the checkpointer hands freed
//! slots to [`Pins::retire`] instead of the free list; [`Pins::reusable`] gives them back
//! once every pin that could have seen them is dropped. (A read that looks slots up after
//! the new map is published cannot reach the freed ones, so later pins do not hold them.)
//! The transport drops its pin with the bytes, once they are in the socket.
//!
//! # Media errors
//!
//! A page that cannot be read would raise SIGBUS on a plain access, so a range not wholly
//! in the page cache (`mincore`) is first read in with `MADV_POPULATE_READ`, which returns
//! an error instead: the read then fails with a medium error like a `pread` that failed.
//! Not covered: a page evicted after that check and failing when it is read again (the
//! checksum pass would fault; the socket's copy fails with EFAULT and drops the
//! connection).

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of the data file the mapping covers; slots beyond are read the copying way.
const RESERVE: usize = 1 << 40;
const PAGE: u64 = 4096;

/// Why a range of the mapping could not be had.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unmapped {
    /// The range lies beyond the mapping, or this kernel cannot fault a range in safely:
    /// read it the copying way.
    NotHere,
    /// The pages cannot be read (an I/O error, or past the end of the file).
    Unreadable,
}

/// A read-only shared mapping of the data file.
pub(crate) struct Mapping {
    base: *mut libc::c_void,
    populate: AtomicBool,
}

// SAFETY: the mapping is read-only and never remapped while it exists; any thread may read it.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map `fd` (the mapping keeps the file itself; the descriptor may be closed). None
    /// when it cannot be.
    pub(crate) fn new(fd: RawFd) -> Option<Mapping> {
        // SAFETY: a fresh read-only mapping chosen by the kernel; nothing else is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVE,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            tracing::info!(error = %std::io::Error::last_os_error(), "data file not mapped: large reads are copied");
            return None;
        }
        Some(Mapping {
            base,
            populate: AtomicBool::new(true),
        })
    }

    /// The file's bytes `[off, off + len)`, in memory: pages already in the page cache
    /// as they are (a `mincore` call), the others read in first with
    /// `MADV_POPULATE_READ`, which reports a failed read instead of raising SIGBUS.
    pub(crate) fn bytes(&self, off: u64, len: usize) -> Result<&[u8], Unmapped> {
        let end = off.checked_add(len as u64).ok_or(Unmapped::NotHere)?;
        if end > RESERVE as u64 || !self.populate.load(Ordering::Relaxed) {
            return Err(Unmapped::NotHere);
        }
        // Both calls want a page-aligned start.
        let start = off & !(PAGE - 1);
        // SAFETY: [start, end) lies inside the mapping (checked above).
        let addr = unsafe { self.base.cast::<u8>().add(start as usize) };
        let span = (end - start) as usize;
        if !self.resident(addr, span) {
            // SAFETY: as above.
            let r = unsafe { libc::madvise(addr.cast(), span, libc::MADV_POPULATE_READ) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    // Before Linux 5.14: an unreadable page would be a SIGBUS.
                    self.populate.store(false, Ordering::Relaxed);
                    tracing::info!("MADV_POPULATE_READ unsupported: large reads are copied");
                    return Err(Unmapped::NotHere);
                }
                return Err(Unmapped::Unreadable);
            }
        }
        Ok(self.checked(off, len))
    }

    /// Whether every page of `[addr, addr + span)` is in the page cache. Cheaper than
    /// populating (a page-cache lookup per page, no page-table walk); a page found here
    /// was read successfully, so touching it cannot fail.
    fn resident(&self, addr: *mut u8, span: usize) -> bool {
        const BATCH: usize = 128;
        let mut vec = [0u8; BATCH];
        let mut done = 0;
        while done < span {
            let n = (span - done).min(BATCH * PAGE as usize);
            // SAFETY: the range is inside the mapping; `vec` has a byte for each of its
            // at most BATCH pages.
            let r = unsafe { libc::mincore(addr.add(done).cast(), n, vec.as_mut_ptr()) };
            let pages = n.div_ceil(PAGE as usize);
            if r != 0 || vec[..pages].iter().any(|v| v & 1 == 0) {
                return false;
            }
            done += n;
        }
        true
    }

    /// The file's bytes `[off, off + len)` that [`Mapping::bytes`] has faulted in.
    pub(crate) fn checked(&self, off: u64, len: usize) -> &[u8] {
        assert!(
            off + len as u64 <= RESERVE as u64,
            "range outside the mapping"
        );
        // SAFETY: inside the mapping (asserted), which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(off as usize), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no slice of it outlives `self`.
        unsafe { libc::munmap(self.base, RESERVE) };
    }
}

/// The pins of one store, and the freed slots waiting for them.
#[derive(Default)]
pub(crate) struct Pins {
    state: Mutex<PinState>,
}

#[derive(Default)]
struct PinState {
    /// Bumped by every retire: a pin taken at generation `g` may point at slots retired
    /// at generations `>= g`.
    generation: u64,
    /// Live pins per generation.
    live: BTreeMap<u64, usize>,
    /// Freed slots and the generation they were retired at, oldest first.
    retired: VecDeque<(u64, u64)>,
}

/// Keeps the slots a read points at from reuse while it lives.
pub(crate) struct Pin {
    pins: Arc<Pins>,
    generation: u64,
}

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, PinState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pin every slot reachable now. Take it while holding the lock that orders the
    /// read against the publication of a new map.
    pub(crate) fn pin(self: &Arc<Self>) -> Pin {
        let mut s = self.lock();
        let generation = s.generation;
        *s.live.entry(generation).or_default() += 1;
        Pin {
            pins: self.clone(),
            generation,
        }
    }

    /// Slots no reader can reach any more (the new map is published): reusable once the
    /// pins taken before now are gone.
    pub(crate) fn retire(&self, slots: impl IntoIterator<Item = u64>) {
        let mut s = self.lock();
        let g = s.generation;
        s.retired.extend(slots.into_iter().map(|p| (g, p)));
        s.generation += 1;
    }

    /// Retired slots no pin can point at any more, removed from the waiting list.
    pub(crate) fn reusable(&self) -> Vec<u64> {
        let mut s = self.lock();
        let oldest = s.live.keys().next().copied().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        while let Some(&(g, p)) = s.retired.front() {
            if g >= oldest {
                break;
            }
            out.push(p);
            s.retired.pop_front();
        }
        out
    }

    /// Retired slots still waiting (for space reports and tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().retired.len()
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut s = self.pins.lock();
        if let Some(n) = s.live.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                s.live.remove(&self.generation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slot_waits_for_the_pins_taken_before_it_was_retired() {
        let pins = Arc::new(Pins::default());
        let early = pins.pin();
        pins.retire([7]);
        let late = pins.pin();
        assert!(
            pins.reusable().is_empty(),
            "the early pin may point at slot 7"
        );
        drop(early);
        assert_eq!(pins.reusable(), vec![7], "the late pin cannot reach it");
        drop(late);
        assert!(pins.reusable().is_empty());
    }

    #[test]
    fn without_pins_retired_slots_are_reusable_at_once() {
        let pins = Arc::new(Pins::default());
        pins.retire([1, 2]);
        assert_eq!(pins.reusable(), vec![1, 2]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Pin,
        Unpin(usize),
        Retire(u64),
        Reuse,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Pin),
            (0usize..8).prop_map(Op::Unpin),
            (1u64..1000).prop_map(Op::Retire),
            Just(Op::Reuse),
        ]
    }

    proptest! {
        /// Model: a slot retired while a pin lives is never handed out before that pin
        /// is dropped, and every retired slot is handed out once no pin is left.
        #[test]
        fn reuse_never_precedes_an_older_pin(ops in proptest::collection::vec(op(), 1..80)) {
            let pins = Arc::new(Pins::default());
            // Live pins, each with the slots retired while it lived.
            let mut live: Vec<(Pin, Vec<u64>)> = Vec::new();
            let mut handed = std::collections::HashSet::new();
            let mut retired = Vec::new();
            for o in ops {
                match o {
                    Op::Pin => live.push((pins.pin(), Vec::new())),
                    Op::Unpin(i) => {
                        if !live.is_empty() {
                            let i = i % live.len();
                            live.remove(i);
                        }
                    }
                    Op::Retire(p) => {
                        if !retired.contains(&p) {
                            retired.push(p);
                            pins.retire([p]);
                            for (_, seen) in &mut live {
                                seen.push(p);
                            }
                        }
                    }
                    Op::Reuse => {
                        for p in pins.reusable() {
                            for (_, seen) in &live {
                                prop_assert!(!seen.contains(&p), "slot {} reused under a pin", p);
                            }
                            prop_assert!(handed.insert(p));
                        }
                    }
                }
            }
            live.clear();
            for p in pins.reusable() {
                prop_assert!(handed.insert(p));
            }
            prop_assert_eq!(handed.len(), retired.len());
            prop_assert_eq!(pins.waiting(), 0);
        }
    }
}
