//! The write-ahead journal: every acknowledged write is first appended here.
//!
//! A journal file `journal.<gen>` holds records numbered 0, 1, 2, … Each record is
//!
//! ```text
//! 0  magic  u32 "HVJ1"      4  nblocks u32      8  gen u64     16 seq u64
//! 24 volume u64            32 lba u64          40 head_crc u32  44 zero u32
//! 48 crc32c of each block, u32 × nblocks      then the blocks' data
//! ```
//!
//! `head_crc` covers bytes 0..40 and the block crcs; each block is checked against its
//! crc. Replay accepts records in order while the magic, generation, sequence and every
//! checksum match, and stops at the first one that does not (a torn or never-written tail).

use crate::disk::DiskFile;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"HVJ1");
pub(crate) const HEAD: usize = 48;

/// One journal file and how much of it is durable.
#[derive(Debug)]
pub(crate) struct JFile {
    pub gen: u64,
    pub file: Arc<dyn DiskFile>,
    /// Records completely written.
    pub written: AtomicU64,
    /// Records known durable.
    pub synced: AtomicU64,
}

impl JFile {
    pub fn new(gen: u64, file: Arc<dyn DiskFile>, records: u64) -> Arc<Self> {
        Arc::new(JFile {
            gen,
            file,
            written: AtomicU64::new(records),
            synced: AtomicU64::new(records),
        })
    }

    /// Make every record written so far durable (callers serialise with a mutex so that
    /// concurrent flushes share one sync).
    pub fn sync_all(&self) -> std::io::Result<()> {
        let w = self.written.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) >= w {
            return Ok(());
        }
        self.file.sync()?;
        self.synced.fetch_max(w, Ordering::AcqRel);
        Ok(())
    }
}

pub(crate) fn name(gen: u64) -> String {
    format!("journal.{gen:016x}")
}

pub(crate) fn parse_name(n: &str) -> Option<u64> {
    u64::from_str_radix(n.strip_prefix("journal.")?, 16).ok()
}

/// Each block's crc, as a record carries them.
pub(crate) fn block_crcs(data: &[u8], bs: usize) -> Vec<u32> {
    crate::crc::blocks_vec(data, bs)
}

/// Encode a record's header (everything before the data, which follows it unchanged)
/// from the blocks' crcs.
pub(crate) fn encode_head(gen: u64, seq: u64, vol: u64, lba: u64, crcs: &[u32]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEAD + 4 * crcs.len());
    rec.extend_from_slice(&MAGIC.to_le_bytes());
    rec.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
    rec.extend_from_slice(&gen.to_le_bytes());
    rec.extend_from_slice(&seq.to_le_bytes());
    rec.extend_from_slice(&vol.to_le_bytes());
    rec.extend_from_slice(&lba.to_le_bytes());
    rec.extend_from_slice(&[0u8; 8]);
    for c in crcs {
        rec.extend_from_slice(&c.to_le_bytes());
    }
    let hc = crc32c::crc32c_append(crc32c::crc32c(&rec[..40]), &rec[HEAD..]);
    rec[40..44].copy_from_slice(&hc.to_le_bytes());
    rec
}

/// A record found by [`scan`]: where its data starts and its blocks' crcs.
pub(crate) struct Found {
    pub vol: u64,
    pub lba: u64,
    pub data_off: u64,
    pub crcs: Vec<u32>,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Read the valid records of a journal file. `block_size(vol)` gives the block size of a
/// volume (None: unknown volume — the record is checked with `fallback_bs` as size hint
/// impossible, so scanning stops there). Returns the records and the end offset.
pub(crate) fn scan(
    file: &dyn DiskFile,
    gen: u64,
    block_size: impl Fn(u64) -> Option<usize>,
) -> std::io::Result<(Vec<Found>, u64)> {
    let len = file.len()?;
    let mut off = 0u64;
    let mut out = Vec::new();
    let mut head = [0u8; HEAD];
    loop {
        if off + HEAD as u64 > len {
            break;
        }
        file.read_at(&mut head, off)?;
        let n = u32_at(&head, 4) as usize;
        if u32_at(&head, 0) != MAGIC
            || u64_at(&head, 8) != gen
            || u64_at(&head, 16) != out.len() as u64
            || n == 0
            || n > (1 << 20)
        {
            break;
        }
        let vol = u64_at(&head, 24);
        let Some(bs) = block_size(vol) else { break };
        let mut crcb = vec![0u8; 4 * n];
        if off + (HEAD + 4 * n + n * bs) as u64 > len {
            break;
        }
        file.read_at(&mut crcb, off + HEAD as u64)?;
        let hc = crc32c::crc32c_append(crc32c::crc32c(&head[..40]), &crcb);
        if hc != u32_at(&head, 40) {
            break;
        }
        let crcs: Vec<u32> = (0..n).map(|i| u32_at(&crcb, 4 * i)).collect();
        let data_off = off + (HEAD + 4 * n) as u64;
        let mut data = vec![0u8; n * bs];
        file.read_at(&mut data, data_off)?;
        if data
            .chunks(bs)
            .zip(&crcs)
            .any(|(d, c)| crc32c::crc32c(d) != *c)
        {
            break;
        }
        out.push(Found {
            vol,
            lba: u64_at(&head, 32),
            data_off,
            crcs,
        });
        off = data_off + (n * bs) as u64;
    }
    Ok((out, off))
}
