//! Member-local storage of volume data.
//!
//! Today a volume is one sparse file ([`FileDevice`]): thin by construction (holes are
//! unallocated), unmapped with hole punching, made durable with `fdatasync`. The extent
//! store with snapshots, clones and checksums (its own issue) replaces it behind the same
//! [`scsi::BlockDevice`] trait.

pub mod file;

pub use file::FileDevice;
