//! The bytes a connection has still to send, kept so that one `writev` sends many PDUs.
//!
//! Headers, pads, digests and small data segments are copied into one staging buffer
//! (they are short, and copying them is cheaper than an iovec each); large data segments
//! (Data-In read from the store) are queued by reference, so their bytes are never copied
//! between the store and the socket. The staging buffer is reused once everything frozen
//! out of it has been sent, so a connection in a steady state does not allocate here.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Data segments up to this size are copied next to their header instead of referenced.
const COPY_MAX: usize = 1024;
/// Staging capacity; grows if a burst of small PDUs needs more.
const STAGING: usize = 16 * 1024;

/// A queue of bytes to send, in order.
#[derive(Debug)]
pub struct Outgoing {
    segs: VecDeque<Bytes>,
    staging: BytesMut,
    len: usize,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            segs: VecDeque::new(),
            staging: BytesMut::with_capacity(STAGING),
            len: 0,
        }
    }
}

impl Outgoing {
    /// Queue a copy of `b`.
    pub fn push_copy(&mut self, b: &[u8]) {
        if self.staging.capacity() - self.staging.len() < b.len() {
            self.seal();
            // Reclaims the old allocation when everything frozen out of it was sent.
            self.staging.reserve(STAGING.max(b.len()));
        }
        self.staging.extend_from_slice(b);
        self.len += b.len();
    }

    /// Queue `b`, by reference when it is large.
    pub fn push_shared(&mut self, b: Bytes) {
        if b.len() <= COPY_MAX {
            self.push_copy(&b);
            return;
        }
        self.seal();
        self.len += b.len();
        self.segs.push_back(b);
    }

    /// Move what was staged to the queue.
    fn seal(&mut self) {
        if !self.staging.is_empty() {
            self.segs.push_back(self.staging.split().freeze());
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fill `dst` with the queued bytes, oldest first; returns how many slices were filled.
    pub fn io_slices<'a>(&'a mut self, dst: &mut [IoSlice<'a>]) -> usize {
        self.seal();
        let mut n = 0;
        for (slot, seg) in dst.iter_mut().zip(self.segs.iter()) {
            *slot = IoSlice::new(seg);
            n += 1;
        }
        n
    }

    /// Drop the first `n` bytes (they were sent).
    pub fn advance(&mut self, mut n: usize) {
        self.seal();
        self.len -= n;
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                break;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.segs.pop_front();
        }
    }

    /// Everything queued in one buffer (tests).
    pub fn to_vec(&mut self) -> Vec<u8> {
        self.seal();
        let mut v = Vec::with_capacity(self.len);
        for s in &self.segs {
            v.extend_from_slice(s);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_copied_and_shared_segments() {
        let mut q = Outgoing::default();
        q.push_copy(b"head1");
        q.push_shared(Bytes::from(vec![7u8; 4096]));
        q.push_copy(b"head2");
        q.push_shared(Bytes::from_static(b"small"));
        let all = q.to_vec();
        assert_eq!(all.len(), q.len());
        assert_eq!(&all[..5], b"head1");
        assert_eq!(&all[4101..], b"head2small");
        // Partial sends advance through segment boundaries.
        q.advance(3);
        q.advance(4100);
        let mut sl = [IoSlice::new(&[]); 8];
        let n = q.io_slices(&mut sl);
        let rest: Vec<u8> = sl[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(rest, b"ad2small");
        q.advance(rest.len());
        assert!(q.is_empty());
    }
}
